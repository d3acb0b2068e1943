// PostgreSQL implementation of the store (store.hpp, pg_store.hpp).
//
// Design. The tables mirror sqlite_store.cpp (same columns, same meaning) in a
// schema of their own, `klynaa`, with its version in klynaa.meta; a writer
// creates it on first open under an advisory lock (two brokers starting at
// once), and a version newer than this code refuses to open.
//
// One round trip per commit: commit() sends the whole batch in libpq pipeline
// mode (libpq >= 14) — BEGIN, a few prepared statements, COMMIT, then a single
// sync — and only then reads the results. No statement may therefore depend on
// a result the client has not seen yet, so each step's logic runs in the
// server. The statements are set-based (issue 22; docs/performance.md, "The
// PostgreSQL store"): each takes one array per column and reads them with
// unnest(), so a commit costs a few statements whatever its size. The
// requests are one statement (data-modifying CTEs: dedup against requests,
// cancel the pending auto-releases of the pickups they close, record the
// closures, insert their jobs unless the pickup is closed or the id exists,
// record each request with the ids actually inserted); the job state changes
// one UPDATE ... FROM unnest, their attempt history one INSERT, the jobs made
// by jobs one INSERT. Every part of one statement sees the database as it was
// before it, so the client cuts the requests into runs none of whose requests
// could see another's effect (a repeated request id, job id or pickup); each
// run is one statement, and a later statement of the pipeline sees the earlier
// ones, as the SQLite store's request-at-a-time order would.
// The fence is a PL/pgSQL function that raises, because a statement returning
// 0 rows could not stop the statements already sent behind it. On any error the
// server skips everything up to the sync; the client then rolls back.
//
// Durability: COMMIT returns once PostgreSQL flushed its WAL (a session with
// synchronous_commit = off is switched back on). A connection lost mid-commit
// fails that commit (its outcome is unknown to us, as with any database: the
// broker rejects the requests and clients retry under the same ids, which are
// then duplicates if it did commit); the next call reconnects.
//
// Blocking libpq is fine in pipeline mode: when a send would block, libpq reads
// the server's pending results into its buffer, so a large batch cannot
// deadlock the connection.
//
// The parts: pg_store_impl.hpp declares the state they share; pg_sql.cpp holds
// the schema and the statements, pg_commit.cpp the commit pipeline; this file
// connects, checks the schema and answers the reads and the lease calls.
#include "broker/pg_store.hpp"

#include <libpq-fe.h>

#include <algorithm>
#include <cstdlib>
#include <functional>
#include <regex>
#include <stdexcept>
#include <utility>

#include <nlohmann/json.hpp>

#include "broker/pg_store_impl.hpp"

namespace klynaa::broker {
namespace pg_detail {

std::string one_line(const char* msg) {
  std::string s = msg ? msg : "";
  for (auto& c : s)
    if (c == '\n' || c == '\t' || c == '\r') c = ' ';
  while (!s.empty() && s.back() == ' ') s.pop_back();
  std::string out;
  for (char c : s)
    if (!(c == ' ' && !out.empty() && out.back() == ' ')) out += c;
  return out.empty() ? "unknown error" : out;
}

std::string result_error(const PGresult* r) {
  const char* primary = PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY);
  if (primary) return one_line(primary);
  return one_line(PQresultErrorMessage(r));
}

job_record read_job(const PGresult* r, int row) {
  job_record j;
  j.id = text(r, row, 0);
  j.request_id = text(r, row, 1);
  j.function = text(r, row, 2);
  j.data_json = text(r, row, 3);
  j.ordering_key = text(r, row, 4);
  j.seq = i64(r, row, 5);
  j.state = static_cast<job_state>(i64(r, row, 6));
  j.due_ms = i64(r, row, 7);
  j.attempts = i64(r, row, 8);
  j.ts_ms = i64(r, row, 9);
  j.created_ms = i64(r, row, 10);
  j.updated_ms = i64(r, row, 11);
  j.auto_release = PQgetvalue(r, row, 12)[0] == 't';
  j.last_error_json = text(r, row, 13);
  j.result_json = text(r, row, 14);
  j.attempt_base = i64(r, row, 15);
  return j;
}

}  // namespace pg_detail

using namespace pg_detail;

std::string mask_pg_url(const std::string& url) {
  std::string s = url;
  const bool uri = s.rfind("postgresql://", 0) == 0 || s.rfind("postgres://", 0) == 0;
  if (uri) {
    // user info as libpq reads it: up to an '@' before the first '/' (or '?').
    const size_t start = s.find("://") + 3;
    size_t end = s.find_first_of("/?", start);
    if (end == std::string::npos) end = s.size();
    const size_t at = s.rfind('@', end == 0 ? 0 : end - 1);
    if (at != std::string::npos && at >= start) {
      const size_t colon = s.find(':', start);
      if (colon != std::string::npos && colon < at) s.replace(colon + 1, at - colon - 1, "****");
    }
    static const std::regex query_password("([?&]password=)[^&]*", std::regex::icase);
    s = std::regex_replace(s, query_password, "$1****");
  } else {
    static const std::regex kv_password(R"((\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|\S+))",
                                        std::regex::icase);
    s = std::regex_replace(s, kv_password, "$1****");
  }
  return s;
}

pg_store::impl::impl(pg_options o) : opts(std::move(o)), shown_url(mask_pg_url(opts.url)) {
  char* perr = nullptr;
  if (PQconninfoOption* info = PQconninfoParse(opts.url.c_str(), &perr)) {
    for (auto* o = info; o->keyword; ++o)
      if (std::string(o->keyword) == "password" && o->val) password = o->val;
    PQconninfoFree(info);
  }
  PQfreemem(perr);
}

/// Every message leaves through here: it names store.url and never the password.
std::string pg_store::impl::message(const std::string& what) const {
  std::string m = "store.url " + shown_url + ": " + what;
  if (password.size() >= 1)
    for (size_t p; (p = m.find(password)) != std::string::npos;) m.replace(p, password.size(), "****");
  return m;
}

void pg_store::impl::disconnect() {
  if (conn) PQfinish(conn);
  conn = nullptr;
}

/// Connects and sets the session up; `init` also creates or checks the schema.
void pg_store::impl::connect(bool init) {
  disconnect();
  // Defaults before dbname: the URL's own settings override them; what comes
  // after it overrides the URL.
  std::vector<const char*> keys = {"connect_timeout", "keepalives_idle", "keepalives_interval",
                                   "keepalives_count", "dbname", "client_encoding"};
  std::vector<const char*> values = {"10", "30", "10", "3", opts.url.c_str(), "UTF8"};
  if (!opts.application_name.empty()) {
    keys.push_back("application_name");
    values.push_back(opts.application_name.c_str());
  }
  keys.push_back(nullptr);
  values.push_back(nullptr);
  conn = PQconnectdbParams(keys.data(), values.data(), /*expand_dbname=*/1);
  if (!conn) throw pg_failure("cannot connect: out of memory");
  if (PQstatus(conn) != CONNECTION_OK) {
    std::string m = one_line(PQerrorMessage(conn));
    disconnect();
    throw pg_failure("cannot connect: " + m);
  }
  // Server notices (a WARNING before an immediate shutdown, ...) would go to
  // stderr, outside the JSON log; the errors that matter reach us as results.
  PQsetNoticeProcessor(conn, [](void*, const char*) {}, nullptr);
  // Accepted means committed: never acknowledge before the WAL is flushed.
  auto sc = exec("SHOW synchronous_commit");
  if (!opts.durable_commits)
    exec("SET synchronous_commit = off");  // the lease renewer (pg_options::durable_commits)
  else if (text(sc.get(), 0, 0) == "off")
    exec("SET synchronous_commit = on");
  if (opts.read_only) exec("SET default_transaction_read_only = on");
  if (init) {
    if (opts.read_only)
      check_version_read_only();
    else
      create_or_check_schema();
  }
  for (auto& [name, sql] : statements()) {
    result_ptr r(PQprepare(conn, name, sql.c_str(), 0, nullptr));
    if (PQresultStatus(r.get()) != PGRES_COMMAND_OK)
      throw pg_failure(std::string("prepare ") + name + ": " + result_error(r.get()));
  }
}
/// Reconnects when the connection was lost; false and `err` when it cannot.
bool pg_store::impl::ensure_connected(store_error* err) {
  if (connected()) return true;
  try {
    connect(false);
    return true;
  } catch (const std::exception& e) {
    disconnect();
    if (err) err->message = message(e.what());
    return false;
  }
}

result_ptr pg_store::impl::exec(const std::string& sql) {
  result_ptr r(PQexec(conn, sql.c_str()));
  auto st = PQresultStatus(r.get());
  if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) throw pg_failure(result_error(r.get()));
  return r;
}

std::optional<int> pg_store::impl::stored_version() {
  auto r = exec("SELECT to_regclass('klynaa.meta') IS NOT NULL");
  if (text(r.get(), 0, 0) != "t") return std::nullopt;
  auto v = exec("SELECT value FROM klynaa.meta WHERE key = 'schema_version'");
  if (PQntuples(v.get()) == 0) return std::nullopt;
  return std::stoi(text(v.get(), 0, 0));
}

void pg_store::impl::refuse_newer(int v) {
  if (v > schema_version)
    throw pg_failure("the store has schema version " + std::to_string(v) +
                     ", newer than this klynaa understands (" + std::to_string(schema_version) +
                     "); upgrade klynaa");
}

void pg_store::impl::create_or_check_schema() {
  try {
    exec("BEGIN");
    exec(init_lock);
    if (auto v = stored_version()) {
      refuse_newer(*v);
      if (*v < 2) exec(upgrade_to_2_sql);
    } else {
      // CREATE SCHEMA IF NOT EXISTS needs CREATE on the database even when the
      // schema exists: only ask for it the first time.
      auto has = exec("SELECT 1 FROM pg_namespace WHERE nspname = 'klynaa'");
      if (PQntuples(has.get()) == 0) exec("CREATE SCHEMA klynaa");
      exec(schema_sql);
      exec(upgrade_to_2_sql);  // one place for version 2's tables, new store or upgrade
      exec("INSERT INTO klynaa.meta(key, value) VALUES('schema_version', '" +
           std::to_string(schema_version) + "') ON CONFLICT (key) DO NOTHING");
    }
    exec("COMMIT");
  } catch (...) {
    if (conn) PQclear(PQexec(conn, "ROLLBACK"));
    throw;
  }
}

void pg_store::impl::check_version_read_only() {
  auto v = stored_version();
  if (!v) throw pg_failure("no klynaa store there yet (a broker creates it on its first start)");
  refuse_newer(*v);
  if (*v < schema_version)
    throw pg_failure("the store has schema version " + std::to_string(*v) +
                     "; a broker of this version upgrades it when it starts (then open it again)");
}

/// One prepared statement outside the pipeline. Throws pg_failure (a
/// std::runtime_error naming store.url) when it fails, as the SQLite store's
/// reads do; a lost connection is dropped, so the next call reconnects.
result_ptr pg_store::impl::query(const char* name, const params& p) {
  store_error err;
  if (!ensure_connected(&err)) throw pg_failure(err.message);
  auto ptrs = p.pointers();
  result_ptr r(PQexecPrepared(conn, name, p.size(), ptrs.data(), nullptr, nullptr, 0));
  auto st = PQresultStatus(r.get());
  if (st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK) return r;
  std::string m = r ? result_error(r.get()) : one_line(PQerrorMessage(conn));
  if (!connected()) disconnect();
  throw pg_failure(message(m));
}

pg_store::pg_store(std::unique_ptr<impl> p) : impl_(std::move(p)) {}
pg_store::~pg_store() = default;

std::unique_ptr<pg_store> pg_store::open(const pg_options& opts, store_error& err) {
  auto p = std::make_unique<impl>(opts);
  try {
    p->connect(/*init=*/true);
  } catch (const std::exception& e) {
    err.message = p->message(e.what());
    return nullptr;
  }
  return std::unique_ptr<pg_store>(new pg_store(std::move(p)));
}

std::optional<commit_outcome> pg_store::commit(const batch& b, store_error& err) {
  return impl_->commit(b, err);
}

pg_commit_stats pg_store::commit_stats() const { return impl_->stats; }

bool pg_store::load_unfinished(const std::function<void(job_record&&)>& sink, store_error& err) {
  auto& d = *impl_;
  if (!d.ensure_connected(&err)) return false;
  // Row by row: the unfinished jobs may not fit in memory twice.
  if (!PQsendQueryPrepared(d.conn, "load", 0, nullptr, nullptr, nullptr, 0) || !PQsetSingleRowMode(d.conn)) {
    err.message = d.message(one_line(PQerrorMessage(d.conn)));
    if (!d.connected()) d.disconnect();
    return false;
  }
  std::string error;
  while (result_ptr r{PQgetResult(d.conn)}) {
    auto st = PQresultStatus(r.get());
    if (st == PGRES_SINGLE_TUPLE) {
      if (error.empty()) sink(read_job(r.get(), 0));
    } else if (st != PGRES_TUPLES_OK && error.empty()) {
      error = result_error(r.get());
    }
  }
  if (!d.connected()) {
    if (error.empty()) error = one_line(PQerrorMessage(d.conn));
    d.disconnect();
  }
  if (!error.empty()) {
    err.message = d.message(error);
    return false;
  }
  return true;
}

int64_t pg_store::max_seq() {
  auto r = impl_->query("max_seq", params());
  return r ? i64(r.get(), 0, 0) : 0;
}

std::optional<job_record> pg_store::find_job(const std::string& id) {
  auto r = impl_->query("find_job", params().add(id));
  if (!r || PQntuples(r.get()) == 0) return std::nullopt;
  return read_job(r.get(), 0);
}

std::vector<job_record> pg_store::list_jobs(job_state state, size_t limit) {
  std::vector<job_record> out;
  auto r = impl_->query("list_jobs", params().add(static_cast<int>(state)).add(static_cast<int64_t>(limit)));
  for (int i = 0; r && i < PQntuples(r.get()); ++i) out.push_back(read_job(r.get(), i));
  return out;
}

std::string pg_store::history_json(const std::string& id) {
  auto arr = nlohmann::json::array();
  auto r = impl_->query("history", params().add(id));
  for (int i = 0; r && i < PQntuples(r.get()); ++i) {
    const PGresult* s = r.get();
    nlohmann::json e = {{"attempt", i64(s, i, 0)}, {"node", text(s, i, 1)}, {"outcome", text(s, i, 2)},
                        {"duration_ms", i64(s, i, 4)}, {"at_ms", i64(s, i, 5)}};
    auto err = text(s, i, 3);
    e["error"] = err.empty() ? nlohmann::json() : nlohmann::json::parse(err, nullptr, false);
    arr.push_back(std::move(e));
  }
  return arr.dump();
}

std::vector<std::tuple<std::string, job_state, int64_t>> pg_store::count_by_function() {
  std::vector<std::tuple<std::string, job_state, int64_t>> out;
  auto r = impl_->query("count", params());
  for (int i = 0; r && i < PQntuples(r.get()); ++i)
    out.emplace_back(text(r.get(), i, 0), static_cast<job_state>(i64(r.get(), i, 1)), i64(r.get(), i, 2));
  return out;
}

std::optional<int64_t> pg_store::acquire_or_renew_lease(const std::string& holder, int64_t ttl_ms,
                                                        store_error* err) {
  auto& d = *impl_;
  if (err) err->message.clear();
  try {
    auto r = d.query("renew_lease", params().add(holder).add(ttl_ms));
    if (PQntuples(r.get()) == 0) r = d.query("lease", params().add(holder).add(ttl_ms));  // take it, if free
    if (PQntuples(r.get()) == 0) return std::nullopt;  // another holder's lease is valid
    d.holder = holder;
    return i64(r.get(), 0, 0);
  } catch (const std::exception& e) {
    if (err) err->message = e.what();
    return std::nullopt;
  }
}

void pg_store::set_fence(int64_t token) { impl_->fence_token = token; }

bool pg_store::release_lease(const std::string& holder, int64_t token, store_error* err) {
  if (err) err->message.clear();
  try {
    impl_->query("release_lease", params().add(holder).add(token));
    return true;
  } catch (const std::exception& e) {
    if (err) err->message = e.what();
    return false;
  }
}

std::string pg_store::lease_holder(store_error* err) {
  if (err) err->message.clear();
  try {
    auto r = impl_->query("lease_holder", params());
    return PQntuples(r.get()) == 0 ? std::string() : text(r.get(), 0, 0);
  } catch (const std::exception& e) {
    if (err) err->message = e.what();
    return {};
  }
}

std::unique_ptr<store> open_pg_store(const pg_options& opts, store_error& err) {
  return pg_store::open(opts, err);
}

}  // namespace klynaa::broker
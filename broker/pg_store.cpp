// PostgreSQL implementation of the store (store.hpp, pg_store.hpp).
//
// Design. The tables mirror sqlite_store.cpp (same columns, same meaning) in a
// schema of their own, `klynaa`, with its version in klynaa.meta; a writer
// creates it on first open under an advisory lock (two brokers starting at
// once), and a version newer than this code refuses to open.
//
// One round trip per commit: commit() sends the whole batch in libpq pipeline
// mode (libpq >= 14) — BEGIN, one prepared statement per item, COMMIT, then a
// single sync — and only then reads the results. No statement may therefore
// depend on a result the client has not seen yet, so each step's logic runs in
// the server: a request is one statement (data-modifying CTEs: dedup against
// requests, cancel the pending auto-release of the pickup it closes, record the
// closure, insert its jobs unless the pickup is closed or the id exists, record
// the request with the ids actually inserted); statements of a pipeline run in
// order in one transaction, so a later request of the same batch sees the
// earlier ones (a repeated id is a duplicate, a closed pickup is closed).
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
// deadlock against the server's output.
#include "broker/pg_store.hpp"

#include <libpq-fe.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <functional>
#include <regex>
#include <stdexcept>
#include <utility>

#include <nlohmann/json.hpp>

namespace klynaa::broker {

namespace {

// 1: first layout (the SQLite store's version 2, plus lease).
constexpr int schema_version = 1;

// Any constant: serialises first-time schema creation between brokers.
constexpr const char* init_lock = "SELECT pg_advisory_xact_lock(7236982611093125)";

const char* const schema_sql = R"sql(
CREATE TABLE IF NOT EXISTS klynaa.meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS klynaa.requests(
  id TEXT PRIMARY KEY, op INTEGER NOT NULL, type TEXT NOT NULL, ts_ms BIGINT NOT NULL,
  accepted_ms BIGINT NOT NULL, jobs JSONB NOT NULL);
CREATE TABLE IF NOT EXISTS klynaa.jobs(
  id TEXT PRIMARY KEY, request_id TEXT NOT NULL, function TEXT NOT NULL, data TEXT NOT NULL,
  okey TEXT NOT NULL, seq BIGINT NOT NULL, state INTEGER NOT NULL, due_ms BIGINT NOT NULL,
  attempts BIGINT NOT NULL, ts_ms BIGINT NOT NULL, created_ms BIGINT NOT NULL,
  updated_ms BIGINT NOT NULL, auto_release BOOLEAN NOT NULL,
  last_error TEXT NOT NULL DEFAULT '', result TEXT NOT NULL DEFAULT '',
  attempt_base BIGINT NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS jobs_unfinished ON klynaa.jobs(seq) WHERE state < 3;
CREATE INDEX IF NOT EXISTS jobs_dead ON klynaa.jobs(updated_ms) WHERE state = 4;
CREATE INDEX IF NOT EXISTS jobs_finished ON klynaa.jobs(updated_ms) WHERE state IN (3, 5);
CREATE INDEX IF NOT EXISTS requests_accepted ON klynaa.requests(accepted_ms);
CREATE INDEX IF NOT EXISTS jobs_auto_release ON klynaa.jobs(okey) WHERE auto_release AND state < 3;
CREATE TABLE IF NOT EXISTS klynaa.closed_pickups(pickup_id BIGINT PRIMARY KEY, closed_ms BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS klynaa.attempts(
  job_id TEXT NOT NULL, attempt BIGINT NOT NULL, node TEXT NOT NULL, outcome TEXT NOT NULL,
  error TEXT NOT NULL, duration_ms BIGINT NOT NULL, at_ms BIGINT NOT NULL,
  PRIMARY KEY(job_id, attempt));
CREATE TABLE IF NOT EXISTS klynaa.lease(
  name TEXT PRIMARY KEY, holder TEXT, token BIGINT NOT NULL DEFAULT 0, expires_at TIMESTAMPTZ);
CREATE UNIQUE INDEX IF NOT EXISTS lease_token ON klynaa.lease(name, token);
CREATE OR REPLACE FUNCTION klynaa.check_fence(p_token BIGINT, p_holder TEXT) RETURNS void
LANGUAGE plpgsql AS $fence$
BEGIN
  -- A KEY SHARE lock holds off a takeover (an UPDATE of the token, a key
  -- column: the lease_token index) until this commit ends, but not a renewal (an
  -- UPDATE of expires_at only), which must never wait for a commit's fsync.
  PERFORM 1 FROM klynaa.lease WHERE name = 'broker' AND token = p_token AND holder = p_holder
    FOR KEY SHARE;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'fenced: the lease is held by another broker' USING ERRCODE = 'KLF01';
  END IF;
END
$fence$;
)sql";

constexpr const char* job_columns =
    "j.id, j.request_id, j.function, j.data, j.okey, j.seq, j.state, j.due_ms, j.attempts, "
    "j.ts_ms, j.created_ms, j.updated_ms, j.auto_release, j.last_error, j.result, j.attempt_base";

// The statements, prepared on every connection. Parameters are sent as text and
// cast in the SQL.
const std::pair<const char*, std::string> statements[] = {
    // The jobs a request stored, as stored now (a duplicate's `existing`). Sent
    // before apply_request, so it finds only a request accepted earlier.
    {"request_jobs",
     std::string("SELECT ") + job_columns +
         " FROM jsonb_array_elements_text((SELECT jobs FROM klynaa.requests WHERE id = $1::text))"
         " WITH ORDINALITY AS u(id, n) JOIN klynaa.jobs j ON j.id = u.id ORDER BY u.n"},
    // One request: sqlite_store's apply_request in one statement. Returns the
    // first request's op and job ids (null unless a duplicate), the ordinals in
    // $8 of the jobs inserted, and the auto-releases cancelled.
    {"apply_request", R"sql(
WITH dup AS (SELECT op, jobs FROM klynaa.requests WHERE id = $1::text),
cancel AS (
  UPDATE klynaa.jobs SET state = 5, updated_ms = $7::bigint
   WHERE $6::bigint IS NOT NULL AND NOT EXISTS (SELECT 1 FROM dup)
     AND okey = 'pickup:' || $6::bigint AND auto_release AND state < 3 AND state <> 1
  RETURNING id),
closing AS (
  INSERT INTO klynaa.closed_pickups(pickup_id, closed_ms)
  SELECT $6::bigint, $7::bigint WHERE $6::bigint IS NOT NULL AND NOT EXISTS (SELECT 1 FROM dup)
  ON CONFLICT DO NOTHING),
cand AS (
  SELECT e.n, e.j FROM jsonb_array_elements($8::jsonb) WITH ORDINALITY AS e(j, n)
   WHERE NOT EXISTS (SELECT 1 FROM dup)
     AND NOT ((e.j->>'pickup') IS NOT NULL AND
              ((e.j->>'pickup')::bigint IS NOT DISTINCT FROM $6::bigint OR
               EXISTS (SELECT 1 FROM klynaa.closed_pickups p
                        WHERE p.pickup_id = (e.j->>'pickup')::bigint)))),
ins AS (
  INSERT INTO klynaa.jobs(id, request_id, function, data, okey, seq, state, due_ms, attempts, ts_ms,
                          created_ms, updated_ms, auto_release, last_error, result, attempt_base)
  SELECT j->>'id', j->>'request_id', j->>'function', j->>'data', j->>'okey', (j->>'seq')::bigint,
         (j->>'state')::int, (j->>'due_ms')::bigint, (j->>'attempts')::bigint,
         (j->>'ts_ms')::bigint, (j->>'created_ms')::bigint, $7::bigint,
         (j->>'auto_release')::boolean, j->>'last_error', j->>'result',
         (j->>'attempt_base')::bigint
    FROM cand ORDER BY n
  ON CONFLICT (id) DO NOTHING
  RETURNING id),
created AS (SELECT i.id, (SELECT min(c.n) FROM cand c WHERE c.j->>'id' = i.id) AS n FROM ins i),
req AS (
  INSERT INTO klynaa.requests(id, op, type, ts_ms, accepted_ms, jobs)
  SELECT $1::text, $2::int, $3::text, $4::bigint, $5::bigint,
         COALESCE((SELECT jsonb_agg(id ORDER BY n) FROM created), '[]'::jsonb)
   WHERE NOT EXISTS (SELECT 1 FROM dup))
SELECT (SELECT op FROM dup), (SELECT jobs::text FROM dup),
       COALESCE((SELECT jsonb_agg(n ORDER BY n) FROM created), '[]'::jsonb)::text,
       COALESCE((SELECT jsonb_agg(id ORDER BY id) FROM cancel), '[]'::jsonb)::text
)sql"},
    {"update_job",
     "UPDATE klynaa.jobs SET state = $2::int, attempts = $3::bigint, due_ms = $4::bigint, "
     "seq = $5::bigint, last_error = $6::text, result = $7::text, updated_ms = $8::bigint "
     "WHERE id = $1::text"},
    {"insert_attempt",
     "INSERT INTO klynaa.attempts(job_id, attempt, node, outcome, error, duration_ms, at_ms) "
     "VALUES($1::text, $2::bigint, $3::text, $4::text, $5::text, $6::bigint, $7::bigint) "
     "ON CONFLICT (job_id, attempt) DO UPDATE SET node = EXCLUDED.node, outcome = EXCLUDED.outcome, "
     "error = EXCLUDED.error, duration_ms = EXCLUDED.duration_ms, at_ms = EXCLUDED.at_ms"},
    {"insert_job",
     "INSERT INTO klynaa.jobs(id, request_id, function, data, okey, seq, state, due_ms, attempts, "
     "ts_ms, created_ms, updated_ms, auto_release, last_error, result, attempt_base) "
     "VALUES($1::text, $2::text, $3::text, $4::text, $5::text, $6::bigint, $7::int, $8::bigint, "
     "$9::bigint, $10::bigint, $11::bigint, $12::bigint, $13::boolean, $14::text, $15::text, "
     "$16::bigint) ON CONFLICT (id) DO NOTHING"},
    // Retention, one chunk: finished jobs with their history, then (next
    // statement, so it sees them gone) old requests none of whose jobs is left.
    {"prune_jobs", R"sql(
WITH victims AS (SELECT id FROM klynaa.jobs WHERE state IN (3, 5) AND updated_ms < $1::bigint
                  ORDER BY updated_ms LIMIT $2::bigint),
gone_attempts AS (DELETE FROM klynaa.attempts WHERE job_id IN (SELECT id FROM victims)),
gone AS (DELETE FROM klynaa.jobs WHERE id IN (SELECT id FROM victims) RETURNING 1)
SELECT count(*) FROM gone
)sql"},
    {"prune_requests", R"sql(
WITH gone AS (
  DELETE FROM klynaa.requests WHERE id IN (
    SELECT r.id FROM klynaa.requests r WHERE r.accepted_ms < $1::bigint AND NOT EXISTS (
      SELECT 1 FROM jsonb_array_elements_text(r.jobs) e(id) JOIN klynaa.jobs j ON j.id = e.id)
    ORDER BY r.accepted_ms LIMIT $2::bigint)
  RETURNING 1)
SELECT count(*) FROM gone
)sql"},
    // Dead-letter replay: $1 the ids (a JSON array) or null for the oldest $2.
    {"replay", std::string(R"sql(
WITH d AS (SELECT id, seq FROM klynaa.jobs
            WHERE state = 4 AND ($1::jsonb IS NULL OR id IN (SELECT jsonb_array_elements_text($1::jsonb)))
            ORDER BY seq, id LIMIT $2::bigint),
n AS (SELECT id, $3::bigint + row_number() OVER (ORDER BY seq, id) - 1 AS new_seq FROM d),
j AS (UPDATE klynaa.jobs x SET state = 0, seq = n.new_seq, due_ms = $4::bigint,
                               updated_ms = $4::bigint, attempt_base = x.attempts
        FROM n WHERE x.id = n.id AND x.state = 4 RETURNING x.*)
SELECT )sql") + job_columns + " FROM j ORDER BY j.seq"},
    {"dead_left", "SELECT EXISTS (SELECT 1 FROM klynaa.jobs WHERE state = 4)"},
    {"purge", R"sql(
WITH d AS (SELECT id FROM klynaa.jobs
            WHERE state = 4 AND ($1::jsonb IS NULL OR id IN (SELECT jsonb_array_elements_text($1::jsonb)))),
gone_attempts AS (DELETE FROM klynaa.attempts WHERE job_id IN (SELECT id FROM d)),
gone AS (DELETE FROM klynaa.jobs WHERE id IN (SELECT id FROM d) AND state = 4
         RETURNING id, updated_ms)
SELECT id FROM gone ORDER BY updated_ms, id
)sql"},
    {"probe",
     "INSERT INTO klynaa.meta(key, value) VALUES('last_probe', $1::text) "
     "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value"},
    {"fence", "SELECT klynaa.check_fence($1::bigint, $2::text)"},
    // Renewal by the holder: expires_at only (no key column), so it takes a
    // lock that fenced commits do not hold it off with (check_fence).
    {"renew_lease",
     "UPDATE klynaa.lease SET expires_at = now() + $2::bigint * interval '1 millisecond' "
     "WHERE name = 'broker' AND holder = $1::text RETURNING token"},
    {"lease", R"sql(
INSERT INTO klynaa.lease AS l (name, holder, token, expires_at)
VALUES ('broker', $1::text, 1, now() + $2::bigint * interval '1 millisecond')
ON CONFLICT (name) DO UPDATE
   SET token = CASE WHEN l.holder = EXCLUDED.holder THEN l.token ELSE l.token + 1 END,
       holder = EXCLUDED.holder, expires_at = EXCLUDED.expires_at
 WHERE l.holder = EXCLUDED.holder OR l.expires_at IS NULL OR l.expires_at <= now()
RETURNING token
)sql"},
    {"lease_holder", "SELECT COALESCE(holder, ''), token FROM klynaa.lease WHERE name = 'broker'"},
    {"release_lease",
     "UPDATE klynaa.lease SET expires_at = now() WHERE name = 'broker' AND holder = $1::text AND token = $2::bigint"},
    {"find_job", std::string("SELECT ") + job_columns + " FROM klynaa.jobs j WHERE j.id = $1::text"},
    {"load", std::string("SELECT ") + job_columns + " FROM klynaa.jobs j WHERE j.state < 3 ORDER BY j.seq"},
    {"max_seq", "SELECT COALESCE(MAX(seq), 0) FROM klynaa.jobs"},
    {"list_jobs", std::string("SELECT ") + job_columns +
                      " FROM klynaa.jobs j WHERE j.state = $1::int ORDER BY j.updated_ms DESC LIMIT $2::bigint"},
    {"history",
     "SELECT attempt, node, outcome, error, duration_ms, at_ms FROM klynaa.attempts "
     "WHERE job_id = $1::text ORDER BY attempt"},
    {"count", "SELECT function, state, COUNT(*) FROM klynaa.jobs GROUP BY function, state"},
};

int64_t now_ms() {
  using namespace std::chrono;
  return duration_cast<milliseconds>(system_clock::now().time_since_epoch()).count();
}

/// Thrown inside this file only; the public calls turn it into a store_error.
struct pg_failure : std::runtime_error {
  using std::runtime_error::runtime_error;
};

/// libpq's messages end in newlines and indent their second line: one line.
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

struct result_deleter {
  void operator()(PGresult* r) const { PQclear(r); }
};
using result_ptr = std::unique_ptr<PGresult, result_deleter>;

/// Text parameters for one statement (null for an absent value).
class params {
 public:
  params& add(const std::string& v) { values_.emplace_back(v); return *this; }
  params& add(const char* v) { values_.emplace_back(std::string(v)); return *this; }
  params& add(int64_t v) { values_.emplace_back(std::to_string(v)); return *this; }
  params& add(int v) { return add(static_cast<int64_t>(v)); }
  params& add(bool v) { values_.emplace_back(std::string(v ? "true" : "false")); return *this; }
  params& null() { values_.emplace_back(std::nullopt); return *this; }
  template <class T>
  params& add(const std::optional<T>& v) { return v ? add(*v) : null(); }
  int size() const { return static_cast<int>(values_.size()); }
  /// Valid while this object lives; libpq copies the values when sending.
  std::vector<const char*> pointers() const {
    std::vector<const char*> out;
    for (auto& v : values_) out.push_back(v ? v->c_str() : nullptr);
    return out;
  }

 private:
  std::vector<std::optional<std::string>> values_;
};

int64_t i64(const PGresult* r, int row, int col) {
  return std::strtoll(PQgetvalue(r, row, col), nullptr, 10);
}
std::string text(const PGresult* r, int row, int col) {
  return std::string(PQgetvalue(r, row, col), static_cast<size_t>(PQgetlength(r, row, col)));
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

/// As sqlite_store's pickup_of: the pickup of "pickup:N", else -1.
int64_t pickup_of(const std::string& okey) {
  constexpr const char prefix[] = "pickup:";
  if (okey.rfind(prefix, 0) != 0) return -1;
  return std::stoll(okey.substr(sizeof(prefix) - 1));
}

/// A request's candidate jobs as the JSON array apply_request reads.
std::string jobs_param(const std::vector<job_record>& jobs, int64_t now) {
  auto arr = nlohmann::json::array();
  for (auto& j : jobs) {
    nlohmann::json o = {{"id", j.id},
                        {"request_id", j.request_id},
                        {"function", j.function},
                        {"data", j.data_json},
                        {"okey", j.ordering_key},
                        {"seq", j.seq},
                        {"state", static_cast<int>(j.state)},
                        {"due_ms", j.due_ms},
                        {"attempts", j.attempts},
                        {"ts_ms", j.ts_ms},
                        {"created_ms", j.created_ms ? j.created_ms : now},
                        {"auto_release", j.auto_release},
                        {"last_error", j.last_error_json},
                        {"result", j.result_json},
                        {"attempt_base", j.attempt_base}};
    // Only an auto-release checks whether its pickup is closed (as in SQLite).
    if (j.auto_release) o["pickup"] = pickup_of(j.ordering_key);
    arr.push_back(std::move(o));
  }
  return arr.dump();
}

std::vector<std::string> string_array(const std::string& json_text) {
  std::vector<std::string> out;
  auto v = nlohmann::json::parse(json_text, nullptr, false);
  if (v.is_array())
    for (auto& e : v)
      if (e.is_string()) out.push_back(e.get<std::string>());
  return out;
}

}  // namespace

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

struct pg_store::impl {
  pg_options opts;
  std::string shown_url;  ///< masked
  std::string password;   ///< the URL's, to scrub from any message
  PGconn* conn = nullptr;
  std::string holder;     ///< of the last lease acquired
  std::optional<int64_t> fence_token;

  explicit impl(pg_options o) : opts(std::move(o)), shown_url(mask_pg_url(opts.url)) {
    char* perr = nullptr;
    if (PQconninfoOption* info = PQconninfoParse(opts.url.c_str(), &perr)) {
      for (auto* o = info; o->keyword; ++o)
        if (std::string(o->keyword) == "password" && o->val) password = o->val;
      PQconninfoFree(info);
    }
    PQfreemem(perr);
  }
  ~impl() { disconnect(); }

  /// Every message leaves through here: it names store.url and never the password.
  std::string message(const std::string& what) const {
    std::string m = "store.url " + shown_url + ": " + what;
    if (password.size() >= 1)
      for (size_t p; (p = m.find(password)) != std::string::npos;) m.replace(p, password.size(), "****");
    return m;
  }

  void disconnect() {
    if (conn) PQfinish(conn);
    conn = nullptr;
  }

  // --- connection ----------------------------------------------------------

  /// Connects and sets the session up; `init` also creates or checks the schema.
  void connect(bool init) {
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
    for (auto& [name, sql] : statements) {
      result_ptr r(PQprepare(conn, name, sql.c_str(), 0, nullptr));
      if (PQresultStatus(r.get()) != PGRES_COMMAND_OK)
        throw pg_failure(std::string("prepare ") + name + ": " + result_error(r.get()));
    }
  }

  bool connected() const { return conn && PQstatus(conn) == CONNECTION_OK; }

  /// Reconnects when the connection was lost; false and `err` when it cannot.
  bool ensure_connected(store_error* err) {
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

  result_ptr exec(const std::string& sql) {
    result_ptr r(PQexec(conn, sql.c_str()));
    auto st = PQresultStatus(r.get());
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) throw pg_failure(result_error(r.get()));
    return r;
  }

  std::optional<int> stored_version() {
    auto r = exec("SELECT to_regclass('klynaa.meta') IS NOT NULL");
    if (text(r.get(), 0, 0) != "t") return std::nullopt;
    auto v = exec("SELECT value FROM klynaa.meta WHERE key = 'schema_version'");
    if (PQntuples(v.get()) == 0) return std::nullopt;
    return std::stoi(text(v.get(), 0, 0));
  }

  static void refuse_newer(int v) {
    if (v > schema_version)
      throw pg_failure("the store has schema version " + std::to_string(v) +
                       ", newer than this klynaa understands (" + std::to_string(schema_version) +
                       "); upgrade klynaa");
  }

  void create_or_check_schema() {
    try {
      exec("BEGIN");
      exec(init_lock);
      if (auto v = stored_version()) {
        refuse_newer(*v);  // older versions: none yet (1 is the first)
      } else {
        // CREATE SCHEMA IF NOT EXISTS needs CREATE on the database even when the
        // schema exists: only ask for it the first time.
        auto has = exec("SELECT 1 FROM pg_namespace WHERE nspname = 'klynaa'");
        if (PQntuples(has.get()) == 0) exec("CREATE SCHEMA klynaa");
        exec(schema_sql);
        exec("INSERT INTO klynaa.meta(key, value) VALUES('schema_version', '" +
             std::to_string(schema_version) + "') ON CONFLICT (key) DO NOTHING");
      }
      exec("COMMIT");
    } catch (...) {
      if (conn) PQclear(PQexec(conn, "ROLLBACK"));
      throw;
    }
  }

  void check_version_read_only() {
    auto v = stored_version();
    if (!v) throw pg_failure("no klynaa store there yet (a broker creates it on its first start)");
    refuse_newer(*v);
  }

  // --- reads -----------------------------------------------------------------

  /// One prepared statement outside the pipeline. Throws pg_failure (a
  /// std::runtime_error naming store.url) when it fails, as the SQLite store's
  /// reads do; a lost connection is dropped, so the next call reconnects.
  result_ptr query(const char* name, const params& p) {
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

  // --- the commit pipeline -----------------------------------------------------

  /// What to do with the result of each queued statement, in order.
  using handler = std::function<void(const PGresult*)>;

  void send(const char* name, const params& p, handler h, std::vector<handler>& queue) {
    auto ptrs = p.pointers();
    if (!PQsendQueryPrepared(conn, name, p.size(), ptrs.data(), nullptr, nullptr, 0))
      throw pg_failure(one_line(PQerrorMessage(conn)));
    queue.push_back(std::move(h));
  }
  void send_sql(const char* sql, std::vector<handler>& queue) {
    if (!PQsendQueryParams(conn, sql, 0, nullptr, nullptr, nullptr, nullptr, 0))
      throw pg_failure(one_line(PQerrorMessage(conn)));
    queue.push_back([](const PGresult*) {});
  }

  void queue_batch(const batch& b, int64_t now, commit_outcome& out, std::vector<handler>& q) {
    send_sql("BEGIN", q);
    if (fence_token) send("fence", params().add(*fence_token).add(holder), {}, q);
    out.requests.resize(b.requests.size());
    for (size_t i = 0; i < b.requests.size(); ++i) queue_request(b.requests[i], now, out.requests[i], q);
    for (auto& u : b.updates) {
      send("update_job", params().add(u.id).add(static_cast<int>(u.state)).add(u.attempts).add(u.due_ms)
               .add(u.seq).add(u.last_error_json).add(u.result_json).add(now), {}, q);
      if (!u.outcome.empty())
        send("insert_attempt", params().add(u.id).add(u.attempts).add(u.node).add(u.outcome)
                 .add(u.last_error_json).add(u.duration_ms).add(now), {}, q);
    }
    out.children_inserted.assign(b.children.size(), false);
    for (size_t i = 0; i < b.children.size(); ++i) {
      auto& c = b.children[i];
      send("insert_job", params().add(c.id).add(c.request_id).add(c.function).add(c.data_json)
               .add(c.ordering_key).add(c.seq).add(static_cast<int>(c.state)).add(c.due_ms)
               .add(c.attempts).add(c.ts_ms).add(c.created_ms ? c.created_ms : now).add(now)
               .add(c.auto_release).add(c.last_error_json).add(c.result_json).add(c.attempt_base),
           [&out, i](const PGresult* r) { out.children_inserted[i] = std::string(PQcmdTuples(const_cast<PGresult*>(r))) == "1"; },
           q);
    }
    if (b.prune_before_ms) queue_prune(*b.prune_before_ms, b.prune_limit, out, q);
    if (!b.replay_ids.empty() || b.replay_all) queue_replay(b, now, out, q);
    if (!b.purge_ids.empty() || b.purge_all) queue_purge(b, out, q);
    if (b.probe) send("probe", params().add(now), {}, q);
    send_sql("COMMIT", q);
  }

  void queue_request(const new_request& r, int64_t now, request_outcome& out, std::vector<handler>& q) {
    send("request_jobs", params().add(r.id), [&out](const PGresult* res) {
      for (int i = 0; i < PQntuples(res); ++i) out.existing.push_back(read_job(res, i));
    }, q);
    params p;
    p.add(r.id).add(r.op).add(r.type).add(r.ts_ms).add(r.accepted_ms).add(r.closes_pickup).add(now)
        .add(jobs_param(r.jobs, now));
    send("apply_request", p, [&out, &r](const PGresult* res) {
      if (!PQgetisnull(res, 0, 0)) {
        out.duplicate = true;
        out.original_op = static_cast<int>(i64(res, 0, 0));
        out.job_ids = string_array(text(res, 0, 1));
        return;
      }
      out.existing.clear();  // not a duplicate: nothing was there before
      auto ordinals = nlohmann::json::parse(text(res, 0, 2));
      for (auto& n : ordinals) {
        const auto index = n.get<size_t>() - 1;
        out.job_ids.push_back(r.jobs.at(index).id);
        out.created.push_back(static_cast<uint32_t>(index));
      }
      out.cancelled = string_array(text(res, 0, 3));
    }, q);
  }

  void queue_prune(int64_t before_ms, int64_t limit, commit_outcome& out, std::vector<handler>& q) {
    params p;
    p.add(before_ms).add(limit);
    send("prune_jobs", p, [&out, limit](const PGresult* r) {
      const int64_t jobs = i64(r, 0, 0);
      out.pruned += jobs;
      out.prune_more = out.prune_more || jobs >= limit;
    }, q);
    send("prune_requests", p, [&out, limit](const PGresult* r) {
      const int64_t requests = i64(r, 0, 0);
      out.pruned += requests;
      out.prune_more = out.prune_more || requests >= limit;
    }, q);
  }

  void queue_replay(const batch& b, int64_t now, commit_outcome& out, std::vector<handler>& q) {
    params p;
    if (b.replay_all)
      p.null().add(b.replay_limit);
    else
      p.add(nlohmann::json(b.replay_ids).dump()).null();
    p.add(b.replay_seq_base).add(now);
    send("replay", p, [&out](const PGresult* r) {
      for (int i = 0; i < PQntuples(r); ++i) out.replayed.push_back(read_job(r, i));
    }, q);
    // Dead jobs left after replaying the oldest replay_limit: there were more.
    if (b.replay_all)
      send("dead_left", params(), [&out](const PGresult* r) { out.replay_more = text(r, 0, 0) == "t"; }, q);
  }

  void queue_purge(const batch& b, commit_outcome& out, std::vector<handler>& q) {
    params p;
    if (b.purge_all)
      p.null();
    else
      p.add(nlohmann::json(b.purge_ids).dump());
    send("purge", p, [&out, &b](const PGresult* r) {
      for (int i = 0; i < PQntuples(r); ++i) out.purged.push_back(text(r, i, 0));
      if (b.purge_all) return;
      // In the order asked for, as the SQLite store answers.
      auto pos = [&b](const std::string& id) {
        return std::find(b.purge_ids.begin(), b.purge_ids.end(), id) - b.purge_ids.begin();
      };
      std::stable_sort(out.purged.begin(), out.purged.end(),
                       [&](const std::string& x, const std::string& y) { return pos(x) < pos(y); });
    }, q);
  }

  /// Reads the results of the queued statements up to the sync. Returns the
  /// first error (empty when every statement succeeded and COMMIT returned).
  std::string read_pipeline(const std::vector<handler>& q) {
    std::string error;
    size_t idx = 0;
    for (;;) {
      result_ptr r(PQgetResult(conn));
      if (!r) {
        if (PQstatus(conn) != CONNECTION_OK) break;
        if (++idx > q.size()) break;  // cannot happen: no sync after the last statement
        continue;
      }
      auto st = PQresultStatus(r.get());
      if (st == PGRES_PIPELINE_SYNC) break;
      if (st == PGRES_FATAL_ERROR || st == PGRES_NONFATAL_ERROR || st == PGRES_BAD_RESPONSE) {
        if (error.empty()) error = result_error(r.get());
      } else if (st == PGRES_PIPELINE_ABORTED) {
        if (error.empty()) error = "pipeline aborted";
      } else if (error.empty() && idx < q.size() && q[idx]) {
        try {
          q[idx](r.get());
        } catch (const std::exception& e) {
          error = std::string("reading a result: ") + e.what();
        }
      }
    }
    if (!connected()) {
      if (error.empty() || error == "pipeline aborted") error = one_line(PQerrorMessage(conn));
      if (error.empty()) error = "the connection was lost";
    }
    return error;
  }

  std::optional<commit_outcome> commit(const batch& b, store_error& err) {
    if (!ensure_connected(&err)) return std::nullopt;
    commit_outcome out;
    std::vector<handler> q;
    std::string error;
    try {
      if (!PQenterPipelineMode(conn)) throw pg_failure(one_line(PQerrorMessage(conn)));
      queue_batch(b, now_ms(), out, q);
      if (!PQpipelineSync(conn)) throw pg_failure(one_line(PQerrorMessage(conn)));
      error = read_pipeline(q);
    } catch (const std::exception& e) {
      // A send failed half-way: the pipeline's state is unknown, drop the connection.
      err.message = message(std::string("commit failed: ") + e.what());
      disconnect();
      return std::nullopt;
    }
    if (!connected()) {
      err.message = message("commit failed, the connection was lost: " + error);
      disconnect();
      return std::nullopt;
    }
    if (!PQexitPipelineMode(conn)) {
      err.message = message("commit failed: " + one_line(PQerrorMessage(conn)));
      disconnect();
      return std::nullopt;
    }
    if (!error.empty()) {
      // An explicit transaction that failed stays open (aborted) after the sync.
      if (PQtransactionStatus(conn) != PQTRANS_IDLE) PQclear(PQexec(conn, "ROLLBACK"));
      err.message = message(error);
      return std::nullopt;
    }
    return out;
  }
};

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

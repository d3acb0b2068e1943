// SQLite implementation of the store (store.hpp): WAL, synchronous=FULL, one
// transaction per batch, prepared statements reused across batches.
#include <sqlite3.h>

#include <algorithm>
#include <chrono>
#include <map>
#include <mutex>
#include <stdexcept>

#include <nlohmann/json.hpp>

#include "broker/store.hpp"

namespace klynaa::broker {

const char* to_string(job_state s) {
  switch (s) {
    case job_state::ready: return "ready";
    case job_state::running: return "running";
    case job_state::retry_wait: return "retry_wait";
    case job_state::done: return "done";
    case job_state::dead: return "dead";
    case job_state::cancelled: return "cancelled";
  }
  return "unknown";
}

namespace {

// 1: first layout. 2: jobs.attempt_base (replays from the dead-letter queue).
// 3: jobs.ok_node, ok_duration_ms, ok_at_ms: a successful attempt is kept on its
//    job's row instead of an attempts row (one B-tree insert less per job);
//    history_json() shows it as the last entry, as before.
constexpr int schema_version = 3;

const char* const schema_sql = R"sql(
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS requests(
  id TEXT PRIMARY KEY, op INTEGER NOT NULL, type TEXT NOT NULL, ts_ms INTEGER NOT NULL,
  accepted_ms INTEGER NOT NULL, jobs TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS jobs(
  id TEXT PRIMARY KEY, request_id TEXT NOT NULL, function TEXT NOT NULL, data TEXT NOT NULL,
  okey TEXT NOT NULL, seq INTEGER NOT NULL, state INTEGER NOT NULL, due_ms INTEGER NOT NULL,
  attempts INTEGER NOT NULL, ts_ms INTEGER NOT NULL, created_ms INTEGER NOT NULL,
  updated_ms INTEGER NOT NULL, auto_release INTEGER NOT NULL,
  last_error TEXT NOT NULL DEFAULT '', result TEXT NOT NULL DEFAULT '',
  attempt_base INTEGER NOT NULL DEFAULT 0, ok_node TEXT NOT NULL DEFAULT '',
  ok_duration_ms INTEGER NOT NULL DEFAULT 0, ok_at_ms INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS jobs_unfinished ON jobs(seq) WHERE state < 3;
CREATE INDEX IF NOT EXISTS jobs_dead ON jobs(updated_ms) WHERE state = 4;
CREATE INDEX IF NOT EXISTS jobs_finished ON jobs(updated_ms) WHERE state IN (3, 5);
CREATE INDEX IF NOT EXISTS requests_accepted ON requests(accepted_ms);
CREATE INDEX IF NOT EXISTS jobs_auto_release ON jobs(okey) WHERE auto_release = 1 AND state < 3;
CREATE TABLE IF NOT EXISTS closed_pickups(pickup_id INTEGER PRIMARY KEY, closed_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS attempts(
  job_id TEXT NOT NULL, attempt INTEGER NOT NULL, node TEXT NOT NULL, outcome TEXT NOT NULL,
  error TEXT NOT NULL, duration_ms INTEGER NOT NULL, at_ms INTEGER NOT NULL,
  PRIMARY KEY(job_id, attempt)) WITHOUT ROWID;
)sql";

int64_t now_ms() {
  using namespace std::chrono;
  return duration_cast<milliseconds>(system_clock::now().time_since_epoch()).count();
}

/// Thrown inside this file only; commit() turns it into a store_error.
struct sqlite_failure : std::runtime_error {
  using std::runtime_error::runtime_error;
};

/// A prepared statement, reset after each use.
class stmt {
 public:
  stmt() = default;
  stmt(sqlite3* db, const char* sql) : db_(db) {
    if (sqlite3_prepare_v3(db, sql, -1, SQLITE_PREPARE_PERSISTENT, &s_, nullptr) != SQLITE_OK)
      throw sqlite_failure(std::string("prepare: ") + sqlite3_errmsg(db));
  }
  stmt(const stmt&) = delete;
  stmt& operator=(const stmt&) = delete;
  stmt(stmt&& o) noexcept : db_(o.db_), s_(o.s_) { o.s_ = nullptr; }
  stmt& operator=(stmt&& o) noexcept {
    std::swap(db_, o.db_);
    std::swap(s_, o.s_);
    return *this;
  }
  ~stmt() { sqlite3_finalize(s_); }

  stmt& bind(int i, int64_t v) { check(sqlite3_bind_int64(s_, i, v)); return *this; }
  /// Binds without copying (SQLITE_STATIC): `v` must outlive the step, hence no temporaries.
  stmt& bind(int i, const std::string& v) {
    check(sqlite3_bind_text(s_, i, v.data(), static_cast<int>(v.size()), SQLITE_STATIC));
    return *this;
  }
  stmt& bind(int i, std::string&& v) = delete;
  /// Steps once: true when a row is available.
  bool step() {
    int rc = sqlite3_step(s_);
    if (rc == SQLITE_ROW) return true;
    if (rc == SQLITE_DONE) return false;
    std::string msg = sqlite3_errmsg(db_);
    reset();  // else the failed statement refuses every later bind (SQLITE_MISUSE)
    throw sqlite_failure(msg);
  }
  void run() {
    step();
    reset();
  }
  void reset() {
    sqlite3_reset(s_);
    sqlite3_clear_bindings(s_);
  }
  int64_t i64(int col) const { return sqlite3_column_int64(s_, col); }
  std::string text(int col) const {
    auto p = reinterpret_cast<const char*>(sqlite3_column_text(s_, col));
    return p ? std::string(p, static_cast<size_t>(sqlite3_column_bytes(s_, col))) : std::string();
  }

 private:
  void check(int rc) {
    if (rc != SQLITE_OK) throw sqlite_failure(sqlite3_errmsg(db_));
  }
  sqlite3* db_ = nullptr;
  sqlite3_stmt* s_ = nullptr;
};

constexpr const char* job_columns =
    "id, request_id, function, data, okey, seq, state, due_ms, attempts, ts_ms, created_ms, "
    "updated_ms, auto_release, last_error, result, attempt_base";

job_record read_job(const stmt& s) {
  job_record j;
  j.id = s.text(0);
  j.request_id = s.text(1);
  j.function = s.text(2);
  j.data_json = s.text(3);
  j.ordering_key = s.text(4);
  j.seq = s.i64(5);
  j.state = static_cast<job_state>(s.i64(6));
  j.due_ms = s.i64(7);
  j.attempts = s.i64(8);
  j.ts_ms = s.i64(9);
  j.created_ms = s.i64(10);
  j.updated_ms = s.i64(11);
  j.auto_release = s.i64(12) != 0;
  j.last_error_json = s.text(13);
  j.result_json = s.text(14);
  j.attempt_base = s.i64(15);
  return j;
}

class sqlite_store final : public store {
 public:
  sqlite_store(const sqlite_options& opts) {
    int flags = opts.read_only ? SQLITE_OPEN_READONLY : (SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE);
    flags |= SQLITE_OPEN_NOMUTEX;
    if (sqlite3_open_v2(opts.path.c_str(), &db_, flags, nullptr) != SQLITE_OK) {
      std::string msg = db_ ? sqlite3_errmsg(db_) : "out of memory";
      sqlite3_close(db_);
      db_ = nullptr;
      throw sqlite_failure("cannot open " + opts.path + ": " + msg);
    }
    sqlite3_busy_timeout(db_, 5000);
    try {
      if (!opts.read_only) {
        exec("PRAGMA journal_mode=WAL");
        exec(opts.synchronous_full ? "PRAGMA synchronous=FULL" : "PRAGMA synchronous=NORMAL");
        exec(schema_sql);
      }
      check_version(!opts.read_only);  // readers too: a newer layout would be misread
      exec("PRAGMA temp_store=MEMORY");
      exec("PRAGMA cache_size=-65536");
      prepare();
    } catch (...) {
      // No destructor runs for a half-built object: close here, or the handle leaks.
      stmts_.clear();
      sqlite3_close(db_);
      db_ = nullptr;
      throw;
    }
  }

  ~sqlite_store() override {
    stmts_.clear();
    sqlite3_close(db_);
  }

  std::optional<commit_outcome> commit(const batch& b, store_error& err) override {
    try {
      exec("BEGIN IMMEDIATE");
      commit_outcome out;
      out.requests.reserve(b.requests.size());
      for (auto& r : b.requests) out.requests.push_back(apply_request(r));
      for (auto& u : b.updates) apply_update(u);
      out.children_inserted.reserve(b.children.size());
      for (auto& c : b.children) out.children_inserted.push_back(insert_job(c));
      if (b.prune_before_ms) prune_chunk(*b.prune_before_ms, b.prune_limit, out);
      if (!b.replay_ids.empty() || b.replay_all) replay_dead(b, out);
      if (!b.purge_ids.empty() || b.purge_all) purge_dead(b, out);
      if (b.probe) {
        const std::string at = std::to_string(now_ms());  // bind() keeps a pointer: no temporary
        get("probe").bind(1, at).run();
      }
      exec("COMMIT");
      return out;
    } catch (const std::exception& e) {
      err.message = e.what();
      for (auto& [name, s] : stmts_) s.reset();  // none may hold the transaction open
      sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
      return std::nullopt;
    }
  }

  bool load_unfinished(const std::function<void(job_record&&)>& sink, store_error& err) override {
    try {
      auto& s = get("load");
      while (s.step()) sink(read_job(s));
      s.reset();
      return true;
    } catch (const std::exception& e) {
      err.message = e.what();
      return false;
    }
  }

  int64_t max_seq() override {
    auto& s = get("max_seq");
    int64_t v = s.step() ? s.i64(0) : 0;
    s.reset();
    return v;
  }

  std::optional<job_record> find_job(const std::string& id) override {
    auto& s = get("find_job");
    s.bind(1, id);
    std::optional<job_record> r;
    if (s.step()) r = read_job(s);
    s.reset();
    return r;
  }

  std::vector<job_record> list_jobs(job_state state, size_t limit) override {
    auto& s = get("list_jobs");
    s.bind(1, static_cast<int64_t>(state)).bind(2, static_cast<int64_t>(limit));
    std::vector<job_record> out;
    while (s.step()) out.push_back(read_job(s));
    s.reset();
    return out;
  }

  std::string history_json(const std::string& id) override {
    auto& s = get("history");
    s.bind(1, id);
    auto arr = nlohmann::json::array();
    while (s.step()) {
      nlohmann::json e = {{"attempt", s.i64(0)}, {"node", s.text(1)}, {"outcome", s.text(2)},
                          {"duration_ms", s.i64(4)}, {"at_ms", s.i64(5)}};
      auto err = s.text(3);
      e["error"] = err.empty() ? nlohmann::json() : nlohmann::json::parse(err, nullptr, false);
      arr.push_back(std::move(e));
    }
    s.reset();
    auto& ok = get("ok_attempt");  // the successful attempt, kept on the job's row
    ok.bind(1, id);
    if (ok.step()) {
      const int64_t attempt = ok.i64(0);
      if (arr.empty() || arr.back()["attempt"].get<int64_t>() < attempt)
        arr.push_back({{"attempt", attempt}, {"node", ok.text(1)}, {"outcome", "ok"},
                       {"duration_ms", ok.i64(2)}, {"at_ms", ok.i64(3)}, {"error", nullptr}});
    }
    ok.reset();
    return arr.dump();
  }

  std::vector<std::tuple<std::string, job_state, int64_t>> count_by_function() override {
    auto& s = get("count");
    std::vector<std::tuple<std::string, job_state, int64_t>> out;
    while (s.step()) out.emplace_back(s.text(0), static_cast<job_state>(s.i64(1)), s.i64(2));
    s.reset();
    return out;
  }

 private:
  void exec(const char* sql) {
    char* msg = nullptr;
    if (sqlite3_exec(db_, sql, nullptr, nullptr, &msg) != SQLITE_OK) {
      std::string m = msg ? msg : "unknown error";
      sqlite3_free(msg);
      throw sqlite_failure(m);
    }
  }

  bool has_column(const std::string& table, const std::string& column) {
    stmt s(db_, ("SELECT 1 FROM pragma_table_info('" + table + "') WHERE name = '" + column + "'").c_str());
    return s.step();
  }

  void check_version(bool may_write) {
    stmt s(db_, "SELECT value FROM meta WHERE key='schema_version'");
    if (s.step()) {
      int v = std::stoi(s.text(0));
      s.reset();
      if (v > schema_version)
        throw sqlite_failure("the store has schema version " + std::to_string(v) +
                             ", newer than this klynaa understands (" +
                             std::to_string(schema_version) + "); upgrade klynaa");
      if (v < schema_version) {
        if (!may_write)
          throw sqlite_failure("the store has schema version " + std::to_string(v) +
                               "; start the broker once to upgrade it");
        exec("BEGIN IMMEDIATE");
        const char* const added[][2] = {
            {"attempt_base", "INTEGER NOT NULL DEFAULT 0"},  // 2
            {"ok_node", "TEXT NOT NULL DEFAULT ''"},          // 3
            {"ok_duration_ms", "INTEGER NOT NULL DEFAULT 0"},
            {"ok_at_ms", "INTEGER NOT NULL DEFAULT 0"}};
        for (auto& [column, type] : added)
          if (!has_column("jobs", column))
            exec(("ALTER TABLE jobs ADD COLUMN " + std::string(column) + " " + type).c_str());
        exec(("UPDATE meta SET value = '" + std::to_string(schema_version) + "' WHERE key = 'schema_version'").c_str());
        exec("COMMIT");
      }
    } else if (may_write) {
      exec(("INSERT INTO meta(key, value) VALUES('schema_version', '" +
            std::to_string(schema_version) + "')").c_str());
    }
  }

  void prepare() {
    std::string cols = job_columns;
    add("find_request", "SELECT op, jobs FROM requests WHERE id = ?1");
    add("set_request_jobs", "UPDATE requests SET jobs = ?2 WHERE id = ?1");
    add("insert_request",
        "INSERT OR IGNORE INTO requests(id, op, type, ts_ms, accepted_ms, jobs) VALUES(?1, ?2, ?3, ?4, ?5, ?6)");
    add("insert_job", "INSERT OR IGNORE INTO jobs(" + cols +
                          ") VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)");
    add("update_job",
        "UPDATE jobs SET state = ?2, attempts = ?3, due_ms = ?4, seq = ?5, last_error = ?6, "
        "result = ?7, updated_ms = ?8 WHERE id = ?1");
    add("ok_attempt",
        "SELECT attempts, ok_node, ok_duration_ms, ok_at_ms FROM jobs WHERE id = ?1 AND ok_at_ms > 0");
    add("update_job_ok",
        "UPDATE jobs SET state = ?2, attempts = ?3, due_ms = ?4, seq = ?5, last_error = ?6, "
        "result = ?7, updated_ms = ?8, ok_node = ?9, ok_duration_ms = ?10, ok_at_ms = ?8 WHERE id = ?1");
    add("insert_attempt",
        "INSERT OR REPLACE INTO attempts(job_id, attempt, node, outcome, error, duration_ms, at_ms) "
        "VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7)");
    add("is_closed", "SELECT 1 FROM closed_pickups WHERE pickup_id = ?1");
    add("close_pickup", "INSERT OR IGNORE INTO closed_pickups(pickup_id, closed_ms) VALUES(?1, ?2)");
    add("pending_auto_release",
        "SELECT id FROM jobs WHERE okey = ?1 AND auto_release = 1 AND state < 3 AND state <> 1");
    add("cancel_job", "UPDATE jobs SET state = 5, updated_ms = ?2 WHERE id = ?1");
    add("find_job", "SELECT " + cols + " FROM jobs WHERE id = ?1");
    add("load", "SELECT " + cols + " FROM jobs WHERE state < 3 ORDER BY seq");
    add("max_seq", "SELECT COALESCE(MAX(seq), 0) FROM jobs");
    add("list_jobs", "SELECT " + cols + " FROM jobs WHERE state = ?1 ORDER BY updated_ms DESC LIMIT ?2");
    add("history",
        "SELECT attempt, node, outcome, error, duration_ms, at_ms FROM attempts WHERE job_id = ?1 "
        "ORDER BY attempt");
    add("count", "SELECT function, state, COUNT(*) FROM jobs GROUP BY function, state");
    add("dead_oldest", "SELECT " + cols + " FROM jobs WHERE state = 4 ORDER BY seq LIMIT ?1");
    add("dead_ids", "SELECT id FROM jobs WHERE state = 4");
    add("probe", "INSERT OR REPLACE INTO meta(key, value) VALUES('last_probe', ?1)");
    add("replay_job",
        "UPDATE jobs SET state = 0, seq = ?2, due_ms = ?3, updated_ms = ?3, attempt_base = ?4 "
        "WHERE id = ?1 AND state = 4");
    add("purge_attempts", "DELETE FROM attempts WHERE job_id = ?1");
    add("purge_job", "DELETE FROM jobs WHERE id = ?1 AND state = 4");
    const std::string oldest_finished =
        "SELECT id FROM jobs WHERE state IN (3, 5) AND updated_ms < ?1 ORDER BY updated_ms LIMIT ?2";
    add("prune_attempts", "DELETE FROM attempts WHERE job_id IN (" + oldest_finished + ")");
    add("prune_jobs", "DELETE FROM jobs WHERE id IN (" + oldest_finished + ")");
    add("prune_requests",
        "DELETE FROM requests WHERE id IN (SELECT r.id FROM requests r WHERE r.accepted_ms < ?1 AND "
        "NOT EXISTS (SELECT 1 FROM json_each(r.jobs) e JOIN jobs j ON j.id = e.value) "
        "ORDER BY r.accepted_ms LIMIT ?2)");
  }

  void add(const std::string& name, const std::string& sql) {
    stmts_.emplace(name, stmt(db_, sql.c_str()));
  }
  stmt& get(const char* name) {
    auto it = stmts_.find(name);  // std::less<>: no std::string made for the lookup
    if (it == stmts_.end()) throw sqlite_failure(std::string("no prepared statement ") + name);
    return it->second;
  }

  // One chunk of retention: finished jobs (with their history) first, then the
  // dedup keys of old requests none of whose jobs is left.
  void prune_chunk(int64_t before_ms, int64_t limit, commit_outcome& out) {
    get("prune_attempts").bind(1, before_ms).bind(2, limit).run();
    get("prune_jobs").bind(1, before_ms).bind(2, limit).run();
    const int64_t jobs = sqlite3_changes(db_);
    get("prune_requests").bind(1, before_ms).bind(2, limit).run();
    const int64_t requests = sqlite3_changes(db_);
    out.pruned += jobs + requests;
    out.prune_more = jobs >= limit || requests >= limit;
  }

  void replay_dead(const batch& b, commit_outcome& out) {
    std::vector<job_record> dead;
    if (b.replay_all) {
      auto& s = get("dead_oldest");
      s.bind(1, b.replay_limit + 1);
      while (s.step()) dead.push_back(read_job(s));
      s.reset();
      out.replay_more = static_cast<int64_t>(dead.size()) > b.replay_limit;
      if (out.replay_more) dead.resize(static_cast<size_t>(b.replay_limit));
    } else {
      for (auto& id : b.replay_ids)
        if (auto j = find_job(id); j && j->state == job_state::dead) dead.push_back(std::move(*j));
      std::sort(dead.begin(), dead.end(), [](auto& a, auto& c) { return a.seq < c.seq; });
    }
    const int64_t now = now_ms();
    int64_t seq = b.replay_seq_base;
    for (auto& j : dead) {
      j.state = job_state::ready;
      j.seq = seq++;
      j.due_ms = now;
      j.attempt_base = j.attempts;
      j.updated_ms = now;
      get("replay_job").bind(1, j.id).bind(2, j.seq).bind(3, now).bind(4, j.attempt_base).run();
      if (sqlite3_changes(db_) == 1) out.replayed.push_back(std::move(j));  // a named job once
    }
  }

  void purge_dead(const batch& b, commit_outcome& out) {
    std::vector<std::string> ids;
    if (b.purge_all) {
      auto& s = get("dead_ids");
      while (s.step()) ids.push_back(s.text(0));
      s.reset();
    } else {
      for (auto& id : b.purge_ids)
        if (auto j = find_job(id); j && j->state == job_state::dead) ids.push_back(id);
    }
    for (auto& id : ids) {
      get("purge_attempts").bind(1, id).run();
      get("purge_job").bind(1, id).run();
      if (sqlite3_changes(db_) == 1) out.purged.push_back(id);  // a named job once
    }
  }

  request_outcome apply_request(const new_request& r) {
    request_outcome out;
    // Insert first, with the ids of every candidate job: a new id (the common
    // case) costs one B-tree descent, not a lookup and then an insert.
    id_list_.clear();
    append_id_array(id_list_, r.jobs, [](const job_record& j) -> const std::string& { return j.id; });
    get("insert_request").bind(1, r.id).bind(2, r.op).bind(3, r.type).bind(4, r.ts_ms)
        .bind(5, r.accepted_ms).bind(6, id_list_).run();
    auto& find = get("find_request");
    if (sqlite3_changes(db_) == 0 && (find.bind(1, r.id), find.step())) {
      out.duplicate = true;
      out.original_op = static_cast<int>(find.i64(0));
      auto ids = nlohmann::json::parse(find.text(1), nullptr, false);
      find.reset();
      if (ids.is_array())
        for (auto& id : ids)
          if (id.is_string()) out.job_ids.push_back(id.get<std::string>());
      for (auto& id : out.job_ids)
        if (auto j = find_job(id)) out.existing.push_back(std::move(*j));
      return out;
    }
    find.reset();

    const int64_t now = now_ms();
    if (r.closes_pickup) {
      out.cancelled = cancel_auto_release(*r.closes_pickup, now);
      get("close_pickup").bind(1, *r.closes_pickup).bind(2, now).run();
    }
    for (size_t i = 0; i < r.jobs.size(); ++i) {
      auto& j = r.jobs[i];
      if (j.auto_release && pickup_closed(j)) continue;  // confirmed/disputed first: no auto-release
      if (insert_job(j)) {
        out.job_ids.push_back(j.id);
        out.created.push_back(static_cast<uint32_t>(i));
      }
    }
    if (out.created.size() != r.jobs.size()) {  // some were not created: the request lists the ones that were
      id_list_.clear();
      append_id_array(id_list_, out.job_ids, [](const std::string& id) -> const std::string& { return id; });
      get("set_request_jobs").bind(1, r.id).bind(2, id_list_).run();
    }
    return out;
  }

  /// Appends a JSON array of the strings `id_of` gives for `items` (job ids:
  /// plain ASCII in the common case, written without building a JSON value).
  template <class Items, class IdOf>
  static void append_id_array(std::string& out, const Items& items, IdOf id_of) {
    out += '[';
    bool first = true;
    for (auto& item : items) {
      const std::string& id = id_of(item);
      if (!first) out += ',';
      first = false;
      const bool plain = std::all_of(id.begin(), id.end(), [](char c) {
        return c >= 0x20 && c < 0x7f && c != '"' && c != '\\';
      });
      if (plain) {
        out += '"';
        out += id;
        out += '"';
      } else {
        out += nlohmann::json(id).dump();
      }
    }
    out += ']';
  }

  bool pickup_closed(const job_record& j) {
    auto& s = get("is_closed");
    s.bind(1, pickup_of(j.ordering_key));
    bool closed = s.step();
    s.reset();
    return closed;
  }

  static int64_t pickup_of(const std::string& okey) {
    constexpr const char prefix[] = "pickup:";
    if (okey.rfind(prefix, 0) != 0) return -1;
    return std::stoll(okey.substr(sizeof(prefix) - 1));
  }

  std::vector<std::string> cancel_auto_release(int64_t pickup_id, int64_t now) {
    std::vector<std::string> ids;
    const std::string okey = "pickup:" + std::to_string(pickup_id);
    auto& s = get("pending_auto_release");
    s.bind(1, okey);
    while (s.step()) ids.push_back(s.text(0));
    s.reset();
    for (auto& id : ids) get("cancel_job").bind(1, id).bind(2, now).run();
    return ids;
  }

  bool insert_job(const job_record& j) {
    auto& s = get("insert_job");
    const int64_t now = now_ms();
    s.bind(1, j.id).bind(2, j.request_id).bind(3, j.function).bind(4, j.data_json)
        .bind(5, j.ordering_key).bind(6, j.seq).bind(7, static_cast<int64_t>(j.state))
        .bind(8, j.due_ms).bind(9, j.attempts).bind(10, j.ts_ms)
        .bind(11, j.created_ms ? j.created_ms : now).bind(12, now)
        .bind(13, j.auto_release ? 1 : 0).bind(14, j.last_error_json).bind(15, j.result_json)
        .bind(16, j.attempt_base);
    s.run();
    return sqlite3_changes(db_) > 0;
  }

  void apply_update(const job_update& u) {
    const int64_t now = now_ms();
    if (u.outcome == "ok") {  // its history entry lives on the row (ok_attempt)
      get("update_job_ok").bind(1, u.id).bind(2, static_cast<int64_t>(u.state)).bind(3, u.attempts)
          .bind(4, u.due_ms).bind(5, u.seq).bind(6, u.last_error_json).bind(7, u.result_json)
          .bind(8, now).bind(9, u.node).bind(10, u.duration_ms).run();
      return;
    }
    get("update_job").bind(1, u.id).bind(2, static_cast<int64_t>(u.state)).bind(3, u.attempts)
        .bind(4, u.due_ms).bind(5, u.seq).bind(6, u.last_error_json).bind(7, u.result_json)
        .bind(8, now).run();
    if (!u.outcome.empty())
      get("insert_attempt").bind(1, u.id).bind(2, u.attempts).bind(3, u.node).bind(4, u.outcome)
          .bind(5, u.last_error_json).bind(6, u.duration_ms).bind(7, now).run();
  }

  sqlite3* db_ = nullptr;
  std::map<std::string, stmt, std::less<>> stmts_;
  std::string id_list_;  ///< apply_request's bound id list: reused, and alive until the statement ran
};

}  // namespace

int64_t store::prune(int64_t before_ms) {
  int64_t total = 0;
  for (;;) {
    batch b;
    b.prune_before_ms = before_ms;
    store_error err;
    auto out = commit(b, err);
    if (!out) throw std::runtime_error("prune failed: " + err.message);
    total += out->pruned;
    if (!out->prune_more) return total;
  }
}

std::unique_ptr<store> open_sqlite_store(const sqlite_options& opts, store_error& err) {
  // Before SQLite initializes: no global mutex around every allocation to keep
  // memory statistics nobody reads (perf: ~2% of the writer thread).
  static std::once_flag configured;
  std::call_once(configured, [] { sqlite3_config(SQLITE_CONFIG_MEMSTATUS, 0); });
  try {
    return std::make_unique<sqlite_store>(opts);
  } catch (const std::exception& e) {
    err.message = e.what();
    return nullptr;
  }
}

}  // namespace klynaa::broker

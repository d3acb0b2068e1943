// `klynaa store migrate --data-dir D --to URL` (issue 10, docs/deployment.md
// "From SQLite to PostgreSQL"): copies a stopped broker's SQLite store
// (D/broker.db) into an empty PostgreSQL store, table by table, in one
// PostgreSQL transaction (all or nothing). The lease is not copied: the first
// `klynaa broker` started on the target takes it.
//
// Refuses (exit 2, naming what) a data dir that holds a journal store
// (store.backend = "journal": SQLite stores only), a target that holds any
// request, job, attempt or closed pickup, or whose lease a live broker holds; refuses (exit 1) while a
// broker holds D's lock (broker/serve.hpp lock_data_dir). Exit 0 with the counts.
#include <fcntl.h>
#include <sqlite3.h>
#include <sys/file.h>
#include <unistd.h>

#include <libpq-fe.h>

#include <filesystem>
#include <iostream>
#include <stdexcept>

#include "broker/pg_store.hpp"
#include "broker/store.hpp"
#include "cli/commands.hpp"

namespace klynaa::cli {

namespace {

struct migrate_error : std::runtime_error {
  int code;
  migrate_error(int c, const std::string& m) : std::runtime_error(m), code(c) {}
};

/// One SQLite statement; rows read as text (NULL -> nullopt).
class sqlite_rows {
 public:
  sqlite_rows(sqlite3* db, const char* sql) {
    if (sqlite3_prepare_v2(db, sql, -1, &st_, nullptr) != SQLITE_OK)
      throw migrate_error(1, std::string("reading broker.db: ") + sqlite3_errmsg(db));
  }
  ~sqlite_rows() { sqlite3_finalize(st_); }
  bool next() {
    int rc = sqlite3_step(st_);
    if (rc == SQLITE_ROW) return true;
    if (rc != SQLITE_DONE) throw migrate_error(1, "reading broker.db: step failed");
    return false;
  }
  int columns() const { return sqlite3_column_count(st_); }
  std::optional<std::string> text(int i) const {
    if (sqlite3_column_type(st_, i) == SQLITE_NULL) return std::nullopt;
    auto* p = reinterpret_cast<const char*>(sqlite3_column_text(st_, i));
    return std::string(p, static_cast<size_t>(sqlite3_column_bytes(st_, i)));
  }

 private:
  sqlite3_stmt* st_ = nullptr;
};

struct pg_conn {
  PGconn* c = nullptr;
  std::string shown;
  ~pg_conn() {
    if (c) PQfinish(c);
  }
  PGresult* exec(const std::string& sql) {
    PGresult* r = PQexec(c, sql.c_str());
    auto st = PQresultStatus(r);
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
      std::string m = PQresultErrorMessage(r);
      PQclear(r);
      throw migrate_error(1, "store.url " + shown + ": " + m);
    }
    return r;
  }
  void run(const std::string& sql) { PQclear(exec(sql)); }
  std::string value(const std::string& sql) {
    PGresult* r = exec(sql);
    std::string v = PQntuples(r) > 0 ? PQgetvalue(r, 0, 0) : "";
    PQclear(r);
    return v;
  }
};

struct table_copy {
  const char* name;
  const char* select;  ///< from SQLite, columns in the order of `insert`'s parameters
  const char* insert;  ///< into PostgreSQL, $1..$n as text
};

// Booleans: SQLite keeps 0/1, PostgreSQL takes 'true'/'false' or '1'/'0' as text.
const table_copy tables[] = {
    {"requests", "SELECT id, op, type, ts_ms, accepted_ms, jobs FROM requests",
     "INSERT INTO klynaa.requests(id, op, type, ts_ms, accepted_ms, jobs) "
     "VALUES($1, $2::int, $3, $4::bigint, $5::bigint, $6::jsonb)"},
    {"jobs",
     "SELECT id, request_id, function, data, okey, seq, state, due_ms, attempts, ts_ms, created_ms, "
     "updated_ms, auto_release, last_error, result, attempt_base FROM jobs",
     "INSERT INTO klynaa.jobs(id, request_id, function, data, okey, seq, state, due_ms, attempts, ts_ms, "
     "created_ms, updated_ms, auto_release, last_error, result, attempt_base) VALUES($1, $2, $3, $4, $5, "
     "$6::bigint, $7::int, $8::bigint, $9::bigint, $10::bigint, $11::bigint, $12::bigint, "
     "($13::int <> 0), $14, $15, $16::bigint)"},
    // SQLite keeps a successful attempt on its job's row (schema 3); PostgreSQL
    // keeps every attempt as a row.
    {"attempts",
     "SELECT job_id, attempt, node, outcome, error, duration_ms, at_ms FROM attempts UNION ALL "
     "SELECT id, attempts, ok_node, 'ok', '', ok_duration_ms, ok_at_ms FROM jobs j WHERE ok_at_ms > 0 "
     "AND NOT EXISTS (SELECT 1 FROM attempts a WHERE a.job_id = j.id AND a.attempt = j.attempts)",
     "INSERT INTO klynaa.attempts(job_id, attempt, node, outcome, error, duration_ms, at_ms) "
     "VALUES($1, $2::bigint, $3, $4, $5, $6::bigint, $7::bigint)"},
    {"closed_pickups", "SELECT pickup_id, closed_ms FROM closed_pickups",
     "INSERT INTO klynaa.closed_pickups(pickup_id, closed_ms) VALUES($1::bigint, $2::bigint)"},
};

int64_t copy_table(sqlite3* db, pg_conn& pg, const table_copy& t) {
  const std::string stmt = std::string("migrate_") + t.name;
  PGresult* prep = PQprepare(pg.c, stmt.c_str(), t.insert, 0, nullptr);
  if (PQresultStatus(prep) != PGRES_COMMAND_OK) {
    std::string m = PQresultErrorMessage(prep);
    PQclear(prep);
    throw migrate_error(1, "store.url " + pg.shown + ": " + m);
  }
  PQclear(prep);
  sqlite_rows rows(db, t.select);
  int64_t n = 0;
  while (rows.next()) {
    std::vector<std::optional<std::string>> values;
    for (int i = 0; i < rows.columns(); ++i) values.push_back(rows.text(i));
    std::vector<const char*> ptrs;
    for (auto& v : values) ptrs.push_back(v ? v->c_str() : nullptr);
    PGresult* r = PQexecPrepared(pg.c, stmt.c_str(), static_cast<int>(ptrs.size()), ptrs.data(), nullptr,
                                 nullptr, 0);
    if (PQresultStatus(r) != PGRES_COMMAND_OK) {
      std::string m = PQresultErrorMessage(r);
      PQclear(r);
      throw migrate_error(1, std::string("copying ") + t.name + " to store.url " + pg.shown + ": " + m);
    }
    PQclear(r);
    ++n;
  }
  return n;
}

int migrate(const std::string& data_dir, const std::string& url) {
  const std::string db_path = data_dir + "/broker.db";
  if (std::filesystem::exists(data_dir + "/journal"))
    throw migrate_error(2, "the data dir " + data_dir + " holds a journal store (" + data_dir +
                               "/journal, store.backend = \"journal\"): klynaa store migrate copies a "
                               "SQLite store (broker.db) only (--data-dir)");
  if (!std::filesystem::exists(db_path))
    throw migrate_error(2, "no SQLite store at " + db_path + " (--data-dir)");
  // The broker's own lock: a running broker would keep writing what we copy.
  const std::string lock_path = data_dir + "/broker.lock";
  int lock_fd = ::open(lock_path.c_str(), O_CREAT | O_RDWR | O_CLOEXEC, 0644);
  if (lock_fd < 0 || ::flock(lock_fd, LOCK_EX | LOCK_NB) != 0) {
    if (lock_fd >= 0) ::close(lock_fd);
    throw migrate_error(1, "a broker is using the data dir " + data_dir + " (--data-dir): stop it first");
  }
  struct closer {
    int fd;
    ~closer() { ::close(fd); }
  } lock_guard{lock_fd};

  // Bring an older SQLite layout up to date, as a broker's start would.
  {
    broker::sqlite_options so;
    so.path = db_path;
    broker::store_error err;
    if (!broker::open_sqlite_store(so, err)) throw migrate_error(1, "cannot open " + db_path + ": " + err.message);
  }
  // Creates (or checks) the klynaa schema on the target.
  {
    broker::pg_options po;
    po.url = url;
    po.application_name = "klynaa store migrate";
    broker::store_error err;
    if (!broker::pg_store::open(po, err)) throw migrate_error(1, "cannot open the target: " + err.message);
  }
  pg_conn pg;
  pg.shown = broker::mask_pg_url(url);
  pg.c = PQconnectdb(url.c_str());
  if (PQstatus(pg.c) != CONNECTION_OK)
    throw migrate_error(1, "store.url " + pg.shown + ": cannot connect: " + PQerrorMessage(pg.c));
  PQsetNoticeProcessor(pg.c, [](void*, const char*) {}, nullptr);

  sqlite3* db = nullptr;
  if (sqlite3_open_v2(db_path.c_str(), &db, SQLITE_OPEN_READONLY, nullptr) != SQLITE_OK) {
    std::string m = db ? sqlite3_errmsg(db) : "out of memory";
    sqlite3_close(db);
    throw migrate_error(1, "cannot open " + db_path + ": " + m);
  }
  struct db_closer {
    sqlite3* db;
    ~db_closer() { sqlite3_close(db); }
  } db_guard{db};

  pg.run("BEGIN");
  pg.run("SET LOCAL synchronous_commit = on");
  // No broker may start on the target while we copy: hold its lease row.
  pg.run("LOCK TABLE klynaa.lease IN EXCLUSIVE MODE");
  auto holder = pg.value("SELECT holder FROM klynaa.lease WHERE name = 'broker' AND expires_at > now()");
  if (!holder.empty())
    throw migrate_error(2, "the target store.url " + pg.shown + " has an active broker (" + holder +
                               " holds the lease): stop every broker on it first");
  auto counts = pg.value(
      "SELECT (SELECT count(*) FROM klynaa.requests) || ' requests, ' || (SELECT count(*) FROM klynaa.jobs) || "
      "' jobs, ' || (SELECT count(*) FROM klynaa.attempts) || ' attempts, ' || "
      "(SELECT count(*) FROM klynaa.closed_pickups) || ' closed pickups'");
  if (counts != "0 requests, 0 jobs, 0 attempts, 0 closed pickups")
    throw migrate_error(2, "the target store.url " + pg.shown + " is not empty (" + counts +
                               "): migrate only into an empty database");
  std::vector<std::pair<std::string, int64_t>> copied;
  for (auto& t : tables) copied.emplace_back(t.name, copy_table(db, pg, t));
  pg.run("COMMIT");
  std::cout << "migrated " << db_path << " to " << pg.shown << ":";
  for (size_t i = 0; i < copied.size(); ++i)
    std::cout << (i ? "," : "") << " " << copied[i].second << " " << copied[i].first;
  std::cout << std::endl;
  return 0;
}

}  // namespace

int cmd_store(int argc, char** argv) {
  const std::string sub = argc >= 3 ? argv[2] : "";
  if (sub != "migrate") {
    std::cerr << "klynaa store: expected `klynaa store migrate --data-dir D --to URL`"
              << (sub.empty() ? "" : ", got '" + sub + "'") << "\n";
    return 2;
  }
  std::vector<flag_spec> specs = {{"data-dir", true, "the stopped broker's data dir (its broker.db)"},
                                  {"to", true, "the target PostgreSQL store.url (an empty database)"}};
  parsed_args args;
  std::string err;
  if (!parse_args(argc, argv, 3, specs, args, err)) {
    std::cerr << "klynaa store migrate: " << err << "\n";
    return 2;
  }
  if (!args.positional.empty()) {
    std::cerr << "klynaa store migrate: unexpected argument '" << args.positional[0] << "'\n";
    return 2;
  }
  auto to = args.get("to");
  if (!to || to->empty()) {
    std::cerr << "klynaa store migrate: --to is required (a PostgreSQL URL, as store.url)\n";
    return 2;
  }
  try {
    return migrate(args.get("data-dir").value_or("klynaa-data"), *to);
  } catch (const migrate_error& e) {
    std::cerr << "klynaa store migrate: " << e.what() << "\n";
    return e.code;
  }
}

}  // namespace klynaa::cli

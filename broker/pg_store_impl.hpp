// Internal to broker/: what the parts of the PostgreSQL store share
// (pg_store.hpp). pg_store.cpp connects, checks the schema and answers the
// reads and the lease calls; pg_commit.cpp sends a commit's batch as one
// pipeline and reads its results; pg_sql.cpp holds the schema and the prepared
// statements. The design (one round trip per commit, the fence, durability) is
// described at the top of pg_store.cpp. Include it only from broker/pg_*.cpp.
#pragma once

#include <libpq-fe.h>

#include <cstdint>
#include <cstdlib>
#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "broker/pg_store.hpp"

namespace klynaa::broker {
namespace pg_detail {

// 1: first layout (the SQLite store's version 2, plus lease).
// 2: finished jobs move to klynaa.jobs_done (issue 22).
constexpr int schema_version = 2;

/// Serialises first-time schema creation between brokers (pg_sql.cpp).
extern const char* const init_lock;
/// The schema of version schema_version, run once under init_lock (pg_sql.cpp).
extern const char* const schema_sql;
/// From version 1 to 2, run under init_lock (pg_sql.cpp).
extern const char* const upgrade_to_2_sql;

/// The statements prepared on every connection: name and SQL (pg_sql.cpp).
const std::vector<std::pair<const char*, std::string>>& statements();

/// Thrown inside this file only; the public calls turn it into a store_error.
struct pg_failure : std::runtime_error {
  using std::runtime_error::runtime_error;
};

/// libpq's messages end in newlines and indent their second line: one line.
std::string one_line(const char* msg);
/// The primary message of a failed result, on one line.
std::string result_error(const PGresult* r);

struct result_deleter {
  void operator()(PGresult* r) const { PQclear(r); }
};
using result_ptr = std::unique_ptr<PGresult, result_deleter>;

/// Text parameters for one statement (null for an absent value).
class params {
 public:
  params& add(const std::string& v) { values_.emplace_back(v); return *this; }
  params& add(std::string&& v) { values_.emplace_back(std::move(v)); return *this; }
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

/// A PostgreSQL array in text form ('{"a","b\\"c",NULL}'), built element by
/// element: one parameter of a set-based statement that reads it with
/// unnest($n::text[], ...) (pg_sql.cpp). Elements of one array share a type.
class array_param {
 public:
  array_param() : s_("{") {}
  array_param& text(const std::string& v) {
    sep();
    s_ += '"';
    if (v.find_first_of("\"\\") == std::string::npos) {
      s_ += v;
    } else {
      for (char c : v) {
        if (c == '"' || c == '\\') s_ += '\\';
        s_ += c;
      }
    }
    s_ += '"';
    return *this;
  }
  array_param& i64(int64_t v) {
    sep();
    s_ += std::to_string(v);
    return *this;
  }
  array_param& boolean(bool v) {
    sep();
    s_ += v ? 't' : 'f';
    return *this;
  }
  array_param& null() {
    sep();
    s_ += "NULL";
    return *this;
  }
  /// The literal; the builder is spent.
  std::string done() {
    s_ += '}';
    return std::move(s_);
  }

 private:
  void sep() {
    if (s_.size() > 1) s_ += ',';
  }
  std::string s_;
};

inline int64_t i64(const PGresult* r, int row, int col) {
  return std::strtoll(PQgetvalue(r, row, col), nullptr, 10);
}
inline std::string text(const PGresult* r, int row, int col) {
  return std::string(PQgetvalue(r, row, col), static_cast<size_t>(PQgetlength(r, row, col)));
}

/// A row of a job_columns query as a job_record.
job_record read_job(const PGresult* r, int row);

}  // namespace pg_detail

struct pg_store::impl {
  using params = pg_detail::params;
  using result_ptr = pg_detail::result_ptr;

  pg_options opts;
  std::string shown_url;  ///< masked
  std::string password;   ///< the URL's, to scrub from any message
  PGconn* conn = nullptr;
  std::string holder;     ///< of the last lease acquired
  std::optional<int64_t> fence_token;
  pg_commit_stats stats;
  explicit impl(pg_options o);
  ~impl() { disconnect(); }

  /// Every message leaves through here: it names store.url and never the password.
  std::string message(const std::string& what) const;
  void disconnect();

  // --- connection (pg_store.cpp) ---------------------------------------------

  /// Connects and sets the session up; `init` also creates or checks the schema.
  void connect(bool init);
  bool connected() const { return conn && PQstatus(conn) == CONNECTION_OK; }
  /// Reconnects when the connection was lost; false and `err` when it cannot.
  bool ensure_connected(store_error* err);
  result_ptr exec(const std::string& sql);
  std::optional<int> stored_version();
  static void refuse_newer(int v);
  void create_or_check_schema();
  void check_version_read_only();

  // --- reads (pg_store.cpp) ----------------------------------------------------

  /// One prepared statement outside the pipeline. Throws pg_failure (a
  /// std::runtime_error naming store.url) when it fails, as the SQLite store's
  /// reads do; a lost connection is dropped, so the next call reconnects.
  result_ptr query(const char* name, const params& p);

  // --- the commit pipeline (pg_commit.cpp) -------------------------------------

  /// What to do with the result of each queued statement, in order.
  using handler = std::function<void(const PGresult*)>;

  void send(const char* name, const params& p, handler h, std::vector<handler>& queue);
  void send_sql(const char* sql, std::vector<handler>& queue);
  void queue_batch(const batch& b, int64_t now, commit_outcome& out, std::vector<handler>& q);
  /// Requests [first, last) of the batch, none of which depends on another:
  /// one set-based statement (apply_requests in pg_sql.cpp).
  void queue_requests(const batch& b, size_t first, size_t last, int64_t now, commit_outcome& out,
                      std::vector<handler>& q);
  void queue_updates(const batch& b, int64_t now, std::vector<handler>& q);
  void queue_children(const batch& b, int64_t now, commit_outcome& out, std::vector<handler>& q);
  void queue_prune(int64_t before_ms, int64_t limit, commit_outcome& out, std::vector<handler>& q);
  void queue_replay(const batch& b, int64_t now, commit_outcome& out, std::vector<handler>& q);
  void queue_purge(const batch& b, commit_outcome& out, std::vector<handler>& q);
  /// Reads the results of the queued statements up to the sync. Returns the
  /// first error (empty when every statement succeeded and COMMIT returned).
  std::string read_pipeline(const std::vector<handler>& q, int64_t& results_before_commit_ns);
  /// The batch in one transaction, one round trip (pg_store.cpp's comment).
  std::optional<commit_outcome> commit(const batch& b, store_error& err);
};

}  // namespace klynaa::broker

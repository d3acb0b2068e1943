// The durable store behind the broker: a narrow interface, so that SQLite (the
// embedded default, sqlite_store.cpp), PostgreSQL (for standby brokers) and the
// journal (a log with the state in memory, journal_store.hpp, which says where
// it answers differently) are interchangeable and one test suite runs over all.
//
// The broker keeps the live queue in memory (broker/core.cpp) and uses the store
// as its write-ahead record: every change is applied through commit(), one
// transaction per batch (group commit: one fsync for many requests), and on start
// load_unfinished() rebuilds the queue. Nothing is acknowledged to a client before
// the commit that holds it returned.
//
// Thread-safety: one store object is used by one thread at a time (the broker's
// writer thread). Readers in other threads (admin) open their own instance
// (read-only; for the journal, a view onto the writer's: journal_store.hpp).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace klynaa::broker {

/// A job's life (docs/operations.md): ready -> running -> done | retry_wait | dead.
/// retry_wait -> ready when due; cancelled: an auto-release cancelled by a
/// confirmation or dispute before it ran.
enum class job_state : int { ready = 0, running = 1, retry_wait = 2, done = 3, dead = 4, cancelled = 5 };

const char* to_string(job_state s);
inline bool finished(job_state s) { return static_cast<int>(s) >= 3; }

struct job_record {
  std::string id;
  std::string request_id;
  std::string function;
  std::string data_json;
  std::string ordering_key;  ///< "pickup:7", "worker:3" or ""
  int64_t seq = 0;           ///< acceptance order; jobs of one key run by ascending seq
  job_state state = job_state::ready;
  int64_t due_ms = 0;        ///< when it may run (delayed jobs, retry_wait)
  int64_t attempts = 0;      ///< attempts started so far
  int64_t ts_ms = 0;         ///< the originating event's time
  int64_t created_ms = 0;
  int64_t updated_ms = 0;
  bool auto_release = false; ///< the delayed escrow release of pickup.delivered
  int64_t attempt_base = 0;  ///< attempts before its last replay from the dead-letter queue
  std::string last_error_json;  ///< {"code","message","http_status"?} of the last failure
  std::string result_json;      ///< the result of a successful run
};

/// One accepted (or duplicate) request with the jobs it implies.
struct new_request {
  std::string id;
  int op = 0;                        ///< protocol::op as int
  std::string type;
  int64_t ts_ms = 0;
  int64_t accepted_ms = 0;
  std::vector<job_record> jobs;      ///< candidate jobs, seq and state set
  std::optional<int64_t> closes_pickup;  ///< confirmed/disputed: cancel auto-release
};

/// A change of one job's state, with an entry for its attempt history.
struct job_update {
  std::string id;
  job_state state = job_state::ready;
  int64_t attempts = 0;
  int64_t due_ms = 0;
  int64_t seq = 0;
  std::string last_error_json;
  std::string result_json;
  // attempt history (written when an attempt ended: outcome not empty)
  std::string node;
  std::string outcome;       ///< "ok", "retry", "dead", "lost"; empty = no history entry
  int64_t duration_ms = 0;
};

struct batch {
  std::vector<new_request> requests;
  std::vector<job_update> updates;
  std::vector<job_record> children;  ///< jobs created by jobs: inserted unless the id exists
  /// Retention: delete up to `prune_limit` finished (done/cancelled) jobs last
  /// updated before this time, their attempt history, and the dedup keys of
  /// requests accepted before it whose jobs are all gone (store.dedup_retention_days).
  std::optional<int64_t> prune_before_ms;
  int64_t prune_limit = 2000;
  /// Dead-letter queue (klynaa dlq): dead jobs made ready again (due now, new seq
  /// from replay_seq_base upwards in seq order, a fresh attempt budget, same id,
  /// data and ordering key) — `replay_ids`, or the oldest `replay_limit` with
  /// replay_all; and dead jobs deleted with their history.
  std::vector<std::string> replay_ids;
  bool replay_all = false;
  int64_t replay_limit = 0;
  int64_t replay_seq_base = 0;
  std::vector<std::string> purge_ids;
  bool purge_all = false;
  /// A small write that proves the store can commit again after a failure
  /// (disk full): the broker sends it while it rejects requests.
  bool probe = false;
  bool empty() const {
    return requests.empty() && updates.empty() && children.empty() && !prune_before_ms &&
           replay_ids.empty() && !replay_all && purge_ids.empty() && !purge_all && !probe;
  }
};

struct request_outcome {
  bool duplicate = false;
  int original_op = 0;                 ///< for duplicates: the first request's op
  std::vector<std::string> job_ids;    ///< the jobs of the (first) request
  std::vector<uint32_t> created;       ///< accepted: the jobs actually stored, as indices into new_request::jobs
  std::vector<std::string> cancelled;  ///< auto-release jobs this request cancelled
  std::vector<job_record> existing;    ///< duplicate: the first request's jobs as stored now
};

struct commit_outcome {
  std::vector<request_outcome> requests;  ///< one per batch.requests, same order
  std::vector<bool> children_inserted;    ///< one per batch.children
  int64_t pruned = 0;       ///< rows deleted by the batch's prune (jobs + dedup keys)
  bool prune_more = false;  ///< the prune hit its limit: more rows are due
  std::vector<job_record> replayed;  ///< the dead jobs made ready, as stored now
  bool replay_more = false;          ///< replay_all hit replay_limit: more dead jobs remain
  std::vector<std::string> purged;   ///< the dead jobs deleted
};

/// A store failure: `message` names what failed ("disk full", the file, ...).
struct store_error {
  std::string message;
};

class store {
 public:
  virtual ~store() = default;

  /// Applies the batch in one transaction and makes it durable before returning.
  /// On failure nothing of the batch is applied and `err` says why.
  virtual std::optional<commit_outcome> commit(const batch& b, store_error& err) = 0;

  /// Calls `sink` for every unfinished job (ready, running, retry_wait) in seq order.
  virtual bool load_unfinished(const std::function<void(job_record&&)>& sink, store_error& err) = 0;

  /// The highest seq stored (0 when empty).
  virtual int64_t max_seq() = 0;

  virtual std::optional<job_record> find_job(const std::string& id) = 0;

  /// Jobs in `state`, most recently changed first, at most `limit`.
  virtual std::vector<job_record> list_jobs(job_state state, size_t limit) = 0;

  /// Attempt history of a job as a JSON array text.
  virtual std::string history_json(const std::string& id) = 0;

  /// Counts of jobs per (function, state).
  virtual std::vector<std::tuple<std::string, job_state, int64_t>> count_by_function() = 0;

  /// Deletes finished jobs and request dedup keys older than `before_ms` (in
  /// transactions of batch::prune_limit rows); returns the rows pruned.
  int64_t prune(int64_t before_ms);
};

struct sqlite_options {
  std::string path;                 ///< database file
  bool synchronous_full = true;     ///< fsync every commit (durable); false = NORMAL
  bool read_only = false;
};

/// Opens (creating when needed) the SQLite store. nullptr and `err` on failure.
std::unique_ptr<store> open_sqlite_store(const sqlite_options& opts, store_error& err);

}  // namespace klynaa::broker

// The broker's live queue: every unfinished job in memory, runnable jobs per actor
// kind, per-ordering-key FIFOs and the timers of delayed and retrying jobs. Pure
// data structure (no I/O, no clock: callers pass `now`); the store is its durable
// record, written through the loop's open batch (commits.cpp).
//
// Ordering (docs/events-and-functions.md, "Job ids and ordering"; docs/reliability.md,
// "What is guaranteed", per-key order): jobs of one ordering key run one at a
// time by ascending seq. The key's "active" job is the one running, runnable, or waiting to retry:
// a job in retry_wait keeps its place at the head and blocks its key until it runs
// again. A delayed job (the auto-release) joins its key's FIFO only when it
// becomes due, with a fresh seq, so it takes its place in that order then.
//
// Not thread-safe: owned by the broker loop.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

#include "broker/store.hpp"

namespace klynaa::broker {

struct live_job {
  std::string id;
  std::string request_id;
  std::string function;
  std::string kind;        ///< actor kind running the function
  std::string data_json;
  std::string okey;        ///< ordering key, "" = none
  int64_t seq = 0;
  int64_t due_ms = 0;
  int64_t ts_ms = 0;
  int64_t attempts = 0;
  int64_t attempt_base = 0;  ///< attempts before its last replay: the budget counts from here
  job_state state = job_state::ready;
  bool auto_release = false;
  bool delayed = false;    ///< waits to join its key's FIFO (resequenced when due)
  // While running:
  int64_t lease = 0;
  int64_t lease_deadline = 0;
  int64_t started_ms = 0;
  bool fanout = false;  ///< updateWorkerLocation: runs on every geo node
  /// Where its latest state change waits in the open batch (core.cpp record()):
  /// a change with no history entry (running) is overwritten by the next one
  /// of the same batch, so a job that starts and ends within one group commit
  /// costs the store one row update, not two.
  uint64_t upd_gen = 0;
  uint32_t upd_idx = 0;

  /// What only a job that was dispatched needs, allocated on its first dispatch:
  /// a pending job stays small (bench/soak.sh: 1M pending jobs in memory).
  struct run_info {
    std::string node;       ///< routing id of the node holding it
    std::string node_name;
    // Fan-out: the nodes still to send it to, and those whose result is awaited.
    std::set<std::string> fanout_todo;
    std::set<std::string> fanout_wait;
    std::string fanout_error;  ///< worst failure so far ("" = all ok)
    bool fanout_permanent = false;
  };
  run_info& run() {
    if (!run_) run_ = std::make_unique<run_info>();
    return *run_;
  }
  /// The running state, or nullptr when the job was never dispatched.
  const run_info* run_if() const { return run_.get(); }
  const std::string& node() const { return run_ ? run_->node : no_string(); }
  const std::string& node_name() const { return run_ ? run_->node_name : no_string(); }
  bool fanout_sends_to(const std::string& identity) const {
    return run_ && run_->fanout_todo.count(identity);
  }

 private:
  static const std::string& no_string() {
    static const std::string empty;
    return empty;
  }
  std::unique_ptr<run_info> run_;
};

/// Counts per function and state, for stats and metrics.
using state_counts = std::map<std::string, std::map<job_state, int64_t>>;

class job_queue {
 public:
  /// Adds an unfinished job. ready/running jobs due now become runnable (when
  /// their key allows); jobs due later wait for their timer.
  void add(live_job j, int64_t now);

  live_job* find(const std::string& id);

  /// Pops the next runnable job of one of `kinds` (rotating between kinds), or
  /// nullptr. The job stays in the queue; the caller marks it running.
  live_job* next_runnable(const std::set<std::string>& kinds);

  /// Whether any job of `kind` is runnable.
  bool has_runnable(const std::string& kind) const;

  void set_running(live_job& j, std::string node, std::string node_name, int64_t lease,
                   int64_t deadline, int64_t now);

  /// done, dead or cancelled: removes the job and lets its key go on.
  void finish(const std::string& id, job_state final_state);

  /// A failed attempt that will run again at `due`; keeps its key blocked.
  void retry_later(const std::string& id, int64_t due);

  /// A lost lease or handed-back job: runnable again now, keeping its place.
  void retry_now(const std::string& id);

  /// Moves every job due at `now` out of its timer. `next_seq` gives fresh
  /// sequence numbers to delayed jobs joining their key. Returns the ids whose
  /// seq or state changed (to be recorded).
  std::vector<std::string> fire_timers(int64_t now, const std::function<int64_t()>& next_seq);

  /// Up to `n` jobs waiting to retry (retry_wait), soonest first.
  std::vector<const live_job*> soonest_retries(size_t n) const;

  /// The earliest timer, or INT64_MAX.
  int64_t next_due() const;

  /// Jobs whose lease expired at `now`.
  std::vector<std::string> expired_leases(int64_t now) const;

  /// A HEARTBEAT's `leases` from node `node` (its identity): every running job
  /// leased to that node under one of `leases` gets `deadline` as its lease
  /// deadline. Leases of other nodes, or no longer current, are not touched.
  /// Returns how many were renewed (docs/cluster-protocol.md, "Leases").
  size_t renew_leases(const std::string& node, const std::vector<int64_t>& leases, int64_t deadline);

  size_t size() const { return jobs_.size(); }
  const state_counts& counts() const { return counts_; }

 private:
  struct key_fifo {
    /// seq -> job, not yet finished. Pointers into jobs_ (its nodes never move);
    /// finish() takes a job out of here before it erases it.
    std::map<int64_t, live_job*> pending;
    std::string active;                      ///< head that runs, is runnable or waits to retry
  };
  void set_state(live_job& j, job_state s);
  void make_runnable(live_job& j);
  void join_key(live_job& j);
  void promote(const std::string& okey);

  std::unordered_map<std::string, live_job> jobs_;
  std::unordered_map<std::string, std::deque<std::string>> runnable_;  ///< kind -> ids
  std::unordered_map<std::string, key_fifo> keys_;
  std::multimap<int64_t, std::string> timers_;  ///< due -> id
  std::set<std::string> running_;               ///< ids of running jobs (lease checks)
  state_counts counts_;
  size_t rotate_ = 0;
};

}  // namespace klynaa::broker

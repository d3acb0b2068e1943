// The journal store's state in memory (docs/design.md, "The journal store"):
// what the store answers from, rebuilt at start from the newest checkpoint and
// the records after it (journal_codec.hpp applies them here).
//
// What is kept:
// - unfinished jobs (ready, running, retry_wait) and dead jobs in full, with
//   their attempt history;
// - done and cancelled jobs, until pruned, compactly: id, function, state, seq,
//   attempts, when they ended, their request; the result only for the jobs of
//   an invoke request (a duplicate invoke answers with it);
// - per retained request: its op, when it was accepted and its jobs' ids (just
//   a count when they are "<request id>#1" .. "#n", as protocol::child_job_id
//   makes them);
// - closed pickups, and the highest seq stored.
//
// Indexes, kept by attach()/detach() around every change of a job: counts per
// (function, state), dead jobs, done/cancelled jobs in the order they ended
// (what prune takes first), unfinished auto-releases per pickup, and requests
// none of whose jobs (nor their children) is left: prunable once accepted
// before the cut.
//
// Not thread-safe: the store guards it with its mutex.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "broker/store.hpp"

namespace klynaa::broker::journal {

struct attempt_entry {
  int64_t attempt = 0;
  std::string node;
  std::string outcome;
  std::string error;  ///< the last_error_json of a failed attempt, else empty
  int64_t duration_ms = 0;
  int64_t at_ms = 0;
};

/// What only an unfinished or dead job keeps.
struct job_detail {
  std::string request_id;  ///< empty when it is its owner's id
  std::string data_json;
  std::string ordering_key;
  std::string last_error_json;
  std::string result_json;
  int64_t due_ms = 0;
  int64_t ts_ms = 0;
  int64_t created_ms = 0;
  int64_t attempt_base = 0;
  bool auto_release = false;
  std::vector<attempt_entry> history;  ///< by attempt
};

struct request_entry;

struct job_entry {
  const std::string* id = nullptr;       ///< the key of its map entry
  std::unique_ptr<job_detail> detail;    ///< null once done or cancelled
  std::unique_ptr<std::string> result;   ///< done/cancelled jobs of an invoke request
  /// The request it belongs to (the one that created it, or its parent's for a
  /// job's child): it keeps that request's dedup key while stored. Null when
  /// that request is not stored.
  request_entry* owner = nullptr;
  job_entry* prev = nullptr;             ///< the ended list (done and cancelled jobs)
  job_entry* next = nullptr;
  int64_t seq = 0;
  int64_t attempts = 0;
  int64_t updated_ms = 0;
  uint16_t function = 0;                 ///< index into state::function_name
  job_state state = job_state::ready;
  bool keep_result = false;              ///< a job of an invoke request
  bool linked = false;                   ///< in the ended list
};

struct request_entry {
  const std::string* id = nullptr;
  std::unique_ptr<std::vector<std::string>> job_ids;  ///< null: "<id>#1" .. "#jobs"
  int64_t accepted_ms = 0;
  uint32_t jobs = 0;       ///< how many jobs it created (its job ids)
  uint32_t jobs_left = 0;  ///< jobs owned (those, and the children of its jobs) still stored
  uint8_t op = 0;
};

class state {
 public:
  state() = default;
  state(const state&) = delete;
  state& operator=(const state&) = delete;

  // --- reads ---
  job_entry* job(const std::string& id);
  request_entry* request(const std::string& id);
  /// The job as store.hpp's job_record (a done or cancelled one has only what is kept).
  job_record to_record(const job_entry& j) const;
  std::vector<std::string> job_ids(const request_entry& r) const;
  const std::string& function_name(uint16_t f) const { return functions_[f]; }
  bool pickup_closed(int64_t pickup) const { return closed_.count(pickup) > 0; }
  /// Unfinished auto-release jobs of the pickup that are not running.
  std::vector<job_entry*> pending_auto_release(int64_t pickup) const;
  int64_t max_seq() const { return max_seq_; }
  int64_t last_now() const { return last_now_; }
  const std::unordered_set<job_entry*>& dead() const { return dead_; }
  job_entry* oldest_ended() const { return head_; }
  /// The orphaned requests (no job left) by when they were accepted.
  const std::multimap<int64_t, request_entry*>& orphans() const { return orphans_; }
  std::vector<std::tuple<std::string, job_state, int64_t>> counts() const;
  const std::unordered_map<std::string, job_entry>& jobs() const { return jobs_; }
  const std::unordered_map<std::string, request_entry>& requests() const { return requests_; }
  const std::unordered_set<int64_t>& closed_pickups() const { return closed_; }

  // --- changes (journal_codec.cpp calls them, live and in recovery alike) ---
  void set_now(int64_t now) { last_now_ = std::max(last_now_, now); }
  void set_max_seq(int64_t seq) { max_seq_ = std::max(max_seq_, seq); }
  /// Adds a request; `jobs` are the jobs it created (their ids are stored as a
  /// count when they follow the pattern). nullptr when the id is there already.
  request_entry* add_request(const std::string& id, int op, int64_t accepted_ms,
                              const std::vector<const job_record*>& jobs);
  /// The same with `jobs` ids "<id>#1" .. "#jobs" (set job_ids after for others).
  request_entry* add_request(const std::string& id, int op, int64_t accepted_ms, uint32_t jobs);
  /// After a request's jobs were added (or a checkpoint loaded): orphaned when none is left.
  void settle(request_entry& r);
  /// Adds a job as `r` says, updated at `now`. `owner` counts it among its jobs.
  /// nullptr when the id is there already.
  job_entry* add_job(const job_record& r, request_entry* owner, bool keep_result, int64_t now);
  /// A job filled in by the caller (a checkpoint's image): insert_job, fill it,
  /// then attach_job. insert_job returns nullptr when the id is there already.
  job_entry* insert_job(std::string&& id, request_entry* owner);
  void attach_job(job_entry& j);
  /// settle() for every request (after a checkpoint was loaded).
  void settle_all();
  /// Changes a job: detach, `change`, attach (and compact it when it ended).
  template <class F>
  void change(job_entry& j, F change) {
    detach(j);
    change(j);
    if (finished(j.state) && j.state != job_state::dead) compact(j);
    attach(j);
  }
  void erase_job(job_entry& j);
  void erase_request(request_entry& r);
  void close_pickup(int64_t pickup) { closed_.insert(pickup); }
  uint16_t function_id(const std::string& name);

  /// "pickup:7" -> 7; -1 for any other key.
  static int64_t pickup_of(const std::string& okey);

 private:
  void attach(job_entry& j);
  void detach(job_entry& j);
  void compact(job_entry& j);
  void link_ended(job_entry& j);
  void unlink_ended(job_entry& j);
  void unorphan(request_entry& r);

  std::unordered_map<std::string, job_entry> jobs_;
  std::unordered_map<std::string, request_entry> requests_;
  std::unordered_set<int64_t> closed_;
  std::vector<std::string> functions_;
  std::unordered_map<std::string, uint16_t> function_ids_;
  uint16_t last_function_ = 0;  ///< the last one looked up: jobs of a batch mostly share it
  std::vector<std::array<int64_t, 6>> counts_;  ///< per function, per state
  std::unordered_set<job_entry*> dead_;
  std::unordered_multimap<int64_t, job_entry*> auto_release_;  ///< pickup -> unfinished auto-releases
  std::multimap<int64_t, request_entry*> orphans_;
  job_entry* head_ = nullptr;  ///< the ended list, oldest end first
  job_entry* tail_ = nullptr;
  int64_t max_seq_ = 0;
  int64_t last_now_ = 0;
};

}  // namespace klynaa::broker::journal

// Private to the broker: the state of broker_core (core.hpp) and the loop that
// wires its sockets to the broker's parts. The parts are pure and tested alone:
//   admission.hpp   request -> rejection or write request
//   dispatcher.hpp  node sessions, credit, leases, fan-out, outboxes
//   completion.hpp  job + DONE + retry policy + now -> decision
//   timers.hpp      the loop's periods, drains, schedule firings
//   stats.hpp       the typed stats snapshot
// The loop's own files: core.cpp (open, run, timers, stats, the cluster socket),
// ingress.cpp (the ingress socket and invoke waiters), commits.cpp (the open
// batch and what a commit answers), results.cpp (completion decisions applied).
#pragma once

#include <chrono>
#include <deque>
#include <future>
#include <map>
#include <mutex>
#include <optional>
#include <random>
#include <set>
#include <unordered_map>

#include "broker/ack_timeline.hpp"
#include "broker/admission.hpp"
#include "broker/completion.hpp"
#include "broker/core.hpp"
#include "broker/dispatcher.hpp"
#include "broker/queue.hpp"
#include "broker/schedules.hpp"
#include "broker/stats.hpp"
#include "broker/timers.hpp"
#include "broker/writer.hpp"
#include "protocol/cluster.hpp"
#include "protocol/message.hpp"

namespace klynaa::broker {

/// Where to send a client's reply.
struct client_ref {
  std::string identity;   ///< ROUTER routing id
  bool delimited = false; ///< the request had an empty delimiter frame
};

/// A request waiting for the commit of its batch.
struct pending_request {
  client_ref client;
  std::string id;
  protocol::op op = protocol::op::publish;
  int64_t timeout_ms = 0;
  bool internal = false;  ///< a schedule firing: nobody waits for a reply
  int64_t received_us = 0;  ///< ack_timeline: when the loop read it
};

/// Retention pruning started by a successful cleanupData
/// (docs/events-and-functions.md, "generateDailyReport, generateWeeklyAnalytics,
/// cleanupData"): runs a chunk per batch until nothing is due; the job's result
/// gets the total as "pruned" and its waiters hear of it once that is stored.
struct prune_run {
  int64_t before_ms = 0;
  int64_t total = 0;
  std::vector<std::pair<job_update, finished_note>> jobs;  ///< cleanupData jobs to complete
};

/// An invoke waiting for its job's end.
struct waiter {
  client_ref client;
  std::string request_id;
  int64_t deadline = 0;
};

/// A dead-letter command from the admin endpoint, answered after its commit.
struct dlq_request {
  std::string action;  ///< "replay" or "purge"
  std::vector<std::string> ids;
  bool all = false;
  std::promise<nlohmann::json> answer;
};

struct open_batch {
  batch b;
  std::shared_ptr<dlq_request> dlq;  ///< the dead-letter command this batch carries
  std::vector<pending_request> reqs;    ///< parallel to b.requests
  std::vector<finished_note> finished;
  int64_t submitted_us = 0;  ///< ack_timeline: when the writer got it
  bool empty() const { return b.empty() && finished.empty(); }
};

struct broker_core::impl final : dispatcher_host {
  impl(zmq::context_t& c, broker_options o, std::unique_ptr<store> s);

  // core.cpp
  bool open(std::string& err);
  bool bind_sockets(std::string& err);
  bool load(std::string& err);
  int run(const std::atomic<int>& ph);
  bool step_phase(phase p, int64_t now);  ///< true: the drain is over, stop
  void poll_once(int64_t now);
  void tick(int64_t now);
  void check_disk(int64_t now);
  void fire(const firing& f, int64_t now);
  void publish_stats(int64_t now);
  void on_cluster();
  int64_t now_ms() const { return opts.clock(); }
  int64_t next_seq() { return ++seq_; }
  bool send_frame(const std::string& identity, const std::string& frame) override;

  // commits.cpp
  void add_live(job_record r, int64_t now);
  job_update& record(live_job& j, job_state s, const std::string& outcome = {},
                     const std::string& error_json = {}, const std::string& result_json = {},
                     int64_t duration_ms = 0);
  void maybe_submit();
  void on_commit();
  void apply_commit(open_batch& ob, const commit_outcome& out);
  void answer_request(const pending_request& p, const request_outcome& o, new_request& nr, int64_t now);
  void fail_commit(open_batch& ob, const store_error& err);
  void count_dead_letters(const batch& b, const commit_outcome& out);
  void start_prune(const job_update& done, finished_note note, int64_t now);
  void prune_committed(const commit_outcome& out);
  void take_dlq_command();
  void dlq_committed(open_batch& ob, const commit_outcome& out, int64_t now);

  // ingress.cpp
  void on_ingress();
  void handle_frames(std::vector<zmq::message_t>& frames, int64_t now);
  void handle_request(const client_ref& c, protocol::request&& req, int64_t now);
  void send_reply(const client_ref& c, const protocol::reply& r);
  void answer_duplicate(const pending_request& p, const request_outcome& o);
  void add_waiter(const pending_request& p, const std::string& job_id);
  protocol::reply outcome_reply(const std::string& request_id, const job_record& j) const;
  void notify_waiters(const finished_note& n);
  void expire_waiters(int64_t now);

  // results.cpp: the dispatcher's host
  void job_changed(live_job& j, job_state s) override;
  void job_done(live_job& j, const protocol::cluster::done& d, int64_t now) override;
  void job_lost(live_job& j, const std::string& why, int64_t now) override;
  void note_failure(const live_job& j, const completion& c, int64_t now);

  zmq::context_t& ctx;
  broker_options opts;
  std::unique_ptr<store> st;
  /// Declared before the sockets, so destroyed after them: a CURVE socket must
  /// never outlive its ZAP handler (without one libzmq admits every client).
  zap_handler zap;
  std::unique_ptr<commit_writer> writer;
  zmq::socket_t ingress;
  zmq::socket_t cluster;
  zmq::socket_t writer_notify;
  std::string writer_endpoint;
  std::string ingress_endpoint;
  std::vector<std::string> cluster_endpoints;

  job_queue queue;
  dispatcher nodes{queue, opts.cfg, *this};
  schedule_set schedules;
  loop_timers timers;
  int64_t seq_ = 0;
  open_batch current;
  /// Changes when `current` is handed to the writer or reordered: a job's
  /// pending update may be merged into only while live_job::upd_gen matches.
  uint64_t batch_gen = 1;
  std::optional<open_batch> committing;
  std::unordered_multimap<std::string, waiter> waiters;  ///< job id -> waiters
  std::optional<prune_run> pruning;
  std::mutex dlq_mu;
  std::deque<std::shared_ptr<dlq_request>> dlq_queue;  ///< from admin threads
  std::atomic<bool> dlq_waiting{false};
  int64_t commit_failures = 0;  ///< store commits failed in a row (disk full, I/O error)
  int64_t next_commit_ms = 0;   ///< no commit before this after a failure
  std::string last_commit_error;
  int64_t disk_free_mb = -1;  ///< free space on the data dir's filesystem, checked every second
  bool draining = false;
  int64_t drain_deadline = 0;
  std::mt19937_64 rng{std::random_device{}()};

  stats_counters counters;
  ack_timeline timeline;
  ack_points commit_points;  ///< the timeline points of the batch being answered
  /// Jobs in the dead-letter queue now, as stored: counted at open(), then
  /// changed only by count_dead_letters() as commits land.
  int64_t dead_letters = 0;

  mutable std::mutex snapshot_mu;
  broker_stats snapshot;
};

}  // namespace klynaa::broker

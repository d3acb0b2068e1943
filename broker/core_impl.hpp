// Private to the broker: the state of broker_core (core.hpp), shared by the
// files that implement its parts: core.cpp (loop, batches, timers), ingress.cpp
// (client requests), sessions.cpp (nodes and dispatch).
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

#include "broker/core.hpp"
#include "broker/queue.hpp"
#include "broker/schedules.hpp"
#include "broker/writer.hpp"
#include "protocol/cluster.hpp"
#include "protocol/message.hpp"

namespace klynaa::broker {

inline int64_t wall_ms() {
  using namespace std::chrono;
  return duration_cast<milliseconds>(system_clock::now().time_since_epoch()).count();
}

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
};

/// A job that ended, to be told to invoke waiters once its end is committed.
struct finished_note {
  std::string job_id;
  protocol::reply_status status = protocol::reply_status::ok;
  std::string result_json;
  std::optional<protocol::error_info> error;
};

/// Retention pruning started by a successful cleanupData (§3): runs a chunk per
/// batch until nothing is due; the job's result gets the total as "pruned" and
/// its waiters hear of it once that is stored.
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

/// A node connected to the cluster socket.
struct node_session {
  std::string identity;
  std::string name;
  std::set<std::string> kinds;
  int64_t credit = 0;
  int64_t last_seen = 0;
  int64_t last_sent = 0;
  int64_t running = 0;
  nlohmann::json stats = nlohmann::json::object();
  std::map<std::string, std::string> withdrawn;  ///< kind -> reason the node gave up on it
  /// Fan-out jobs started since, to send here in order (an entry whose job no
  /// longer waits for this node is skipped): dispatch never scans all fan-outs.
  std::deque<std::string> fanout_sends;
  bool batch = false;                ///< it takes BATCH frames (its READY said so)
  std::vector<std::string> outbox;   ///< JOB frames of this dispatch pass, sent as one BATCH
  std::vector<std::string> outbox_jobs;  ///< the ids of the non-fan-out jobs among them
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
  bool empty() const { return b.empty() && finished.empty(); }
};

/// Durations of job attempts for one function (Prometheus histogram buckets, seconds).
struct duration_histogram {
  static constexpr double bounds[] = {0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60};
  int64_t counts[sizeof(bounds) / sizeof(bounds[0])] = {};
  double sum = 0;
  int64_t count = 0;
  void observe(double seconds) {
    sum += seconds;
    ++count;
    for (size_t i = 0; i < sizeof(bounds) / sizeof(bounds[0]); ++i)
      if (seconds <= bounds[i]) {
        ++counts[i];
        return;
      }
  }
};

struct broker_core::impl {
  impl(zmq::context_t& c, broker_options o, std::unique_ptr<store> s);

  // core.cpp
  bool open(std::string& err);
  int run(const std::atomic<int>& ph);
  void tick(int64_t now);
  void check_disk(int64_t now);
  void maybe_submit();
  void on_commit();
  void apply_commit(open_batch& ob, const commit_outcome& out);
  void fail_commit(open_batch& ob, const store_error& err);
  void add_live(job_record r, int64_t now);
  job_update& record(live_job& j, job_state s, const std::string& outcome = {},
                     const std::string& error_json = {}, const std::string& result_json = {},
                     int64_t duration_ms = 0);
  void notify_waiters(const finished_note& n);
  void expire_waiters(int64_t now);
  void publish_stats(int64_t now);
  void fire(const firing& f, int64_t now);
  nlohmann::json durations_json() const;
  int64_t next_seq() { return ++seq_; }

  // ingress.cpp
  void on_ingress();
  void handle_frames(std::vector<zmq::message_t>& frames, int64_t now);
  void handle_request(const client_ref& c, protocol::request&& req, int64_t now);
  void send_reply(const client_ref& c, const protocol::reply& r);
  void answer_duplicate(const pending_request& p, const request_outcome& o);
  void add_waiter(const pending_request& p, const std::string& job_id);
  protocol::reply outcome_reply(const std::string& request_id, const job_record& j) const;

  // sessions.cpp
  void on_cluster();
  void handle_node_message(const std::string& identity, const void* data, size_t size, int64_t now,
                           bool in_batch = false);
  void dispatch(int64_t now);
  void on_done(node_session& n, const protocol::cluster::done& d, int64_t now);
  void lose_job(const std::string& job_id, const std::string& why, int64_t now);
  bool send_job(const std::string& identity, node_session& n, live_job& j, int64_t now);
  void start_fanout(live_job& j, int64_t now);
  void fanout_done(node_session& n, live_job& j, const protocol::cluster::done& d, int64_t now);
  void fanout_forget_node(const std::string& identity, int64_t now);
  void complete(live_job& j, const protocol::cluster::done& d, int64_t now);
  void drop_node(std::string identity, const std::string& why, int64_t now);  // by value: callers pass map keys
  void check_nodes(int64_t now);
  bool send_node(const std::string& identity, const std::string& frame);
  /// Sends the node's outbox (one JOB alone, several as one BATCH); false when
  /// the node is unreachable, and then the outbox's jobs are ready again with
  /// their attempt given back (no node saw them).
  bool flush_outbox(const std::string& identity, node_session& n);
  bool unknown_node_told = false;  ///< handle_node_message: a BYE went to the sender of this BATCH
  int64_t retry_delay(const std::string& function, int64_t attempts, int64_t retry_after_ms);
  void start_prune(const job_update& done, finished_note note, int64_t now);
  void prune_committed(const commit_outcome& out);
  void take_dlq_command();
  void dlq_committed(open_batch& ob, const commit_outcome& out, int64_t now);
  void count_dead_letters(const batch& b, const commit_outcome& out);
  void note_failure(const live_job& j, const std::string& outcome, const std::string& code,
                    const std::string& message, int64_t now);

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
  schedule_set schedules;
  int64_t seq_ = 0;
  int64_t lease_counter = 0;
  open_batch current;
  /// Changes when `current` is handed to the writer or reordered: a job's
  /// pending update may be merged into only while live_job::upd_gen matches.
  uint64_t batch_gen = 1;
  std::optional<open_batch> committing;
  std::unordered_multimap<std::string, waiter> waiters;  ///< job id -> waiters
  std::map<std::string, node_session> nodes;            ///< identity -> session
  /// Where the next dispatch pass starts among `nodes` (an identity): after the
  /// node that got the last job, so that jobs arriving one at a time go to
  /// every node in turn, not always to the first (nodes hold many credits).
  std::string dispatch_from;
  std::set<std::string> fanouts;                        ///< running fan-out job ids
  std::optional<prune_run> pruning;
  std::mutex dlq_mu;
  std::deque<std::shared_ptr<dlq_request>> dlq_queue;  ///< from admin threads
  std::atomic<bool> dlq_waiting{false};
  nlohmann::json recent_failures = nlohmann::json::array();  ///< newest last, at most 50
  nlohmann::json history = nlohmann::json::array();          ///< totals every 5 s, 10 minutes
  int64_t last_history = 0;
  int64_t commit_failures = 0;  ///< store commits failed in a row (disk full, I/O error)
  int64_t next_commit_ms = 0;   ///< no commit before this after a failure
  std::string last_commit_error;
  int64_t disk_free_mb = -1;  ///< free space on the data dir's filesystem, checked every second
  int64_t last_disk_check = 0;
  bool draining = false;
  int64_t drain_deadline = 0;
  std::mt19937_64 rng{std::random_device{}()};

  // counters for stats and metrics
  std::map<std::string, int64_t> ingress_counts;                 ///< status -> n
  std::map<std::string, std::map<std::string, int64_t>> outcomes; ///< function -> outcome -> n
  int64_t dead_total = 0;    ///< jobs that went dead since start
  /// Jobs in the dead-letter queue now, as stored: counted at open(), then
  /// changed only by count_dead_letters() as commits land.
  int64_t dead_letters = 0;
  std::map<std::string, duration_histogram> durations;
  int64_t last_stats = 0;
  /// Group commits so far: how many, what they carried, the writer's time.
  struct {
    int64_t commits = 0, requests = 0, updates = 0, commit_us = 0;
  } store_totals;
  /// Cluster frames and the messages they carried (a BATCH carries many), both ways.
  struct {
    int64_t frames_sent = 0, messages_sent = 0, frames_received = 0, messages_received = 0;
  } link_totals;

  mutable std::mutex snapshot_mu;
  nlohmann::json snapshot = nlohmann::json::object();
};

}  // namespace klynaa::broker

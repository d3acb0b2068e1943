// The dispatcher: the broker's side of the cluster protocol
// (docs/cluster-protocol.md) without the socket. It keeps the node sessions
// ("States of a node session"), their credit ("Credit-based flow control"),
// heartbeats and silence ("Heartbeats"), the leases of the jobs it hands out
// ("Leases"), fan-out jobs ("Fan-out jobs") and each node's outbox (JOB frames of
// one pass, sent as one BATCH: "BATCH").
//
// It reads and changes the live queue (queue.hpp); everything else goes through
// its host (core.cpp): frames out, state changes for the open batch, and the
// ends of jobs (completion.hpp decides what they mean). Time comes in as `now`.
// Not thread-safe: owned by the broker loop.
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <map>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "broker/queue.hpp"
#include "broker/stats.hpp"
#include "protocol/cluster.hpp"
#include "protocol/config.hpp"

namespace klynaa::broker {

/// A node connected to the cluster socket.
struct node_session {
  std::string identity;
  std::string name;
  std::set<std::string> kinds;
  int64_t credit = 0;
  int64_t last_seen = 0;
  int64_t last_sent = 0;
  int64_t running = 0;
  nlohmann::json stats = nlohmann::json::object();  ///< its last NODE_STATS, as it sent it
  std::map<std::string, std::string> withdrawn;  ///< kind -> reason the node gave up on it
  /// Fan-out jobs started since, to send here in order (an entry whose job no
  /// longer waits for this node is skipped): dispatch never scans all fan-outs.
  std::deque<std::string> fanout_sends;
  bool batch = false;                ///< it takes BATCH frames (its READY said so)
  std::vector<std::string> outbox;   ///< JOB frames of this dispatch pass, sent as one BATCH
  std::vector<std::string> outbox_jobs;  ///< the ids of the non-fan-out jobs among them
};

/// What the dispatcher needs from the broker around it. Called on the loop thread.
class dispatcher_host {
 public:
  virtual ~dispatcher_host() = default;
  /// Sends one frame to the node with routing id `identity`. False when the node
  /// is unreachable (ROUTER_MANDATORY: EHOSTUNREACH or a full pipe).
  virtual bool send_frame(const std::string& identity, const std::string& frame) = 0;
  /// `j`'s state changed to `s` in the queue (running; ready again when its
  /// dispatch is undone): to be recorded in the open batch, with no history entry.
  virtual void job_changed(live_job& j, job_state s) = 0;
  /// A running job's result `d` arrived under its current lease (a fan-out's
  /// once every node answered). The job is still running in the queue.
  virtual void job_done(live_job& j, const protocol::cluster::done& d, int64_t now) = 0;
  /// A running job's lease is lost for reason `why`. The job is still running in
  /// the queue; a fan-out has been reset to an ordinary job.
  virtual void job_lost(live_job& j, const std::string& why, int64_t now) = 0;
};

class dispatcher {
 public:
  /// `cfg` (cluster.heartbeat_ms, lease_ms, node_timeout_ms) must outlive it.
  dispatcher(job_queue& queue, const protocol::config& cfg, dispatcher_host& host);

  /// One cluster frame from `identity`: a message, or a BATCH of them.
  /// Undecodable frames are logged and ignored.
  void on_frame(const std::string& identity, const void* data, size_t size, int64_t now);

  /// Hands runnable jobs to nodes with credit, round robin: first the fan-out
  /// jobs a node still has to apply, then the next runnable job of a kind it
  /// hosts; then sends every outbox. A node found unreachable is dropped.
  void dispatch(int64_t now);

  /// Heartbeats to quiet nodes, drops silent ones (cluster.node_timeout_ms) and
  /// takes back jobs whose lease expired.
  void check_nodes(int64_t now);

  /// Sends BYE to every node (the broker stops: they reconnect to the next one).
  void say_bye();

  const std::map<std::string, node_session>& nodes() const { return nodes_; }
  const link_totals& link() const { return link_; }

 private:
  void handle(const std::string& identity, const void* data, size_t size, int64_t now, bool in_batch);
  void on_ready(const std::string& identity, const protocol::cluster::ready& r, int64_t now);
  void on_withdraw(node_session& n, const protocol::cluster::withdraw& w, int64_t now);
  void on_done(node_session& n, const protocol::cluster::done& d, int64_t now);
  void fanout_done(const std::string& identity, live_job& j, const protocol::cluster::done& d, int64_t now);
  void fanout_forget_node(const std::string& identity, int64_t now);
  void start_fanout(live_job& j, int64_t now);
  void lose(const std::string& job_id, const std::string& why, int64_t now);
  void drop_node(std::string identity, const std::string& why, int64_t now);  // by value: callers pass map keys
  bool send(const std::string& identity, const std::string& frame);
  bool send_job(const std::string& identity, node_session& n, live_job& j, int64_t now);
  live_job* next_job_for(const std::string& identity, node_session& n, int64_t now);
  /// Sends the node's outbox (one JOB alone, several as one BATCH); false when
  /// the node is unreachable, and then the outbox's jobs are ready again with
  /// their attempt given back (no node saw them).
  bool flush_outbox(const std::string& identity, node_session& n);

  job_queue& queue_;
  const protocol::config& cfg_;
  dispatcher_host& host_;
  std::map<std::string, node_session> nodes_;  ///< identity -> session
  /// Where the next dispatch pass starts among `nodes_` (an identity): after the
  /// node that got the last job, so that jobs arriving one at a time go to
  /// every node in turn, not always to the first (nodes hold many credits).
  std::string dispatch_from_;
  std::set<std::string> fanouts_;  ///< running fan-out job ids
  int64_t lease_counter_ = 0;
  bool unknown_node_told_ = false;  ///< handle(): a BYE went to the sender of this BATCH
  int64_t now_ = 0;                 ///< of the call in progress: a node's last_sent
  link_totals link_;
};

/// The DONE that ends a fan-out job once every node answered: ok when all did,
/// else the worst failure (permanent over transient) with code "fanout".
protocol::cluster::done fanout_result(const live_job& j, int64_t now);

}  // namespace klynaa::broker

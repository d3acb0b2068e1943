// The broker<->node cluster protocol (KJCP/1): message types and their msgpack
// codec. The dialog, frames, states and timing are specified in
// docs/cluster-protocol.md; this header is its code. No I/O.
//
// Every message is ONE ZeroMQ frame holding a msgpack map with a string key "t"
// naming the message. A node's DEALER sends the frame alone; the broker's ROUTER
// sees [node identity, frame].
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

namespace klynaa::protocol::cluster {

inline constexpr int version = 1;

/// N->B: a node (re)registers. Sent first, and again after any reconnect.
struct ready {
  std::string node;                ///< node name (unique in the cluster)
  std::vector<std::string> kinds;  ///< actor kinds hosted: notifier, escrow, geo, scheduler
  int64_t credit = 0;              ///< how many jobs it may hold at once
  bool batch = false;              ///< it takes BATCH frames (optional on the wire; absent = false)
};

/// B->N: registration accepted, with the timing the node must follow.
struct welcome {
  int64_t heartbeat_ms = 1000;  ///< send something at least this often
  int64_t lease_ms = 30000;     ///< a job not reported within this is taken back
  bool batch = false;           ///< the broker takes BATCH frames (optional; absent = false)
};

/// B->N: run one attempt of a job. `lease` identifies this dispatch: a `done`
/// carrying an older lease is recognised as late and has no effect.
struct job {
  std::string job_id;
  std::string function;
  std::string data_json;  ///< the job's data as JSON text
  int64_t attempt = 1;
  int64_t lease = 0;
  int64_t ts_ms = 0;      ///< the originating event's time
  /// A task's job (docs/tasks.md): the path on Django's API the node POSTs to,
  /// and how long one attempt may take. Empty for the built-in functions; on the
  /// wire as `url` and `timeout_ms`, present only for a task.
  std::string task_url{};
  int64_t task_timeout_ms = 0;
};

/// A job created by a job (see nodes/job.hpp child_job).
struct child {
  std::string job_id;
  std::string function;
  std::string data_json;
  int64_t due_ms = 0;
};

/// How one attempt of a job ended (docs/cluster-protocol.md, "Outcomes"). On
/// the wire a DONE's `outcome` key says "ok", "transient" or "permanent";
/// `deferred` travels as "transient" with error_code circuit_open_code (KJCP/1
/// had the string before the enum). Read and write a DONE's outcome with
/// outcome_of() and set_outcome(), never by comparing strings.
enum class outcome {
  ok,         ///< done: its result and children are recorded
  transient,  ///< failed, a later attempt may succeed: retried with backoff; an attempt is spent
  permanent,  ///< failed, no retry can help (other 4xx, invalid data): dead-lettered
  deferred,   ///< not attempted (the node's circuit breaker is open): waits, no attempt spent
};

/// The error_code of a deferred DONE on the wire.
inline constexpr const char* circuit_open_code = "circuit_open";

/// "ok", "transient", "permanent", "deferred": the outcome's name (logs, docs).
const char* to_string(outcome o);

/// The outcome named `name` (to_string's inverse); nullopt for any other text.
std::optional<outcome> parse_outcome(std::string_view name);

/// N->B: one attempt ended; its outcome is outcome_of(done).
struct done {
  std::string job_id;
  int64_t lease = 0;
  std::string outcome;           ///< the wire value: "ok", "transient" or "permanent" (see set_outcome)
  std::string result_json;       ///< for ok: the result as JSON text
  std::string error_code;        ///< for failures
  std::string error_message;
  int64_t http_status = 0;       ///< 0 = none
  int64_t retry_after_ms = -1;   ///< -1 = none
  int64_t duration_ms = 0;
  std::vector<child> children;
  int64_t credit = 0;  ///< job slots this DONE frees at the node: added to its credit
};

/// The outcome a DONE reports: its `outcome`, and deferred for "transient" with
/// error_code circuit_open_code. A DONE that decode() accepted always has one;
/// any other `outcome` text counts as transient.
outcome outcome_of(const done& d);

/// Makes `d` report `o`: sets d.outcome to its wire value ("transient" for
/// deferred) and, for deferred, d.error_code to circuit_open_code.
void set_outcome(done& d, outcome o);

/// N->B: the node can take `n` more jobs (on top of what it was granted).
struct credit {
  int64_t n = 0;
};

/// Either way: I am alive. Any message counts as a heartbeat too.
/// N->B may list `leases`: the leases of every job the node holds (queued or
/// running). The broker renews each one it granted to this node, so that a
/// job a live node holds is never taken back while it waits or runs
/// (docs/cluster-protocol.md, "Leases"). Empty: nothing to renew.
struct heartbeat {
  std::vector<int64_t> leases;
};

/// Either way: I am leaving (N: after handing back what it holds; B: shutting down,
/// reconnect later). `jobs` lists jobs handed back unfinished (N->B).
struct bye {
  std::vector<std::string> jobs;
  /// B->N, optional on the wire ("" = none): why. "standby": this broker does
  /// not hold the store's lease (docs/deployment.md), try the next endpoint now.
  std::string reason = {};
};

/// N->B: metrics and state of a node, merged into the broker's admin endpoint.
struct node_stats {
  std::string json;  ///< free-form JSON object (see docs/cluster-protocol.md)
};

/// N->B: the node stops hosting `kinds` (its supervisor gave up on them after
/// too many restarts) and takes back `credit`; `jobs` are jobs of those kinds it
/// held but did not start, handed back to run elsewhere.
struct withdraw {
  std::vector<std::string> kinds;
  std::string reason;
  int64_t credit = 0;
  std::vector<std::string> jobs;
};

/// Either way, to a peer that said it takes them (READY / WELCOME `batch`):
/// several messages in one frame, in order. Each of `frames` is one complete
/// encoded message, never a batch itself. Under load the broker sends many JOBs
/// in one frame and a node many DONEs, so that the per-frame costs (ZeroMQ, the
/// node's I/O thread and its hand-off to the gateway) are paid once per batch.
struct batch {
  std::vector<std::string> frames;
};

/// The most frames one BATCH carries; a sender starts a new one after this many.
inline constexpr size_t max_batch = 1024;

using message = std::variant<ready, welcome, job, done, credit, heartbeat, bye, node_stats, withdraw, batch>;

/// Encodes one message as a msgpack frame.
std::string encode(const message& m);

/// Encodes `frames` (each one encoded message, not a batch) as one BATCH frame,
/// without copying them into a `batch` first.
std::string encode_batch(const std::vector<std::string>& frames);

/// Decodes one frame. Returns nullopt (and sets `error`) on anything that is not a
/// well-formed message of this protocol; never throws.
std::optional<message> decode(const void* data, size_t size, std::string* error = nullptr);

/// The message's name on the wire ("ready", "job", ...).
const char* name_of(const message& m);

}  // namespace klynaa::protocol::cluster

// Admission (admission.hpp): the checks in their documented order, one
// rejection builder for all of them, and the derivation of the write request.
#include "broker/admission.hpp"

#include "protocol/jobs.hpp"
#include "protocol/version.hpp"

namespace klynaa::broker {

namespace {

protocol::reply refuse(const std::string& id, protocol::error_code code, std::string message,
                       int64_t retry_after_ms) {
  auto rep = protocol::rejection(id, code, std::move(message));
  rep.retry_after_ms = retry_after_ms;
  return rep;
}

/// The first check of docs/ingress-protocol.md's `overloaded` / `shutting_down`
/// rows that fails, or nullopt when the broker can take the request.
std::optional<protocol::reply> first_refusal(const std::string& id, const admission_state& s,
                                             const protocol::config& cfg) {
  using protocol::error_code;
  if (s.draining)
    return refuse(id, error_code::shutting_down, "the broker is shutting down; send again to the next broker", 1000);
  if (static_cast<int64_t>(s.pending) >= cfg.ingress.max_pending)
    return refuse(id, error_code::overloaded,
                  "the broker holds " + std::to_string(s.pending) +
                      " pending jobs (ingress.max_pending); retry later",
                  1000);
  if (s.commit_failures > 0)  // fail fast until a probe commit succeeds (core.cpp maybe_submit)
    return store_failure_rejection(id, s.last_commit_error);
  if (s.disk_free_mb >= 0 && s.disk_free_mb < cfg.ingress.min_free_disk_mb)
    return refuse(id, error_code::overloaded,
                  "the broker's disk has " + std::to_string(s.disk_free_mb) +
                      " MB free, under ingress.min_free_disk_mb (" +
                      std::to_string(cfg.ingress.min_free_disk_mb) + "); nothing was stored, retry later",
                  5000);
  return std::nullopt;
}

}  // namespace

admission admit(const protocol::request& req, const admission_state& state, const protocol::config& cfg,
                int64_t now, const std::function<int64_t()>& next_seq) {
  admission a;
  if (req.operation == protocol::op::ping) {
    a.reply = protocol::pong_reply(req.id);
    return a;
  }
  a.reply = first_refusal(req.id, state, cfg);
  if (a.reply) return a;
  auto derived = protocol::derive_jobs(req, cfg.escrow.hold_seconds * 1000);
  new_request& nr = a.write;
  nr.id = req.id;
  nr.op = static_cast<int>(req.operation);
  nr.type = req.type;
  nr.ts_ms = req.ts_ms;
  nr.accepted_ms = now;
  nr.closes_pickup = derived.closes_pickup;
  for (auto& js : derived.jobs) {
    job_record r;
    r.id = js.id;
    r.request_id = req.id;
    r.function = js.function;
    r.data_json = js.data.dump();
    r.ordering_key = js.ordering_key;
    r.seq = next_seq();
    r.state = job_state::ready;
    r.due_ms = js.due_ms;
    r.ts_ms = req.ts_ms;
    r.created_ms = now;
    r.auto_release = js.auto_release;
    nr.jobs.push_back(std::move(r));
  }
  return a;
}

protocol::reply store_failure_rejection(const std::optional<std::string>& id, const std::string& store_error) {
  auto rep = protocol::rejection(id, protocol::error_code::overloaded,
                                 "the broker cannot write to its store (" + store_error +
                                     "); nothing was stored, retry later");
  rep.retry_after_ms = 1000;
  return rep;
}

protocol::reply frame_layout_rejection(size_t frames) {
  return protocol::rejection(std::nullopt, protocol::error_code::malformed,
                             "a request is one msgpack frame, optionally preceded by one "
                             "empty delimiter frame; got " +
                                 std::to_string(frames) + " frames");
}

}  // namespace klynaa::broker

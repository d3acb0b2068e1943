// Client requests on the ingress ROUTER (contract §1): frames, decoding,
// validation, the open batch, and every reply.
#include "broker/core_impl.hpp"
#include "protocol/version.hpp"

#include "protocol/jobs.hpp"
#include "protocol/log.hpp"

namespace klynaa::broker {

namespace {
constexpr const char* component = "ingress";
constexpr size_t max_per_poll = 4096;  // then let the cluster and the writer have a turn
}  // namespace

void broker_core::impl::on_ingress() {
  const int64_t now = wall_ms();
  std::vector<zmq::message_t> frames;
  for (size_t n = 0; n < max_per_poll; ++n) {
    frames.clear();
    zmq::message_t m;
    if (!ingress.recv(m, zmq::recv_flags::dontwait)) return;
    frames.push_back(std::move(m));
    while (frames.back().more()) {
      zmq::message_t part;
      if (!ingress.recv(part, zmq::recv_flags::dontwait)) break;
      frames.push_back(std::move(part));
    }
    handle_frames(frames, now);
  }
}

// [identity, payload] (DEALER) or [identity, "", payload] (REQ, or a DEALER that
// sends a delimiter). Anything else is malformed; the reply keeps a delimiter when
// the second frame is empty.
void broker_core::impl::handle_frames(std::vector<zmq::message_t>& frames, int64_t now) {
  client_ref c;
  c.identity = frames[0].to_string();
  const bool has_delim = frames.size() >= 2 && frames[1].size() == 0;
  c.delimited = has_delim;
  const size_t expected = has_delim ? 3 : 2;
  if (frames.size() != expected) {
    ++ingress_counts["rejected"];
    send_reply(c, protocol::rejection(std::nullopt, protocol::error_code::malformed,
                                      "a request is one msgpack frame, optionally preceded by one "
                                      "empty delimiter frame; got " +
                                          std::to_string(frames.size() - 1) + " frames"));
    return;
  }
  auto& payload = frames.back();
  protocol::decode_limits limits;
  limits.max_bytes = static_cast<size_t>(opts.cfg.ingress.max_bytes);
  auto d = protocol::decode_request(payload.data(), payload.size(), now, limits);
  if (d.error) {
    protocol::reply rep;
    rep.id = d.id;
    rep.status = protocol::reply_status::rejected;
    rep.error = d.error;
    ++ingress_counts["rejected"];
    send_reply(c, rep);
    return;
  }
  handle_request(c, std::move(*d.req), now);
}

void broker_core::impl::handle_request(const client_ref& c, protocol::request&& req, int64_t now) {
  if (req.operation == protocol::op::ping) {
    ++ingress_counts["pong"];
    send_reply(c, protocol::pong_reply(req.id));
    return;
  }
  if (draining) {
    auto rep = protocol::rejection(req.id, protocol::error_code::shutting_down,
                                   "the broker is shutting down; send again to the next broker");
    rep.retry_after_ms = 1000;
    ++ingress_counts["rejected"];
    send_reply(c, rep);
    return;
  }
  if (static_cast<int64_t>(queue.size()) >= opts.cfg.ingress.max_pending) {
    auto rep = protocol::rejection(req.id, protocol::error_code::overloaded,
                                   "the broker holds " + std::to_string(queue.size()) +
                                       " pending jobs (ingress.max_pending); retry later");
    rep.retry_after_ms = 1000;
    ++ingress_counts["rejected"];
    send_reply(c, rep);
    return;
  }
  if (commit_failures > 0) {  // fail fast until a probe commit succeeds (core.cpp maybe_submit)
    auto rep = protocol::rejection(req.id, protocol::error_code::overloaded,
                                   "the broker cannot write to its store (" + last_commit_error +
                                       "); nothing was stored, retry later");
    rep.retry_after_ms = 1000;
    ++ingress_counts["rejected"];
    send_reply(c, rep);
    return;
  }
  if (disk_free_mb >= 0 && disk_free_mb < opts.cfg.ingress.min_free_disk_mb) {
    auto rep = protocol::rejection(req.id, protocol::error_code::overloaded,
                                   "the broker's disk has " + std::to_string(disk_free_mb) +
                                       " MB free, under ingress.min_free_disk_mb (" +
                                       std::to_string(opts.cfg.ingress.min_free_disk_mb) +
                                       "); nothing was stored, retry later");
    rep.retry_after_ms = 5000;
    ++ingress_counts["rejected"];
    send_reply(c, rep);
    return;
  }
  auto derived = protocol::derive_jobs(req, opts.cfg.escrow.hold_seconds * 1000);
  new_request nr;
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
  current.b.requests.push_back(std::move(nr));
  pending_request p;
  p.client = c;
  p.id = req.id;
  p.op = req.operation;
  p.timeout_ms = req.timeout_ms;
  current.reqs.push_back(std::move(p));
}

void broker_core::impl::send_reply(const client_ref& c, const protocol::reply& r) {
  auto body = protocol::encode_reply(r);
  try {
    if (!ingress.send(zmq::buffer(c.identity), zmq::send_flags::sndmore | zmq::send_flags::dontwait))
      return;
    if (c.delimited) ingress.send(zmq::message_t(), zmq::send_flags::sndmore);
    ingress.send(zmq::buffer(body), zmq::send_flags::none);
  } catch (const zmq::error_t& e) {
    // EHOSTUNREACH: the client is gone (ROUTER_MANDATORY). Its request, if
    // accepted, is stored; the client resends the same id and gets `duplicate`.
    log::debug(component, "reply not delivered", {{"error", e.what()}});
  }
}

void broker_core::impl::add_waiter(const pending_request& p, const std::string& job_id) {
  waiter w;
  w.client = p.client;
  w.request_id = p.id;
  w.deadline = wall_ms() + p.timeout_ms;
  waiters.emplace(job_id, std::move(w));
}

protocol::reply broker_core::impl::outcome_reply(const std::string& request_id,
                                                 const job_record& j) const {
  protocol::reply rep;
  rep.id = request_id;
  if (j.state == job_state::done) {
    rep.status = protocol::reply_status::ok;
    rep.result = nlohmann::json::parse(j.result_json.empty() ? "{}" : j.result_json, nullptr, false);
    return rep;
  }
  rep.status = protocol::reply_status::failed;
  protocol::error_info e;
  auto err = nlohmann::json::parse(j.last_error_json.empty() ? "{}" : j.last_error_json, nullptr, false);
  e.code = err.value("kind", "exhausted") == "permanent" ? "permanent" : "exhausted";
  e.message = err.value("message", "the job failed");
  if (err.contains("http_status") && err["http_status"].is_number_integer())
    e.http_status = err["http_status"].get<int>();
  rep.error = e;
  return rep;
}

void broker_core::impl::answer_duplicate(const pending_request& p, const request_outcome& o) {
  ++ingress_counts["duplicate"];
  const bool invoke_again = p.op == protocol::op::invoke &&
                            o.original_op == static_cast<int>(protocol::op::invoke) &&
                            !o.job_ids.empty();
  if (invoke_again) {
    const auto& job_id = o.job_ids.front();
    for (auto& j : o.existing) {
      if (j.id == job_id && (j.state == job_state::done || j.state == job_state::dead)) {
        // Finished and recorded: unless a later end of it is still being
        // committed (a replay), the stored outcome is the answer.
        if (!queue.find(job_id)) {
          send_reply(p.client, outcome_reply(p.id, j));
          return;
        }
      }
    }
    add_waiter(p, job_id);
    return;
  }
  protocol::reply rep;
  rep.id = p.id;
  rep.status = protocol::reply_status::duplicate;
  rep.jobs = o.job_ids;
  send_reply(p.client, rep);
}

}  // namespace klynaa::broker

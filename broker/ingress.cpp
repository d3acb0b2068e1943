// Client requests on the ingress ROUTER (docs/ingress-protocol.md): frames and
// decoding, then admission (admission.hpp) into the open batch; every reply,
// and the invoke waiters that wait for a job's end.
#include "broker/core_impl.hpp"

#include "protocol/log.hpp"

namespace klynaa::broker {

namespace {
constexpr const char* component = "ingress";
constexpr size_t max_per_poll = 4096;  // then let the cluster and the writer have a turn
}  // namespace

void broker_core::impl::on_ingress() {
  const int64_t now = now_ms();
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
    ++counters.ingress["rejected"];
    send_reply(c, frame_layout_rejection(frames.size() - 1));
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
    ++counters.ingress["rejected"];
    send_reply(c, rep);
    return;
  }
  handle_request(c, std::move(*d.req), now);
}

void broker_core::impl::handle_request(const client_ref& c, protocol::request&& req, int64_t now) {
  admission_state state;
  state.draining = draining;
  state.pending = queue.size();
  state.commit_failures = commit_failures;
  state.last_commit_error = last_commit_error;
  state.disk_free_mb = disk_free_mb;
  auto a = admit(req, state, opts.cfg, now, [this] { return next_seq(); });
  if (a.reply) {  // pong or rejected
    ++counters.ingress[std::string(protocol::to_string(a.reply->status))];
    send_reply(c, *a.reply);
    return;
  }
  current.b.requests.push_back(std::move(a.write));
  pending_request p;
  p.client = c;
  p.id = req.id;
  p.op = req.operation;
  p.timeout_ms = req.timeout_ms;
  p.received_us = steady_us();
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
  w.deadline = now_ms() + p.timeout_ms;
  waiters.emplace(job_id, std::move(w));
}

protocol::reply broker_core::impl::outcome_reply(const std::string& request_id, const job_record& j) const {
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
  ++counters.ingress["duplicate"];
  const bool invoke_again = p.op == protocol::op::invoke &&
                            o.original_op == static_cast<int>(protocol::op::invoke) && !o.job_ids.empty();
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

void broker_core::impl::notify_waiters(const finished_note& n) {
  auto range = waiters.equal_range(n.job_id);
  for (auto it = range.first; it != range.second; ++it) {
    protocol::reply rep;
    rep.id = it->second.request_id;
    rep.status = n.status;
    if (n.status == protocol::reply_status::ok)
      rep.result = nlohmann::json::parse(n.result_json.empty() ? "{}" : n.result_json, nullptr, false);
    rep.error = n.error;
    send_reply(it->second.client, rep);
  }
  waiters.erase(n.job_id);
}

void broker_core::impl::expire_waiters(int64_t now) {
  for (auto it = waiters.begin(); it != waiters.end();) {
    if (it->second.deadline <= now) {
      protocol::reply rep;
      rep.id = it->second.request_id;
      rep.status = protocol::reply_status::timeout;
      rep.jobs = {it->first};
      send_reply(it->second.client, rep);
      it = waiters.erase(it);
    } else {
      ++it;
    }
  }
}

}  // namespace klynaa::broker

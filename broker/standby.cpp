// A standby broker's endpoints (standby.hpp): answer so that peers move on.
#include "broker/standby.hpp"

#include <zmq.hpp>

#include <map>
#include <mutex>
#include <optional>
#include <thread>

#include "protocol/cluster.hpp"
#include "protocol/log.hpp"
#include "protocol/message.hpp"
#include "protocol/version.hpp"

namespace klynaa::broker {

namespace {
constexpr const char* component = "standby";

int64_t wall_ms() {
  using namespace std::chrono;
  return duration_cast<milliseconds>(system_clock::now().time_since_epoch()).count();
}

/// All frames of one message, or nullopt when none is waiting.
std::optional<std::vector<zmq::message_t>> recv_all(zmq::socket_t& s) {
  zmq::message_t m;
  if (!s.recv(m, zmq::recv_flags::dontwait)) return std::nullopt;
  std::vector<zmq::message_t> frames;
  frames.push_back(std::move(m));
  while (frames.back().more()) {
    zmq::message_t part;
    if (!s.recv(part, zmq::recv_flags::dontwait)) break;
    frames.push_back(std::move(part));
  }
  return frames;
}
}  // namespace

struct standby_endpoints::impl {
  standby_options opts;
  // Declared first, destroyed last: the context outlives every socket; the ZAP
  // handler is bound before the CURVE sockets and stopped after them.
  std::unique_ptr<zmq::context_t> ctx = std::make_unique<zmq::context_t>();
  zap_handler zap;
  std::unique_ptr<zmq::socket_t> ingress;
  std::unique_ptr<zmq::socket_t> cluster;
  std::string ingress_endpoint;
  std::vector<std::string> cluster_endpoints;
  mutable std::mutex counts_mutex;  ///< counts() is read by the admin thread
  std::map<std::string, int64_t> counts_;

  void count(const char* what) {
    std::lock_guard<std::mutex> g(counts_mutex);
    ++counts_[what];
  }

  explicit impl(standby_options o) : opts(std::move(o)) {}

  void reply(const std::string& identity, bool delimited, const protocol::reply& r) {
    auto body = protocol::encode_reply(r);
    try {
      if (!ingress->send(zmq::buffer(identity), zmq::send_flags::sndmore | zmq::send_flags::dontwait)) return;
      if (delimited) ingress->send(zmq::message_t(), zmq::send_flags::sndmore);
      ingress->send(zmq::buffer(body), zmq::send_flags::none);
    } catch (const zmq::error_t& e) {
      log::debug(component, "reply not delivered", {{"error", e.what()}});
    }
  }

  // Same frame rules as broker_core (ingress.cpp handle_frames).
  void on_ingress_message(std::vector<zmq::message_t>& frames) {
    const std::string identity = frames[0].to_string();
    const bool delimited = frames.size() >= 2 && frames[1].size() == 0;
    if (frames.size() != (delimited ? 3u : 2u)) {
      count("rejected");
      reply(identity, delimited,
            protocol::rejection(std::nullopt, protocol::error_code::malformed,
                                "a request is one msgpack frame, optionally preceded by one empty "
                                "delimiter frame; got " + std::to_string(frames.size() - 1) + " frames"));
      return;
    }
    protocol::decode_limits limits;
    limits.max_bytes = static_cast<size_t>(opts.cfg.ingress.max_bytes);
    auto& payload = frames.back();
    auto d = protocol::decode_request(payload.data(), payload.size(), wall_ms(), limits);
    if (d.error) {
      protocol::reply rep;
      rep.id = d.id;
      rep.status = protocol::reply_status::rejected;
      rep.error = d.error;
      count("rejected");
      reply(identity, delimited, rep);
      return;
    }
    if (d.req->operation == protocol::op::ping) {
      count("pong");
      reply(identity, delimited, protocol::pong_reply(d.req->id));
      return;
    }
    auto rep = protocol::rejection(d.req->id, protocol::error_code::overloaded, standby_message);
    rep.retry_after_ms = opts.cfg.store.lease_ms / 2;
    count("standby");
    reply(identity, delimited, rep);
  }

  void on_cluster_message(std::vector<zmq::message_t>& frames) {
    if (frames.size() < 2) return;
    auto& last = frames.back();
    std::string error;
    auto m = protocol::cluster::decode(last.data(), last.size(), &error);
    if (!m || !std::holds_alternative<protocol::cluster::ready>(*m)) return;  // only READY is answered
    protocol::cluster::bye b;
    b.reason = "standby";
    auto body = protocol::cluster::encode(b);
    try {
      cluster->send(zmq::buffer(frames[0].to_string()), zmq::send_flags::sndmore | zmq::send_flags::dontwait);
      cluster->send(zmq::buffer(body), zmq::send_flags::none);
      count("bye");
      log::debug(component, "told a node to try another broker",
                 {{"node", std::get<protocol::cluster::ready>(*m).node}});
    } catch (const zmq::error_t& e) {
      log::debug(component, "bye not delivered", {{"error", e.what()}});
    }
  }

  void close() {
    if (ingress) ingress->close();
    if (cluster) cluster->close();
    ingress.reset();
    cluster.reset();
    zap.stop();
    if (ctx) ctx->close();  // waits for every socket: the ports are free afterwards
    ctx.reset();
  }
};

standby_endpoints::standby_endpoints(standby_options o) : impl_(std::make_unique<impl>(std::move(o))) {}
standby_endpoints::~standby_endpoints() { close(); }

bool standby_endpoints::open(std::string& err) {
  auto& d = *impl_;
  std::vector<zap_handler::domain> domains;
  if (d.opts.ingress_curve.enabled())
    domains.push_back({"ingress", d.opts.ingress_curve.allow_file, d.opts.ingress_curve.allow_key});
  if (d.opts.cluster_curve.enabled() && !d.opts.cluster_binds.empty())
    domains.push_back({"cluster", d.opts.cluster_curve.allow_file, d.opts.cluster_curve.allow_key});
  if (!d.zap.start(*d.ctx, domains, err)) return false;
  try {
    d.ingress = std::make_unique<zmq::socket_t>(*d.ctx, zmq::socket_type::router);
    if (d.opts.ingress_curve.enabled()) make_curve_server(*d.ingress, d.opts.ingress_curve, "ingress");
    d.ingress->set(zmq::sockopt::linger, 0);
    d.ingress->set(zmq::sockopt::router_mandatory, 1);
    d.ingress->set(zmq::sockopt::maxmsgsize, d.opts.cfg.ingress.max_bytes * 16);
    d.ingress->bind(d.opts.ingress_bind);
    d.ingress_endpoint = d.ingress->get(zmq::sockopt::last_endpoint);
  } catch (const zmq::error_t& e) {
    err = "cannot bind the ingress to " + d.opts.ingress_bind + " (ingress.bind / --ingress): " + e.what();
    return false;
  }
  if (d.opts.cluster_binds.empty()) return true;
  try {
    d.cluster = std::make_unique<zmq::socket_t>(*d.ctx, zmq::socket_type::router);
    if (d.opts.cluster_curve.enabled()) make_curve_server(*d.cluster, d.opts.cluster_curve, "cluster");
    d.cluster->set(zmq::sockopt::linger, 0);
    d.cluster->set(zmq::sockopt::router_mandatory, 1);
    for (auto& e : d.opts.cluster_binds) {
      d.cluster->bind(e);
      d.cluster_endpoints.push_back(d.cluster->get(zmq::sockopt::last_endpoint));
    }
  } catch (const zmq::error_t& e) {
    err = "cannot bind the cluster endpoint (cluster.bind / --cluster): " + std::string(e.what());
    return false;
  }
  return true;
}

void standby_endpoints::serve_for(std::chrono::milliseconds dur) {
  auto& d = *impl_;
  if (!d.ingress) {
    std::this_thread::sleep_for(dur);
    return;
  }
  const auto end = std::chrono::steady_clock::now() + dur;
  for (;;) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(end - std::chrono::steady_clock::now());
    if (left.count() <= 0) return;
    zmq::pollitem_t items[] = {{d.ingress->handle(), 0, ZMQ_POLLIN, 0},
                               {d.cluster ? d.cluster->handle() : nullptr, 0, ZMQ_POLLIN, 0}};
    zmq::poll(items, d.cluster ? 2 : 1, left);
    for (int n = 0; n < 1000; ++n) {
      auto frames = recv_all(*d.ingress);
      if (!frames) break;
      d.on_ingress_message(*frames);
    }
    if (d.cluster)
      for (int n = 0; n < 1000; ++n) {
        auto frames = recv_all(*d.cluster);
        if (!frames) break;
        d.on_cluster_message(*frames);
      }
  }
}

nlohmann::json standby_endpoints::bound_endpoints() const {
  return {{"ingress", impl_->ingress_endpoint}, {"cluster", impl_->cluster_endpoints}};
}

nlohmann::json standby_endpoints::counts() const {
  nlohmann::json j = nlohmann::json::object();
  std::lock_guard<std::mutex> g(impl_->counts_mutex);
  for (auto& [k, v] : impl_->counts_) j[k] = v;
  return j;
}

void standby_endpoints::close() { impl_->close(); }

}  // namespace klynaa::broker

// See io_thread.hpp. The thread polls with a short timeout so that stop() is
// noticed within ~50 ms; frames are moved, never shared.
#include "nodes/io_thread.hpp"

#include <array>
#include <chrono>
#include <cstring>
#include <vector>

#include <zmq_addon.hpp>

#include "protocol/log.hpp"

namespace klynaa::nodes {

namespace {

constexpr int poll_timeout_ms = 50;
constexpr int reconnect_ivl_ms = 100;
constexpr int reconnect_ivl_max_ms = 1000;

std::string unique_out_endpoint(const void* self) {
  static std::atomic<uint64_t> counter{0};
  return "inproc://klynaa-node-out-" + std::to_string(++counter) + "-"
         + std::to_string(reinterpret_cast<uintptr_t>(self));
}

}  // namespace

std::vector<std::string> io_thread::split_endpoints(const std::string& list) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start <= list.size()) {
    size_t end = list.find(',', start);
    if (end == std::string::npos) end = list.size();
    auto item = list.substr(start, end - start);
    const auto first = item.find_first_not_of(" \t");
    const auto last = item.find_last_not_of(" \t");
    if (first != std::string::npos) out.push_back(item.substr(first, last - first + 1));
    start = end + 1;
  }
  return out;
}

io_thread::io_thread(zmq::context_t& ctx, std::string broker_endpoint, frame_handler on_frame,
                     curve_keys curve)
    : ctx_(ctx),
      endpoints_(split_endpoints(broker_endpoint)),
      out_endpoint_(unique_out_endpoint(this)),
      on_frame_(std::move(on_frame)),
      curve_(std::move(curve)) {
  if (endpoints_.empty())
    endpoints_.push_back(broker_endpoint);  // "": connect() throws zmq::error_t (EINVAL)
}

io_thread::~io_thread() {
  stop();
}

void io_thread::start() {
  if (thread_.joinable() || stopping_)
    return;
  pull_ = std::make_unique<zmq::socket_t>(ctx_, zmq::socket_type::pull);
  pull_->set(zmq::sockopt::linger, 0);
  pull_->set(zmq::sockopt::rcvhwm, 0);  // the gateway must never block on it
  pull_->bind(out_endpoint_);
  dealer_ = std::make_unique<zmq::socket_t>(ctx_, zmq::socket_type::dealer);
  dealer_->set(zmq::sockopt::linger, 0);
  dealer_->set(zmq::sockopt::reconnect_ivl, reconnect_ivl_ms);
  dealer_->set(zmq::sockopt::reconnect_ivl_max, reconnect_ivl_max_ms);
  if (curve_.enabled()) {
    dealer_->set(zmq::sockopt::curve_serverkey, curve_.server_key);
    dealer_->set(zmq::sockopt::curve_publickey, curve_.public_key);
    dealer_->set(zmq::sockopt::curve_secretkey, curve_.secret_key);
    // Handshake failures are otherwise silent: the node would only see no WELCOME.
    const std::string monitor_endpoint = out_endpoint_ + "-monitor";
    if (zmq_socket_monitor(dealer_->handle(), monitor_endpoint.c_str(),
                           ZMQ_EVENT_HANDSHAKE_FAILED_AUTH | ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL |
                               ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL) == 0) {
      monitor_ = std::make_unique<zmq::socket_t>(ctx_, zmq::socket_type::pair);
      monitor_->set(zmq::sockopt::linger, 0);
      monitor_->connect(monitor_endpoint);
    }
  }
  // No ZMQ_IMMEDIATE: while the broker is away, frames (DONE above all) wait in
  // the pipe and go out after the reconnect; the broker ignores stale leases.
  dealer_->connect(endpoint());
  // Creating the thread is a memory barrier: the sockets change owner here.
  thread_ = std::thread([this] { run(); });
}

void io_thread::stop(int flush_ms) {
  flush_ms_ = flush_ms;
  stopping_ = true;
  if (thread_.joinable())
    thread_.join();
  // Not started, or already closed by run().
  pull_.reset();
  dealer_.reset();
  monitor_.reset();
}

void io_thread::run() {
  std::vector<zmq::pollitem_t> items{{
      {dealer_->handle(), 0, ZMQ_POLLIN, 0},
      {pull_->handle(), 0, ZMQ_POLLIN, 0},
  }};
  if (monitor_)
    items.push_back({monitor_->handle(), 0, ZMQ_POLLIN, 0});
  while (!stopping_) {
    try {
      zmq::poll(items.data(), items.size(), std::chrono::milliseconds{poll_timeout_ms});
      if (items[0].revents & ZMQ_POLLIN)
        receive_incoming();
      if (items[1].revents & ZMQ_POLLIN)
        forward_outgoing();
      if (items.size() > 2 && (items[2].revents & ZMQ_POLLIN))
        receive_events();
    } catch (const zmq::error_t& e) {
      if (e.num() == ETERM)
        break;
      log::error("node", "cluster socket error", {{"error", e.what()}});
    }
  }
  // The gateway put its BYE into the PULL socket before stop() was called:
  // send it (and anything before it) now.
  try {
    forward_outgoing();
    dealer_->set(zmq::sockopt::linger, flush_ms_);
  } catch (const zmq::error_t& e) {
    log::warning("node", "could not flush the last frames to the broker", {{"error", e.what()}});
  }
  pull_.reset();
  dealer_.reset();
  monitor_.reset();
}

void io_thread::receive_events() {
  for (;;) {
    std::vector<zmq::message_t> parts;
    auto got = zmq::recv_multipart(*monitor_, std::back_inserter(parts), zmq::recv_flags::dontwait);
    if (!got || parts.empty())
      return;
    if (parts[0].size() < 6)
      continue;
    uint16_t event = 0;
    uint32_t value = 0;
    std::memcpy(&event, parts[0].data(), 2);
    std::memcpy(&value, static_cast<const char*>(parts[0].data()) + 2, 4);
    const int64_t now = std::chrono::duration_cast<std::chrono::milliseconds>(
                            std::chrono::steady_clock::now().time_since_epoch()).count();
    if (last_refusal_log_ms_ != 0 && now - last_refusal_log_ms_ < 30000)
      continue;  // ZeroMQ reconnects every second: one line per 30 s is enough
    last_refusal_log_ms_ = now;
    if (event == ZMQ_EVENT_HANDSHAKE_FAILED_AUTH)
      log::warning("node", "the broker refused this node's CURVE key: add it to the broker's "
                   "cluster.curve_allow_file",
                   {{"endpoint", endpoint()}, {"public_key", curve_.public_key}, {"zap_status", value}});
    else
      log::warning("node", "CURVE handshake with the broker failed: check that cluster.curve_server_public_file "
                   "holds this broker's public key and that its cluster endpoint has curve = true",
                   {{"endpoint", endpoint()}, {"event", event}, {"error", value}});
  }
}

void io_thread::receive_incoming() {
  // Drain what is there now; a broker frame is one part (a leading empty
  // delimiter from a REQ-style peer is tolerated: the last part counts).
  for (;;) {
    std::vector<zmq::message_t> parts;
    auto got = zmq::recv_multipart(*dealer_, std::back_inserter(parts), zmq::recv_flags::dontwait);
    if (!got || parts.empty())
      return;
    on_frame_(parts.back().to_string());
  }
}

void io_thread::rotate() {
  if (endpoints_.size() < 2)
    return;
  try {
    dealer_->disconnect(endpoint());
  } catch (const zmq::error_t&) {  // not connected (any more): nothing to undo
  }
  current_ = (current_ + 1) % endpoints_.size();
  dealer_->connect(endpoint());
}

void io_thread::forward_outgoing() {
  for (;;) {
    zmq::message_t msg;
    if (!pull_->recv(msg, zmq::recv_flags::dontwait))
      return;
    if (msg.size() == 1 && *static_cast<const char*>(msg.data()) == rotate_frame) {
      rotate();
      continue;
    }
    if (!dealer_->send(msg, zmq::send_flags::dontwait))
      log::warning("node", "dropped a frame to the broker: send queue full",
                   {{"endpoint", endpoint()}, {"bytes", msg.size()}});
  }
}

}  // namespace klynaa::nodes

// See io_thread.hpp. The thread polls with a short timeout so that stop() is
// noticed within ~50 ms; frames are moved, never shared.
#include "nodes/io_thread.hpp"

#include <array>
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

io_thread::io_thread(zmq::context_t& ctx, std::string broker_endpoint, frame_handler on_frame)
    : ctx_(ctx),
      broker_endpoint_(std::move(broker_endpoint)),
      out_endpoint_(unique_out_endpoint(this)),
      on_frame_(std::move(on_frame)) {}

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
  // No ZMQ_IMMEDIATE: while the broker is away, frames (DONE above all) wait in
  // the pipe and go out after the reconnect; the broker ignores stale leases.
  dealer_->connect(broker_endpoint_);
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
}

void io_thread::run() {
  std::array<zmq::pollitem_t, 2> items{{
      {dealer_->handle(), 0, ZMQ_POLLIN, 0},
      {pull_->handle(), 0, ZMQ_POLLIN, 0},
  }};
  while (!stopping_) {
    try {
      zmq::poll(items.data(), items.size(), std::chrono::milliseconds{poll_timeout_ms});
      if (items[0].revents & ZMQ_POLLIN)
        receive_incoming();
      if (items[1].revents & ZMQ_POLLIN)
        forward_outgoing();
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

void io_thread::forward_outgoing() {
  for (;;) {
    zmq::message_t msg;
    if (!pull_->recv(msg, zmq::recv_flags::dontwait))
      return;
    if (!dealer_->send(msg, zmq::send_flags::dontwait))
      log::warning("node", "dropped a frame to the broker: send queue full",
                   {{"endpoint", broker_endpoint_}, {"bytes", msg.size()}});
  }
}

}  // namespace klynaa::nodes

// A broker for tests: a ROUTER socket that speaks the cluster protocol just
// enough to drive one node. The test thread pumps it; every wait is bounded.
#pragma once

#include <array>
#include <chrono>
#include <functional>
#include <string>
#include <thread>
#include <variant>
#include <vector>

#include <catch2/catch.hpp>
#include <zmq.hpp>
#include <zmq_addon.hpp>

#include "protocol/cluster.hpp"

namespace klynaa::testing {

namespace cl = protocol::cluster;
using namespace std::chrono_literals;

class fake_broker {
 public:
  /// Binds a ROUTER to `endpoint` ("inproc://..." in the node's context, or
  /// "tcp://127.0.0.1:*" for an ephemeral port: see endpoint()).
  fake_broker(zmq::context_t& ctx, const std::string& endpoint) : router_(ctx, zmq::socket_type::router) {
    router_.set(zmq::sockopt::linger, 0);
    router_.bind(endpoint);
    endpoint_ = router_.get(zmq::sockopt::last_endpoint);
  }

  /// The bound endpoint, with the real port for tcp.
  const std::string& endpoint() const { return endpoint_; }

  int64_t heartbeat_ms = 50;  ///< sent in WELCOME, and the interval of our HBs
  int64_t lease_ms = 30000;
  bool auto_welcome = true;   ///< answer each READY with WELCOME
  bool standby = false;       ///< answer each READY with BYE "standby" instead (a standby broker)
  bool heartbeats = true;     ///< send HB to the node every heartbeat_ms
  bool batch = false;         ///< WELCOME says this broker takes BATCH frames

  /// BATCH frames received; their messages are in `received` one by one.
  int batches_received = 0;

  /// Everything the node sent, in order.
  std::vector<cl::message> received;

  /// Sends `m` to the node that spoke last.
  void send(const cl::message& m) {
    REQUIRE_FALSE(identity_.empty());
    auto frame = cl::encode(m);
    std::array<zmq::const_buffer, 2> parts{zmq::buffer(identity_), zmq::buffer(frame)};
    REQUIRE(zmq::send_multipart(router_, parts));
  }

  /// Pumps the socket until `pred()` holds or `timeout` passes; returns pred().
  bool wait_until(const std::function<bool()>& pred, std::chrono::milliseconds timeout) {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    while (!pred()) {
      if (std::chrono::steady_clock::now() >= deadline)
        return false;
      pump_once(10ms);
    }
    return true;
  }

  /// Pumps the socket for `d`.
  void pump_for(std::chrono::milliseconds d) {
    auto deadline = std::chrono::steady_clock::now() + d;
    while (std::chrono::steady_clock::now() < deadline)
      pump_once(10ms);
  }

  template <class T>
  std::vector<T> all() const {
    std::vector<T> xs;
    for (const auto& m : received)
      if (auto* x = std::get_if<T>(&m))
        xs.push_back(*x);
    return xs;
  }

  template <class T>
  size_t count() const {
    return all<T>().size();
  }

  /// The index in `received` of the first message of type T satisfying `p`, or -1.
  template <class T>
  long index_of(const std::function<bool(const T&)>& p = [](const T&) { return true; }) const {
    for (size_t i = 0; i < received.size(); ++i)
      if (auto* x = std::get_if<T>(&received[i]); x != nullptr && p(*x))
        return static_cast<long>(i);
    return -1;
  }

  /// Receives (and answers) what arrives within `timeout`, sends a due heartbeat.
  void pump_once(std::chrono::milliseconds timeout) {
    zmq::pollitem_t item{router_.handle(), 0, ZMQ_POLLIN, 0};
    zmq::poll(&item, 1, timeout);
    if (item.revents & ZMQ_POLLIN) {
      std::vector<zmq::message_t> parts;
      while (zmq::recv_multipart(router_, std::back_inserter(parts), zmq::recv_flags::dontwait)) {
        REQUIRE(parts.size() == 2);
        identity_ = parts[0].to_string();
        std::string error;
        auto m = cl::decode(parts[1].data(), parts[1].size(), &error);
        INFO(error);
        REQUIRE(m.has_value());
        if (auto* b = std::get_if<cl::batch>(&*m)) {
          ++batches_received;
          for (auto& f : b->frames) {
            auto inner = cl::decode(f.data(), f.size(), &error);
            REQUIRE(inner.has_value());
            received.push_back(*inner);
          }
          parts.clear();
          continue;
        }
        received.push_back(*m);
        if (std::holds_alternative<cl::ready>(*m) && standby)
          send(cl::bye{{}, "standby"});
        else if (std::holds_alternative<cl::ready>(*m) && auto_welcome)
          send(cl::welcome{heartbeat_ms, lease_ms, batch});
        parts.clear();
      }
    }
    auto now = std::chrono::steady_clock::now();
    if (heartbeats && !identity_.empty() && now - last_hb_ >= std::chrono::milliseconds{heartbeat_ms}) {
      send(cl::heartbeat{});
      last_hb_ = now;
    }
  }

 private:
  zmq::socket_t router_;
  std::string endpoint_;
  std::string identity_;
  std::chrono::steady_clock::time_point last_hb_{};
};

}  // namespace klynaa::testing

// The node's actors on CAF 0.17's deterministic scheduler and clock
// (caf::scheduler::test_coordinator, `scheduler.policy = testing`), for the
// tests whose meaning is about time: registration backoff, heartbeats, a silent
// broker, restart windows. No thread runs an actor and no wall clock is read:
// the test moves the actor system's clock (advance()) and runs what is due, so
// a test of a 400 ms backoff takes microseconds and checks exact intervals.
//
// The fixture is the gateway's world: a PULL socket in place of the I/O thread
// (what the gateway sends, decoded, with the clock time it was sent at), and a
// broker that answers READY with WELCOME and heartbeats on the same clock.
// Frames reach the gateway as the I/O thread hands them over: (frame_atom, frame).
// Kinds must not block (blocking = false): their workers run on the scheduler,
// which is the test's own thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <variant>
#include <vector>

#include <caf/actor_system.hpp>
#include <caf/actor_system_config.hpp>
#include <caf/atom.hpp>
#include <caf/exit_reason.hpp>
#include <caf/scheduler/test_coordinator.hpp>
#include <caf/send.hpp>

#include <catch2/catch.hpp>
#include <zmq.hpp>

#include "nodes/atoms.hpp"
#include "nodes/gateway.hpp"
#include "nodes/io_thread.hpp"
#include "protocol/cluster.hpp"

namespace klynaa::node_test {

class gateway_fixture {
 public:
  /// One message the gateway sent, and when (ms of the test clock since start).
  struct sent_message {
    int64_t at_ms;
    protocol::cluster::message msg;
  };

  gateway_fixture() {
    static int n = 0;
    out_endpoint_ = "inproc://gateway-fixture-" + std::to_string(++n);
    pull_.set(zmq::sockopt::linger, 0);
    pull_.bind(out_endpoint_);
    cfg_.set("scheduler.policy", caf::atom("testing"));
    cfg_.set("logger.file-verbosity", caf::atom("quiet"));
    cfg_.set("logger.console-verbosity", caf::atom("quiet"));
    sys_ = std::make_unique<caf::actor_system>(cfg_);
    sched_ = &dynamic_cast<caf::scheduler::test_coordinator&>(sys_->scheduler());
    sched_->clock().current_time += std::chrono::hours(1);  // as CAF's own fixture: never 0
    start_ = sched_->clock().now();
  }

  ~gateway_fixture() {
    if (gateway_) {
      caf::anon_send_exit(gateway_, caf::exit_reason::user_shutdown);
      gateway_ = nullptr;
    }
    sched_->run();  // the exits of the gateway, its pools and their workers
    sys_.reset();
  }

  gateway_fixture(const gateway_fixture&) = delete;
  gateway_fixture& operator=(const gateway_fixture&) = delete;

  bool auto_welcome = true;   ///< answer each READY with WELCOME
  bool heartbeats = true;     ///< once welcomed, a HEARTBEAT to the node every heartbeat_ms
  int64_t heartbeat_ms = 50;  ///< sent in WELCOME
  int64_t lease_ms = 30000;   ///< sent in WELCOME

  /// Everything the gateway sent, in order.
  std::vector<sent_message> sent;

  /// A gateway config for `kinds`, sending to this fixture.
  nodes::gateway_config config(std::vector<nodes::actor_kind_spec> kinds) {
    nodes::gateway_config c;
    c.node = "node-t";
    c.kinds = std::move(kinds);
    c.ctx = &ctx_;
    c.out_endpoint = out_endpoint_;
    c.broker_endpoint = "inproc://no-broker";  // only the I/O thread connects to it
    c.register_retry_ms = 100;
    c.busy = std::make_shared<std::atomic<int>>(0);
    return c;
  }

  /// Spawns the gateway (it sends its first READY at once) and runs what is due.
  void start(nodes::gateway_config c) {
    gateway_ = nodes::spawn_gateway(*sys_, std::move(c));
    settle();
  }

  /// Hands `m` to the gateway as the I/O thread would, and runs what follows.
  void deliver(const protocol::cluster::message& m) {
    if (std::holds_alternative<protocol::cluster::welcome>(m)) {  // the broker's heartbeats start
      welcomed_ = true;
      last_hb_ms_ = now_ms();
    }
    caf::anon_send(gateway_, nodes::frame_atom::value, protocol::cluster::encode(m));
    settle();
  }

  /// Moves the clock on by `d`, one millisecond at a time, running what each
  /// millisecond makes due (the gateway's and the pools' timers).
  void advance(std::chrono::milliseconds d) {
    for (int64_t i = 0; i < d.count(); ++i) {
      sched_->advance_time(std::chrono::milliseconds{1});
      settle();
    }
  }

  /// Runs what is due now without moving the clock (e.g. after a test woke a
  /// job's wait: its resume message).
  void run_due() { settle(); }

  /// ms of the test clock since the fixture started.
  int64_t now_ms() const {
    return std::chrono::duration_cast<std::chrono::milliseconds>(sched_->clock().now() - start_).count();
  }

  template <class T>
  std::vector<T> all() const {
    std::vector<T> xs;
    for (const auto& s : sent)
      if (auto* x = std::get_if<T>(&s.msg))
        xs.push_back(*x);
    return xs;
  }

  template <class T>
  size_t count() const {
    return all<T>().size();
  }

  /// When each message of type T was sent (ms since start).
  template <class T>
  std::vector<int64_t> times() const {
    std::vector<int64_t> ts;
    for (const auto& s : sent)
      if (std::holds_alternative<T>(s.msg))
        ts.push_back(s.at_ms);
    return ts;
  }

  /// The DONE of `job_id`, if the gateway sent one.
  const protocol::cluster::done* done_of(const std::string& job_id) const {
    for (const auto& s : sent)
      if (auto* d = std::get_if<protocol::cluster::done>(&s.msg); d != nullptr && d->job_id == job_id)
        return d;
    return nullptr;
  }

 private:
  /// Runs every message due now, takes what the gateway sent, and plays the broker.
  void settle() {
    for (int rounds = 0; rounds < 100; ++rounds) {
      sched_->run();
      if (!collect())
        break;
    }
    if (heartbeats && welcomed_ && now_ms() - last_hb_ms_ >= heartbeat_ms) {
      last_hb_ms_ = now_ms();
      caf::anon_send(gateway_, nodes::frame_atom::value, protocol::cluster::encode(protocol::cluster::heartbeat{}));
      sched_->run();
      collect();
    }
  }

  /// Reads the PULL socket; answers READY as the broker would. True when it
  /// sent the gateway something (which must run before time moves on).
  bool collect() {
    bool answered = false;
    zmq::message_t frame;
    while (pull_.recv(frame, zmq::recv_flags::dontwait)) {
      if (frame.size() == 1 && frame.data<char>()[0] == nodes::io_thread::rotate_frame)
        continue;  // for the I/O thread: connect to the next endpoint
      std::string error;
      auto m = protocol::cluster::decode(frame.data(), frame.size(), &error);
      INFO(error);
      REQUIRE(m.has_value());
      if (auto* b = std::get_if<protocol::cluster::batch>(&*m)) {
        for (auto& f : b->frames) {
          auto inner = protocol::cluster::decode(f.data(), f.size(), &error);
          REQUIRE(inner.has_value());
          sent.push_back({now_ms(), *inner});
        }
        continue;
      }
      sent.push_back({now_ms(), *m});
      if (std::holds_alternative<protocol::cluster::ready>(*m) && auto_welcome) {
        caf::anon_send(gateway_, nodes::frame_atom::value,
                       protocol::cluster::encode(protocol::cluster::welcome{heartbeat_ms, lease_ms}));
        welcomed_ = true;
        last_hb_ms_ = now_ms();
        answered = true;
      }
    }
    return answered;
  }

  zmq::context_t ctx_;
  zmq::socket_t pull_{ctx_, zmq::socket_type::pull};
  std::string out_endpoint_;
  caf::actor_system_config cfg_;
  std::unique_ptr<caf::actor_system> sys_;
  caf::scheduler::test_coordinator* sched_ = nullptr;
  caf::actor_clock::time_point start_;
  nodes::gateway_actor gateway_;
  bool welcomed_ = false;
  int64_t last_hb_ms_ = 0;
};

}  // namespace klynaa::node_test

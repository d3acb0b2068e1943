// A node speaking the cluster protocol by hand, for tests of the broker's side
// (cluster_test.cpp, ha_test.cpp): READY on construction, JOBs read one at a
// time, DONE written as told. It grants slots the CREDIT way (a DONE, then
// CREDIT{1}); real nodes put the credit in the DONE, so both paths are tested.
// With `batch` it says so in READY: JOBs may then come in BATCH frames (counted
// in batches_received), and finish_all() answers many in one BATCH.
#pragma once

#include <chrono>
#include <deque>
#include <optional>
#include <string>
#include <vector>

#include <zmq.hpp>

#include "protocol/cluster.hpp"

namespace klynaa::test {

class fake_node {
 public:
  fake_node(zmq::context_t& ctx, const std::string& endpoint, std::string name,
            std::vector<std::string> kinds, int64_t credit, bool batch = false)
      : sock_(ctx, zmq::socket_type::dealer) {
    sock_.set(zmq::sockopt::linger, 0);
    sock_.connect(endpoint);
    send(protocol::cluster::ready{std::move(name), std::move(kinds), credit, batch});
  }
  void send(const protocol::cluster::message& m) {
    auto f = protocol::cluster::encode(m);
    sock_.send(zmq::buffer(f), zmq::send_flags::none);
  }
  /// The next `job` (heartbeats and welcome are skipped), or nullopt.
  std::optional<protocol::cluster::job> next_job(std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
    namespace cl = protocol::cluster;
    auto end = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < end) {
      zmq::pollitem_t items[] = {{static_cast<void*>(sock_), 0, ZMQ_POLLIN, 0}};
      zmq::poll(items, 1, std::chrono::milliseconds(50));
      zmq::message_t m;
      while (jobs_.empty() && sock_.recv(m, zmq::recv_flags::dontwait)) {
        auto msg = cl::decode(m.data(), m.size());
        if (msg && std::holds_alternative<cl::batch>(*msg)) {
          ++batches_received;
          for (auto& f : std::get<cl::batch>(*msg).frames) {
            auto inner = cl::decode(f.data(), f.size());
            if (inner && std::holds_alternative<cl::job>(*inner)) jobs_.push_back(std::get<cl::job>(*inner));
          }
        } else if (msg && std::holds_alternative<cl::welcome>(*msg)) {
          broker_batches = std::get<cl::welcome>(*msg).batch;
        } else if (msg && std::holds_alternative<cl::job>(*msg)) {
          jobs_.push_back(std::get<cl::job>(*msg));
        }
      }
      if (!jobs_.empty()) {
        auto j = std::move(jobs_.front());
        jobs_.pop_front();
        return j;
      }
      send(cl::heartbeat{});
    }
    return std::nullopt;
  }
  /// One BATCH frame with an "ok" DONE for each of `jobs`, each granting its slot again.
  void finish_all(const std::vector<protocol::cluster::job>& jobs) {
    namespace cl = protocol::cluster;
    std::vector<std::string> frames;
    for (auto& j : jobs) {
      cl::done d;
      d.job_id = j.job_id;
      d.lease = j.lease;
      d.outcome = "ok";
      d.result_json = "{}";
      d.credit = 1;
      frames.push_back(cl::encode(d));
    }
    auto f = cl::encode_batch(frames);
    sock_.send(zmq::buffer(f), zmq::send_flags::none);
  }

  /// Sends HEARTBEATs listing `leases` every `every` for `how_long`, reading
  /// (and dropping) whatever the broker sends meanwhile.
  void hold(const std::vector<int64_t>& leases, std::chrono::milliseconds how_long,
            std::chrono::milliseconds every = std::chrono::milliseconds(100)) {
    auto end = std::chrono::steady_clock::now() + how_long;
    while (std::chrono::steady_clock::now() < end) {
      send(protocol::cluster::heartbeat{leases});
      zmq::pollitem_t items[] = {{static_cast<void*>(sock_), 0, ZMQ_POLLIN, 0}};
      zmq::poll(items, 1, every);
      zmq::message_t m;
      while (sock_.recv(m, zmq::recv_flags::dontwait)) {
      }
    }
  }
  int batches_received = 0;     ///< BATCH frames of JOBs received so far
  bool broker_batches = false;  ///< the WELCOME said the broker takes BATCH frames
  /// DONE with `outcome` ("ok", "transient", "permanent"), then CREDIT{1}.
  void finish(const protocol::cluster::job& j, const std::string& outcome = "ok",
              const std::string& error_code = "", const std::string& error_message = "",
              int64_t http_status = 0) {
    protocol::cluster::done d;
    d.job_id = j.job_id;
    d.lease = j.lease;
    d.outcome = outcome;
    d.result_json = outcome == "ok" ? "{}" : "";
    d.error_code = error_code;
    d.error_message = error_message;
    d.http_status = http_status;
    send(d);
    send(protocol::cluster::credit{1});
  }

 private:
  zmq::socket_t sock_;
  std::deque<protocol::cluster::job> jobs_;  ///< received, not yet returned by next_job
};

}  // namespace klynaa::test

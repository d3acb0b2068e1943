// The node's I/O thread: the one owner of the DEALER socket to the broker.
// It polls two sockets:
//   - the DEALER: each frame from the broker goes to `on_frame` (the runtime
//     forwards it to the gateway actor);
//   - an inproc PULL bound to out_endpoint(): the gateway's PUSH socket puts
//     outgoing frames there, and this thread sends them on the DEALER.
// So no socket is ever used by two threads. No CAF here.
//
// Several brokers (a standby on PostgreSQL, docs/deployment.md): the endpoint
// may be a comma-separated list. The DEALER is connected to one of them at a
// time; the gateway asks for the next one by putting `rotate_frame` into the
// PULL socket (a one-byte frame that is never a KJCP message: 0xC1 is the one
// byte msgpack never uses), and this thread disconnects and connects the next.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <zmq.hpp>

namespace klynaa::nodes {

class io_thread {
 public:
  using frame_handler = std::function<void(std::string frame)>;

  /// Put into the PULL socket: "connect to the next broker endpoint".
  static constexpr char rotate_frame = '\xC1';

  /// The endpoints of a comma-separated list, blanks trimmed, empty ones dropped.
  static std::vector<std::string> split_endpoints(const std::string& list);

  /// CURVE client keys (Z85). All empty: a plain connection.
  struct curve_keys {
    std::string server_key;  ///< the broker's public key
    std::string public_key;
    std::string secret_key;
    bool enabled() const { return !secret_key.empty(); }
  };

  /// Keeps `ctx` (which must outlive this object); opens nothing yet. With
  /// `curve` the DEALER is a CURVE client, and a refusal by the broker's ZAP
  /// handler (its key not in the allow list) is logged as a warning, at most
  /// once every 30 s.
  io_thread(zmq::context_t& ctx, std::string broker_endpoint, frame_handler on_frame,
            curve_keys curve = {});

  /// Binds the PULL socket (so that out_endpoint() can be connected as soon as
  /// this returns), connects the DEALER and starts the thread. Throws
  /// zmq::error_t when an endpoint is invalid.
  void start();

  /// Sends what is still waiting in the PULL socket (the last BYE), closes both
  /// sockets (keeping unsent frames at most flush_ms in the context) and joins.
  /// Idempotent.
  void stop(int flush_ms = 500);

  /// The inproc endpoint to connect a PUSH socket to, unique per instance.
  const std::string& out_endpoint() const { return out_endpoint_; }

  ~io_thread();

  io_thread(const io_thread&) = delete;
  io_thread& operator=(const io_thread&) = delete;

 private:
  void run();
  void forward_outgoing();
  void receive_incoming();
  void receive_events();
  void rotate();
  const std::string& endpoint() const { return endpoints_[current_]; }

  zmq::context_t& ctx_;
  std::vector<std::string> endpoints_;
  size_t current_ = 0;  ///< the endpoint the DEALER is connected to
  std::string out_endpoint_;
  frame_handler on_frame_;
  std::unique_ptr<zmq::socket_t> dealer_;
  std::unique_ptr<zmq::socket_t> pull_;
  curve_keys curve_;
  std::unique_ptr<zmq::socket_t> monitor_;  ///< handshake failures of the DEALER, with CURVE
  int64_t last_refusal_log_ms_ = 0;
  std::atomic<bool> stopping_{false};
  int flush_ms_ = 500;
  std::thread thread_;
};

}  // namespace klynaa::nodes

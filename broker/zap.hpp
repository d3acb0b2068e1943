// CURVE on the broker's endpoints and the ZAP handler (ZeroMQ RFC 27) that
// decides which clients' keys may connect (docs/security.md).
//
// A CURVE server socket asks the ZAP handler of its context, over
// inproc://zeromq.zap.01, about every client that completes the CURVE
// handshake. Without a handler libzmq admits every client that knows the
// server's public key, unless the socket sets ZMQ_ZAP_ENFORCE_DOMAIN (we do;
// Debian's libzmq 4.3.4 honours it). Belt and braces: the handler is bound
// *before* the CURVE sockets and unbound only after they are closed
// (broker_core::impl declares it first).
//
// One handler serves every CURVE socket of the broker: each socket names its ZAP
// domain ("ingress", "cluster") and the handler checks the client's public key
// against that domain's allow list. It answers 200 with the key (Z85) as user id
// when listed, and 400 otherwise (also for an unknown domain or a mechanism other
// than CURVE): libzmq then ends the handshake with an ERROR and the connection
// never delivers a message.
//
// Reload: the handler stat()s each allow file at most once a second (and before
// answering a request when a second has passed) and re-reads it when its mtime,
// size or inode changed. A file that no longer parses, or cannot be read, keeps
// the previous list and logs an error. Keys removed from the list are refused
// from their next connection on; a connection already admitted stays open.
//
// Threads: the handler's thread owns the REP socket; start() and stop() are
// called from the thread that owns the broker (not thread-safe themselves).
#pragma once

#include <atomic>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <zmq.hpp>

namespace klynaa::broker {

/// CURVE on one of the broker's endpoints. Off when secret_key is empty.
struct curve_server_options {
  std::string secret_key;    ///< Z85, the broker's
  std::string allow_file;    ///< the allow list (protocol/curve_keys.hpp)
  std::string allow_key;     ///< the config key naming it, for messages: "ingress.curve_allow_file"
  bool enabled() const { return !secret_key.empty(); }
};

/// Makes `socket` a CURVE server of ZAP domain `domain` (call before bind).
/// Throws zmq::error_t.
void make_curve_server(zmq::socket_t& socket, const curve_server_options& o, const std::string& domain);

class zap_handler {
 public:
  struct domain {
    std::string name;        ///< the ZAP domain the socket sets
    std::string allow_file;
    std::string allow_key;   ///< for messages
  };

  zap_handler();
  ~zap_handler();  ///< stop()
  zap_handler(const zap_handler&) = delete;
  zap_handler& operator=(const zap_handler&) = delete;

  /// Reads every domain's allow list, binds inproc://zeromq.zap.01 in `ctx` and
  /// starts the thread. Does nothing and returns true when `domains` is empty.
  /// False with `err` naming the key and the file when a list cannot be read or
  /// parsed, or when the ZAP endpoint is taken (another handler in this context).
  bool start(zmq::context_t& ctx, std::vector<domain> domains, std::string& err);

  /// Stops the thread and unbinds. Idempotent.
  void stop();

  /// Requests answered 200 / 400 so far (any thread).
  int64_t admitted() const { return admitted_.load(); }
  int64_t refused() const { return refused_.load(); }

 private:
  struct state;
  void run();

  std::unique_ptr<state> state_;
  std::atomic<bool> stopping_{false};
  std::atomic<int64_t> admitted_{0};
  std::atomic<int64_t> refused_{0};
  std::thread thread_;
};

}  // namespace klynaa::broker

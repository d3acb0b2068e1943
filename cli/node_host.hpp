// A node's actor kinds and runtime, as `klynaa run` and `klynaa node` host them:
// picks the kinds from --actors, checks what they need from the config, and
// starts/stops the CAF runtime (nodes/runtime.hpp).
#pragma once

#include <memory>
#include <string>

#include <zmq.hpp>

#include "cli/keys.hpp"
#include "protocol/config.hpp"

namespace klynaa::nodes {
class node_runtime;
}

namespace klynaa::actors {
class http_loop;
}

namespace klynaa::cli {

class node_host {
 public:
  node_host();
  ~node_host();

  /// `actors`: comma-separated kinds ("" = all); `name`: "" = hostname-pid.
  /// False with `err` (exit 2) on an unknown kind or a missing django.url.
  bool configure(const protocol::config& cfg, const std::string& data_dir, const std::string& actors,
                 const std::string& name, std::string& err);

  /// CURVE towards the broker (cli/keys.hpp); call before start().
  void set_curve(const curve_client_keys& keys) { curve_ = keys; }

  void start(zmq::context_t& ctx, const std::string& broker_endpoint);
  /// Graceful; idempotent.
  void stop();

 private:
  protocol::config cfg_;
  std::string data_dir_;
  std::vector<std::string> kinds_;
  std::string name_;
  std::optional<curve_client_keys> curve_;
  std::shared_ptr<actors::http_loop> http_loop_;  ///< outlives runtime_ (declared first)
  std::unique_ptr<nodes::node_runtime> runtime_;
};

}  // namespace klynaa::cli

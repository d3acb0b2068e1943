#include "cli/node_host.hpp"

#include "actors/breaker.hpp"

#include <unistd.h>

#include <sstream>

#include "actors/http.hpp"
#include "actors/http_loop.hpp"
#include "actors/registry.hpp"
#include "protocol/log.hpp"
#include "nodes/runtime.hpp"

namespace klynaa::cli {

namespace {
const std::vector<std::string> all_kinds = {"notifier", "escrow", "geo", "scheduler"};
}

node_host::node_host() = default;
node_host::~node_host() { stop(); }

bool node_host::configure(const protocol::config& cfg, const std::string& data_dir,
                          const std::string& actors, const std::string& name, std::string& err) {
  cfg_ = cfg;
  data_dir_ = data_dir;
  kinds_.clear();
  if (actors.empty()) {
    kinds_ = all_kinds;
  } else {
    std::stringstream ss(actors);
    std::string k;
    while (std::getline(ss, k, ',')) {
      if (std::find(all_kinds.begin(), all_kinds.end(), k) == all_kinds.end()) {
        err = "unknown actor kind '" + k + "' in --actors (use notifier, escrow, geo, scheduler)";
        return false;
      }
      kinds_.push_back(k);
    }
  }
  if (auto problem = actors::check_actor_config(cfg, data_dir, kinds_)) {
    err = *problem;
    return false;
  }
  if (name.empty()) {
    char host[256] = {0};
    gethostname(host, sizeof(host) - 1);
    name_ = std::string(host) + "-" + std::to_string(getpid());
  } else {
    name_ = name;
  }
  return true;
}

void node_host::start(zmq::context_t& ctx, const std::string& broker_endpoint) {
  nodes::node_options o;
  o.broker_endpoint = broker_endpoint;
  o.name = name_;
  if (curve_) {
    o.curve_server_key = curve_->server_key;
    o.curve_public_key = curve_->own.public_key;
    o.curve_secret_key = curve_->own.secret_key;
  }
  actors::configure_breakers({cfg_.circuit_breaker.failure_threshold, cfg_.circuit_breaker.open_seconds * 1000,
                              cfg_.circuit_breaker.max_open_seconds * 1000});
  // One event loop for every call to Django and the providers (issue 19): the
  // notifier, escrow and scheduler jobs wait on it without a thread each.
  http_loop_ = actors::make_http_loop(cfg_);
  if (!http_loop_->start_error().empty())  // every call to Django would fail: say why once, here
    log::error("node", "the HTTP event loop could not start; jobs that call Django will fail",
               {{"error", http_loop_->start_error()}});
  o.kinds = actors::make_actor_kinds(cfg_, data_dir_, kinds_, http_loop_);
  for (auto& k : o.kinds) {  // supervision limits (nodes/pool.hpp), the same for every kind
    k.limits.job_timeout_ms = cfg_.node.job_timeout_seconds * 1000;
    k.limits.max_restarts = cfg_.node.max_restarts;
    k.limits.restart_window_ms = cfg_.node.restart_window_seconds * 1000;
  }
  o.shutdown_grace_ms = cfg_.shutdown.grace_seconds * 1000;
  o.extra_stats = [loop = http_loop_] {
    nlohmann::json d = nlohmann::json::object();
    for (auto& [key, n] : actors::downstream_counts()) d[key.first + "/" + key.second] = n;
    return nlohmann::json{{"downstream", d}, {"breakers", actors::breaker_states()},
                          {"limits", actors::limits_json(*loop)}};
  };
  // Backed up: more calls wait for their limits than are being made, so a job
  // taken now would wait more than a round of calls inside this node.
  o.backed_up = [loop = http_loop_] {
    const auto s = loop->snapshot();
    return s.waiting > 0 && s.waiting >= s.in_flight - s.waiting;
  };
  // A fresh node takes a few rounds of jobs, as its limits start low too.
  o.initial_credit = 4 * cfg_.node.limit_initial;
  runtime_ = std::make_unique<nodes::node_runtime>(ctx, std::move(o));
  runtime_->start();
}

void node_host::stop() {
  if (runtime_) runtime_->stop();
}

}  // namespace klynaa::cli

// A test node for the fault-injection suite (tests/integration/faults_poison_test.cpp):
// the real node runtime (nodes/runtime.hpp) and the real actors (actors/), over
// TCP to a real `klynaa broker`, except that the escrow kind's handler throws for
// one pickup: a "poison" job that crashes its worker on every attempt. The real
// actors never throw on bad input, so the suite needs this program to exercise the
// pool's supervision (restart, escalation to WITHDRAW) end to end.
//
//   poison_node --broker E --name N --data-dir D --poison PICKUP_ID
//               [--actors escrow,notifier] [--slow-ms MS]
//
// Config comes from the environment like `klynaa node`'s (DJANGO_API_URL,
// DJANGO_API_KEY, KLYNAA_NODE_MAX_RESTARTS, ...; no file). Every other escrow
// job goes to the real escrow handler (after --slow-ms, default 0, so that jobs
// are still queued when the kind is withdrawn). SIGTERM or SIGINT: graceful
// stop, exit 0. Exit 2 on bad usage or config.
#include <signal.h>

#include <atomic>
#include <chrono>
#include <iostream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <variant>

#include "actors/breaker.hpp"
#include "actors/registry.hpp"
#include "nodes/runtime.hpp"
#include "protocol/config.hpp"
#include "protocol/log.hpp"

namespace {

std::atomic<int> g_stop{0};
void on_signal(int) { g_stop.store(1); }

/// Throws for the poison pickup; otherwise the real escrow handler.
class poison_handler : public klynaa::nodes::job_handler {
 public:
  poison_handler(std::unique_ptr<klynaa::nodes::job_handler> inner, int64_t poison, int64_t slow_ms)
      : inner_(std::move(inner)), poison_(poison), slow_ms_(slow_ms) {}

  klynaa::nodes::job_result run(const klynaa::nodes::job& j) override {
    const auto pickup = j.data.value("pickup_id", int64_t{0});
    if (pickup == poison_)
      throw std::runtime_error("poison pickup " + std::to_string(pickup) + ": the escrow handler crashed (attempt " +
                               std::to_string(j.attempt) + ")");
    if (slow_ms_ > 0) std::this_thread::sleep_for(std::chrono::milliseconds(slow_ms_));
    return inner_->run(j);
  }

 private:
  std::unique_ptr<klynaa::nodes::job_handler> inner_;
  int64_t poison_;
  int64_t slow_ms_;
};

int usage(const std::string& why) {
  std::cerr << "poison_node: " << why
            << "\nusage: poison_node --broker E --name N --data-dir D --poison PICKUP_ID "
               "[--actors escrow,notifier] [--slow-ms MS]\n";
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace klynaa;
  std::string broker, name = "poison-node", data_dir = ".", actors_list = "escrow,notifier";
  int64_t poison = 0, slow_ms = 0;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (i + 1 >= argc) return usage("missing value of " + a);
    std::string v = argv[++i];
    try {
      if (a == "--broker") broker = v;
      else if (a == "--name") name = v;
      else if (a == "--data-dir") data_dir = v;
      else if (a == "--actors") actors_list = v;
      else if (a == "--poison") poison = std::stoll(v);
      else if (a == "--slow-ms") slow_ms = std::stoll(v);
      else return usage("unknown flag " + a);
    } catch (const std::exception&) {
      return usage("bad value of " + a + ": " + v);
    }
  }
  if (broker.empty() || poison <= 0) return usage("--broker and --poison are required");

  auto parsed = protocol::parse_config("", "", protocol::process_environment());
  if (auto* err = std::get_if<protocol::config_error>(&parsed)) {
    std::cerr << "poison_node: " << err->message << "\n";
    return 2;
  }
  const auto cfg = std::get<protocol::config>(std::move(parsed));
  log::level lvl;
  if (log::parse_level(cfg.log.level, lvl)) log::init(lvl);

  std::vector<std::string> kinds;
  {
    std::stringstream ss(actors_list);
    std::string k;
    while (std::getline(ss, k, ',')) kinds.push_back(k);
  }
  if (auto problem = actors::check_actor_config(cfg, data_dir, kinds)) {
    std::cerr << "poison_node: " << *problem << "\n";
    return 2;
  }

  nodes::node_options o;
  o.broker_endpoint = broker;
  o.name = name;
  actors::configure_breakers({cfg.circuit_breaker.failure_threshold, cfg.circuit_breaker.open_seconds * 1000,
                              cfg.circuit_breaker.max_open_seconds * 1000});
  o.kinds = actors::make_actor_kinds(cfg, data_dir, kinds);
  for (auto& k : o.kinds) {  // the same limits as `klynaa node` (cli/node_host.cpp; no CURVE, no node_stats extras)
    k.limits.job_timeout_ms = cfg.node.job_timeout_seconds * 1000;
    k.limits.max_restarts = cfg.node.max_restarts;
    k.limits.restart_window_ms = cfg.node.restart_window_seconds * 1000;
    if (k.kind == "escrow") {
      auto real = k.make_handler;
      k.make_handler = [real, poison, slow_ms] { return std::make_unique<poison_handler>(real(), poison, slow_ms); };
    }
  }
  o.shutdown_grace_ms = cfg.shutdown.grace_seconds * 1000;

  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);
  signal(SIGPIPE, SIG_IGN);

  zmq::context_t ctx;
  {
    nodes::node_runtime rt(ctx, std::move(o));
    rt.start();
    log::info("poison_node", "started", {{"node", name}, {"broker", broker}, {"poison_pickup", poison}});
    while (g_stop.load() == 0) std::this_thread::sleep_for(std::chrono::milliseconds(20));
    rt.stop();
  }
  return 0;
}

// `klynaa run`, `klynaa broker`, `klynaa node`: the long-running roles. Flags,
// config, CURVE keys and signals live here; running a broker (its store, the
// PostgreSQL lease and standby, the admin endpoint, the drain) is
// broker/serve.hpp's.
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <thread>

#include "broker/schedules.hpp"
#include "broker/serve.hpp"
#include "cli/commands.hpp"
#include "cli/keys.hpp"
#include "cli/node_host.hpp"
#include "protocol/log.hpp"

namespace klynaa::cli {

namespace {

std::atomic<int> g_phase{0};

void on_signal(int) {
  // First signal: drain; second: stop now.
  int p = g_phase.load();
  g_phase.store(p == 0 ? 1 : 2);
}

void install_signals() {
  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);
  signal(SIGPIPE, SIG_IGN);
}

const std::vector<flag_spec> serve_flags = {
    {"config", true, "TOML config file"},
    {"data-dir", true, "directory for the store and local files (default ./klynaa-data)"},
    {"ingress", true, "ingress endpoint (default ingress.bind)"},
    {"cluster", true, "cluster endpoint nodes connect to (broker only)"},
    {"broker", true, "broker cluster endpoint(s) (node only)"},
    {"actors", true, "actor kinds to host: notifier,escrow,geo,scheduler"},
    {"name", true, "node name"},
};

struct prepared {
  parsed_args args;
  protocol::config cfg;
  std::string data_dir;
  broker::curve_server_options ingress_curve;      ///< broker, run
  broker::curve_server_options cluster_curve;      ///< broker
  std::optional<curve_client_keys> node_curve;     ///< node
};

/// The broker side of CURVE on one endpoint: its key pair and its allow list,
/// both checked now so that a bad file is exit 2 naming the key.
bool load_server_curve(const std::string& section, const std::string& secret_file,
                       const std::string& allow_file, broker::curve_server_options& out, std::string& err) {
  const std::string secret_key = "[" + section + "] curve_secret_file", allow_key = "[" + section + "] curve_allow_file";
  const std::string because = ", but [" + section + "] curve = true needs it";
  if (secret_file.empty()) {
    err = secret_key + ": not set" + because + " (the broker's key pair, written by `klynaa keygen`)";
    return false;
  }
  if (allow_file.empty()) {
    err = allow_key + ": not set" + because + " (the public keys to admit, one a line)";
    return false;
  }
  std::string warning;
  auto pair = load_key_pair(secret_file, secret_key, err, &warning);
  if (!pair) return false;
  if (!warning.empty()) log::warning("broker", warning);
  auto n = check_allow_list(allow_file, allow_key, err);
  if (!n) return false;
  if (*n == 0) log::warning("broker", allow_key + ": " + allow_file + " lists no key: every client is refused");
  out.secret_key = pair->secret_key;
  out.allow_file = allow_file;
  out.allow_key = allow_key;
  log::info("broker", "CURVE on", {{"endpoint", section}, {"public_key", pair->public_key}, {"allowed_keys", *n}});
  return true;
}

/// Loads the CURVE keys the role needs (docs/security.md). False with `err`.
bool load_curve(const std::string& cmd, prepared& p, std::string& err) {
  const auto& c = p.cfg;
  if (cmd != "node" && c.ingress.curve &&
      !load_server_curve("ingress", c.ingress.curve_secret_file, c.ingress.curve_allow_file, p.ingress_curve, err))
    return false;
  if (cmd == "broker" && c.cluster.curve &&
      !load_server_curve("cluster", c.cluster.curve_secret_file, c.cluster.curve_allow_file, p.cluster_curve, err))
    return false;
  if (cmd == "run" && c.cluster.curve)
    log::info("broker", "[cluster] curve is not used by `klynaa run`: its node is in the same process (inproc)");
  if (cmd == "node") {
    p.node_curve = load_client_keys({c.cluster.curve_server_public_file, "[cluster] curve_server_public_file"},
                                    {c.cluster.curve_client_secret_file, "[cluster] curve_client_secret_file"}, err);
    if (!err.empty()) return false;
    if (!p.node_curve && c.cluster.curve) {
      err = "[cluster] curve = true: a node needs [cluster] curve_server_public_file (the broker's public key) "
            "and [cluster] curve_client_secret_file (its own key pair, listed in the broker's allow file)";
      return false;
    }
  }
  return true;
}

/// Parses flags and config, creates the data dir. Returns an exit code or -1 to go on.
int prepare(int argc, char** argv, const char* cmd, const std::set<std::string>& allowed,
            prepared& p) {
  std::vector<flag_spec> specs;
  for (auto& f : serve_flags)
    if (allowed.count(f.name)) specs.push_back(f);
  std::string err;
  if (!parse_args(argc, argv, 2, specs, p.args, err)) {
    std::cerr << "klynaa " << cmd << ": " << err << "\n";
    return 2;
  }
  if (!p.args.positional.empty()) {
    std::cerr << "klynaa " << cmd << ": unexpected argument '" << p.args.positional[0] << "'\n";
    return 2;
  }
  if (!load_config(p.args, p.cfg, err)) {
    std::cerr << "klynaa: " << err << "\n";
    return 2;
  }
  {
    broker::schedule_set check;  // a bad [[schedule]] is a config error: exit 2
    if (!check.init(p.cfg, err)) {
      std::cerr << "klynaa: " << err << "\n";
      return 2;
    }
  }
  log::level lvl;
  if (log::parse_level(p.cfg.log.level, lvl)) log::init(lvl);
  if (!load_curve(cmd, p, err)) {
    std::cerr << "klynaa: " << err << "\n";
    return 2;
  }
  p.data_dir = p.args.get("data-dir").value_or("klynaa-data");
  std::error_code ec;
  std::filesystem::create_directories(p.data_dir, ec);
  if (ec) {
    std::cerr << "klynaa: cannot create data dir " << p.data_dir << " (--data-dir): " << ec.message()
              << "\n";
    return 2;
  }
  return -1;
}

/// Runs a broker (and, for `run`, one node in the same process over inproc):
/// broker/serve.hpp does the rest, the PostgreSQL lease and standby included.
int serve_broker(prepared& p, bool with_node) {
  std::string err;
  if (!broker::lock_data_dir(p.data_dir, err)) {
    std::cerr << "klynaa: " << err << "\n";
    return 1;
  }
  std::unique_ptr<node_host> node;
  broker::serve_options o;
  if (with_node) {
    node = std::make_unique<node_host>();
    if (!node->configure(p.cfg, p.data_dir, "", "", err)) {
      std::cerr << "klynaa: " << err << "\n";
      return 2;
    }
    o.node = broker::colocated_node{[&node](zmq::context_t& ctx, const std::string& ep) { node->start(ctx, ep); },
                                    [&node] { node->stop(); }};
  }
  o.cfg = p.cfg;
  o.data_dir = p.data_dir;
  o.ingress_bind = p.args.get("ingress").value_or(p.cfg.ingress.bind);
  o.cluster_bind = p.args.get("cluster").value_or(p.cfg.cluster.bind);
  o.ingress_curve = p.ingress_curve;
  o.cluster_curve = p.cluster_curve;
  o.signals = &g_phase;
  o.install_signals = install_signals;
  return broker::serve(std::move(o));
}

}  // namespace

int cmd_run(int argc, char** argv) {
  prepared p;
  int rc = prepare(argc, argv, "run", {"config", "data-dir", "ingress"}, p);
  if (rc >= 0) return rc;
  return serve_broker(p, true);
}

int cmd_broker(int argc, char** argv) {
  prepared p;
  int rc = prepare(argc, argv, "broker", {"config", "data-dir", "ingress", "cluster"}, p);
  if (rc >= 0) return rc;
  return serve_broker(p, false);
}

int cmd_node(int argc, char** argv) {
  prepared p;
  int rc = prepare(argc, argv, "node", {"config", "data-dir", "broker", "actors", "name"}, p);
  if (rc >= 0) return rc;
  auto broker_ep = p.args.get("broker");
  if (!broker_ep) {
    std::cerr << "klynaa node: --broker is required (the broker's cluster endpoint)\n";
    return 2;
  }
  node_host node;
  std::string err;
  if (!node.configure(p.cfg, p.data_dir, p.args.get("actors").value_or(""),
                      p.args.get("name").value_or(""), err)) {
    std::cerr << "klynaa: " << err << "\n";
    return 2;
  }
  if (p.node_curve) node.set_curve(*p.node_curve);
  install_signals();
  zmq::context_t ctx;
  node.start(ctx, *broker_ep);
  while (g_phase.load() == 0) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  node.stop();
  return 0;
}

}  // namespace klynaa::cli

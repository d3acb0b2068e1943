// `klynaa run`, `klynaa broker`, `klynaa node`: the long-running roles.
#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <thread>

#include "broker/admin.hpp"
#include "broker/core.hpp"
#include "broker/dlq.hpp"
#include "broker/lease_keeper.hpp"
#include "broker/pg_store.hpp"
#include "broker/schedules.hpp"
#include "broker/standby.hpp"
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
  int lock_fd = -1;
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

/// One broker per data dir: a second one would corrupt the queue's order.
bool lock_data_dir(prepared& p, std::string& err) {
  auto path = p.data_dir + "/broker.lock";
  p.lock_fd = ::open(path.c_str(), O_CREAT | O_RDWR | O_CLOEXEC, 0644);
  if (p.lock_fd < 0 || ::flock(p.lock_fd, LOCK_EX | LOCK_NB) != 0) {
    err = "another broker is using the data dir " + p.data_dir + " (--data-dir)";
    return false;
  }
  return true;
}

void write_endpoints(const std::string& data_dir, nlohmann::json j) {
  j["pid"] = ::getpid();
  auto tmp = data_dir + "/broker.json.tmp";
  {
    std::ofstream out(tmp);
    out << j.dump() << "\n";
  }
  std::filesystem::rename(tmp, data_dir + "/broker.json");
}

/// The store of store.backend: SQLite in the data dir, or PostgreSQL at
/// store.url (broker/pg_store.hpp). `read_only`: the admin's dead-letter reader,
/// a second instance. nullptr and `err` on failure.
std::unique_ptr<broker::store> open_store(const protocol::config::store_section& cfg,
                                          const std::string& data_dir, bool read_only,
                                          broker::store_error& err) {
  if (cfg.backend == "postgres") {
    broker::pg_options po;
    po.url = cfg.url;
    po.read_only = read_only;
    po.application_name = read_only ? "klynaa dlq reader" : "klynaa broker";
    return broker::open_pg_store(po, err);
  }
  broker::sqlite_options so;
  so.path = data_dir + "/broker.db";
  so.synchronous_full = cfg.synchronous != "normal";
  so.read_only = read_only;
  return broker::open_sqlite_store(so, err);
}

// --- Standby brokers on PostgreSQL (issue 10, docs/deployment.md) ----------

/// store.broker_name, or hostname:pid: the lease holder.
std::string lease_holder_name(const protocol::config& cfg) {
  if (!cfg.store.broker_name.empty()) return cfg.store.broker_name;
  char host[256] = {};
  if (::gethostname(host, sizeof host - 1) != 0) std::snprintf(host, sizeof host, "localhost");
  return std::string(host) + ":" + std::to_string(::getpid());
}

/// What the admin endpoint shows before and after this broker is active.
struct broker_role {
  std::atomic<broker::broker_core*> core{nullptr};  ///< set once active and open
  bool postgres = false;
  std::string name;  ///< the lease holder (postgres)
  int64_t lease_ms = 0;
};

broker::admin_handlers role_handlers(broker_role& role, broker::dlq_reader& dlq) {
  broker::admin_handlers h;
  h.stats = [&role]() -> broker::broker_stats {
    auto* core = role.core.load();
    if (!core) {
      broker::broker_stats s;
      s.role = "standby";
      s.broker_name = role.name;
      s.lease_ms = role.lease_ms;
      s.message = broker::standby_message;
      return s;
    }
    auto s = core->stats();
    if (role.postgres) {
      s.role = "active";
      s.broker_name = role.name;
    }
    return s;
  };
  h.dlq_list = [&dlq](size_t limit) { return dlq.list(limit); };
  h.dlq_show = [&dlq](const std::string& id) { return dlq.show(id); };
  h.dlq_command = [&role](const std::string& action, const std::vector<std::string>& ids, bool all) {
    auto* core = role.core.load();
    if (!core) return nlohmann::json{{"error", broker::standby_message}};
    return core->dlq_command(action, ids, all, std::chrono::seconds(10));
  };
  h.health = [&role]() -> std::pair<int, nlohmann::json> {
    if (role.core.load()) return {200, {{"status", "ok"}}};
    return {503, {{"status", "standby"}, {"role", "standby"}, {"message", broker::standby_message}}};
  };
  return h;
}

/// Fail-stop: this broker may no longer hold the lease, so a standby may be
/// active. Exit at once, without answering or dispatching anything more (the
/// store fences its commits anyway); the supervisor restarts it as a standby.
[[noreturn]] void fail_stop(const std::string& why) {
  log::error("broker", "lost the lease: stopping at once (a standby takes over)", {{"reason", why}});
  log::flush();  // lines leave through a writer thread, which std::_Exit does not wait for
  std::_Exit(3);
}

/// store.backend = "postgres": opens the store and waits, as a standby (standby.hpp),
/// until this broker holds the lease. Then `st` is fenced with the lease's token,
/// `keeper` renews it, and `bo` binds exactly what the standby had bound. Returns
/// -1 to go on as the active broker, or an exit code (0 after SIGTERM/SIGINT).
int wait_for_lease(prepared& p, bool with_node, broker_role& role, broker::broker_options& bo,
                   broker::admin_server& admin, std::unique_ptr<broker::store>& st_out,
                   std::unique_ptr<broker::lease_keeper>& keeper) {
  broker::pg_options po;
  po.url = p.cfg.store.url;
  po.application_name = "klynaa broker";
  broker::store_error serr;
  auto st = broker::pg_store::open(po, serr);
  if (!st) {
    std::cerr << "klynaa: cannot open the store: " << serr.message << "\n";
    return 1;
  }
  const int64_t lease_ms = p.cfg.store.lease_ms;
  std::unique_ptr<broker::standby_endpoints> standby;
  std::string holder_seen;  // logged at info when it changes
  for (;;) {
    if (g_phase.load() != 0) {
      log::info("broker", "stopping (standby)");
      return 0;
    }
    const auto sent = std::chrono::steady_clock::now();
    broker::store_error lerr;
    auto token = st->acquire_or_renew_lease(role.name, lease_ms, &lerr);
    if (token) {
      if (standby) standby->close();  // linger 0, context terminated: the ports are free
      log::info("broker", "took the lease", {{"token", *token}, {"broker_name", role.name}, {"lease_ms", lease_ms}});
      st->set_fence(*token);
      po.application_name = "klynaa lease";
      po.durable_commits = false;  // renewals never wait for a WAL flush (pg_options)
      auto renewer = broker::pg_store::open(po, serr);
      if (!renewer) {
        std::cerr << "klynaa: cannot open the store for the lease: " << serr.message << "\n";
        return 1;
      }
      keeper = std::make_unique<broker::lease_keeper>(std::move(renewer), role.name, *token, lease_ms, sent,
                                                      [](const std::string& why) { fail_stop(why); });
      st_out = std::move(st);
      return -1;
    }
    if (!lerr.message.empty()) {
      log::warning("broker", "cannot reach the store to take the lease; retrying", {{"error", lerr.message}});
    } else {
      auto holder = st->lease_holder();
      if (holder != holder_seen)
        log::info("broker", "standby: another broker holds the lease",
                  {{"holder", holder}, {"broker_name", role.name}, {"retry_every_ms", lease_ms / 3}});
      else
        log::debug("broker", "standby: the lease is still held", {{"holder", holder}});
      holder_seen = holder;
    }
    if (!standby) {
      broker::standby_options so;
      so.cfg = p.cfg;
      so.ingress_bind = bo.ingress_bind;
      if (!with_node) so.cluster_binds = bo.cluster_binds;
      so.ingress_curve = bo.ingress_curve;
      so.cluster_curve = bo.cluster_curve;
      standby = std::make_unique<broker::standby_endpoints>(so);
      std::string err;
      if (!standby->open(err)) {
        std::cerr << "klynaa: " << err << "\n";
        return 1;
      }
      auto endpoints = standby->bound_endpoints();
      bo.ingress_bind = endpoints["ingress"].get<std::string>();  // port * resolved: keep it on takeover
      if (!with_node) bo.cluster_binds = endpoints["cluster"].get<std::vector<std::string>>();
      if (with_node) endpoints["cluster"] = nlohmann::json::array({"inproc://klynaa-cluster"});
      endpoints["admin"] = admin.address();
      endpoints["role"] = "standby";
      endpoints["broker_name"] = role.name;
      write_endpoints(p.data_dir, endpoints);
    }
    standby->serve_for(std::chrono::milliseconds(lease_ms / 3));
  }
}

/// Runs a broker (and, for `run`, one node in the same process over inproc).
int serve_broker(prepared& p, bool with_node) {
  std::string err;
  if (!lock_data_dir(p, err)) {
    std::cerr << "klynaa: " << err << "\n";
    return 1;
  }
  std::unique_ptr<node_host> node;
  if (with_node) {
    node = std::make_unique<node_host>();
    if (!node->configure(p.cfg, p.data_dir, "", "", err)) {
      std::cerr << "klynaa: " << err << "\n";
      return 2;
    }
  }
  zmq::context_t ctx;
  broker::broker_options bo;
  bo.cfg = p.cfg;
  bo.ingress_bind = p.args.get("ingress").value_or(p.cfg.ingress.bind);
  bo.data_dir = p.data_dir;
  bo.ingress_curve = p.ingress_curve;
  if (!with_node) bo.cluster_curve = p.cluster_curve;
  const std::string inproc = "inproc://klynaa-cluster";
  if (with_node)
    bo.cluster_binds = {inproc};
  else
    bo.cluster_binds = {p.args.get("cluster").value_or(p.cfg.cluster.bind)};

  broker_role role;
  role.postgres = p.cfg.store.backend == "postgres";
  role.lease_ms = p.cfg.store.lease_ms;
  if (role.postgres) role.name = lease_holder_name(p.cfg);
  broker::dlq_reader dlq([cfg = p.cfg.store, dir = p.data_dir]() -> std::unique_ptr<broker::store> {
    broker::store_error e;
    return open_store(cfg, dir, /*read_only=*/true, e);
  });
  // Declared before the core: it reads the core through `role` until stopped.
  broker::admin_server admin;
  std::unique_ptr<broker::lease_keeper> keeper;  // destroyed after the core's loop ended
  std::unique_ptr<broker::store> st;
  if (role.postgres) {
    // A standby answers on every endpoint, the admin one included, from the start.
    install_signals();
    if (!admin.start(p.cfg.admin.bind, p.cfg.admin.token, role_handlers(role, dlq), err)) {
      std::cerr << "klynaa: " << err << "\n";
      return 1;
    }
    int rc = wait_for_lease(p, with_node, role, bo, admin, st, keeper);
    if (rc >= 0) return rc;
  } else {
    broker::store_error serr;
    st = open_store(p.cfg.store, p.data_dir, /*read_only=*/false, serr);
    if (!st) {
      std::cerr << "klynaa: cannot open the store: " << serr.message << "\n";
      return 1;
    }
  }
  broker::broker_core core(ctx, bo, std::move(st));
  if (!core.open(err)) {
    admin.stop();
    std::cerr << "klynaa: " << err << "\n";
    return 1;
  }
  role.core.store(&core);
  if (!role.postgres && !admin.start(p.cfg.admin.bind, p.cfg.admin.token, role_handlers(role, dlq), err)) {
    std::cerr << "klynaa: " << err << "\n";
    return 1;
  }
  auto endpoints = core.bound_endpoints();
  endpoints["admin"] = admin.address();
  if (role.postgres) {
    endpoints["role"] = "active";
    endpoints["broker_name"] = role.name;
  }
  write_endpoints(p.data_dir, endpoints);
  if (!role.postgres) install_signals();

  // The node runs beside the broker loop; on a signal it drains first, while the
  // broker still takes its results, then the broker stops.
  std::atomic<int> broker_phase{0};
  std::atomic<bool> loop_done{false};
  if (node) node->start(ctx, inproc);
  std::thread watcher([&] {
    auto wait_until = [&](auto pred) {
      while (!pred() && !loop_done.load()) std::this_thread::sleep_for(std::chrono::milliseconds(20));
    };
    wait_until([] { return g_phase.load() != 0; });
    broker_phase.store(static_cast<int>(broker::phase::draining));
    if (node) node->stop();  // finishes or hands back its jobs while the loop still runs
    else wait_until([] { return g_phase.load() >= 2; });  // a second signal: stop now
    broker_phase.store(static_cast<int>(broker::phase::stopping));
  });
  int rc = 1;
  try {
    rc = core.run(broker_phase);
  } catch (const std::exception& e) {
    // A bug, not bad input: say what it was and exit 1 (systemd restarts us; the
    // store has everything accepted). Never std::terminate with a joinable thread.
    log::error("broker", "the broker loop failed; exiting", {{"error", e.what()}});
    std::cerr << "klynaa: the broker loop failed: " << e.what() << "\n";
    g_phase.store(2);
  }
  loop_done.store(true);
  watcher.join();
  if (node) node->stop();
  admin.stop();
  role.core.store(nullptr);
  // A clean stop: the last batch is committed and nothing runs any more, so the
  // lease can end now and a standby take over at its next try (docs/deployment.md).
  if (keeper) keeper->release();
  keeper.reset();
  return rc;
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

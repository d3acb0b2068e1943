// Running a broker process (serve.hpp): the store or the lease, the admin
// endpoint, the loop and its drain.
#include "broker/serve.hpp"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <thread>

#include "broker/admin.hpp"
#include "broker/dlq.hpp"
#include "broker/journal_store.hpp"
#include "broker/lease_keeper.hpp"
#include "broker/pg_store.hpp"
#include "broker/standby.hpp"
#include "protocol/log.hpp"

namespace klynaa::broker {

namespace {

const std::string inproc_cluster = "inproc://klynaa-cluster";

/// The data dir's broker.json: the endpoints as bound, the admin address and the pid.
void write_endpoints(const std::string& data_dir, nlohmann::json j) {
  j["pid"] = ::getpid();
  auto tmp = data_dir + "/broker.json.tmp";
  {
    std::ofstream out(tmp);
    out << j.dump() << "\n";
  }
  std::filesystem::rename(tmp, data_dir + "/broker.json");
}

/// store.broker_name, or hostname:pid: the lease holder.
std::string lease_holder_name(const protocol::config& cfg) {
  if (!cfg.store.broker_name.empty()) return cfg.store.broker_name;
  char host[256] = {};
  if (::gethostname(host, sizeof host - 1) != 0) std::snprintf(host, sizeof host, "localhost");
  return std::string(host) + ":" + std::to_string(::getpid());
}

/// What the admin endpoint shows before and after this broker is active.
struct broker_role {
  std::atomic<broker_core*> core{nullptr};  ///< set once active and open
  bool postgres = false;
  std::string name;  ///< the lease holder (postgres)
  int64_t lease_ms = 0;
};

admin_handlers role_handlers(broker_role& role, dlq_reader& dlq) {
  admin_handlers h;
  h.stats = [&role]() -> broker_stats {
    auto* core = role.core.load();
    if (!core) {
      broker_stats s;
      s.role = "standby";
      s.broker_name = role.name;
      s.lease_ms = role.lease_ms;
      s.message = standby_message;
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
    if (!core) return nlohmann::json{{"error", standby_message}};
    return core->dlq_command(action, ids, all, std::chrono::seconds(10));
  };
  h.health = [&role]() -> std::pair<int, nlohmann::json> {
    if (role.core.load()) return {200, {{"status", "ok"}}};
    return {503, {{"status", "standby"}, {"role", "standby"}, {"message", standby_message}}};
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

/// The lease is ours: fence `st` with its token and start renewing it. False
/// (after printing why) when the renewer's connection cannot be opened.
bool hold_lease(pg_store& st, pg_options po, const broker_role& role, int64_t token, int64_t lease_ms,
                std::chrono::steady_clock::time_point sent, std::unique_ptr<lease_keeper>& keeper) {
  log::info("broker", "took the lease", {{"token", token}, {"broker_name", role.name}, {"lease_ms", lease_ms}});
  st.set_fence(token);
  po.application_name = "klynaa lease";
  po.durable_commits = false;  // renewals never wait for a WAL flush (pg_options)
  store_error serr;
  auto renewer = pg_store::open(po, serr);
  if (!renewer) {
    std::cerr << "klynaa: cannot open the store for the lease: " << serr.message << "\n";
    return false;
  }
  keeper = std::make_unique<lease_keeper>(std::move(renewer), role.name, token, lease_ms, sent,
                                          [](const std::string& why) { fail_stop(why); });
  return true;
}

/// Binds the standby's endpoints and writes broker.json. After it, `bo` binds
/// the very same endpoints (port `*` resolved) on takeover. nullptr after
/// printing why when an endpoint cannot be bound.
std::unique_ptr<standby_endpoints> open_standby(const serve_options& o, const broker_role& role,
                                                broker_options& bo, const admin_server& admin) {
  const bool with_node = o.node.has_value();
  standby_options so;
  so.cfg = o.cfg;
  so.ingress_bind = bo.ingress_bind;
  if (!with_node) so.cluster_binds = bo.cluster_binds;
  so.ingress_curve = bo.ingress_curve;
  so.cluster_curve = bo.cluster_curve;
  auto standby = std::make_unique<standby_endpoints>(so);
  std::string err;
  if (!standby->open(err)) {
    std::cerr << "klynaa: " << err << "\n";
    return nullptr;
  }
  auto endpoints = standby->bound_endpoints();
  bo.ingress_bind = endpoints["ingress"].get<std::string>();  // port * resolved: keep it on takeover
  if (!with_node) bo.cluster_binds = endpoints["cluster"].get<std::vector<std::string>>();
  if (with_node) endpoints["cluster"] = nlohmann::json::array({inproc_cluster});
  endpoints["admin"] = admin.address();
  endpoints["role"] = "standby";
  endpoints["broker_name"] = role.name;
  write_endpoints(o.data_dir, endpoints);
  return standby;
}

/// store.backend = "postgres": opens the store and waits, as a standby, until
/// this broker holds the lease (serve.hpp). Returns -1 to go on as the active
/// broker with `st_out` and `keeper` set, or an exit code (0 after a signal).
int wait_for_lease(const serve_options& o, broker_role& role, broker_options& bo, const admin_server& admin,
                   std::unique_ptr<store>& st_out, std::unique_ptr<lease_keeper>& keeper) {
  pg_options po;
  po.url = o.cfg.store.url;
  po.application_name = "klynaa broker";
  store_error serr;
  auto st = pg_store::open(po, serr);
  if (!st) {
    std::cerr << "klynaa: cannot open the store: " << serr.message << "\n";
    return 1;
  }
  const int64_t lease_ms = o.cfg.store.lease_ms;
  std::unique_ptr<standby_endpoints> standby;
  std::string holder_seen;  // logged at info when it changes
  for (;;) {
    if (o.signals->load() != 0) {
      log::info("broker", "stopping (standby)");
      return 0;
    }
    const auto sent = std::chrono::steady_clock::now();
    store_error lerr;
    auto token = st->acquire_or_renew_lease(role.name, lease_ms, &lerr);
    if (token) {
      if (standby) standby->close();  // linger 0, context terminated: the ports are free
      if (!hold_lease(*st, po, role, *token, lease_ms, sent, keeper)) return 1;
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
    if (!standby && !(standby = open_standby(o, role, bo, admin))) return 1;
    standby->serve_for(std::chrono::milliseconds(lease_ms / 3));
  }
}

broker_options make_broker_options(const serve_options& o) {
  broker_options bo;
  bo.cfg = o.cfg;
  bo.ingress_bind = o.ingress_bind;
  bo.data_dir = o.data_dir;
  bo.ingress_curve = o.ingress_curve;
  if (o.node) {
    bo.cluster_binds = {inproc_cluster};
  } else {
    bo.cluster_curve = o.cluster_curve;
    bo.cluster_binds = {o.cluster_bind};
  }
  return bo;
}

/// Runs the open loop until the signals end it. The node runs beside the loop;
/// on a signal it drains first, while the broker still takes its results, then
/// the broker stops.
int run_loop(broker_core& core, zmq::context_t& ctx, serve_options& o) {
  std::atomic<int> broker_phase{0};
  std::atomic<bool> loop_done{false};
  if (o.node) o.node->start(ctx, inproc_cluster);
  std::atomic<int>& signals = *o.signals;
  std::thread watcher([&] {
    auto wait_until = [&](auto pred) {
      while (!pred() && !loop_done.load()) std::this_thread::sleep_for(std::chrono::milliseconds(20));
    };
    wait_until([&] { return signals.load() != 0; });
    broker_phase.store(static_cast<int>(phase::draining));
    if (o.node)
      o.node->stop();  // finishes or hands back its jobs while the loop still runs
    else
      wait_until([&] { return signals.load() >= 2; });  // a second signal: stop now
    broker_phase.store(static_cast<int>(phase::stopping));
  });
  int rc = 1;
  try {
    rc = core.run(broker_phase);
  } catch (const std::exception& e) {
    // A bug, not bad input: say what it was and exit 1 (systemd restarts us; the
    // store has everything accepted). Never std::terminate with a joinable thread.
    log::error("broker", "the broker loop failed; exiting", {{"error", e.what()}});
    std::cerr << "klynaa: the broker loop failed: " << e.what() << "\n";
    signals.store(2);
  }
  loop_done.store(true);
  watcher.join();
  if (o.node) o.node->stop();
  return rc;
}

}  // namespace

bool lock_data_dir(const std::string& data_dir, std::string& err) {
  auto path = data_dir + "/broker.lock";
  int fd = ::open(path.c_str(), O_CREAT | O_RDWR | O_CLOEXEC, 0644);  // held until the process exits
  if (fd < 0 || ::flock(fd, LOCK_EX | LOCK_NB) != 0) {
    err = "another broker is using the data dir " + data_dir + " (--data-dir)";
    return false;
  }
  return true;
}

std::unique_ptr<store> open_store(const protocol::config::store_section& cfg, const std::string& data_dir,
                                  bool read_only, store_error& err) {
  if (cfg.backend == "postgres") {
    pg_options po;
    po.url = cfg.url;
    po.read_only = read_only;
    po.application_name = read_only ? "klynaa dlq reader" : "klynaa broker";
    return open_pg_store(po, err);
  }
  if (cfg.backend == "journal") {
    // A read-only open while this process writes the journal is a view onto
    // the writer's state (journal_store.hpp): the dead-letter reader's case.
    journal_options jo;
    jo.dir = data_dir + "/journal";
    jo.synchronous_full = cfg.synchronous != "normal";
    jo.read_only = read_only;
    return open_journal_store(jo, err);
  }
  sqlite_options so;
  so.path = data_dir + "/broker.db";
  so.synchronous_full = cfg.synchronous != "normal";
  so.read_only = read_only;
  return open_sqlite_store(so, err);
}

int serve(serve_options o) {
  zmq::context_t ctx;
  broker_options bo = make_broker_options(o);
  broker_role role;
  role.postgres = o.cfg.store.backend == "postgres";
  role.lease_ms = o.cfg.store.lease_ms;
  if (role.postgres) role.name = lease_holder_name(o.cfg);
  dlq_reader dlq([cfg = o.cfg.store, dir = o.data_dir]() -> std::unique_ptr<store> {
    store_error e;
    return open_store(cfg, dir, /*read_only=*/true, e);
  });
  // Declared before the core: it reads the core through `role` until stopped.
  admin_server admin;
  std::unique_ptr<lease_keeper> keeper;  // destroyed after the core's loop ended
  std::unique_ptr<store> st;
  std::string err;
  if (role.postgres) {
    // A standby answers on every endpoint, the admin one included, from the start.
    o.install_signals();
    if (!admin.start(o.cfg.admin.bind, o.cfg.admin.token, role_handlers(role, dlq), err)) {
      std::cerr << "klynaa: " << err << "\n";
      return 1;
    }
    int rc = wait_for_lease(o, role, bo, admin, st, keeper);
    if (rc >= 0) return rc;
  } else {
    store_error serr;
    st = open_store(o.cfg.store, o.data_dir, /*read_only=*/false, serr);
    if (!st) {
      std::cerr << "klynaa: cannot open the store: " << serr.message << "\n";
      return 1;
    }
  }
  broker_core core(ctx, bo, std::move(st));
  if (!core.open(err)) {
    admin.stop();
    std::cerr << "klynaa: " << err << "\n";
    return 1;
  }
  role.core.store(&core);
  if (!role.postgres && !admin.start(o.cfg.admin.bind, o.cfg.admin.token, role_handlers(role, dlq), err)) {
    std::cerr << "klynaa: " << err << "\n";
    return 1;
  }
  auto endpoints = core.bound_endpoints();
  endpoints["admin"] = admin.address();
  if (role.postgres) {
    endpoints["role"] = "active";
    endpoints["broker_name"] = role.name;
  }
  write_endpoints(o.data_dir, endpoints);
  if (!role.postgres) o.install_signals();
  int rc = run_loop(core, ctx, o);
  admin.stop();
  role.core.store(nullptr);
  // A clean stop: the last batch is committed and nothing runs any more, so the
  // lease can end now and a standby take over at its next try (docs/deployment.md).
  if (keeper) keeper->release();
  keeper.reset();
  return rc;
}

}  // namespace klynaa::broker

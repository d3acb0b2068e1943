// See runtime.hpp. Order of start and stop, in one place:
//
// start(): the I/O thread object (which names its inproc PULL endpoint), the
//   actor system (2 scheduler threads), the gateway (which connects its PUSH to
//   that endpoint, spawns the pools and their workers and queues READY), then
//   the I/O thread itself (binds the PULL, connects the DEALER).
//
// stop(): 1. ask the gateway to stop; it replies once BYE is in its PUSH
//   socket (at the latest after the grace); 2. stop the I/O thread, which
//   sends what is left in the PULL socket (the BYE) and closes both sockets;
//   3. end the gateway (its state closes the PUSH socket and ends the pools,
//   which end their workers) and wait for it; 4. destroy the actor system,
//   which waits for every actor. A worker whose handler is still stuck would
//   make that wait unbounded, so then the system is destroyed on a detached
//   thread instead, once the handler returns (its result is dropped).
#include "nodes/runtime.hpp"

#include <set>
#include <stdexcept>
#include <thread>

#include <caf/actor_system.hpp>
#include <caf/actor_system_config.hpp>
#include <caf/after.hpp>
#include <caf/atom.hpp>
#include <caf/logger.hpp>
#include <caf/exit_reason.hpp>
#include <caf/scoped_actor.hpp>
#include <caf/send.hpp>
#include <caf/system_messages.hpp>

#include "nodes/atoms.hpp"
#include "nodes/gateway.hpp"
#include "nodes/io_thread.hpp"
#include "protocol/log.hpp"

namespace klynaa::nodes {

namespace {

/// Beyond the grace, how long stop() waits for the gateway's answer.
constexpr std::chrono::milliseconds stop_reply_slack{2000};
/// How long stop() waits for the gateway to exit.
constexpr std::chrono::milliseconds exit_wait{1000};

void check_options(const node_options& opts) {
  std::set<std::string> functions;
  for (const auto& k : opts.kinds) {
    if (k.workers < 1)
      throw std::invalid_argument("actor kind " + k.kind + ": workers must be at least 1");
    if (!k.make_handler)
      throw std::invalid_argument("actor kind " + k.kind + ": make_handler is missing");
    for (const auto& f : k.functions)
      if (!functions.insert(f).second)
        throw std::invalid_argument("function " + f + " is claimed by two actor kinds");
  }
}

/// CAF 0.17 keeps a reference to a system's logger in a thread-local of every
/// thread that made the system, spawned an actor or made a scoped_actor, and
/// ~actor_system waits until the logger is gone: a system destroyed on another
/// thread than the one that made it (stop() from a signal-handling thread, the
/// reaper below) would wait forever. So every such thread drops that reference
/// as soon as it is done with CAF.
void release_caf_logger() {
  caf::logger::set_current_actor_system(nullptr);
}

/// Calls release_caf_logger() when the scope ends.
struct caf_logger_guard {
  ~caf_logger_guard() { release_caf_logger(); }
};

/// The actor system and the config it refers to, destroyed together.
struct system_box {
  caf::actor_system_config cfg;
  std::unique_ptr<caf::actor_system> sys;

  system_box() {
    cfg.set("scheduler.max-threads", 2);
    // The work-stealing default polls: idle workers wake every 50 µs for 25 ms,
    // then every 10 ms, for ever (perf: ~14% of a busy node's CPU spent in
    // clock_nanosleep). The sharing policy sleeps on a condition variable.
    cfg.set("scheduler.policy", caf::atom("sharing"));
    sys = std::make_unique<caf::actor_system>(cfg);
  }
};

}  // namespace

struct node_runtime::impl {
  zmq::context_t& ctx;
  node_options opts;
  std::shared_ptr<std::atomic<int>> busy = std::make_shared<std::atomic<int>>(0);
  std::unique_ptr<system_box> box;
  gateway_actor gateway;  // read by the I/O thread between io->start() and io->stop()
  std::unique_ptr<io_thread> io;
  bool started = false;
  bool stopped = false;

  impl(zmq::context_t& c, node_options o) : ctx(c), opts(std::move(o)) {}

  void start();
  void stop();
  void ask_gateway_to_stop();
  void end_gateway();
  void end_system();
};

void node_runtime::impl::start() {
  caf_logger_guard release;  // spawn() takes a logger reference too
  io = std::make_unique<io_thread>(ctx, opts.broker_endpoint, [this](std::string frame) {
    caf::anon_send(gateway, frame_atom::value, std::move(frame));
  }, io_thread::curve_keys{opts.curve_server_key, opts.curve_public_key, opts.curve_secret_key});
  box = std::make_unique<system_box>();
  gateway_config gc;
  gc.node = opts.name;
  gc.kinds = opts.kinds;
  gc.ctx = &ctx;
  gc.out_endpoint = io->out_endpoint();
  gc.broker_endpoint = opts.broker_endpoint;
  gc.register_retry_ms = std::max<int64_t>(1, opts.register_retry_ms);
  gc.register_retry_max_ms = std::max<int64_t>(gc.register_retry_ms, opts.register_retry_max_ms);
  gc.stats_interval_ms = opts.stats_interval_ms;
  gc.busy = busy;
  gc.extra_stats = opts.extra_stats;
  gc.backed_up = opts.backed_up;
  gc.initial_credit = opts.backed_up ? opts.initial_credit : 0;
  gateway = spawn_gateway(*box->sys, std::move(gc));
  started = true;
  try {
    io->start();
  } catch (...) {
    stop();
    throw;
  }
  log::info("node", "node started", {{"node", opts.name}, {"broker", opts.broker_endpoint},
                                     {"curve", !opts.curve_secret_key.empty()}});
}

void node_runtime::impl::ask_gateway_to_stop() {
  caf_logger_guard release;  // declared first: runs after ~scoped_actor
  caf::scoped_actor self{*box->sys};
  auto timeout = std::chrono::milliseconds{std::max<int64_t>(0, opts.shutdown_grace_ms)} + stop_reply_slack;
  self->request(gateway, timeout, stop_atom::value, opts.shutdown_grace_ms)
      .receive([](caf::ok_atom) {},
               [&](caf::error& e) {
                 log::error("node", "the gateway did not confirm its bye",
                            {{"node", opts.name}, {"error", box->sys->render(e)}});
               });
}

void node_runtime::impl::end_gateway() {
  caf_logger_guard release;  // declared first: runs after ~scoped_actor
  caf::scoped_actor self{*box->sys};
  self->monitor(gateway);
  caf::anon_send_exit(gateway, caf::exit_reason::user_shutdown);
  self->receive([](caf::down_msg&) {},
                caf::after(exit_wait) >> [&] {
                  log::error("node", "the gateway did not exit in time", {{"node", opts.name}});
                });
  gateway = nullptr;
}

void node_runtime::impl::end_system() {
  // Idle workers end within milliseconds; give a handler that is about to
  // return a moment before deciding it is stuck.
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds{200};
  while (busy->load() > 0 && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds{5});
  if (busy->load() == 0) {
    box.reset();
    return;
  }
  log::warning("node", "abandoning job handlers still running after the grace",
               {{"node", opts.name}, {"running", busy->load()}});
  std::thread([b = std::move(box)]() mutable { b.reset(); }).detach();
}

void node_runtime::impl::stop() {
  if (stopped)
    return;
  stopped = true;
  if (!started)
    return;
  if (gateway)
    ask_gateway_to_stop();
  io->stop();
  io.reset();  // its frame handler refers to `gateway`
  if (gateway)
    end_gateway();
  end_system();
  log::info("node", "node stopped", {{"node", opts.name}});
}

node_runtime::node_runtime(zmq::context_t& ctx, node_options opts) {
  check_options(opts);
  impl_ = std::make_unique<impl>(ctx, std::move(opts));
}

node_runtime::~node_runtime() {
  stop();
}

void node_runtime::start() {
  if (impl_->started || impl_->stopped)
    return;
  impl_->start();
}

void node_runtime::stop() {
  impl_->stop();
}

}  // namespace klynaa::nodes

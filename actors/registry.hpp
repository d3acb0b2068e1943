// Which actor kinds this build can host, and how to make their job handlers.
// The node runtime (nodes/) calls make_actor_kinds once at start and then
// spec.make_handler() once per worker.
//
// Built: "notifier", "escrow", "geo" and "scheduler"; the functions each runs
// are protocol::function_registry's (docs/events-and-functions.md, "Functions").
#pragma once

#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "nodes/job.hpp"
#include "protocol/config.hpp"

namespace klynaa::actors {

class http_loop;

/// The actor kind names `--actors` takes (docs/operations.md, "Roles"): the
/// kinds of protocol::function_registry::built_in(), built or not.
const std::vector<std::string>& known_actor_kinds();

/// The problem that stops `kinds` from being hosted with `cfg` and `data_dir`, as
/// a message naming the flag or key (the CLI prints it and exits 2), or nothing:
///  - a kind that is not in known_actor_kinds() ("--actors: unknown actor kind …");
///  - notifier, escrow, geo or scheduler without django.url ("[django] url: …");
///  - a notifier whose provider cannot be made (see make_provider in providers.hpp);
///  - an invalid template override ([notifications.templates.*]).
std::optional<std::string> check_actor_config(const protocol::config& cfg,
                                              const std::string& data_dir,
                                              const std::vector<std::string>& kinds);

/// Thrown by make_actor_kinds with check_actor_config's message.
class actor_config_error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// One spec per built kind in `kinds`, in the order given (duplicates once),
/// each running the functions protocol::function_registry::of(cfg) gives its kind:
///  - notifier: functions {"sendPickupNotification"}, workers
///    config.node.notifier_workers; each handler owns a django_client and a push
///    provider, all share one templates instance and (for "log") one outbox;
///  - escrow: functions {"processEscrowRelease"}, workers config.node.escrow_workers;
///  - geo: functions {"notifyNearbyWorkers", "updateWorkerLocation"}, workers
///    config.node.geo_workers; all its handlers share one geo_service (index and
///    loader thread, see geo.hpp), started with the first handler made and
///    stopped with the last destroyed, so building the specs starts no thread.
///  - scheduler: functions {"generateDailyReport", "generateWeeklyAnalytics",
///    "cleanupData"}, workers config.node.scheduler_workers.
/// Call check_actor_config first
/// to get errors as values; this throws actor_config_error when it would fail.
/// The specs copy what they need from `cfg`; `cfg` need not outlive them.
///
/// With `loop` (make_http_loop), notifier, escrow and scheduler run their jobs
/// on fibers (actor_kind_spec::fibers): every call to Django and the providers
/// goes through that one event loop, paced by its adaptive limits, and `workers`
/// counts jobs in flight. Without it each of their workers blocks a thread.
std::vector<nodes::actor_kind_spec> make_actor_kinds(const protocol::config& cfg,
                                                     const std::string& data_dir,
                                                     const std::vector<std::string>& kinds,
                                                     std::shared_ptr<http_loop> loop = nullptr);

/// The node's event loop for HTTP (http_loop.hpp): its default timeouts and CA
/// file from [django], its adaptive limits from [node] limit_* and
/// downstream_max_in_flight. Starts its thread.
std::shared_ptr<http_loop> make_http_loop(const protocol::config& cfg);

}  // namespace klynaa::actors

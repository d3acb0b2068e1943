// Which actor kinds this build can host, and how to make their job handlers.
// The node runtime (nodes/) calls make_actor_kinds once at start and then
// spec.make_handler() once per worker.
//
// Built: "notifier" (sendPickupNotification) and "escrow" (processEscrowRelease).
// Not built yet: "geo" and "scheduler". They are accepted as names but left out
// of the result, so their jobs stay queued in the broker until a node that hosts
// them connects (no actor answers "not implemented" for them).
#pragma once

#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "nodes/job.hpp"
#include "protocol/config.hpp"

namespace klynaa::actors {

/// The actor kind names of contract §5 (`--actors`), built or not.
const std::vector<std::string>& known_actor_kinds();

/// The problem that stops `kinds` from being hosted with `cfg` and `data_dir`, as
/// a message naming the flag or key (the CLI prints it and exits 2), or nothing:
///  - a kind that is not in known_actor_kinds() ("--actors: unknown actor kind …");
///  - notifier or escrow without django.url ("[django] url: …");
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

/// One spec per built kind in `kinds`, in the order given (duplicates once):
///  - notifier: functions {"sendPickupNotification"}, workers
///    config.node.notifier_workers; each handler owns a django_client and a push
///    provider, all share one templates instance and (for "log") one outbox;
///  - escrow: functions {"processEscrowRelease"}, workers config.node.escrow_workers.
/// "geo" and "scheduler" are skipped (see above). Call check_actor_config first
/// to get errors as values; this throws actor_config_error when it would fail.
/// The specs copy what they need from `cfg`; `cfg` need not outlive them.
std::vector<nodes::actor_kind_spec> make_actor_kinds(const protocol::config& cfg,
                                                     const std::string& data_dir,
                                                     const std::vector<std::string>& kinds);

}  // namespace klynaa::actors

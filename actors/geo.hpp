// The geo actor's job logic (docs/events-and-functions.md, "notifyNearbyWorkers and
// updateWorkerLocation (geo)"): `notifyNearbyWorkers` and
// `updateWorkerLocation`, over one geo_index per node (geo_index.hpp has the
// distance and update rules) that a background loader refreshes from Django.
//
// updateWorkerLocation — data {worker_id* positive int, lat* [-90, 90],
// lng* [-180, 180], available* bool}. available = true upserts the worker at
// (lat, lng), false removes it, both as of the job's `ts_ms` (the event's time);
// an update older than what the index holds is ignored, which is still a
// success. Result: {}.
//
// notifyNearbyWorkers — data {pickup_id* positive int, lat*, lng*, radius_km
// positive number, default geo.radius_km}. Selects at most geo.max_workers
// workers within radius_km whose service radius reaches the pickup, nearest
// first, ties by worker id. Result:
//   {"workers": [ids, nearest first], "distances_km": [km, same order]}
// and one child job per selected worker, n from 1 in that order:
//   id "{job id}#{n}", function sendPickupNotification,
//   data {"pickup_id", "notification_type": "pickup_requested",
//         "user_type": "worker", "user_id": worker id}.
// The broker deduplicates child ids, so a retried job adds no second job under
// the same id (a retry that finds other workers may add jobs for them).
//
// Before the first load (a design choice): until the loader has loaded Django's
// list once, notifyNearbyWorkers fails *transiently* with error_code
// "geo_not_loaded", so the broker retries it with backoff, instead of answering
// with an empty or partial list. An empty answer would be a success: the pickup
// would be recorded as "nobody nearby" and its workers never told, although
// they were only not loaded yet (after a node start, or while Django is down).
// The retry limit still dead-letters the job when Django stays unreachable,
// where an operator can replay it. updateWorkerLocation works before the first
// load; the load keeps whatever is newer than Django's list.
//
// Invalid data is a permanent "invalid_data" failure naming the field; an
// unknown function is a permanent "unknown_function".
//
// Loader: one thread per geo_service, with its own django_client. At start, and
// then every geo.refresh_seconds, it calls GET /api/workers/available/ and loads
// the answer with the time the call began. A failed load is logged (warning)
// and changes nothing; until the first load succeeds it is retried sooner,
// after 1 s doubling up to refresh_seconds, so a node that starts while Django
// is briefly down does not wait a whole period. Entries of Django's list without
// a positive integer id or a valid lat/lng are skipped and counted in the log;
// a service_radius_km that is absent, null or not a positive number means
// geo.radius_km.
//
// Threading and lifetime: geo_handler is used by one thread at a time, like
// every job handler; the geo_service behind it is shared by all handlers of a
// node and thread-safe. geo_handler_factory() creates the service (and starts
// its loader) with the first handler and destroys it with the last; destroying
// it stops the loader, waiting for a Django call in flight (at most
// django.timeout_ms). Nothing here throws out of a job.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "actors/django_client.hpp"
#include "actors/geo_index.hpp"
#include "nodes/job.hpp"
#include "protocol/config.hpp"

namespace klynaa::actors {

/// The geo settings, from config [geo] (see from_config), plus knobs for tests.
struct geo_options {
  double radius_km = 5.0;    ///< default search radius and default service radius
  size_t max_workers = 10;   ///< most workers selected for one pickup
  std::chrono::milliseconds refresh{300000};     ///< between full loads
  std::chrono::milliseconds first_retry{1000};   ///< first retry before the first load succeeds
  std::function<int64_t()> clock;  ///< ms since the epoch; empty = log::now_ms

  /// [geo] radius_km, max_workers, refresh_seconds.
  static geo_options from_config(const protocol::config::geo_section& geo);
};

/// The workers of Django's GET /api/workers/available/ "workers" array. Entries
/// that are not objects, lack a positive integer `id`, or have lat/lng missing,
/// not numbers or out of range are skipped and counted in `*skipped` (when
/// given); a `service_radius_km` that is not a positive finite number is left
/// unknown. Never throws (but std::bad_alloc).
std::vector<worker_location> parse_available_workers(const nlohmann::json& workers,
                                                     size_t* skipped = nullptr);

/// A node's shared geo state: the index and the loader thread that fills it.
class geo_service {
 public:
  /// Starts the loader at once; `loader` is used by the loader thread only.
  geo_service(std::unique_ptr<django_client> loader, geo_options opts);
  /// Stops the loader and waits for it (and for its Django call in flight).
  ~geo_service();
  geo_service(const geo_service&) = delete;
  geo_service& operator=(const geo_service&) = delete;

  geo_index& index() { return index_; }
  const geo_options& options() const { return opts_; }

  /// Whether a load from Django has succeeded (notifyNearbyWorkers answers).
  bool ready() const { return index_.loaded(); }

  /// Waits until ready() or `timeout` passed; returns ready(). For tests.
  bool wait_ready(std::chrono::milliseconds timeout) const;

  /// Loads finished so far, successful or not. For tests.
  uint64_t load_attempts() const { return attempts_.load(); }

 private:
  void loader_loop();
  bool load_once();
  int64_t now_ms() const;

  geo_options opts_;
  geo_index index_;
  std::unique_ptr<django_client> django_;
  std::atomic<uint64_t> attempts_{0};
  mutable std::mutex mutex_;  ///< guards stopping_; with cv_ for waits
  mutable std::condition_variable cv_;
  bool stopping_ = false;
  std::thread loader_;  ///< last: started after everything above exists
};

class geo_handler : public nodes::job_handler {
 public:
  explicit geo_handler(std::shared_ptr<geo_service> service);

  /// Runs one notifyNearbyWorkers or updateWorkerLocation job as described
  /// above. Never throws.
  nodes::job_result run(const nodes::job& j) override;

 private:
  nodes::job_result run_checked(const nodes::job& j);
  nodes::job_result update_location(const nodes::job& j);
  nodes::job_result notify_nearby(const nodes::job& j);

  std::shared_ptr<geo_service> service_;
};

/// A make_handler for actor_kind_spec: every handler it makes shares one
/// geo_service (one index, one loader), created with the first live handler
/// and destroyed with the last. Thread-safe.
std::function<std::unique_ptr<nodes::job_handler>()> geo_handler_factory(
    protocol::config::django_section django, geo_options opts);

}  // namespace klynaa::actors

// The geo actor's index of available workers (docs/events-and-functions.md,
// "notifyNearbyWorkers and updateWorkerLocation (geo)"): where each worker is,
// how far they travel (service_radius_km), and the nearest-first query that
// picks whom to notify.
//
// Distances are great-circle distances by the haversine formula on a sphere of
// radius 6371.0088 km (the IUGG mean Earth radius), in kilometres. Every filter
// and the order of the answer use haversine_km() below, exactly.
//
// How the search stays fast. Each worker is stored in a Boost.Geometry R-tree as
// its point on the unit sphere, (x, y, z) = (cos lat cos lng, cos lat sin lng,
// sin lat), in a cartesian coordinate system. The straight-line (chord) distance
// between two such points grows strictly with their great-circle distance, so the
// R-tree's own nearest-neighbour search visits workers in great-circle order, and
// the bounding box of a search radius is simply the cube of side 2·chord(radius)
// around the pickup. Poles and the antimeridian are not special cases: there is
// no longitude seam and no singularity in this space. A query costs O(k log n)
// for k = max_workers: about 10 µs at the median and 30 µs at p99 with 100,000
// workers and k = 10, on a busy 2-core machine (bench/geo_bench.cpp). The R-tree only proposes candidates: each is checked
// and sorted again by haversine_km, with a margin for floating-point rounding
// between the two formulas, so ties and the radius boundary follow haversine
// exactly.
//
// Update rules (the same section of docs/events-and-functions.md), in one place.
// Every update carries a timestamp in ms since the epoch (the event's `ts`):
//  - upsert(worker, ...) and remove(worker, ...) older than what the index holds
//    for that worker are ignored (an equal timestamp is applied: the later
//    arrival wins);
//  - a removal is remembered, with its timestamp, until the next full load, so a
//    late upsert older than it cannot bring the worker back;
//  - load(list, started_ms) replaces the index with Django's list as of
//    `started_ms`, the time the load began. The list counts as one update of
//    every worker at `started_ms`: a worker it leaves out was unavailable then.
//    So after a load, any upsert or removal older than `started_ms` is ignored
//    (the load's time is a floor under every worker), remembered removals older
//    than the load are forgotten (the floor covers them), and updates applied
//    since the load began (timestamp ≥ started_ms) survive it: a newer live
//    location or removal wins over Django's list;
//  - a worker's service radius comes from Django's list (the latest load), is
//    kept across its upserts and removals, and is geo.radius_km for a worker
//    Django did not list (unless an upsert gives one explicitly).
//
// Thread-safety: every member function may be called from any thread; queries
// share a std::shared_mutex, updates take it exclusively. One index is shared by
// all geo workers of a node. Nothing here throws except std::bad_alloc.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <shared_mutex>
#include <unordered_map>
#include <vector>

namespace klynaa::actors {

/// The mean Earth radius in km (docs/events-and-functions.md, "notifyNearbyWorkers
/// and updateWorkerLocation (geo)": haversine, R = 6371.0088 km).
inline constexpr double earth_radius_km = 6371.0088;

/// Great-circle distance in km between two points in degrees (haversine formula,
/// Earth radius earth_radius_km). Symmetric; 0 for equal points.
double haversine_km(double lat1, double lng1, double lat2, double lng2) noexcept;

/// One worker as Django lists it (GET /api/workers/available/).
struct worker_location {
  int64_t id = 0;
  double lat = 0;  ///< degrees, [-90, 90]
  double lng = 0;  ///< degrees, [-180, 180]
  std::optional<double> service_radius_km;  ///< absent: geo.radius_km
};

/// One answer of geo_index::nearest.
struct nearby_worker {
  int64_t id = 0;
  double distance_km = 0;  ///< haversine_km from the query point

  friend bool operator==(const nearby_worker& a, const nearby_worker& b) {
    return a.id == b.id && a.distance_km == b.distance_km;
  }
};

class geo_index {
 public:
  /// `default_service_radius_km` (geo.radius_km) is the service radius of a
  /// worker Django did not list; a non-positive or non-finite value means 5.
  explicit geo_index(double default_service_radius_km = 5.0);
  ~geo_index();
  geo_index(const geo_index&) = delete;
  geo_index& operator=(const geo_index&) = delete;

  /// Puts worker `id` at (lat, lng) as of `ts_ms`, adding it when absent or
  /// removed. `service_radius_km`, when given (positive, finite), replaces the
  /// worker's service radius; otherwise it keeps the one it has (see above).
  /// Returns false, changing nothing, when the update is older than what the
  /// index holds for the worker or than the last load, or when id ≤ 0 or a
  /// coordinate is out of range or not finite.
  bool upsert(int64_t id, double lat, double lng, int64_t ts_ms,
              std::optional<double> service_radius_km = std::nullopt);

  /// Removes worker `id` as of `ts_ms` and remembers the removal until the next
  /// load. Returns false, changing nothing, when older than what the index holds
  /// for the worker or than the last load. Removing an unknown worker is
  /// remembered too (and returns true): a late older upsert must not add it.
  bool remove(int64_t id, int64_t ts_ms);

  /// Replaces the index with `workers` as of `started_ms` (see the rules above).
  /// Entries with id ≤ 0, coordinates out of range, or a repeated id (the first
  /// counts) are skipped; a service radius that is not positive and finite counts
  /// as unknown. Returns false, changing nothing, when `started_ms` is older than
  /// the last load's. The R-tree is bulk-loaded outside the lock; the exclusive
  /// section only merges the updates that arrived since `started_ms`.
  bool load(const std::vector<worker_location>& workers, int64_t started_ms);

  /// The available workers within `radius_km` of (lat, lng) (distance ≤
  /// radius_km) whose own service radius reaches it (distance ≤
  /// service_radius_km), nearest first, ties by worker id, at most
  /// `max_workers`. Empty for max_workers 0, a negative or non-finite radius,
  /// or coordinates out of range.
  std::vector<nearby_worker> nearest(double lat, double lng, double radius_km,
                                     size_t max_workers) const;

  /// Number of available workers (removals not counted).
  size_t size() const;

  /// Whether load() has succeeded at least once.
  bool loaded() const;

  /// `started_ms` of the last load, or nothing before the first.
  std::optional<int64_t> last_load_ms() const;

  /// The service radius the index uses for worker `id` now (its own, Django's,
  /// or the default), whether available or not.
  double service_radius_km(int64_t id) const;

 private:
  struct tree;  // the Boost R-tree, kept out of this header
  struct record {
    int64_t ts_ms = 0;
    bool available = false;
    double lat = 0;
    double lng = 0;
    double service_radius_km = 0;
    bool from_load = false;  ///< set by load(), not by an update since
  };

  double radius_for_new(int64_t id) const;  // callers hold mutex_
  void insert_locked(int64_t id, const record& r);
  void erase_locked(int64_t id, const record& r);

  double default_radius_km_;
  mutable std::shared_mutex mutex_;
  std::unique_ptr<tree> tree_;
  std::unordered_map<int64_t, record> records_;         ///< available and removed workers
  std::unordered_map<int64_t, double> listed_radius_;  ///< service radius per Django's last list
  std::optional<int64_t> floor_ms_;                     ///< started_ms of the last load
};

}  // namespace klynaa::actors

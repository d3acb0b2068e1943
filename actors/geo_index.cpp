// The worker index: a Boost.Geometry R-tree over unit-sphere points plus a map
// of every worker's last known state. The rules are documented in geo_index.hpp.
#include "actors/geo_index.hpp"

#include <algorithm>
#include <cmath>
#include <mutex>
#include <utility>

// Boost 1.74's Geometry includes a header of Boost.Math that it deprecated
// itself; the note it prints is not ours to fix.
#ifndef BOOST_ALLOW_DEPRECATED_HEADERS
#define BOOST_ALLOW_DEPRECATED_HEADERS
#endif
#include <boost/geometry.hpp>
#include <boost/geometry/index/rtree.hpp>

namespace klynaa::actors {
namespace {

namespace bg = boost::geometry;
namespace bgi = boost::geometry::index;

using point3 = bg::model::point<double, 3, bg::cs::cartesian>;
using box3 = bg::model::box<point3>;

constexpr double pi = 3.14159265358979323846;
constexpr double deg = pi / 180.0;

/// Relative and absolute slack between the chord and the haversine formulas: far
/// above their rounding differences (~1e-15), far below a metre (1e-9 of the
/// Earth's radius is 6 mm).
constexpr double rel_slack = 1e-9;
constexpr double abs_slack = 1e-12;

struct entry {
  point3 p;
  int64_t id = 0;
  double lat = 0;
  double lng = 0;
  double service_radius_km = 0;
};

struct entry_indexable {
  using result_type = const point3&;
  result_type operator()(const entry& e) const { return e.p; }
};

struct entry_equal {
  bool operator()(const entry& a, const entry& b) const { return a.id == b.id; }
};

point3 unit_point(double lat, double lng) {
  double phi = lat * deg;
  double lambda = lng * deg;
  return point3(std::cos(phi) * std::cos(lambda), std::cos(phi) * std::sin(lambda), std::sin(phi));
}

/// Straight-line distance through the unit sphere for a great-circle distance.
double chord_for_km(double km) {
  double angle = std::min(km / earth_radius_km, pi);
  return 2.0 * std::sin(angle / 2.0);
}

box3 cube_around(const point3& c, double half) {
  return box3(point3(c.get<0>() - half, c.get<1>() - half, c.get<2>() - half),
              point3(c.get<0>() + half, c.get<1>() + half, c.get<2>() + half));
}

bool valid_position(double lat, double lng) {
  return std::isfinite(lat) && std::isfinite(lng) && lat >= -90.0 && lat <= 90.0 && lng >= -180.0 &&
         lng <= 180.0;
}

bool valid_radius(std::optional<double> r) { return r && std::isfinite(*r) && *r > 0.0; }

bool nearer(const nearby_worker& a, const nearby_worker& b) {
  return a.distance_km != b.distance_km ? a.distance_km < b.distance_km : a.id < b.id;
}

}  // namespace

struct geo_index::tree {
  // Quadratic split rather than R*: a location update (remove + insert) takes
  // ~3 us instead of ~6.7 at 100k workers, and nearest() stays as fast
  // (klynaa-geo-bench; docs/performance.md). Locations change far more often
  // than pickups are created.
  using rtree = bgi::rtree<entry, bgi::quadratic<16>, entry_indexable, entry_equal>;
  rtree rt;

  tree() = default;
  explicit tree(std::vector<entry>& entries) : rt(entries.begin(), entries.end()) {}  // packed
};

double haversine_km(double lat1, double lng1, double lat2, double lng2) noexcept {
  double phi1 = lat1 * deg;
  double phi2 = lat2 * deg;
  double s_phi = std::sin((phi2 - phi1) / 2.0);
  double s_lambda = std::sin((lng2 - lng1) * deg / 2.0);
  double h = s_phi * s_phi + std::cos(phi1) * std::cos(phi2) * s_lambda * s_lambda;
  h = std::min(1.0, std::max(0.0, h));
  return 2.0 * earth_radius_km * std::asin(std::sqrt(h));
}

geo_index::geo_index(double default_service_radius_km)
    : default_radius_km_(valid_radius(default_service_radius_km) ? default_service_radius_km : 5.0),
      tree_(std::make_unique<tree>()) {}

geo_index::~geo_index() = default;

double geo_index::radius_for_new(int64_t id) const {
  auto it = listed_radius_.find(id);
  return it != listed_radius_.end() ? it->second : default_radius_km_;
}

void geo_index::insert_locked(int64_t id, const record& r) {
  tree_->rt.insert(entry{unit_point(r.lat, r.lng), id, r.lat, r.lng, r.service_radius_km});
}

void geo_index::erase_locked(int64_t id, const record& r) {
  tree_->rt.remove(entry{unit_point(r.lat, r.lng), id, r.lat, r.lng, r.service_radius_km});
}

bool geo_index::upsert(int64_t id, double lat, double lng, int64_t ts_ms,
                       std::optional<double> service_radius_km) {
  if (id <= 0 || !valid_position(lat, lng)) return false;
  std::unique_lock<std::shared_mutex> lock(mutex_);
  if (floor_ms_ && ts_ms < *floor_ms_) return false;
  auto it = records_.find(id);
  double radius;
  if (it != records_.end()) {
    if (ts_ms < it->second.ts_ms) return false;
    if (it->second.available) erase_locked(id, it->second);
    radius = it->second.service_radius_km;
  } else {
    radius = radius_for_new(id);
  }
  if (valid_radius(service_radius_km)) radius = *service_radius_km;
  record r{ts_ms, true, lat, lng, radius};
  insert_locked(id, r);
  records_[id] = r;
  return true;
}

bool geo_index::remove(int64_t id, int64_t ts_ms) {
  if (id <= 0) return false;
  std::unique_lock<std::shared_mutex> lock(mutex_);
  if (floor_ms_ && ts_ms < *floor_ms_) return false;
  auto it = records_.find(id);
  if (it == records_.end()) {
    records_[id] = record{ts_ms, false, 0, 0, radius_for_new(id)};
    return true;
  }
  if (ts_ms < it->second.ts_ms) return false;
  if (it->second.available) erase_locked(id, it->second);
  it->second.available = false;
  it->second.ts_ms = ts_ms;
  it->second.from_load = false;
  return true;
}

bool geo_index::load(const std::vector<worker_location>& workers, int64_t started_ms) {
  {
    std::shared_lock<std::shared_mutex> lock(mutex_);
    if (floor_ms_ && started_ms < *floor_ms_) return false;
  }
  // Django's list, built and bulk-loaded without the lock.
  std::unordered_map<int64_t, record> records;
  std::unordered_map<int64_t, double> listed;
  std::vector<entry> entries;
  records.reserve(workers.size());
  listed.reserve(workers.size());
  entries.reserve(workers.size());
  for (const auto& w : workers) {
    if (w.id <= 0 || !valid_position(w.lat, w.lng) || records.count(w.id)) continue;
    double radius = valid_radius(w.service_radius_km) ? *w.service_radius_km : default_radius_km_;
    if (valid_radius(w.service_radius_km)) listed[w.id] = radius;
    records[w.id] = record{started_ms, true, w.lat, w.lng, radius, true};
    entries.push_back(entry{unit_point(w.lat, w.lng), w.id, w.lat, w.lng, radius});
  }
  auto fresh = std::make_unique<tree>(entries);

  std::unique_lock<std::shared_mutex> lock(mutex_);
  if (floor_ms_ && started_ms < *floor_ms_) return false;
  // Updates applied since the load began are newer than Django's list: keep
  // them. What an earlier load put here is older (or as old) by definition.
  std::swap(tree_, fresh);  // tree_ is now Django's list; `fresh` the old tree
  for (const auto& [id, live] : records_) {
    if (live.from_load || live.ts_ms < started_ms) continue;
    auto it = records.find(id);
    if (it != records.end() && it->second.available) erase_locked(id, it->second);
    record r = live;
    auto l = listed.find(id);
    if (l != listed.end()) r.service_radius_km = l->second;
    if (r.available) insert_locked(id, r);
    records[id] = r;
  }
  std::swap(records_, records);
  std::swap(listed_radius_, listed);
  floor_ms_ = started_ms;
  lock.unlock();
  // The old tree and maps are freed here, after the lock is released.
  return true;
}

std::vector<nearby_worker> geo_index::nearest(double lat, double lng, double radius_km,
                                              size_t max_workers) const {
  std::vector<nearby_worker> out;
  if (max_workers == 0 || !valid_position(lat, lng) || !std::isfinite(radius_km) || radius_km < 0)
    return out;
  const point3 q = unit_point(lat, lng);
  // A worker qualifies when within `limit_km` and its service radius reaches q.
  auto qualifies = [&](const entry& e, double limit_km) {
    double d = haversine_km(lat, lng, e.lat, e.lng);
    return d <= limit_km && d <= e.service_radius_km;
  };
  auto collect = [&](const std::vector<entry>& from) {
    out.clear();
    for (const auto& e : from) out.push_back({e.id, haversine_km(lat, lng, e.lat, e.lng)});
    std::sort(out.begin(), out.end(), nearer);
  };

  std::shared_lock<std::shared_mutex> lock(mutex_);
  const size_t n = tree_->rt.size();
  if (n == 0) return out;
  // 1. The R-tree's k + 1 nearest qualifying workers, searched only inside the
  //    cube around the radius (the cube bounds the search even when fewer
  //    qualify). Boost reserves room for k: never ask for more than there are.
  const size_t k = std::min(max_workers, n);
  const size_t asked = std::min<size_t>(std::min(k + 1, n), 1u << 30);
  std::vector<entry> found;
  found.reserve(asked);
  tree_->rt.query(bgi::nearest(q, static_cast<unsigned>(asked)) &&
                      bgi::intersects(cube_around(q, chord_for_km(radius_km) * (1 + rel_slack) + abs_slack)) &&
                      bgi::satisfies([&](const entry& e) { return qualifies(e, radius_km); }),
                  std::back_inserter(found));
  collect(found);
  // The R-tree ranks by chord, the answer by haversine and id. When the k-th and
  // the (k+1)-th are clearly apart, every worker outside `found` is farther than
  // the k-th and `found` decides. Otherwise (a tie, or a gap within rounding)
  // 2. take every qualifying worker as near as the k-th and let our order decide.
  if (found.size() == asked && asked > k) {
    double kth = out[k - 1].distance_km;
    if (out[k].distance_km - kth <= kth * rel_slack + 1e-9) {
      found.clear();
      tree_->rt.query(bgi::intersects(cube_around(q, chord_for_km(kth) * (1 + rel_slack) + abs_slack)) &&
                          bgi::satisfies([&](const entry& e) { return qualifies(e, kth); }),
                      std::back_inserter(found));
      collect(found);
    }
  }
  lock.unlock();
  if (out.size() > k) out.resize(k);
  return out;
}

size_t geo_index::size() const {
  std::shared_lock<std::shared_mutex> lock(mutex_);
  return tree_->rt.size();
}

bool geo_index::loaded() const {
  std::shared_lock<std::shared_mutex> lock(mutex_);
  return floor_ms_.has_value();
}

std::optional<int64_t> geo_index::last_load_ms() const {
  std::shared_lock<std::shared_mutex> lock(mutex_);
  return floor_ms_;
}

double geo_index::service_radius_km(int64_t id) const {
  std::shared_lock<std::shared_mutex> lock(mutex_);
  auto it = records_.find(id);
  return it != records_.end() ? it->second.service_radius_km : radius_for_new(id);
}

}  // namespace klynaa::actors

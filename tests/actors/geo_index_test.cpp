// geo_index (docs/events-and-functions.md, "notifyNearbyWorkers and
// updateWorkerLocation (geo)"): haversine, the selection rules of notifyNearbyWorkers,
// the update rules of updateWorkerLocation and loads, and a property test of the
// R-tree search against a brute-force scan, poles and antimeridian included.
#include "actors/geo_index.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <map>
#include <random>
#include <thread>

#include <catch2/catch.hpp>

using klynaa::actors::earth_radius_km;
using klynaa::actors::geo_index;
using klynaa::actors::haversine_km;
using klynaa::actors::nearby_worker;
using klynaa::actors::worker_location;

namespace {

constexpr double pi = 3.14159265358979323846;

std::vector<int64_t> ids(const std::vector<nearby_worker>& v) {
  std::vector<int64_t> out;
  for (const auto& w : v) out.push_back(w.id);
  return out;
}

/// The point `km` east of (lat, lng) along the parallel's great circle start,
/// found by bisection on haversine_km (so tests can put a worker at a distance).
double lng_at_distance(double lat, double lng, double km) {
  double lo = 0, hi = 10;
  for (int i = 0; i < 200; ++i) {
    double mid = (lo + hi) / 2;
    (haversine_km(lat, lng, lat, lng + mid) < km ? lo : hi) = mid;
  }
  return lng + lo;
}

/// What the index must answer, by scanning every worker.
struct brute_force {
  struct worker {
    double lat, lng, service;
  };
  std::map<int64_t, worker> workers;

  std::vector<nearby_worker> nearest(double lat, double lng, double radius, size_t max) const {
    std::vector<nearby_worker> out;
    for (const auto& [id, w] : workers) {
      double d = haversine_km(lat, lng, w.lat, w.lng);
      if (d <= radius && d <= w.service) out.push_back({id, d});
    }
    std::sort(out.begin(), out.end(), [](const nearby_worker& a, const nearby_worker& b) {
      return a.distance_km != b.distance_km ? a.distance_km < b.distance_km : a.id < b.id;
    });
    if (out.size() > max) out.resize(max);
    return out;
  }
};

// Lagos (Ikeja) and Abuja.
constexpr double lagos_lat = 6.6018, lagos_lng = 3.3515;
constexpr double abuja_lat = 9.0765, abuja_lng = 7.3986;

}  // namespace

TEST_CASE("haversine matches known great-circle distances", "[geo]") {
  // Lagos (Ikeja) to Abuja is about 524 km.
  CHECK(haversine_km(lagos_lat, lagos_lng, abuja_lat, abuja_lng) == Approx(524.0).margin(1.0));
  CHECK(haversine_km(lagos_lat, lagos_lng, abuja_lat, abuja_lng) == Approx(523.8657).margin(0.001));
  // London to Paris, about 343.6 km.
  CHECK(haversine_km(51.5074, -0.1278, 48.8566, 2.3522) == Approx(343.5565).margin(0.001));
  // Half the equator and one degree of a meridian, on a sphere of 6371.0088 km.
  CHECK(haversine_km(0, 0, 0, 180) == Approx(pi * earth_radius_km).epsilon(1e-12));
  CHECK(haversine_km(10, 20, 11, 20) == Approx(pi * earth_radius_km / 180).epsilon(1e-9));
  // Pole to pole, across the antimeridian, symmetric, zero.
  CHECK(haversine_km(90, 0, -90, 0) == Approx(pi * earth_radius_km).epsilon(1e-12));
  CHECK(haversine_km(0, 179.5, 0, -179.5) == Approx(pi * earth_radius_km / 180).epsilon(1e-9));
  CHECK(haversine_km(abuja_lat, abuja_lng, lagos_lat, lagos_lng) ==
        haversine_km(lagos_lat, lagos_lng, abuja_lat, abuja_lng));
  CHECK(haversine_km(abuja_lat, abuja_lng, abuja_lat, abuja_lng) == 0.0);
  CHECK(earth_radius_km == 6371.0088);
}

TEST_CASE("the search radius is inclusive", "[geo]") {
  geo_index index(50.0);
  double far_lng = lng_at_distance(lagos_lat, lagos_lng, 3.0);
  REQUIRE(index.upsert(1, lagos_lat, far_lng, 1));
  double d = haversine_km(lagos_lat, lagos_lng, lagos_lat, far_lng);
  auto at = index.nearest(lagos_lat, lagos_lng, d, 10);
  REQUIRE(at.size() == 1);
  CHECK(at[0].id == 1);
  CHECK(at[0].distance_km == d);
  CHECK(index.nearest(lagos_lat, lagos_lng, std::nextafter(d, 0.0), 10).empty());
  // A radius of 0 finds a worker exactly at the pickup.
  REQUIRE(index.upsert(2, lagos_lat, lagos_lng, 1));
  CHECK(ids(index.nearest(lagos_lat, lagos_lng, 0.0, 10)) == std::vector<int64_t>{2});
}

TEST_CASE("a worker is selected only when its service radius reaches the pickup", "[geo]") {
  geo_index index(5.0);
  double lng2 = lng_at_distance(lagos_lat, lagos_lng, 2.0);
  double lng4 = lng_at_distance(lagos_lat, lagos_lng, 4.0);
  double d4 = haversine_km(lagos_lat, lagos_lng, lagos_lat, lng4);
  REQUIRE(index.upsert(1, lagos_lat, lng2, 1, 1.5));   // within 5 km, travels only 1.5
  REQUIRE(index.upsert(2, lagos_lat, lng4, 1, d4));    // exactly reaches: inclusive
  REQUIRE(index.upsert(3, lagos_lat, lng4, 1, 100.0)); // travels far, but outside radius 3
  CHECK(ids(index.nearest(lagos_lat, lagos_lng, 5.0, 10)) == std::vector<int64_t>{2, 3});
  CHECK(ids(index.nearest(lagos_lat, lagos_lng, 3.0, 10)).empty());
  REQUIRE(index.upsert(2, lagos_lat, lng4, 2, std::nextafter(d4, 0.0)));
  CHECK(ids(index.nearest(lagos_lat, lagos_lng, 5.0, 10)) == std::vector<int64_t>{3});
  // Without an explicit radius the worker keeps the one it has.
  REQUIRE(index.upsert(1, lagos_lat, lng2, 2));
  CHECK(index.service_radius_km(1) == 1.5);
  // A worker never seen gets the default (geo.radius_km).
  CHECK(index.service_radius_km(99) == 5.0);
}

TEST_CASE("workers come nearest first, ties by worker id, at most max_workers", "[geo]") {
  geo_index index(50.0);
  double lng1 = lng_at_distance(lagos_lat, lagos_lng, 1.0);
  double lng2 = lng_at_distance(lagos_lat, lagos_lng, 2.0);
  REQUIRE(index.upsert(40, lagos_lat, lng2, 1));
  REQUIRE(index.upsert(30, lagos_lat, lng1, 1));
  REQUIRE(index.upsert(50, lagos_lat, lagos_lng, 1));
  // 40 workers at the same spot, 1 km away, ids in scrambled order: the R-tree
  // returns ties in no particular order; the answer must take the lowest ids.
  std::vector<int64_t> tied;
  for (int64_t i = 100; i < 140; ++i) tied.push_back(i);
  std::mt19937_64 rng(7);
  std::shuffle(tied.begin(), tied.end(), rng);
  for (auto id : tied) REQUIRE(index.upsert(id, lagos_lat, lng1, 1));

  auto all = index.nearest(lagos_lat, lagos_lng, 10.0, 100);
  REQUIRE(all.size() == 43);
  CHECK(all[0].id == 50);
  CHECK(all[0].distance_km == 0.0);
  CHECK(all[1].id == 30);
  for (size_t i = 2; i < 42; ++i) CHECK(all[i].id == static_cast<int64_t>(100 + i - 2));
  CHECK(all[42].id == 40);
  for (size_t i = 1; i < all.size(); ++i) CHECK(all[i - 1].distance_km <= all[i].distance_km);

  CHECK(ids(index.nearest(lagos_lat, lagos_lng, 10.0, 4)) == std::vector<int64_t>{50, 30, 100, 101});
  CHECK(ids(index.nearest(lagos_lat, lagos_lng, 10.0, 1)) == std::vector<int64_t>{50});
  CHECK(index.nearest(lagos_lat, lagos_lng, 10.0, 0).empty());
  // Without worker 50 and 30, the 3 answers are all ties: lowest ids win.
  REQUIRE(index.remove(50, 2));
  REQUIRE(index.remove(30, 2));
  CHECK(ids(index.nearest(lagos_lat, lagos_lng, 10.0, 3)) == std::vector<int64_t>{100, 101, 102});
}

TEST_CASE("an update older than what the index holds is ignored", "[geo]") {
  geo_index index(5.0);
  REQUIRE(index.upsert(7, lagos_lat, lagos_lng, 200));
  CHECK_FALSE(index.upsert(7, abuja_lat, abuja_lng, 100));
  CHECK(ids(index.nearest(lagos_lat, lagos_lng, 1.0, 10)) == std::vector<int64_t>{7});
  CHECK(index.nearest(abuja_lat, abuja_lng, 1.0, 10).empty());
  CHECK_FALSE(index.remove(7, 199));
  CHECK(index.size() == 1);
  // An equal timestamp is applied: the later arrival wins.
  CHECK(index.upsert(7, abuja_lat, abuja_lng, 200));
  CHECK(ids(index.nearest(abuja_lat, abuja_lng, 1.0, 10)) == std::vector<int64_t>{7});
  CHECK(index.nearest(lagos_lat, lagos_lng, 1.0, 10).empty());
  CHECK(index.size() == 1);
}

TEST_CASE("a removal is remembered so a late older update cannot bring the worker back", "[geo]") {
  geo_index index(5.0);
  REQUIRE(index.upsert(7, lagos_lat, lagos_lng, 100));
  REQUIRE(index.remove(7, 300));
  CHECK(index.size() == 0);
  CHECK_FALSE(index.upsert(7, lagos_lat, lagos_lng, 250));
  CHECK(index.nearest(lagos_lat, lagos_lng, 1.0, 10).empty());
  CHECK(index.upsert(7, lagos_lat, lagos_lng, 350));
  CHECK(index.size() == 1);

  // A removal of a worker the index never had is remembered too.
  CHECK(index.remove(8, 500));
  CHECK_FALSE(index.upsert(8, lagos_lat, lagos_lng, 400));
  CHECK(index.size() == 1);
}

TEST_CASE("a load replaces the index with Django's list", "[geo]") {
  geo_index index(5.0);
  REQUIRE(index.upsert(1, lagos_lat, lagos_lng, 100));
  REQUIRE(index.upsert(2, lagos_lat, lagos_lng, 100));
  CHECK_FALSE(index.loaded());
  REQUIRE(index.load({{2, abuja_lat, abuja_lng, 12.0}, {3, abuja_lat, abuja_lng, std::nullopt}}, 1000));
  CHECK(index.loaded());
  CHECK(index.last_load_ms() == 1000);
  CHECK(index.size() == 2);
  CHECK(index.nearest(lagos_lat, lagos_lng, 1.0, 10).empty());
  CHECK(ids(index.nearest(abuja_lat, abuja_lng, 1.0, 10)) == std::vector<int64_t>{2, 3});
  CHECK(index.service_radius_km(2) == 12.0);
  CHECK(index.service_radius_km(3) == 5.0);  // unknown in the list: geo.radius_km

  // Entries carry the load's time: older updates are ignored, for listed
  // workers and for workers the list left out (unavailable as of the load).
  CHECK_FALSE(index.upsert(2, lagos_lat, lagos_lng, 999));
  CHECK_FALSE(index.upsert(1, lagos_lat, lagos_lng, 999));
  CHECK_FALSE(index.remove(3, 999));
  CHECK(index.size() == 2);
  CHECK(index.upsert(2, lagos_lat, lagos_lng, 1000));
  CHECK(index.service_radius_km(2) == 12.0);  // kept from the list

  // A load that began before the last one changes nothing.
  CHECK_FALSE(index.load({}, 999));
  CHECK(index.size() == 2);
  // Duplicates and invalid entries are skipped.
  REQUIRE(index.load({{4, 0, 0, 1.0}, {4, 1, 1, 2.0}, {0, 0, 0, {}}, {5, 91, 0, {}}, {6, 0, 181, {}}}, 2000));
  CHECK(index.size() == 1);
  CHECK(ids(index.nearest(0, 0, 1.0, 10)) == std::vector<int64_t>{4});
  CHECK(index.service_radius_km(4) == 1.0);
  // A load that began at the same time as the last one still replaces it
  // (only live updates survive a load, never an earlier load's entries).
  REQUIRE(index.load({{8, 0, 0, {}}}, 2000));
  CHECK(ids(index.nearest(0, 0, 1.0, 10)) == std::vector<int64_t>{8});
}

TEST_CASE("updates newer than the load's start survive the load", "[geo]") {
  geo_index index(5.0);
  REQUIRE(index.upsert(1, lagos_lat, lagos_lng, 1500));  // live, after the load began
  REQUIRE(index.remove(2, 1600));                       // removed after the load began
  REQUIRE(index.upsert(3, lagos_lat, lagos_lng, 1500));  // not in the list, but newer
  REQUIRE(index.upsert(4, lagos_lat, lagos_lng, 900));   // older than the load: replaced
  REQUIRE(index.load({{1, abuja_lat, abuja_lng, 8.0}, {2, abuja_lat, abuja_lng, {}}, {4, abuja_lat, abuja_lng, {}}},
                     1000));
  CHECK(ids(index.nearest(lagos_lat, lagos_lng, 1.0, 10)) == std::vector<int64_t>{1, 3});
  CHECK(ids(index.nearest(abuja_lat, abuja_lng, 1.0, 10)) == std::vector<int64_t>{4});
  CHECK(index.service_radius_km(1) == 8.0);  // Django's service radius applies
  // The newer removal is still remembered after the load.
  CHECK_FALSE(index.upsert(2, abuja_lat, abuja_lng, 1200));
  CHECK(index.upsert(2, abuja_lat, abuja_lng, 1700));
  CHECK(ids(index.nearest(abuja_lat, abuja_lng, 1.0, 10)) == std::vector<int64_t>{2, 4});
}

TEST_CASE("a removal is remembered until the next load, which forgets it", "[geo]") {
  geo_index index(5.0);
  REQUIRE(index.load({{9, lagos_lat, lagos_lng, 20.0}}, 100));
  REQUIRE(index.remove(9, 300));
  // A load that began before the removal keeps the worker removed ...
  REQUIRE(index.load({{9, lagos_lat, lagos_lng, 20.0}}, 250));
  CHECK(index.size() == 0);
  CHECK_FALSE(index.upsert(9, lagos_lat, lagos_lng, 280));
  // ... the next one after it brings the worker back from the list ...
  REQUIRE(index.load({{9, lagos_lat, lagos_lng, 20.0}}, 400));
  CHECK(ids(index.nearest(lagos_lat, lagos_lng, 1.0, 10)) == std::vector<int64_t>{9});
  // ... and a worker removed and then back keeps the list's service radius.
  REQUIRE(index.remove(9, 500));
  REQUIRE(index.upsert(9, lagos_lat, lagos_lng, 600));
  CHECK(index.service_radius_km(9) == 20.0);
}

TEST_CASE("out-of-range input changes nothing and finds nothing", "[geo]") {
  geo_index index(5.0);
  CHECK_FALSE(index.upsert(1, 90.5, 0, 1));
  CHECK_FALSE(index.upsert(1, 0, -180.5, 1));
  CHECK_FALSE(index.upsert(1, NAN, 0, 1));
  CHECK_FALSE(index.upsert(0, 0, 0, 1));
  CHECK_FALSE(index.remove(-1, 1));
  CHECK(index.size() == 0);
  REQUIRE(index.upsert(1, 0, 0, 1));
  CHECK(index.nearest(0, 0, -1.0, 10).empty());
  CHECK(index.nearest(0, 0, NAN, 10).empty());
  CHECK(index.nearest(91, 0, 10.0, 10).empty());
  CHECK(ids(index.nearest(0, 0, INFINITY, 10)).empty());
  // A radius larger than the Earth reaches everything (within service radius).
  REQUIRE(index.upsert(2, 0, 180, 1, 1e6));
  CHECK(ids(index.nearest(0, 0, 1e6, 10)) == std::vector<int64_t>{1, 2});
}

TEST_CASE("the R-tree search agrees with a brute-force scan everywhere, poles and antimeridian included",
          "[geo]") {
  struct region {
    const char* name;
    double lat_lo, lat_hi, lng_lo, lng_hi;
  };
  const region regions[] = {
      {"Lagos", 6.3, 6.8, 3.1, 3.7},
      {"antimeridian", -1.0, 1.0, 179.0, 181.0},          // lng folded into [-180, 180]
      {"antimeridian at 65N", 64.5, 65.5, 178.0, 182.0},
      {"north pole", 89.0, 90.0, -180.0, 180.0},
      {"south pole", -90.0, -89.0, -180.0, 180.0},
  };
  std::mt19937_64 rng(20240611);
  auto uniform = [&](double lo, double hi) { return std::uniform_real_distribution<double>(lo, hi)(rng); };
  auto fold = [](double lng) { return lng > 180.0 ? lng - 360.0 : lng; };

  for (const auto& r : regions) {
    INFO(r.name);
    geo_index index(5.0);
    brute_force model;
    std::map<int64_t, double> service_of;  // what the list says, or the default
    std::vector<worker_location> listed;
    for (int64_t id = 1; id <= 2000; ++id) {
      double lat = uniform(r.lat_lo, r.lat_hi);
      double lng = fold(uniform(r.lng_lo, r.lng_hi));
      if (id % 97 == 0) lng = (id % 2) ? 180.0 : -180.0;  // both signs of the seam
      if (id % 151 == 0) lat = r.lat_hi >= 90.0 ? 90.0 : (r.lat_lo <= -90.0 ? -90.0 : lat);
      std::optional<double> service;
      if (id % 5 != 0) service = uniform(1.0, 60.0);
      listed.push_back({id, lat, lng, service});
      service_of[id] = service.value_or(5.0);
      model.workers[id] = {lat, lng, service_of[id]};
    }
    // Coincident workers, for ties.
    for (int64_t id = 3001; id <= 3020; ++id) {
      const auto& w = model.workers.at(id - 3000);
      listed.push_back({id, w.lat, w.lng, 60.0});
      model.workers[id] = {w.lat, w.lng, 60.0};
    }
    REQUIRE(index.load(listed, 1000));
    // Live updates move some workers and remove others.
    for (int i = 0; i < 300; ++i) {
      int64_t id = std::uniform_int_distribution<int64_t>(1, 2000)(rng);
      if (i % 3 == 0) {
        REQUIRE(index.remove(id, 2000 + i));
        model.workers.erase(id);
      } else {
        double lat = uniform(r.lat_lo, r.lat_hi), lng = fold(uniform(r.lng_lo, r.lng_hi));
        REQUIRE(index.upsert(id, lat, lng, 2000 + i));
        model.workers[id] = {lat, lng, service_of.at(id)};
      }
    }
    REQUIRE(index.size() == model.workers.size());
    for (int q = 0; q < 300; ++q) {
      double lat = uniform(r.lat_lo, r.lat_hi), lng = fold(uniform(r.lng_lo, r.lng_hi));
      if (q % 10 == 0) lng = (q % 20) ? 180.0 : -180.0;
      if (q % 25 == 0 && (r.lat_hi >= 90.0 || r.lat_lo <= -90.0)) lat = r.lat_hi >= 90.0 ? 90.0 : -90.0;
      double radius = uniform(0.5, 80.0);
      size_t max = static_cast<size_t>(std::uniform_int_distribution<int>(1, 40)(rng));
      auto got = index.nearest(lat, lng, radius, max);
      auto want = model.nearest(lat, lng, radius, max);
      INFO("query " << q << " at " << lat << "," << lng << " radius " << radius << " max " << max);
      REQUIRE(ids(got) == ids(want));
      REQUIRE(got == want);
    }
  }
}

TEST_CASE("queries and updates may run at the same time", "[geo]") {
  geo_index index(5.0);
  std::vector<worker_location> listed;
  for (int64_t id = 1; id <= 2000; ++id) listed.push_back({id, 6.5 + (id % 50) * 0.001, 3.4 + (id / 50) * 0.001, 10.0});
  REQUIRE(index.load(listed, 1));
  std::atomic<bool> stop{false};
  std::atomic<int64_t> queries{0};
  std::atomic<int64_t> short_answers{0};
  std::thread reader([&] {
    while (!stop) {
      // Catch2's assertions are not thread-safe: count here, check below.
      if (index.nearest(6.52, 3.42, 5.0, 10).size() != 10) ++short_answers;
      ++queries;
    }
  });
  for (int64_t i = 0; i < 3000; ++i) {
    int64_t id = 1 + i % 2000;
    if (i % 2)
      index.remove(id, 10 + i);
    else
      index.upsert(id, 6.5, 3.4, 10 + i);
  }
  REQUIRE(index.load(listed, 100000));
  stop = true;
  reader.join();
  CHECK(queries.load() > 0);
  CHECK(short_answers.load() == 0);
  CHECK(index.size() == 2000);
}

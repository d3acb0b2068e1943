// klynaa-geo-bench: how fast the geo index answers notifyNearbyWorkers.
//
// Builds a geo_index of N workers (default 100,000) spread uniformly over a disk
// of 25 km around Lagos, with service radii from 2 to 15 km, then times Q
// nearest() queries (default 100,000) at random points of the same disk with
// geo's defaults (radius 5 km, at most 10 workers), one at a time on one thread.
// Also times the bulk load and single upserts. Prints one JSON line:
//   {"bench":"geo","workers":100000,"queries":100000,"p50_us":...,"p99_us":...,...}
//
// Usage: klynaa-geo-bench [--workers N] [--queries Q] [--radius KM] [--max M] [--seed S]
// Build it in Release (see docs/performance.md); a Debug or sanitizer build
// measures the instrumentation, not the index.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "actors/geo_index.hpp"

namespace {

using clock_type = std::chrono::steady_clock;
constexpr double pi = 3.14159265358979323846;
constexpr double center_lat = 6.5244, center_lng = 3.3792;  // Lagos
constexpr double spread_km = 25.0;

struct args {
  long workers = 100000;
  long queries = 100000;
  double radius_km = 5.0;
  long max_workers = 10;
  unsigned long seed = 42;
};

bool parse(int argc, char** argv, args& a) {
  for (int i = 1; i < argc; ++i) {
    std::string k = argv[i];
    if (i + 1 >= argc) return false;
    const char* v = argv[++i];
    char* end = nullptr;
    if (k == "--workers") a.workers = std::strtol(v, &end, 10);
    else if (k == "--queries") a.queries = std::strtol(v, &end, 10);
    else if (k == "--radius") a.radius_km = std::strtod(v, &end);
    else if (k == "--max") a.max_workers = std::strtol(v, &end, 10);
    else if (k == "--seed") a.seed = std::strtoul(v, &end, 10);
    else return false;
    if (!end || *end) return false;
  }
  return a.workers > 0 && a.queries > 0 && a.radius_km > 0 && a.max_workers > 0;
}

/// A uniform point of the disk of spread_km around the centre (flat-earth
/// offsets are fine at this scale: it only places test points).
std::pair<double, double> random_point(std::mt19937_64& rng) {
  std::uniform_real_distribution<double> u(0.0, 1.0);
  double r = spread_km * std::sqrt(u(rng));
  double t = 2 * pi * u(rng);
  double dlat = r * std::sin(t) / 111.195;
  double dlng = r * std::cos(t) / (111.195 * std::cos(center_lat * pi / 180));
  return {center_lat + dlat, center_lng + dlng};
}

double micros(clock_type::duration d) { return std::chrono::duration<double, std::micro>(d).count(); }

double percentile(const std::vector<double>& sorted, double p) {
  size_t i = static_cast<size_t>(std::ceil(p * static_cast<double>(sorted.size()))) - 1;
  return sorted[std::min(i, sorted.size() - 1)];
}

}  // namespace

int main(int argc, char** argv) {
  args a;
  if (!parse(argc, argv, a)) {
    std::fprintf(stderr,
                 "usage: klynaa-geo-bench [--workers N] [--queries Q] [--radius KM] [--max M] [--seed S]\n");
    return 2;
  }
  std::mt19937_64 rng(a.seed);
  std::uniform_real_distribution<double> service(2.0, 15.0);
  std::vector<klynaa::actors::worker_location> listed;
  listed.reserve(static_cast<size_t>(a.workers));
  for (long id = 1; id <= a.workers; ++id) {
    auto [lat, lng] = random_point(rng);
    listed.push_back({id, lat, lng, service(rng)});
  }

  klynaa::actors::geo_index index(5.0);
  auto t0 = clock_type::now();
  if (!index.load(listed, 1)) return 1;
  double load_ms = micros(clock_type::now() - t0) / 1000.0;

  // Upserts: move 10% of the workers once each.
  long moves = std::max(1L, a.workers / 10);
  t0 = clock_type::now();
  for (long i = 0; i < moves; ++i) {
    auto [lat, lng] = random_point(rng);
    index.upsert(1 + (i * 7919) % a.workers, lat, lng, 2 + i);
  }
  double upsert_us = micros(clock_type::now() - t0) / static_cast<double>(moves);

  std::vector<std::pair<double, double>> points(static_cast<size_t>(a.queries));
  for (auto& p : points) p = random_point(rng);
  std::vector<double> took;
  took.reserve(points.size());
  size_t found = 0;
  for (const auto& [lat, lng] : points) {
    auto start = clock_type::now();
    auto got = index.nearest(lat, lng, a.radius_km, static_cast<size_t>(a.max_workers));
    took.push_back(micros(clock_type::now() - start));
    found += got.size();
  }
  std::sort(took.begin(), took.end());
  double total = 0;
  for (double t : took) total += t;

  std::printf(
      "{\"bench\":\"geo\",\"workers\":%ld,\"queries\":%ld,\"radius_km\":%g,\"max_workers\":%ld,"
      "\"p50_us\":%.2f,\"p90_us\":%.2f,\"p99_us\":%.2f,\"p999_us\":%.2f,\"max_us\":%.2f,\"mean_us\":%.2f,"
      "\"mean_found\":%.2f,\"load_ms\":%.1f,\"upsert_us\":%.2f}\n",
      a.workers, a.queries, a.radius_km, a.max_workers, percentile(took, 0.50), percentile(took, 0.90),
      percentile(took, 0.99), percentile(took, 0.999), took.back(), total / static_cast<double>(took.size()),
      static_cast<double>(found) / static_cast<double>(took.size()), load_ms, upsert_us);
  return 0;
}

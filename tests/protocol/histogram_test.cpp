// protocol/histogram.hpp: the log-bucketed latency histogram of the benchmarks and the broker.
#include <catch2/catch.hpp>

#include <cstdint>
#include <random>
#include <vector>
#include <algorithm>
#include <cmath>

#include "protocol/histogram.hpp"

using klynaa::protocol::histogram;

TEST_CASE("histogram buckets are contiguous and within 1/128 of their lower bound") {
  for (size_t i = 0; i + 1 < histogram::bucket_count; ++i) {
    REQUIRE(histogram::highest_of(i) + 1 == histogram::lowest_of(i + 1));
    REQUIRE(histogram::index_of(histogram::lowest_of(i)) == i);
    REQUIRE(histogram::index_of(histogram::highest_of(i)) == i);
    uint64_t lo = histogram::lowest_of(i), width = histogram::highest_of(i) - lo + 1;
    if (lo >= 256) REQUIRE(width * 128 <= lo);
  }
}

TEST_CASE("histogram records small values exactly") {
  histogram h;
  for (uint64_t v = 1; v <= 100; ++v) h.record(v);
  CHECK(h.count() == 100);
  CHECK(h.min() == 1);
  CHECK(h.max() == 100);
  CHECK(h.quantile(0.5) == 50);
  CHECK(h.quantile(0.99) == 99);
  CHECK(h.quantile(1.0) == 100);
  CHECK(h.quantile(0.0) == 1);
  CHECK(h.mean() == Approx(50.5));
}

TEST_CASE("histogram percentiles are within 1% of the exact ones") {
  std::mt19937_64 rng(42);
  std::lognormal_distribution<double> dist(13.0, 1.5);  // ~0.4 ms median in ns, long tail
  std::vector<uint64_t> values;
  histogram a, b;
  for (int i = 0; i < 200000; ++i) {
    auto v = static_cast<uint64_t>(dist(rng)) + 1;
    values.push_back(v);
    (i % 2 ? a : b).record(v);
  }
  histogram h = a;
  h += b;  // merging is exact
  REQUIRE(h.count() == values.size());
  std::sort(values.begin(), values.end());
  for (double q : {0.5, 0.9, 0.99, 0.999, 0.9999}) {
    auto rank = static_cast<size_t>(std::ceil(q * values.size())) - 1;
    double exact = static_cast<double>(values[rank]);
    INFO("q=" << q);
    CHECK(std::abs(static_cast<double>(h.quantile(q)) - exact) <= 0.01 * exact);
  }
  CHECK(h.max() == values.back());
  CHECK(h.min() == values.front());
}

TEST_CASE("an empty histogram reports zeros, and reset empties it") {
  histogram h;
  CHECK(h.quantile(0.99) == 0);
  CHECK(h.count() == 0);
  h.record(123456789);
  CHECK(h.quantile(0.5) == 123456789);  // clamped to [min, max]
  h.reset();
  CHECK(h.count() == 0);
  CHECK(h.max() == 0);
}

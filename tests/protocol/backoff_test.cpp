// protocol/backoff.hpp: the one capped doubling (docs/design.md, "One of each").
#include <catch2/catch.hpp>

#include <cstdint>
#include <limits>

#include "protocol/backoff.hpp"

using klynaa::protocol::capped_doubling;

TEST_CASE("capped doubling doubles the first wait once per doubling", "[backoff]") {
  CHECK(capped_doubling(100, 5000, 0) == 100);
  CHECK(capped_doubling(100, 5000, 1) == 200);
  CHECK(capped_doubling(100, 5000, 2) == 400);
  CHECK(capped_doubling(100, 5000, 5) == 3200);
  CHECK(capped_doubling(1000, 3600000, 3) == 8000);
}

TEST_CASE("capped doubling stops at the cap", "[backoff]") {
  CHECK(capped_doubling(100, 5000, 6) == 5000);
  CHECK(capped_doubling(100, 5000, 7) == 5000);
  CHECK(capped_doubling(100, 2000, 5) == 2000);
  CHECK(capped_doubling(3000, 5000, 1) == 5000);
  CHECK(capped_doubling(2500, 5000, 1) == 5000);
  CHECK(capped_doubling(5000, 5000, 1) == 5000);
}

TEST_CASE("capped doubling never exceeds the cap, even from above it", "[backoff]") {
  CHECK(capped_doubling(9000, 5000, 0) == 5000);
  CHECK(capped_doubling(9000, 5000, 3) == 5000);
}

TEST_CASE("capped doubling does not overflow for huge counts and caps", "[backoff]") {
  constexpr int64_t max = std::numeric_limits<int64_t>::max();
  CHECK(capped_doubling(1, max, 62) == int64_t{1} << 62);
  CHECK(capped_doubling(1, max, 63) == max);
  CHECK(capped_doubling(1, max, max) == max);
  CHECK(capped_doubling(max / 2 + 1, max, 1) == max);
  CHECK(capped_doubling(1000, 3600000, 1000000000) == 3600000);
}

TEST_CASE("capped doubling leaves zero, negative first waits and negative counts alone", "[backoff]") {
  CHECK(capped_doubling(0, 5000, 10) == 0);
  CHECK(capped_doubling(-5, 5000, 10) == -5);
  CHECK(capped_doubling(100, 5000, -1) == 100);
  CHECK(capped_doubling(100, 0, 3) == 0);
}

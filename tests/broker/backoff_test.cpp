// Retry backoff (broker/backoff.hpp): bounds, full jitter, Retry-After.
#include "broker/backoff.hpp"

#include <set>

#include <catch2/catch.hpp>

using klynaa::broker::backoff_delay;
using klynaa::protocol::retry_policy;

TEST_CASE("the backoff stays within [0, min(max, base * 2^(n-1))]", "[backoff]") {
  retry_policy p{8, 100, 5000};
  std::mt19937_64 rng(42);
  const int64_t caps[] = {100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000};
  for (int64_t n = 1; n <= 9; ++n) {
    int64_t top = 0;
    for (int i = 0; i < 2000; ++i) {
      auto d = backoff_delay(p, n, -1, rng);
      REQUIRE(d >= 0);
      REQUIRE(d <= caps[n - 1]);
      top = std::max(top, d);
    }
    INFO("attempt " << n);
    CHECK(top > caps[n - 1] * 9 / 10);  // the whole range is used
  }
}

TEST_CASE("the backoff is jittered: spread over its range, mean about half the cap", "[backoff]") {
  retry_policy p{8, 1000, 60000};
  std::mt19937_64 rng(7);
  std::set<int64_t> seen;
  double sum = 0;
  const int n = 5000;
  for (int i = 0; i < n; ++i) {
    auto d = backoff_delay(p, 4, -1, rng);  // cap 8000
    seen.insert(d);
    sum += static_cast<double>(d);
  }
  CHECK(seen.size() > 3000);
  CHECK(sum / n > 3500);
  CHECK(sum / n < 4500);
}

TEST_CASE("Retry-After is honoured, even past max_delay_ms, up to an hour", "[backoff]") {
  retry_policy p{8, 100, 5000};
  std::mt19937_64 rng(1);
  for (int i = 0; i < 500; ++i) {
    CHECK(backoff_delay(p, 1, 2000, rng) >= 2000);     // longer than the backoff's own cap
    CHECK(backoff_delay(p, 1, 60000, rng) == 60000);   // longer than max_delay_ms: still waited
    CHECK(backoff_delay(p, 1, 3600000, rng) == 3600000);
    CHECK(backoff_delay(p, 1, 86400000, rng) == 3600000);  // a day: capped at 1 h
    CHECK(backoff_delay(p, 1, 0, rng) <= 100);         // none
  }
  CHECK(klynaa::broker::max_retry_after_ms == 3600000);
}

// The case of the issue: Django's 429 with Retry-After: 2 and max_delay_ms = 1000
// got its next attempt 1.04 s later.
TEST_CASE("a Retry-After of 2 s waits 2 s with max_delay_ms = 1000", "[backoff]") {
  retry_policy p{8, 100, 1000};
  std::mt19937_64 rng(5);
  for (int64_t n = 1; n <= 8; ++n)
    for (int i = 0; i < 200; ++i) {
      auto d = backoff_delay(p, n, 2000, rng);
      REQUIRE(d == 2000);  // the backoff's own draw is at most 1000
    }
}

TEST_CASE("an open circuit breaker's wait: at least 100 ms, at most an hour", "[backoff]") {
  using klynaa::broker::circuit_open_delay;
  CHECK(circuit_open_delay(-1) == 100);
  CHECK(circuit_open_delay(0) == 100);
  CHECK(circuit_open_delay(5000) == 5000);
  CHECK(circuit_open_delay(3600000) == 3600000);
  CHECK(circuit_open_delay(7200000) == 3600000);
}

TEST_CASE("a zero base delay retries at once", "[backoff]") {
  retry_policy p{3, 0, 0};
  std::mt19937_64 rng(3);
  for (int64_t n = 1; n < 5; ++n) CHECK(backoff_delay(p, n, -1, rng) == 0);
}

// Circuit breakers (actors/breaker.hpp): the state machine with a hand-driven clock.
#include "actors/breaker.hpp"

#include <catch2/catch.hpp>

using klynaa::actors::breaker_failure;
using klynaa::actors::breaker_options;
using klynaa::actors::circuit_breaker;
using state = circuit_breaker::state;

namespace {
struct fixture {
  int64_t now = 1000;
  circuit_breaker b{"django", breaker_options{3, 5000, 20000}, [this] { return now; }};
  bool allow() {
    int64_t wait = -1;
    return b.allow(wait);
  }
  int64_t wait_of() {
    int64_t wait = -1;
    b.allow(wait);
    return wait;
  }
};
}  // namespace

TEST_CASE("a breaker opens after failure_threshold transient failures in a row", "[breaker]") {
  fixture f;
  for (int i = 0; i < 2; ++i) {
    REQUIRE(f.allow());
    f.b.record(true);
  }
  CHECK(f.b.current() == state::closed);
  REQUIRE(f.allow());
  f.b.record(true);
  CHECK(f.b.current() == state::open);
  CHECK(!f.allow());
  CHECK(f.wait_of() == 5000);
  f.now += 1200;
  CHECK(f.wait_of() == 3800);
  CHECK(f.b.snapshot()["state"] == "open");
  CHECK(f.b.snapshot()["opens"] == 1);
}

TEST_CASE("a success resets the count of failures in a row", "[breaker]") {
  fixture f;
  for (int round = 0; round < 5; ++round) {
    f.allow();
    f.b.record(true);
    f.allow();
    f.b.record(true);
    f.allow();
    f.b.record(false);  // the service answered
  }
  CHECK(f.b.current() == state::closed);
}

TEST_CASE("after open_ms one probe goes through, and its success closes the breaker", "[breaker]") {
  fixture f;
  for (int i = 0; i < 3; ++i) f.b.record(true);
  REQUIRE(f.b.current() == state::open);
  f.now += 5000;
  CHECK(f.allow());  // the probe
  CHECK(f.b.current() == state::half_open);
  CHECK(!f.allow());  // only one probe at a time
  CHECK(f.wait_of() > 0);
  f.b.record(false);
  CHECK(f.b.current() == state::closed);
  CHECK(f.allow());
  CHECK(f.allow());
}

TEST_CASE("a failed probe opens the breaker again for twice as long, at most max_open_ms", "[breaker]") {
  fixture f;
  for (int i = 0; i < 3; ++i) f.b.record(true);
  int64_t expected[] = {10000, 20000, 20000};
  int64_t open_for = 5000;
  for (int64_t e : expected) {
    f.now += open_for;
    REQUIRE(f.allow());
    f.b.record(true);
    CHECK(f.b.current() == state::open);
    CHECK(f.wait_of() == e);
    open_for = e;
  }
  CHECK(f.b.snapshot()["opens"] == 4);
}

TEST_CASE("a probe that never reports is given up after a minute", "[breaker]") {
  fixture f;
  for (int i = 0; i < 3; ++i) f.b.record(true);
  f.now += 5000;
  REQUIRE(f.allow());
  CHECK(!f.allow());
  f.now += 60000;
  CHECK(f.allow());  // a new probe
}

TEST_CASE("transient failures for a breaker: no answer, 408, 429 and 5xx", "[breaker]") {
  for (int s : {0, 408, 429, 500, 502, 503, 504}) CHECK(breaker_failure(s));
  for (int s : {200, 201, 204, 400, 401, 403, 404, 409, 422}) CHECK(!breaker_failure(s));
}

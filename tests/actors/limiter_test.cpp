// Adaptive in-flight limits (actors/limiter.hpp): the rules one call at a time,
// then simulated downstreams on a fake clock (limiter_sim.hpp). The numbers the
// simulations print are quoted in docs/reliability.md, "Adaptive in-flight limits".
#include "actors/limiter.hpp"

#include <catch2/catch.hpp>

#include <cstdio>

#include "limiter_sim.hpp"

using klynaa::actors::adaptive_limit;
using klynaa::actors::adaptive_limit_options;
using klynaa::actors::call_outcome;
using klynaa::actors::downstream_limit_options;
using klynaa::actors::downstream_limiter;
using namespace klynaa::limiter_sim;

namespace {

adaptive_limit_options options(int64_t min, int64_t max, int64_t initial) {
  adaptive_limit_options o;
  o.min_limit = min;
  o.max_limit = max;
  o.initial_limit = initial;
  return o;
}

/// The same without slow start: the rules of the steady state, one at a time.
adaptive_limit_options steady(int64_t min, int64_t max, int64_t initial) {
  adaptive_limit_options o = options(min, max, initial);
  o.slow_start = false;
  return o;
}

/// Acquires `n` slots at `now`; all must be granted.
void acquire(adaptive_limit& l, int n, int64_t now) {
  for (int i = 0; i < n; ++i) REQUIRE(l.try_acquire(now));
}

}  // namespace

// --- the rules, call by call -------------------------------------------------

TEST_CASE("a limit starts at initial_limit and refuses calls beyond it", "[limiter]") {
  adaptive_limit l(options(1, 1000, 10));
  CHECK(l.limit() == 10);
  acquire(l, 10, 0);
  CHECK(l.in_flight() == 10);
  CHECK(!l.try_acquire(0));
  CHECK(l.in_flight() == 10);  // a refusal counts nothing
  l.on_done(50, 50000, call_outcome::ok);
  CHECK(l.try_acquire(50));
}

TEST_CASE("time is any monotonic clock: a first call late in it opens a normal window, not a probe", "[limiter]") {
  const int64_t boot = 4000000000;  // some 46 days after the clock's zero
  adaptive_limit l(steady(1, 1000, 10));
  acquire(l, 10, boot);
  CHECK(!l.snapshot().probing);
  for (int i = 0; i < 10; ++i) l.on_done(boot + 100, 100000, call_outcome::ok);
  CHECK(l.limit() == 13);
  CHECK(l.min_rtt_us() == 100000);
}

TEST_CASE("options out of range are clamped: initial within [min, max], min at least 1", "[limiter]") {
  CHECK(adaptive_limit(options(0, 1000, 10)).options().min_limit == 1);
  CHECK(adaptive_limit(options(5, 2, 1)).limit() == 5);
  CHECK(adaptive_limit(options(1, 20, 50)).limit() == 20);
  adaptive_limit_options o;
  o.backoff_ratio = 0.1;
  o.tolerance = 0.5;
  adaptive_limit l(o);
  CHECK(l.options().backoff_ratio == 0.9);
  CHECK(l.options().tolerance == 1.0);
}

TEST_CASE("429s and 503s of calls already in flight cut the limit once per episode", "[limiter]") {
  adaptive_limit l(steady(1, 1000, 10));
  acquire(l, 10, 0);
  for (int i = 0; i < 10; ++i) l.on_done(100, 100000, call_outcome::overloaded);
  CHECK(l.limit() == 9);  // 10 × 0.9, once
  CHECK(l.snapshot().overload_cuts == 1);
  // A call sent after the cut that fails again is a new episode.
  acquire(l, 1, 101);
  l.on_done(201, 100000, call_outcome::overloaded);
  CHECK(l.limit() == 8);  // 9 × 0.9 = 8.1
  CHECK(l.snapshot().overload_cuts == 2);
}

TEST_CASE("a timeout cuts like a 429, and failed or cancelled calls change nothing", "[limiter]") {
  adaptive_limit l(steady(1, 1000, 20));
  acquire(l, 5, 0);
  l.on_done(10, 10000, call_outcome::failed);
  l.on_done(10, 10000, call_outcome::cancelled);
  CHECK(l.limit() == 20);
  CHECK(l.in_flight() == 3);
  l.on_done(5000, 5000000, call_outcome::timeout);
  l.on_done(5000, 5000000, call_outcome::timeout);
  CHECK(l.limit() == 18);
  CHECK(l.snapshot().overload_cuts == 1);
}

TEST_CASE("cuts never take the limit below min_limit", "[limiter]") {
  adaptive_limit l(options(3, 100, 4));
  for (int64_t t = 0; t < 100; t += 10) {
    acquire(l, 1, t);
    l.on_done(t + 5, 5000, call_outcome::overloaded);
  }
  CHECK(l.limit() == 3);
  CHECK(l.snapshot().overload_cuts == 10);
}

TEST_CASE("a Retry-After pause refuses calls until it ends and is never shortened", "[limiter]") {
  adaptive_limit l(options(1, 1000, 10));
  l.pause_until(5000);
  l.pause_until(3000);  // shorter: ignored
  CHECK(!l.try_acquire(0));
  CHECK(!l.try_acquire(4999));
  CHECK(l.paused(4999));
  CHECK(l.snapshot().paused_until_ms == 5000);
  CHECK(l.try_acquire(5000));
  l.pause_until(9000);
  CHECK(!l.try_acquire(6000));
}

TEST_CASE("an on_done without a matching try_acquire is ignored", "[limiter]") {
  adaptive_limit l(options(1, 1000, 10));
  l.on_done(10, 1000, call_outcome::overloaded);
  CHECK(l.in_flight() == 0);
  CHECK(l.limit() == 10);
}

TEST_CASE("the floor and the recent latency are the window medians", "[limiter]") {
  adaptive_limit l(steady(1, 1000, 10));
  CHECK(l.min_rtt_us() == 0);
  // One window: 10 calls sent at 0, answered at 100..190 ms after 100..190 ms.
  acquire(l, 10, 0);
  for (int i = 0; i < 10; ++i) l.on_done(100 + 10 * i, (100 + 10 * i) * 1000, call_outcome::ok);
  CHECK(l.min_rtt_us() == 150000);
  CHECK(l.snapshot().recent_latency_us == 150000);
  CHECK(l.limit() == 13);  // 10 + sqrt(10): near the floor and used
}

TEST_CASE("a busy window keeps a uniform sample of its latencies: the median is the whole window's", "[limiter]") {
  adaptive_limit l(options(1, 5000, 5000));
  acquire(l, 5000, 0);
  // 4,999 calls answered within the first 100 ms, the later ones slower; the
  // window closes at 100 ms on the last: the median of all is about 50 ms.
  for (int64_t i = 0; i < 4999; ++i) {
    const int64_t latency_us = 1000 + i * 99000 / 4999;
    l.on_done((latency_us + 999) / 1000, latency_us, call_outcome::ok);  // sent at 0
  }
  l.on_done(100, 100000, call_outcome::ok);
  const int64_t median = l.snapshot().recent_latency_us;
  CHECK(median >= 48000);
  CHECK(median <= 52000);
}

TEST_CASE("rising latency cuts the limit in proportion, by at most half per window", "[limiter]") {
  for (auto [latency_ms, expected] : {std::pair<int64_t, int64_t>{200, 12}, {1000, 10}}) {
    adaptive_limit l(steady(1, 1000, 16));
    acquire(l, 16, 0);  // a first window at 100 ms: floor 100 ms, 16 + sqrt(16)
    for (int i = 0; i < 16; ++i) l.on_done(100, 100000, call_outcome::ok);
    REQUIRE(l.limit() == 20);
    acquire(l, 20, 100);  // the next at latency_ms
    for (int i = 0; i < 20; ++i) l.on_done(100 + latency_ms, latency_ms * 1000, call_outcome::ok);
    CHECK(l.limit() == expected);  // 20 × 1.25 × 100 / 200 = 12.5; 20 × max(0.5, 0.125) = 10
    CHECK(l.snapshot().latency_cuts == 1);
    CHECK(l.snapshot().recent_latency_us == latency_ms * 1000);
  }
}

// --- simulated downstreams ---------------------------------------------------

TEST_CASE("slow start doubles the limit per good window until the first cut, which halves it", "[limiter]") {
  adaptive_limit l(options(1, 1000, 10));
  CHECK(l.snapshot().slow_start);
  int64_t now = 0;
  for (int64_t expected : {20, 40, 80}) {  // windows of two floors (100 ms), fully used
    acquire(l, static_cast<int>(l.limit()), now);
    now += 200;
    for (int64_t i = 0; i < expected / 2; ++i) l.on_done(now, 100000, call_outcome::ok);
    CHECK(l.limit() == expected);
  }
  acquire(l, 80, now);  // at 80 the downstream sheds load: back to 40, the last limit it took
  l.on_done(now + 10, 10000, call_outcome::overloaded);
  CHECK(l.limit() == 40);
  CHECK(!l.snapshot().slow_start);
  for (int i = 0; i < 79; ++i) l.on_done(now + 10, 10000, call_outcome::overloaded);  // same episode
  CHECK(l.limit() == 40);
  now += 10;
  acquire(l, 40, now);  // from now on it grows by sqrt(limit), and cuts by backoff_ratio
  now += 200;
  for (int i = 0; i < 40; ++i) l.on_done(now, 100000, call_outcome::ok);
  CHECK(l.limit() == 46);  // 40 + sqrt(40)
  acquire(l, 1, now);
  l.on_done(now + 1, 1000, call_outcome::overloaded);
  CHECK(l.limit() == 41);  // 46.3 × 0.9
}

TEST_CASE("a latency cut also ends slow start", "[limiter]") {
  adaptive_limit l(options(1, 1000, 16));
  acquire(l, 16, 0);
  for (int i = 0; i < 16; ++i) l.on_done(100, 100000, call_outcome::ok);
  REQUIRE(l.limit() == 32);
  acquire(l, 32, 100);
  for (int i = 0; i < 32; ++i) l.on_done(400, 300000, call_outcome::ok);
  CHECK(l.limit() == 16);  // 32 × max(0.5, 1.25 × 100 / 300)
  CHECK(!l.snapshot().slow_start);
}

TEST_CASE("the limit grows from initial_limit to max_limit while latency stays flat", "[limiter]") {
  adaptive_limit l(options(1, 1000, 10));
  simulation sim({through(l, flat(100))});
  int64_t at_100 = -1, at_1000 = -1, last = l.limit();
  bool monotonic = true;
  sim.run_until(60000, [&](int64_t now) {
    monotonic = monotonic && l.limit() >= last;
    last = l.limit();
    if (at_100 < 0 && l.limit() >= 100) at_100 = now;
    if (at_1000 < 0 && l.limit() >= 1000) at_1000 = now;
  });
  std::printf("limiter flat 100 ms: limit 10 -> 100 at %.1f s, -> 1000 at %.1f s\n", at_100 / 1000.0,
              at_1000 / 1000.0);
  CHECK(monotonic);
  CHECK(at_100 > 0);
  CHECK(at_1000 > 0);
  CHECK(at_1000 < 30000);
  CHECK(l.limit() == 1000);
  CHECK(l.min_rtt_us() == 100000);
  CHECK(l.snapshot().latency_cuts == 0);
}

TEST_CASE("a limit the caller does not use does not grow", "[limiter]") {
  adaptive_limit l(options(1, 1000, 10));
  simulation sim({through(l, flat(100), 5)});  // never more than 5 calls at once
  sim.run_until(60000);
  CHECK(l.limit() == 10);
  CHECK(l.min_rtt_us() == 100000);
}

namespace {

struct convergence {
  int64_t lowest = INT64_MAX, highest = 0;
  double goodput = 0;         // ok answers per second after convergence
  double refused_share = 0;   // 429/503 answers / calls sent, after convergence
};

/// Runs `sim` to `settle_ms`, then to `end_ms` recording the limit's range and
/// lane 0's answers.
convergence converge(simulation& sim, const adaptive_limit& l, int64_t settle_ms, int64_t end_ms) {
  sim.run_until(settle_ms);
  sim[0].reset_counts();
  convergence c;
  sim.run_until(end_ms, [&](int64_t) {
    c.lowest = std::min(c.lowest, l.limit());
    c.highest = std::max(c.highest, l.limit());
  });
  c.goodput = static_cast<double>(sim[0].ok) * 1000.0 / static_cast<double>(end_ms - settle_ms);
  c.refused_share = static_cast<double>(sim[0].overloaded) / static_cast<double>(std::max<int64_t>(1, sim[0].sent));
  return c;
}

}  // namespace

TEST_CASE("with a queueing downstream of capacity C the limit settles near C at full goodput", "[limiter]") {
  const int64_t c = 50;
  noise jitter(19);
  // latency = 100 ms × max(1, in flight / C), ±10 % noise
  model downstream = [&jitter, q = queueing(c, [](int64_t) { return 100; })](int64_t n, int64_t now) {
    answer a = q(n, now);
    a.latency_us = static_cast<int64_t>(static_cast<double>(a.latency_us) * jitter.uniform(0.9, 1.1));
    return a;
  };
  adaptive_limit l(options(1, 1000, 10));
  simulation sim({through(l, downstream)});
  convergence r = converge(sim, l, 30000, 150000);
  const double ideal = c / 0.1;  // C / base latency
  std::printf("limiter queueing C=%lld: limit in [%lld, %lld], goodput %.1f/s = %.1f%% of C/latency, floor %lld us\n",
              static_cast<long long>(c), static_cast<long long>(r.lowest), static_cast<long long>(r.highest),
              r.goodput, 100 * r.goodput / ideal, static_cast<long long>(l.min_rtt_us()));
  CHECK(r.lowest >= c / 2);
  CHECK(r.highest <= 2 * c);
  CHECK(r.goodput >= 0.9 * ideal);
  CHECK(l.snapshot().latency_cuts > 0);
}

TEST_CASE("with a downstream that answers 503 above capacity C the limit settles near C, few 503s", "[limiter]") {
  const int64_t c = 50;
  adaptive_limit l(options(1, 1000, 10));
  simulation sim({through(l, hard_capacity(c, 100))});
  convergence r = converge(sim, l, 30000, 150000);
  const double ideal = c / 0.1;
  std::printf("limiter 503 above C=%lld: limit in [%lld, %lld], 503s %.2f%% of calls, goodput %.1f%% of C/latency, "
              "%lld cuts\n",
              static_cast<long long>(c), static_cast<long long>(r.lowest), static_cast<long long>(r.highest),
              100 * r.refused_share, 100 * r.goodput / ideal, static_cast<long long>(l.snapshot().overload_cuts));
  CHECK(r.lowest >= c / 2);
  CHECK(r.highest <= 2 * c);
  // Issue 19 asks < 5 %; probing by 1 near the last cut makes it 0.2 %, and
  // growing by sqrt(limit) there instead gives 3.8 %: keep that from coming back.
  CHECK(r.refused_share < 0.01);
  CHECK(r.goodput >= 0.9 * ideal);
}

TEST_CASE("a latency step 100 ms -> 1 s cuts the limit, which recovers at the new floor and after the step back",
          "[limiter]") {
  const int64_t c = 50;
  int64_t base_ms = 100;
  adaptive_limit l(options(1, 1000, 10));
  simulation sim({through(l, queueing(c, [&base_ms](int64_t) { return base_ms; }))});
  sim.run_until(45000);  // between two probes (at 30 s and 60 s): the cuts come first
  const int64_t before = l.limit();
  base_ms = 1000;  // the downstream gets 10× slower, whatever the load
  int64_t lowest = before;
  sim.run_until(55000, [&](int64_t) { lowest = std::min(lowest, l.limit()); });
  // From 10 s after the step (issue 19's measure): the goodput the downstream allows, C calls / 1 s.
  sim[0].reset_counts();
  convergence after_10s = converge(sim, l, 55000, 115000);
  convergence slow = converge(sim, l, 360000, 480000);
  std::printf("limiter latency step to 1 s: limit %lld before, down to %lld; from 10 s after the step goodput "
              "%.1f%% of C/1 s; later [%lld, %lld], goodput %.1f%% of C/1 s, floor %lld us\n",
              static_cast<long long>(before), static_cast<long long>(lowest), 100 * after_10s.goodput / c,
              static_cast<long long>(slow.lowest), static_cast<long long>(slow.highest), 100 * slow.goodput / c,
              static_cast<long long>(l.min_rtt_us()));
  CHECK(before >= c / 2);
  CHECK(lowest < before);           // it adapted
  CHECK(after_10s.goodput >= 0.8 * c);
  CHECK(slow.lowest >= c / 2);
  CHECK(slow.highest <= 2 * c);
  CHECK(slow.goodput >= 0.9 * c);   // C calls / 1 s
  CHECK(l.min_rtt_us() >= 900000);  // the floor was re-measured
  CHECK(l.snapshot().floor_probes >= 1);

  base_ms = 100;  // and back
  convergence fast = converge(sim, l, 500000, 600000);
  std::printf("limiter latency step back to 100 ms: limit in [%lld, %lld], goodput %.1f%% of C/100 ms\n",
              static_cast<long long>(fast.lowest), static_cast<long long>(fast.highest), 100 * fast.goodput / (c / 0.1));
  CHECK(fast.lowest >= c / 2);
  CHECK(fast.highest <= 2 * c);
  CHECK(fast.goodput >= 0.9 * c / 0.1);
  CHECK(l.min_rtt_us() <= 110000);
}

TEST_CASE("a downstream 10x slower whatever the load: its new latency is the floor after one halving",
          "[limiter]") {
  adaptive_limit_options o = options(1, 50, 10);
  o.probe_interval_ms = 0;
  adaptive_limit l(o);
  int64_t latency_ms = 100;
  simulation sim({through(l, [&latency_ms](int64_t, int64_t) { return answer{call_outcome::ok, latency_ms * 1000}; })});
  sim.run_until(20000);
  REQUIRE(l.limit() == 50);
  latency_ms = 1000;
  int64_t lowest = 50, floor_at = -1;
  sim.run_until(40000, [&](int64_t now) {
    lowest = std::min(lowest, l.limit());
    if (floor_at < 0 && l.min_rtt_us() == 1000000) floor_at = now;
  });
  std::printf("limiter unmoved latency: limit 50 -> %lld, floor 1 s after %.1f s\n", static_cast<long long>(lowest),
              (floor_at - 20000) / 1000.0);
  CHECK(lowest == 25);  // one cut by half, and no more: undone
  CHECK(l.snapshot().latency_cuts == 1);
  CHECK(l.snapshot().floor_probes == 1);
  CHECK(floor_at > 0);
  CHECK(floor_at < 25000);
  CHECK(l.limit() == 50);  // grown back at the new floor
}

TEST_CASE("capacity 200, 503 above it: a step from 100 ms to 1 s keeps goodput at the capacity", "[limiter]") {
  // Issue 19's latency step against klynaa-upstream: capacity 200 calls, 503 + Retry-After above.
  const int64_t c = 200;
  int64_t latency_ms = 100;
  adaptive_limit l(options(1, 1000, 10));
  simulation sim({through(l, [&](int64_t n, int64_t) {
    if (n > c) return answer{call_outcome::overloaded, 2000};
    return answer{call_outcome::ok, latency_ms * 1000};
  })});
  sim.run_until(45000);
  latency_ms = 1000;
  sim[0].reset_counts();
  convergence after_10s = converge(sim, l, 55000, 115000);
  std::printf("limiter capacity 200, step to 1 s: from 10 s after, limit in [%lld, %lld], goodput %.1f%% of C/1 s, "
              "503s %.2f%% of calls\n",
              static_cast<long long>(after_10s.lowest), static_cast<long long>(after_10s.highest),
              100 * after_10s.goodput / c, 100 * after_10s.refused_share);
  CHECK(after_10s.goodput >= 0.8 * c);
  CHECK(after_10s.refused_share < 0.05);
}

TEST_CASE("without probes and the unmoved rule, a floor that no longer holds is re-measured after windows at "
          "min_limit",
          "[limiter]") {
  adaptive_limit_options o = options(1, 50, 10);
  o.probe_interval_ms = 0;
  o.unmoved_share = 0;
  adaptive_limit l(o);
  int64_t latency_ms = 100;
  simulation sim({through(l, [&latency_ms](int64_t, int64_t) { return answer{call_outcome::ok, latency_ms * 1000}; })});
  sim.run_until(20000);
  REQUIRE(l.limit() == 50);
  latency_ms = 1000;  // slower for good, whatever the load
  int64_t reached_min = -1;
  sim.run_until(150000, [&](int64_t now) {
    if (reached_min < 0 && l.limit() == 1) reached_min = now;
  });
  CHECK(reached_min > 0);
  CHECK(l.min_rtt_us() == 1000000);
  CHECK(l.snapshot().floor_probes == 1);
  CHECK(l.limit() == 50);  // grown back at the new floor
}

TEST_CASE("a burst of 429s with Retry-After pauses the downstream, cuts once, and the limit grows back",
          "[limiter]") {
  downstream_limit_options o;
  o.per_function = options(1, 100, 10);
  downstream_limiter limiter(o);
  // From 20 s to 20.5 s Django answers 429 with Retry-After: 2 s, after 5 ms.
  model django = [](int64_t, int64_t now) {
    if (now >= 20000 && now < 20500) return answer{call_outcome::overloaded, 5000};
    return answer{call_outcome::ok, 100000};
  };
  int64_t first_429 = -1, pause_end = -1;
  lane escrow = through(limiter, "django", "processEscrowRelease", django);
  escrow.on_answer = [&](int64_t now, const answer& a) {
    if (a.outcome != call_outcome::overloaded) return;
    if (first_429 < 0) first_429 = now;
    limiter.pause("django", now + 2000);
    pause_end = std::max(pause_end, now + 2000);
  };
  simulation sim({escrow, through(limiter, "django", "sendPickupNotification", flat(100)), through(limiter, "firebase", "push", flat(50))});
  sim.run_until(20000);
  const int64_t before = limiter.find("django", "processEscrowRelease")->limit();
  REQUIRE(before == 100);
  int64_t django_sent_while_paused = 0, fcm_sent_while_paused = 0;
  sim.run_until(30000, [&](int64_t now) {
    if (first_429 < 0 || now <= first_429 || now >= pause_end) return;
    django_sent_while_paused += (sim[0].last_sent_ms == now) + (sim[1].last_sent_ms == now);
    fcm_sent_while_paused += sim[2].last_sent_ms == now;
  });
  const auto s = limiter.find("django", "processEscrowRelease")->snapshot();
  std::printf("limiter 429 burst: first 429 at %.3f s, paused to %.3f s, %lld 429s, %lld cut, limit %lld -> %lld\n",
              first_429 / 1000.0, pause_end / 1000.0, static_cast<long long>(sim[0].overloaded),
              static_cast<long long>(s.overload_cuts), static_cast<long long>(before),
              static_cast<long long>(static_cast<double>(before) * 0.9));
  REQUIRE(first_429 >= 20000);
  CHECK(sim[0].overloaded > 10);           // a burst, not one answer
  CHECK(s.overload_cuts == 1);             // cut once for the episode
  CHECK(django_sent_while_paused == 0);    // escrow and notify both wait
  CHECK(fcm_sent_while_paused > 0);        // another downstream does not
  CHECK(s.paused_until_ms == pause_end);
  CHECK(limiter.find("django", "sendPickupNotification")->snapshot().overload_cuts == 0);
  sim.run_until(60000);
  CHECK(limiter.find("django", "processEscrowRelease")->limit() == before);  // grown back
}

TEST_CASE("a downstream's cap bounds its calls across functions, each pair within its limit", "[limiter]") {
  downstream_limit_options o;
  o.per_function = options(1, 1000, 10);
  o.max_in_flight = 25;
  downstream_limiter limiter(o);
  simulation sim({through(limiter, "django", "processEscrowRelease", flat(100)), through(limiter, "django", "sendPickupNotification", flat(30)),
                  through(limiter, "django", "generateDailyReport", flat(200)), through(limiter, "sns", "push", flat(80))});
  int64_t most = 0, most_sns = 0;
  bool consistent = true;
  sim.run_until(30000, [&](int64_t) {
    most = std::max(most, limiter.in_flight("django"));
    most_sns = std::max(most_sns, limiter.in_flight("sns"));
    int64_t sum = 0;
    for (const char* f : {"processEscrowRelease", "sendPickupNotification", "generateDailyReport"}) {
      const auto* l = limiter.find("django", f);
      sum += l->in_flight();
      consistent = consistent && l->in_flight() <= l->limit();
    }
    consistent = consistent && sum == limiter.in_flight("django");
  });
  CHECK(most == 25);
  CHECK(consistent);
  CHECK(most_sns == 25);  // sns has a cap of its own, as full as django's
  const auto rows = limiter.snapshot();
  REQUIRE(rows.size() == 4);
  CHECK(rows[0].downstream == "django");
  CHECK(rows[0].function == "generateDailyReport");
  CHECK(rows[2].function == "sendPickupNotification");
  CHECK(rows[3].downstream == "sns");
  CHECK(rows[0].downstream_max_in_flight == 25);
  CHECK(rows[0].downstream_in_flight == limiter.in_flight("django"));
  CHECK(rows[2].limit.min_rtt_us == 30000);
}

TEST_CASE("set_options gives one downstream its own cap and limits", "[limiter]") {
  downstream_limiter limiter;
  downstream_limit_options webhook;
  webhook.per_function = options(2, 8, 4);
  webhook.max_in_flight = 6;
  limiter.set_options("webhook", webhook);
  for (int i = 0; i < 4; ++i) CHECK(limiter.try_acquire("webhook", "push", 0));
  CHECK(!limiter.try_acquire("webhook", "push", 0));  // the pair's limit, 4
  CHECK(limiter.try_acquire("webhook", "other", 0));
  CHECK(limiter.try_acquire("webhook", "other", 0));
  CHECK(!limiter.try_acquire("webhook", "other", 0));  // the cap, 6
  CHECK(limiter.find("webhook", "other")->in_flight() == 2);
  CHECK(limiter.find("django", "processEscrowRelease") == nullptr);
  for (int i = 0; i < 10; ++i) CHECK(limiter.try_acquire("django", "processEscrowRelease", 0));  // the defaults
  limiter.on_done("nowhere", "x", 10, 1000, call_outcome::ok);  // unknown: ignored
  limiter.on_done("webhook", "push", 10, 10000, call_outcome::ok);
  CHECK(limiter.in_flight("webhook") == 5);
}

namespace {

/// The limits of firebase/push and django/sendPickupNotification at every second of 120 s, with or
/// without a sick django/processEscrowRelease beside them: 10× slower from 20 s, and 503
/// above 20 calls.
std::pair<std::vector<int64_t>, std::vector<int64_t>> healthy_limits(bool with_sick_escrow,
                                                                     klynaa::actors::limit_snapshot* escrow) {
  downstream_limit_options o;
  o.per_function = options(1, 200, 10);
  downstream_limiter limiter(o);
  model sick = [](int64_t n, int64_t now) {
    if (n > 20) return answer{call_outcome::overloaded, 2000};
    return answer{call_outcome::ok, (now < 20000 ? 100 : 1000) * 1000};
  };
  std::vector<lane> lanes{through(limiter, "firebase", "push", queueing(40, [](int64_t) { return 50; })),
                          through(limiter, "django", "sendPickupNotification", flat(100))};
  if (with_sick_escrow) lanes.push_back(through(limiter, "django", "processEscrowRelease", sick));
  simulation sim(std::move(lanes));
  std::vector<int64_t> fcm, notify;
  sim.run_until(120000, [&](int64_t now) {
    if (now % 1000 != 0) return;
    fcm.push_back(limiter.find("firebase", "push")->limit());
    notify.push_back(limiter.find("django", "sendPickupNotification")->limit());
  });
  if (escrow) *escrow = limiter.find("django", "processEscrowRelease")->snapshot();
  return {fcm, notify};
}

}  // namespace

TEST_CASE("a slow or overloaded downstream or function changes no other pair's limit", "[limiter]") {
  const auto [fcm_alone, notify_alone] = healthy_limits(false, nullptr);
  klynaa::actors::limit_snapshot escrow;
  const auto [fcm, notify] = healthy_limits(true, &escrow);
  std::printf("limiter isolation: django/processEscrowRelease limit %lld (%lld cuts for 503s, %lld for latency), "
              "firebase/push %lld, django/sendPickupNotification %lld as without it\n",
              static_cast<long long>(escrow.limit), static_cast<long long>(escrow.overload_cuts),
              static_cast<long long>(escrow.latency_cuts), static_cast<long long>(fcm.back()),
              static_cast<long long>(notify.back()));
  CHECK(escrow.overload_cuts > 0);
  CHECK(escrow.latency_cuts > 0);
  CHECK(escrow.limit <= 20);  // held where it gets no 503s
  CHECK(fcm == fcm_alone);        // step by step, as if django were healthy
  CHECK(notify == notify_alone);  // the same downstream's other function too
  CHECK(notify.back() == 200);
}

TEST_CASE("whatever the outcomes, the limit stays in [min, max] and no call starts above it", "[limiter]") {
  noise rng(42);
  adaptive_limit l(options(3, 40, 10));
  std::vector<int64_t> started;  // send times of the calls in flight
  bool within = true, never_above = true;
  const call_outcome outcomes[] = {call_outcome::ok, call_outcome::ok, call_outcome::ok, call_outcome::overloaded,
                                   call_outcome::timeout, call_outcome::failed, call_outcome::cancelled};
  for (int64_t now = 0; now < 200000; now += static_cast<int64_t>(rng.uniform(0, 20))) {
    if (rng.uniform(0, 1) < 0.02) l.pause_until(now + static_cast<int64_t>(rng.uniform(0, 3000)));
    while (rng.uniform(0, 1) < 0.7) {
      const int64_t before = l.in_flight();
      if (!l.try_acquire(now)) break;
      never_above = never_above && before < l.limit();
      started.push_back(now);
    }
    while (!started.empty() && rng.uniform(0, 1) < 0.5) {
      const size_t i = static_cast<size_t>(rng.uniform(0, static_cast<double>(started.size())));
      const call_outcome o = outcomes[static_cast<size_t>(rng.uniform(0, 7))];
      const int64_t latency_us = (now - started[i]) * 1000 + static_cast<int64_t>(rng.uniform(0, 999));
      l.on_done(now, latency_us, o);
      started.erase(started.begin() + static_cast<std::ptrdiff_t>(i));
    }
    within = within && l.limit() >= 3 && l.limit() <= 40;
    REQUIRE(l.in_flight() == static_cast<int64_t>(started.size()));
  }
  CHECK(within);
  CHECK(never_above);
  const auto s = l.snapshot();
  CHECK(s.overload_cuts > 0);
}

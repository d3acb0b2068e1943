// Tests of broker/queue: the live queue's ordering rules (docs/events-and-functions.md,
// "Job ids and ordering"), timers,
// leases and per-function counts. The queue has no clock: each test passes `now`.
#include "broker/queue.hpp"

#include <catch2/catch.hpp>

#include <climits>
#include <set>
#include <string>
#include <vector>

using namespace klynaa::broker;

namespace {

live_job make_job(const std::string& id, int64_t seq, const std::string& okey = "",
                  const std::string& function = "sendPickupNotification",
                  const std::string& kind = "notifier") {
  live_job j;
  j.id = id;
  j.request_id = "req-" + id;
  j.function = function;
  j.kind = kind;
  j.okey = okey;
  j.seq = seq;
  return j;
}

live_job delayed_release(const std::string& id, int64_t seq, int64_t pickup, int64_t due) {
  auto j = make_job(id, seq, "pickup:" + std::to_string(pickup), "processEscrowRelease", "escrow");
  j.auto_release = true;
  j.due_ms = due;
  return j;
}

const std::set<std::string> all_kinds = {"notifier", "escrow", "geo", "scheduler"};

/// Pops every runnable job of `kinds` now (without running them) and returns their ids.
std::vector<std::string> drain(job_queue& q, const std::set<std::string>& kinds = all_kinds) {
  std::vector<std::string> ids;
  while (auto* j = q.next_runnable(kinds)) ids.push_back(j->id);
  return ids;
}

/// Takes the next runnable job of `kinds` and marks it running.
std::string run_next(job_queue& q, int64_t now = 0, const std::set<std::string>& kinds = all_kinds) {
  auto* j = q.next_runnable(kinds);
  if (!j) return "";
  q.set_running(*j, "node-id", "node-1", 1, now + 1000, now);
  return j->id;
}

/// Counts never go negative, sum to size(), and match the states of the jobs in `ids`.
void check_counts(job_queue& q, const std::vector<std::string>& ids) {
  int64_t sum = 0;
  for (auto& [fn, per] : q.counts())
    for (auto& [state, n] : per) {
      INFO(fn << " " << to_string(state));
      REQUIRE(n >= 0);
      sum += n;
    }
  REQUIRE(sum == static_cast<int64_t>(q.size()));
  state_counts expected;
  for (auto& id : ids)
    if (auto* j = q.find(id)) ++expected[j->function][j->state];
  for (auto& [fn, per] : expected)
    for (auto& [state, n] : per) {
      INFO(fn << " " << to_string(state));
      REQUIRE(q.counts().at(fn).at(state) == n);
    }
}

int64_t count_of(const job_queue& q, const std::string& fn, job_state s) {
  auto it = q.counts().find(fn);
  if (it == q.counts().end()) return 0;
  auto st = it->second.find(s);
  return st == it->second.end() ? 0 : st->second;
}

}  // namespace

TEST_CASE("keyless jobs of a kind are runnable in insertion order", "[queue]") {
  job_queue q;
  q.add(make_job("c", 3), 0);
  q.add(make_job("a", 1), 0);
  q.add(make_job("b", 2), 0);
  REQUIRE(q.has_runnable("notifier"));
  CHECK(drain(q) == std::vector<std::string>{"c", "a", "b"});
  CHECK(q.next_runnable(all_kinds) == nullptr);
  CHECK(q.size() == 3);  // popped jobs stay in the queue until they finish
}

TEST_CASE("next_runnable only returns jobs of the kinds asked for", "[queue]") {
  job_queue q;
  q.add(make_job("n1", 1), 0);
  q.add(make_job("g1", 2, "", "notifyNearbyWorkers", "geo"), 0);
  q.add(make_job("n2", 3), 0);

  CHECK(q.next_runnable({}) == nullptr);
  CHECK(q.next_runnable({"escrow"}) == nullptr);
  CHECK(q.next_runnable({"scheduler", "escrow"}) == nullptr);
  CHECK(!q.has_runnable("escrow"));

  auto* g = q.next_runnable({"geo"});
  REQUIRE(g != nullptr);
  CHECK(g->id == "g1");
  CHECK(q.next_runnable({"geo", "escrow"}) == nullptr);

  auto got = drain(q, {"geo", "notifier"});
  CHECK(got == std::vector<std::string>{"n1", "n2"});
}

TEST_CASE("next_runnable takes from every kind of a node in turn", "[queue]") {
  job_queue q;
  for (int i = 0; i < 3; ++i) {
    q.add(make_job("n" + std::to_string(i), 1 + i), 0);
    q.add(make_job("g" + std::to_string(i), 10 + i, "", "notifyNearbyWorkers", "geo"), 0);
  }
  auto got = drain(q, {"geo", "notifier"});
  REQUIRE(got.size() == 6);
  // Neither kind starves the other: no kind gets three in a row.
  for (size_t i = 0; i + 2 < got.size(); ++i)
    CHECK(!(got[i][0] == got[i + 1][0] && got[i + 1][0] == got[i + 2][0]));
}

TEST_CASE("jobs of one key run one at a time in seq order while other keys run in parallel",
          "[queue]") {
  job_queue q;
  q.add(make_job("a", 1, "pickup:7"), 0);
  q.add(make_job("b", 2, "pickup:7"), 0);
  q.add(make_job("c", 3, "pickup:8"), 0);
  q.add(make_job("d", 4, "worker:3"), 0);
  q.add(make_job("e", 5, "pickup:7"), 0);
  q.add(make_job("f", 6), 0);

  // Only the head of each key is runnable.
  CHECK(drain(q) == std::vector<std::string>{"a", "c", "d", "f"});
  for (auto id : {"a", "c", "d", "f"}) q.set_running(*q.find(id), "n", "n", 1, 100, 0);
  CHECK(q.next_runnable(all_kinds) == nullptr);

  q.finish("c", job_state::done);  // another key: pickup:7 stays blocked
  CHECK(q.next_runnable(all_kinds) == nullptr);

  q.finish("a", job_state::done);
  CHECK(run_next(q) == "b");
  CHECK(q.next_runnable(all_kinds) == nullptr);

  q.finish("b", job_state::dead);  // a dead job lets its key go on too
  CHECK(run_next(q) == "e");
  q.finish("e", job_state::done);
  q.finish("d", job_state::done);
  q.finish("f", job_state::done);
  CHECK(q.size() == 0);
  CHECK(q.next_runnable(all_kinds) == nullptr);
}

TEST_CASE("retry_later blocks the key until its timer fires, then the same job runs first",
          "[queue]") {
  job_queue q;
  q.add(make_job("a", 1, "pickup:7"), 0);
  q.add(make_job("b", 2, "pickup:7"), 0);
  REQUIRE(run_next(q, 0) == "a");

  q.retry_later("a", 500);
  CHECK(q.find("a")->state == job_state::retry_wait);
  CHECK(q.next_due() == 500);
  CHECK(q.next_runnable(all_kinds) == nullptr);  // b waits behind a

  int64_t seq = 100;
  auto next_seq = [&] { return ++seq; };
  CHECK(q.fire_timers(499, next_seq).empty());
  CHECK(q.next_runnable(all_kinds) == nullptr);

  // A job of the key accepted while a waits queues behind it.
  q.add(make_job("c", 3, "pickup:7"), 400);

  CHECK(q.fire_timers(500, next_seq) == std::vector<std::string>{"a"});
  CHECK(q.find("a")->state == job_state::ready);
  CHECK(q.find("a")->seq == 1);  // a retry keeps its place
  CHECK(seq == 100);
  CHECK(q.next_due() == INT64_MAX);
  CHECK(run_next(q, 500) == "a");
  CHECK(q.find("a")->attempts == 2);
  CHECK(q.next_runnable(all_kinds) == nullptr);
  q.finish("a", job_state::done);
  CHECK(run_next(q) == "b");
}

TEST_CASE("a keyless job in retry_wait is runnable again when its timer fires", "[queue]") {
  job_queue q;
  q.add(make_job("a", 1), 0);
  q.add(make_job("b", 2), 0);
  REQUIRE(run_next(q) == "a");
  q.retry_later("a", 50);
  CHECK(run_next(q) == "b");  // no key: b does not wait for a
  CHECK(q.next_runnable(all_kinds) == nullptr);
  CHECK(q.fire_timers(50, [] { return int64_t{0}; }) == std::vector<std::string>{"a"});
  CHECK(run_next(q) == "a");
}

TEST_CASE("finishing a job in retry_wait removes its timer", "[queue]") {
  job_queue q;
  q.add(make_job("a", 1, "pickup:1"), 0);
  q.add(make_job("b", 2, "pickup:1"), 0);
  REQUIRE(run_next(q) == "a");
  q.retry_later("a", 300);
  q.finish("a", job_state::dead);  // e.g. purged from the admin
  CHECK(q.next_due() == INT64_MAX);
  CHECK(q.fire_timers(1000, [] { return int64_t{0}; }).empty());
  CHECK(run_next(q) == "b");
}

TEST_CASE("retry_now makes a lost job runnable again at once, keeping its place", "[queue]") {
  job_queue q;
  q.add(make_job("a", 1, "pickup:7"), 0);
  q.add(make_job("b", 2, "pickup:7"), 0);
  REQUIRE(run_next(q) == "a");
  CHECK(q.find("a")->attempts == 1);

  q.retry_now("a");  // the node holding it died
  auto* a = q.find("a");
  CHECK(a->state == job_state::ready);
  CHECK(a->lease == 0);
  CHECK(a->node().empty());
  CHECK(a->attempts == 1);
  CHECK(run_next(q) == "a");  // before b
  CHECK(q.next_runnable(all_kinds) == nullptr);
  q.finish("a", job_state::done);
  CHECK(run_next(q) == "b");
}

TEST_CASE("a delayed job does not block its key before it is due", "[queue]") {
  job_queue q;
  q.add(delayed_release("d", 1, 7, 1000), 0);
  q.add(make_job("x", 2, "pickup:7"), 0);
  CHECK(q.find("d")->delayed);
  CHECK(q.next_due() == 1000);
  CHECK(drain(q) == std::vector<std::string>{"x"});  // x runs though d has the lower seq
}

TEST_CASE("a delayed job joins its key when due with a fresh seq, after jobs already queued",
          "[queue]") {
  job_queue q;
  q.add(delayed_release("d", 1, 7, 1000), 0);
  q.add(make_job("x", 2, "pickup:7"), 0);
  REQUIRE(run_next(q, 10) == "x");
  q.add(make_job("y", 3, "pickup:7"), 20);

  int64_t seq = 41;
  auto next_seq = [&] { return ++seq; };
  CHECK(q.fire_timers(999, next_seq).empty());
  CHECK(q.find("d")->seq == 1);

  CHECK(q.fire_timers(1000, next_seq) == std::vector<std::string>{"d"});
  CHECK(q.find("d")->seq == 42);
  CHECK(!q.find("d")->delayed);
  CHECK(q.find("d")->state == job_state::ready);
  CHECK(q.next_runnable(all_kinds) == nullptr);  // x still runs

  // A job accepted after d became due comes after d.
  q.add(make_job("z", 43, "pickup:7"), 1001);

  q.finish("x", job_state::done);
  CHECK(run_next(q, 1002) == "y");
  CHECK(q.next_runnable(all_kinds) == nullptr);
  q.finish("y", job_state::done);
  CHECK(run_next(q, 1003) == "d");
  CHECK(q.next_runnable(all_kinds) == nullptr);
  q.finish("d", job_state::done);
  CHECK(run_next(q, 1004) == "z");
}

TEST_CASE("a delayed job due while its key is idle is runnable at once", "[queue]") {
  job_queue q;
  q.add(delayed_release("d", 1, 7, 100), 0);
  CHECK(q.next_runnable(all_kinds) == nullptr);
  CHECK(q.fire_timers(150, [] { return int64_t{9}; }) == std::vector<std::string>{"d"});
  auto* d = q.next_runnable({"escrow"});
  REQUIRE(d != nullptr);
  CHECK(d->id == "d");
  CHECK(d->seq == 9);
}

TEST_CASE("finishing a cancelled delayed job removes its timer and leaves its key alone",
          "[queue]") {
  job_queue q;
  q.add(delayed_release("d", 1, 7, 1000), 0);
  q.add(delayed_release("other", 2, 8, 2000), 0);
  q.add(make_job("x", 3, "pickup:7"), 0);
  CHECK(q.next_due() == 1000);

  q.finish("d", job_state::cancelled);  // pickup.confirmed arrived first
  CHECK(q.find("d") == nullptr);
  CHECK(q.next_due() == 2000);
  CHECK(run_next(q) == "x");  // the key was never blocked by d
  int64_t seq = 10;
  CHECK(q.fire_timers(1500, [&] { return ++seq; }).empty());
  CHECK(seq == 10);  // no fresh seq handed to a job that is gone
  CHECK(q.fire_timers(2000, [&] { return ++seq; }) == std::vector<std::string>{"other"});
  check_counts(q, {"d", "other", "x"});
}

TEST_CASE("expired_leases lists running jobs whose lease deadline passed", "[queue]") {
  job_queue q;
  q.add(make_job("a", 1), 0);
  q.add(make_job("b", 2), 0);
  q.add(make_job("c", 3), 0);
  q.set_running(*q.next_runnable(all_kinds), "n1", "node-1", 11, 100, 0);
  q.set_running(*q.next_runnable(all_kinds), "n2", "node-2", 12, 200, 0);
  // c stays ready: a job that is not running has no lease.

  CHECK(q.expired_leases(99).empty());
  CHECK(q.expired_leases(100) == std::vector<std::string>{"a"});
  auto both = q.expired_leases(250);
  CHECK(std::set<std::string>(both.begin(), both.end()) == std::set<std::string>{"a", "b"});

  auto* a = q.find("a");
  CHECK(a->node() == "n1");
  CHECK(a->node_name() == "node-1");
  CHECK(a->lease == 11);
  CHECK(a->started_ms == 0);

  q.retry_now("a");
  CHECK(q.expired_leases(250) == std::vector<std::string>{"b"});
}

TEST_CASE("a job loaded with state running after a restart is runnable again", "[queue]") {
  job_queue q;
  auto lost = make_job("a", 1, "pickup:7");
  lost.state = job_state::running;
  lost.attempts = 3;
  q.add(std::move(lost), 0);
  q.add(make_job("b", 2, "pickup:7"), 0);

  CHECK(q.find("a")->state == job_state::ready);
  CHECK(count_of(q, "sendPickupNotification", job_state::running) == 0);
  CHECK(count_of(q, "sendPickupNotification", job_state::ready) == 2);
  CHECK(q.expired_leases(INT64_MAX).empty());
  CHECK(run_next(q) == "a");
  CHECK(q.find("a")->attempts == 4);
  CHECK(q.next_runnable(all_kinds) == nullptr);  // b still waits for a
}

TEST_CASE("a job loaded in retry_wait blocks its key until it is due", "[queue]") {
  job_queue q;
  auto waiting = make_job("a", 1, "pickup:7");
  waiting.state = job_state::retry_wait;
  waiting.due_ms = 500;
  q.add(std::move(waiting), 100);
  q.add(make_job("b", 2, "pickup:7"), 100);
  CHECK(q.next_runnable(all_kinds) == nullptr);
  CHECK(q.next_due() == 500);
  CHECK(q.fire_timers(500, [] { return int64_t{0}; }) == std::vector<std::string>{"a"});
  CHECK(run_next(q) == "a");
  CHECK(q.next_runnable(all_kinds) == nullptr);
}

// Regression: a retry_wait job whose due time passed while the broker was down was
// added without a timer and never became runnable; a keyed one blocked its key forever.
TEST_CASE("a job loaded in retry_wait whose due time passed during a restart runs", "[queue]") {
  job_queue q;
  auto keyed = make_job("a", 1, "pickup:7");
  keyed.state = job_state::retry_wait;
  keyed.due_ms = 50;
  auto keyless = make_job("k", 2);
  keyless.state = job_state::retry_wait;
  keyless.due_ms = 60;
  q.add(std::move(keyed), 100);
  q.add(std::move(keyless), 100);
  q.add(make_job("b", 3, "pickup:7"), 100);

  REQUIRE(q.next_due() <= 100);  // the broker loop fires it at its next tick
  auto changed = q.fire_timers(100, [] { return int64_t{0}; });
  CHECK(std::set<std::string>(changed.begin(), changed.end()) == std::set<std::string>{"a", "k"});
  CHECK(q.find("a")->state == job_state::ready);
  CHECK(q.find("a")->seq == 1);
  CHECK(drain(q) == std::vector<std::string>{"a", "k"});
  check_counts(q, {"a", "k", "b"});
}

TEST_CASE("counts per function and state stay consistent through every transition", "[queue]") {
  job_queue q;
  std::vector<std::string> ids;
  auto add = [&](live_job j, int64_t now) {
    ids.push_back(j.id);
    q.add(std::move(j), now);
    check_counts(q, ids);
  };
  add(make_job("a", 1, "pickup:1"), 0);
  add(make_job("b", 2, "pickup:1"), 0);
  add(make_job("g", 3, "", "notifyNearbyWorkers", "geo"), 0);
  add(delayed_release("d", 4, 1, 100), 0);
  auto lost = make_job("r", 5, "worker:2", "updateWorkerLocation", "geo");
  lost.state = job_state::running;
  add(std::move(lost), 0);
  q.add(make_job("a", 1, "pickup:1"), 0);  // the same id again changes nothing
  CHECK(q.size() == 5);
  check_counts(q, ids);
  CHECK(count_of(q, "sendPickupNotification", job_state::ready) == 2);
  CHECK(count_of(q, "processEscrowRelease", job_state::ready) == 1);
  CHECK(count_of(q, "updateWorkerLocation", job_state::ready) == 1);

  auto step = [&] { check_counts(q, ids); };
  REQUIRE(run_next(q, 0, {"notifier"}) == "a"); step();
  REQUIRE(run_next(q, 0, {"geo"}) == "g"); step();
  REQUIRE(run_next(q, 0, {"geo"}) == "r"); step();
  CHECK(count_of(q, "sendPickupNotification", job_state::running) == 1);
  CHECK(count_of(q, "notifyNearbyWorkers", job_state::running) == 1);

  q.retry_later("a", 50); step();
  CHECK(count_of(q, "sendPickupNotification", job_state::retry_wait) == 1);
  q.retry_now("g"); step();
  CHECK(count_of(q, "notifyNearbyWorkers", job_state::running) == 0);
  CHECK(q.fire_timers(50, [] { return int64_t{10}; }) == std::vector<std::string>{"a"}); step();
  REQUIRE(run_next(q, 0, {"geo"}) == "g"); step();
  REQUIRE(run_next(q, 0, {"notifier"}) == "a"); step();
  q.finish("a", job_state::done); step();
  q.finish("a", job_state::done); step();  // twice: ignored
  q.finish("unknown", job_state::done); step();
  q.retry_later("unknown", 5); step();
  q.retry_now("unknown"); step();
  REQUIRE(run_next(q, 0, {"notifier"}) == "b"); step();
  q.finish("g", job_state::dead); step();
  q.finish("r", job_state::done); step();
  CHECK(q.fire_timers(100, [] { return int64_t{11}; }) == std::vector<std::string>{"d"}); step();
  q.finish("b", job_state::done); step();
  REQUIRE(run_next(q, 0, {"escrow"}) == "d"); step();
  q.retry_later("d", 200); step();
  q.finish("d", job_state::dead); step();
  CHECK(q.size() == 0);
  for (auto& [fn, per] : q.counts())
    for (auto& [state, n] : per) CHECK(n == 0);
  CHECK(q.next_due() == INT64_MAX);
}

// Tests of broker/completion: what a DONE or a lost lease makes of a running job
// (docs/reliability.md, "What each fault does", "Circuit breakers";
// docs/events-and-functions.md, "Failures and retries"). Pure: each test passes
// the job, the DONE, the retry policy, `now` and a seeded generator.
#include "broker/completion.hpp"

#include <catch2/catch.hpp>

#include <nlohmann/json.hpp>

using namespace klynaa;
using namespace klynaa::broker;
namespace cl = protocol::cluster;

namespace {

constexpr int64_t now = 1700000000000;

live_job running(int64_t attempts, int64_t attempt_base = 0) {
  live_job j;
  j.id = "r1#1";
  j.request_id = "r1";
  j.function = "processEscrowRelease";
  j.kind = "escrow";
  j.ts_ms = 1000;
  j.attempts = attempts;
  j.attempt_base = attempt_base;
  j.state = job_state::running;
  return j;
}

cl::done failure(const std::string& outcome, const std::string& code = "http_503", int64_t http = 503,
                 int64_t retry_after = -1) {
  cl::done d;
  d.job_id = "r1#1";
  d.outcome = outcome;
  d.error_code = code;
  d.error_message = "Django said no";
  d.http_status = http;
  d.retry_after_ms = retry_after;
  d.duration_ms = 12;
  return d;
}

protocol::retry_policy policy(int64_t max_attempts = 3) {
  protocol::retry_policy p;
  p.max_attempts = max_attempts;
  p.base_delay_ms = 1000;
  p.max_delay_ms = 60000;
  return p;
}

nlohmann::json parsed(const std::string& s) { return nlohmann::json::parse(s); }

}  // namespace

TEST_CASE("ok ends the job as done, with its result and its children numbered by the caller", "[completion]") {
  std::mt19937_64 rng(1);
  cl::done d;
  d.job_id = "r1#1";
  d.outcome = "ok";
  d.result_json = R"({"released":true})";
  d.children.push_back({"#escrow-released-7", "sendPickupNotification", R"({"pickup_id":7,"user_id":3})", 0});
  d.children.push_back({"r1#1#2", "sendPickupNotification", R"({"user_id":3})", now + 5});
  auto c = complete_job(running(1), d, policy(), now, rng);
  CHECK(c.what == completion::verdict::done);
  CHECK(c.state == job_state::done);
  CHECK(c.history == "ok");
  CHECK(c.counted == "ok");
  CHECK(c.result_json == d.result_json);
  CHECK(c.observe_duration);
  REQUIRE(c.note);
  CHECK(c.note->status == protocol::reply_status::ok);
  CHECK(c.note->result_json == d.result_json);
  REQUIRE(c.children.size() == 2);
  CHECK(c.children[0].id == "#escrow-released-7");
  CHECK(c.children[0].request_id == "r1");
  CHECK(c.children[0].ordering_key == "pickup:7");
  CHECK(c.children[0].ts_ms == 1000);  // the parent's event time
  CHECK(c.children[0].created_ms == now);
  CHECK(c.children[0].seq == 0);
  CHECK(c.children[1].ordering_key.empty());
  CHECK(c.children[1].due_ms == now + 5);
}

TEST_CASE("a transient failure within the budget retries after a jittered backoff", "[completion]") {
  std::mt19937_64 rng(7);
  for (int64_t attempts = 1; attempts <= 2; ++attempts) {
    auto c = complete_job(running(attempts), failure("transient"), policy(3), now, rng);
    CHECK(c.what == completion::verdict::retry);
    CHECK(c.state == job_state::retry_wait);
    CHECK(c.history == "retry");
    CHECK(c.counted == "retry");
    CHECK(c.due_ms >= now);
    CHECK(c.due_ms <= now + 1000 * (int64_t{1} << (attempts - 1)));  // full jitter under base * 2^(n-1)
    CHECK_FALSE(c.note);
    auto e = parsed(c.error_json);
    CHECK(e["kind"] == "transient");
    CHECK(e["code"] == "http_503");
    CHECK(e["http_status"] == 503);
    CHECK(c.failure_code == "http_503");
  }
}

TEST_CASE("a Retry-After is waited past retry.max_delay_ms, up to an hour", "[completion]") {
  std::mt19937_64 rng(3);
  auto c = complete_job(running(1), failure("transient", "http_429", 429, 120000), policy(3), now, rng);
  CHECK(c.what == completion::verdict::retry);
  CHECK(c.due_ms == now + 120000);
  auto longer = complete_job(running(1), failure("transient", "http_429", 429, 7200000), policy(3), now, rng);
  CHECK(longer.due_ms == now + 3600000);
}

TEST_CASE("the last transient failure of the budget makes the job dead, exhausted", "[completion]") {
  std::mt19937_64 rng(1);
  auto c = complete_job(running(3), failure("transient"), policy(3), now, rng);
  CHECK(c.what == completion::verdict::dead);
  CHECK(c.state == job_state::dead);
  CHECK(c.history == "dead");
  CHECK(parsed(c.error_json)["kind"] == "exhausted");
  REQUIRE(c.note);
  CHECK(c.note->status == protocol::reply_status::failed);
  REQUIRE(c.note->error);
  CHECK(c.note->error->code == "exhausted");
  CHECK(c.note->error->message == "gave up after 3 attempts; last error: Django said no");
  CHECK(c.note->error->http_status == 503);
}

TEST_CASE("a permanent failure is dead at once, whatever the budget left", "[completion]") {
  std::mt19937_64 rng(1);
  auto c = complete_job(running(1), failure("permanent", "http_404", 404), policy(8), now, rng);
  CHECK(c.what == completion::verdict::dead);
  CHECK(parsed(c.error_json)["kind"] == "permanent");
  REQUIRE(c.note);
  CHECK(c.note->error->code == "permanent");
  CHECK(c.note->error->message == "Django said no");
  CHECK(c.note->error->http_status == 404);
  CHECK(c.observe_duration);
}

TEST_CASE("a replayed job's budget counts from its attempts before the replay", "[completion]") {
  std::mt19937_64 rng(1);
  auto c = complete_job(running(9, 8), failure("transient"), policy(3), now, rng);
  CHECK(c.what == completion::verdict::retry);
  auto spent = complete_job(running(11, 8), failure("transient"), policy(3), now, rng);
  CHECK(spent.what == completion::verdict::dead);
  CHECK(spent.note->error->message == "gave up after 3 attempts; last error: Django said no");
}

TEST_CASE("a circuit_open refusal waits for the breaker without using an attempt or a history entry",
          "[completion]") {
  std::mt19937_64 rng(1);
  auto c = complete_job(running(3), failure("transient", "circuit_open", 0, 2500), policy(3), now, rng);
  CHECK(c.what == completion::verdict::circuit_wait);
  CHECK(c.state == job_state::retry_wait);
  CHECK(c.give_back_attempt);
  CHECK(c.due_ms == now + 2500);
  CHECK(c.history.empty());
  CHECK(c.counted == "retry");
  CHECK_FALSE(c.observe_duration);
  CHECK_FALSE(c.note);
  CHECK(complete_job(running(1), failure("transient", "circuit_open", 0, 0), policy(3), now, rng).due_ms ==
        now + 100);
  CHECK_FALSE(complete_job(running(2, 2), failure("transient", "circuit_open", 0, 500), policy(3), now, rng)
                  .give_back_attempt);
}

TEST_CASE("a lost lease runs the job again, or makes it dead when its attempts are spent", "[completion]") {
  auto again = lose_job(running(1), "node timed out", policy(3));
  CHECK(again.what == completion::verdict::run_again);
  CHECK(again.state == job_state::ready);
  CHECK(again.history == "lost");
  CHECK(again.counted == "retry");
  CHECK(parsed(again.error_json) == nlohmann::json{{"kind", "transient"}, {"code", "lost"}, {"message", "node timed out"}});
  CHECK_FALSE(again.note);
  auto dead = lose_job(running(3), "lease expired", policy(3));
  CHECK(dead.what == completion::verdict::dead);
  CHECK(dead.history == "dead");
  CHECK(parsed(dead.error_json)["kind"] == "exhausted");
  REQUIRE(dead.note);
  CHECK(dead.note->error->code == "exhausted");
  CHECK(dead.note->error->message == "gave up after 3 attempts; last: lease expired");
  CHECK(dead.failure_code == "lost");
}

// sendPickupNotification (docs/events-and-functions.md) against a fake Django and a recording
// push provider: recipients per user_type, tokens, invalid tokens, failures.
#include "actors/notifier.hpp"

#include <catch2/catch.hpp>

#include "fake_server.hpp"
#include "tests/support/temp_dir.hpp"

using klynaa::actors::django_client;
using klynaa::actors::notifier_handler;
using klynaa::actors::push;
using klynaa::actors::push_provider;
using klynaa::actors::push_result;
using klynaa::actors::templates;
using klynaa::nodes::job;
using klynaa::nodes::outcome;
using klynaa::test::canned;
using klynaa::test::fake_server;
using nlohmann::json;

namespace {

/// Records every push and the size of every batch; answers per token from
/// `answers`, delivered otherwise.
class recording_provider : public push_provider {
 public:
  std::vector<push> sent;
  std::vector<size_t> batches;
  std::map<std::string, push_result> answers;
  push_result send(const push& p) override {
    sent.push_back(p);
    auto it = answers.find(p.token);
    return it == answers.end() ? push_result::delivered() : it->second;
  }
  std::vector<push_result> send_all(const std::vector<push>& pushes) override {
    batches.push_back(pushes.size());
    return push_provider::send_all(pushes);  // the default: send() one by one
  }
  std::string_view name() const override { return "recording"; }
};

klynaa::protocol::config::django_section django_at(const std::string& url) {
  klynaa::protocol::config::django_section d;
  d.url = url;
  d.api_key = "notifier-test-key";
  d.connect_timeout_ms = 1000;
  d.timeout_ms = 3000;
  return d;
}

std::string pickup(int64_t id, int64_t customer, std::optional<int64_t> worker) {
  json p{{"id", id},        {"status", worker ? "accepted" : "requested"},
         {"customer_id", customer},
         {"worker_id", worker ? json(*worker) : json()},
         {"lat", 5.6},      {"lng", -0.2},
         {"price", 25},     {"currency", "GHS"},
         {"created_at", "2024-01-01T00:00:00Z"}, {"accepted_at", nullptr}, {"delivered_at", nullptr}};
  return p.dump();
}

std::string tokens(int64_t user, std::vector<std::string> toks) {
  json list = json::array();
  for (auto& t : toks) list.push_back({{"token", t}, {"platform", "android"}});
  return json{{"user_id", user}, {"tokens", list}}.dump();
}

/// A fake Django with pickup 7 (customer 11, worker 22), pickup 8 (customer 11,
/// no worker), admins 1 and 2, and one or two tokens per user.
void script_django(fake_server& django) {
  django.on("GET", "/api/serverless/pickups/7/", {200, pickup(7, 11, 22)});
  django.on("GET", "/api/serverless/pickups/8/", {200, pickup(8, 11, std::nullopt)});
  django.on("GET", "/api/users/admins/",
            {200, R"({"admins": [{"id": 1, "email": "a@k"}, {"id": 2, "email": "b@k"}, {"id": 1, "email": "a@k"}]})"});
  django.on("GET", "/api/users/11/tokens/", {200, tokens(11, {"c-1", "c-2"})});
  django.on("GET", "/api/users/22/tokens/", {200, tokens(22, {"w-1"})});
  django.on("GET", "/api/users/1/tokens/", {200, tokens(1, {"a1-1"})});
  django.on("GET", "/api/users/2/tokens/", {200, tokens(2, {"a2-1"})});
  django.on("GET", "/api/users/33/tokens/", {200, tokens(33, {"u-1"})});
}

struct fixture {
  fake_server django;
  recording_provider* provider = nullptr;
  std::unique_ptr<notifier_handler> handler;

  explicit fixture(std::map<std::string, std::map<std::string, std::string>> overrides = {}) {
    script_django(django);
    auto p = std::make_unique<recording_provider>();
    provider = p.get();
    handler = std::make_unique<notifier_handler>(
        std::make_unique<django_client>(django_at(django.url())), std::move(p),
        std::make_shared<const templates>(overrides));
  }

  klynaa::nodes::job_result run(json data, std::string id = "evt-1#1") {
    job j;
    j.id = std::move(id);
    j.function = "sendPickupNotification";
    j.data = std::move(data);
    return handler->run(j);
  }

  std::vector<int64_t> pushed_users() const {
    std::vector<int64_t> out;
    for (auto& p : provider->sent) out.push_back(p.user_id);
    return out;
  }
};

}  // namespace

TEST_CASE("a customer notification goes to every token of the pickup's customer") {
  fixture f;
  auto r = f.run({{"pickup_id", 7}, {"notification_type", "pickup_accepted"}, {"user_type", "customer"}});
  REQUIRE(r.kind == outcome::ok);
  CHECK(r.result == json{{"sent", 2}, {"failed", 0}, {"invalid_tokens", 0}, {"recipients", {11}}});
  REQUIRE(f.provider->sent.size() == 2);
  const push& p = f.provider->sent[0];
  CHECK(p.job_id == "evt-1#1");
  CHECK(p.user_id == 11);
  CHECK(p.token == "c-1");
  CHECK(p.platform == "android");
  CHECK(p.notification_type == "pickup_accepted");
  CHECK(p.title == "Pickup accepted");
  CHECK(p.body == "A worker accepted your pickup #7.");
  CHECK(p.data["pickup_id"] == 7);
  CHECK(f.provider->sent[1].token == "c-2");
}

TEST_CASE("a worker notification goes to the pickup's worker") {
  fixture f;
  auto r = f.run({{"pickup_id", 7}, {"notification_type", "escrow_released"}, {"user_type", "worker"}});
  REQUIRE(r.kind == outcome::ok);
  CHECK(r.result["recipients"] == json{22});
  CHECK(r.result["sent"] == 1);
  REQUIRE(f.provider->sent.size() == 1);
  CHECK(f.provider->sent[0].body == "25.00 GHS for pickup #7 has been released to you.");
}

TEST_CASE("pickup_requested for an unassigned pickup without user_id notifies nobody here") {
  fixture f;
  auto r = f.run({{"pickup_id", 8}, {"notification_type", "pickup_requested"}, {"user_type", "worker"}});
  REQUIRE(r.kind == outcome::ok);
  CHECK(r.result == json{{"sent", 0}, {"failed", 0}, {"invalid_tokens", 0}, {"recipients", json::array()}});
  CHECK(f.provider->sent.empty());
}

TEST_CASE("an admin notification goes to every admin once") {
  fixture f;
  auto r = f.run({{"pickup_id", 7}, {"notification_type", "pickup_disputed"}, {"user_type", "admin"},
                  {"reason", "bags missing"}});
  REQUIRE(r.kind == outcome::ok);
  CHECK(r.result["recipients"] == json{1, 2});
  CHECK(r.result["sent"] == 2);
  CHECK(f.pushed_users() == std::vector<int64_t>{1, 2});
  CHECK(f.provider->sent[0].body == "Pickup #7 was disputed: bags missing");
  CHECK(f.provider->sent[0].data["reason"] == "bags missing");
}

TEST_CASE("user_id replaces the recipients of the user_type") {
  fixture f;
  auto r = f.run({{"pickup_id", 8}, {"notification_type", "pickup_requested"}, {"user_type", "worker"},
                  {"user_id", 33}});
  REQUIRE(r.kind == outcome::ok);
  CHECK(r.result["recipients"] == json{33});
  CHECK(f.pushed_users() == std::vector<int64_t>{33});
  CHECK(f.django.requests_to("GET", "/api/users/admins/").empty());
  CHECK(f.django.requests_to("GET", "/api/users/11/tokens/").empty());
}

TEST_CASE("a null user_id is the same as none") {
  fixture f;
  auto r = f.run({{"pickup_id", 7}, {"notification_type", "pickup_delivered"}, {"user_type", "customer"},
                  {"user_id", nullptr}});
  REQUIRE(r.kind == outcome::ok);
  CHECK(r.result["recipients"] == json{11});
}

TEST_CASE("a daily report goes to the admins by report_id without a pickup") {
  fixture f;
  auto r = f.run({{"report_id", 42}, {"notification_type", "daily_report"}, {"user_type", "admin"}});
  REQUIRE(r.kind == outcome::ok);
  CHECK(r.result["recipients"] == json{1, 2});
  REQUIRE(f.provider->sent.size() == 2);
  CHECK(f.provider->sent[0].body == "Daily report #42 is ready.");
  CHECK(f.provider->sent[0].data["report_id"] == 42);
  for (auto& req : f.django.requests()) CHECK(req.path.find("/pickups/") == std::string::npos);
}

TEST_CASE("an invalid token is deleted in Django and counted") {
  fixture f;
  f.django.on("DELETE", "/api/users/11/tokens/c-1/", {204, ""});
  f.provider->answers["c-1"] = push_result::fail(push_result::status::invalid_token, "gone", 410);
  auto r = f.run({{"pickup_id", 7}, {"notification_type", "pickup_accepted"}, {"user_type", "customer"}});
  REQUIRE(r.kind == outcome::ok);
  CHECK(r.result == json{{"sent", 1}, {"failed", 0}, {"invalid_tokens", 1}, {"recipients", {11}}});
  auto deletes = f.django.requests_to("DELETE", "/api/users/11/tokens/c-1/");
  REQUIRE(deletes.size() == 1);
  CHECK(deletes[0].header("Authorization") == "Api-Key notifier-test-key");
}

TEST_CASE("a failed token DELETE does not fail the notification") {
  fixture f;
  f.django.on("DELETE", "/api/users/11/tokens/c-1/", {500, ""});
  f.provider->answers["c-1"] = push_result::fail(push_result::status::invalid_token, "gone", 404);
  auto r = f.run({{"pickup_id", 7}, {"notification_type", "pickup_accepted"}, {"user_type", "customer"}});
  REQUIRE(r.kind == outcome::ok);
  CHECK(r.result["invalid_tokens"] == 1);
  CHECK(r.result["sent"] == 1);
}

TEST_CASE("a pickup Django does not know is a permanent failure") {
  fixture f;
  auto r = f.run({{"pickup_id", 999}, {"notification_type", "pickup_accepted"}, {"user_type", "customer"}});
  CHECK(r.kind == outcome::permanent);
  CHECK(r.http_status == 404);
  CHECK(f.provider->sent.empty());
}

TEST_CASE("a transient Django failure makes the job transient") {
  fixture f;
  f.django.on("GET", "/api/users/11/tokens/", {503, "", {{"Retry-After", "9"}}});
  auto r = f.run({{"pickup_id", 7}, {"notification_type", "pickup_accepted"}, {"user_type", "customer"}});
  CHECK(r.kind == outcome::transient);
  CHECK(r.http_status == 503);
  CHECK(r.retry_after_ms == 9000);
}

TEST_CASE("a recipient unknown to Django has no tokens and is skipped") {
  fixture f;
  f.django.on("GET", "/api/users/2/tokens/", {404, ""});
  auto r = f.run({{"report_id", "r-9"}, {"notification_type", "daily_report"}, {"user_type", "admin"}});
  REQUIRE(r.kind == outcome::ok);
  CHECK(r.result["recipients"] == json{1, 2});
  CHECK(r.result["sent"] == 1);
}

TEST_CASE("when every push fails transiently the job is transient") {
  fixture f;
  auto busy = push_result::fail(push_result::status::transient, "provider busy", 503);
  busy.retry_after_ms = 2000;
  f.provider->answers["c-1"] = busy;
  f.provider->answers["c-2"] = push_result::fail(push_result::status::transient, "timeout");
  auto r = f.run({{"pickup_id", 7}, {"notification_type", "pickup_accepted"}, {"user_type", "customer"}});
  CHECK(r.kind == outcome::transient);
  CHECK(r.error_code == "push_failed");
  CHECK(r.retry_after_ms == 2000);
}

TEST_CASE("when every push is held by an open circuit breaker the job is deferred") {
  fixture f;
  auto held = push_result::fail(push_result::status::transient, "not sent: circuit open");
  held.circuit_open = true;
  held.retry_after_ms = 3000;
  f.provider->answers["c-1"] = held;
  f.provider->answers["c-2"] = held;
  auto r = f.run({{"pickup_id", 7}, {"notification_type", "pickup_accepted"}, {"user_type", "customer"}});
  CHECK(r.kind == outcome::deferred);  // waits without spending an attempt
  CHECK(r.error_code == "circuit_open");
  CHECK(r.retry_after_ms == 3000);
}

TEST_CASE("when some pushes are delivered the failures are counted in an ok result") {
  fixture f;
  f.provider->answers["c-2"] = push_result::fail(push_result::status::transient, "timeout");
  auto r = f.run({{"pickup_id", 7}, {"notification_type", "pickup_accepted"}, {"user_type", "customer"}});
  REQUIRE(r.kind == outcome::ok);
  CHECK(r.result["sent"] == 1);
  CHECK(r.result["failed"] == 1);
}

TEST_CASE("when every push is rejected permanently the job is permanent") {
  fixture f;
  f.provider->answers["c-1"] = push_result::fail(push_result::status::permanent, "bad payload", 400);
  f.provider->answers["c-2"] = push_result::fail(push_result::status::permanent, "bad payload", 400);
  auto r = f.run({{"pickup_id", 7}, {"notification_type", "pickup_accepted"}, {"user_type", "customer"}});
  CHECK(r.kind == outcome::permanent);
  CHECK(r.error_code == "push_rejected");
}

TEST_CASE("config template overrides are used for the push text") {
  fixture f({{"pickup_accepted", {{"title", "Yɛagye wo pickup {pickup_id}"}, {"body", "Ready: {amount} {currency}"}}}});
  auto r = f.run({{"pickup_id", 7}, {"notification_type", "pickup_accepted"}, {"user_type", "customer"}});
  REQUIRE(r.kind == outcome::ok);
  REQUIRE_FALSE(f.provider->sent.empty());
  CHECK(f.provider->sent[0].title == "Yɛagye wo pickup 7");
  CHECK(f.provider->sent[0].body == "Ready: 25.00 GHS");
}

TEST_CASE("invalid job data is a permanent failure naming the field") {
  fixture f;
  auto bad_type = f.run({{"pickup_id", 7}, {"notification_type", "pickup_exploded"}, {"user_type", "customer"}});
  CHECK(bad_type.kind == outcome::permanent);
  CHECK_THAT(bad_type.message, Catch::Contains("data.notification_type"));
  auto bad_user_type = f.run({{"pickup_id", 7}, {"notification_type", "pickup_accepted"}, {"user_type", "boss"}});
  CHECK_THAT(bad_user_type.message, Catch::Contains("data.user_type"));
  auto no_pickup = f.run({{"notification_type", "pickup_accepted"}, {"user_type", "customer"}});
  CHECK_THAT(no_pickup.message, Catch::Contains("data.pickup_id"));
  auto no_report = f.run({{"notification_type", "daily_report"}, {"user_type", "admin"}});
  CHECK_THAT(no_report.message, Catch::Contains("data.report_id"));
  auto bad_user = f.run({{"pickup_id", 7}, {"notification_type", "pickup_accepted"}, {"user_type", "customer"},
                         {"user_id", "11"}});
  CHECK(bad_user.kind == outcome::permanent);
  CHECK_THAT(bad_user.message, Catch::Contains("data.user_id"));
  CHECK(f.provider->sent.empty());
}

TEST_CASE("a notification through the log provider lands in the outbox") {
  klynaa::test::temp_dir dir;
  fake_server django;
  script_django(django);
  klynaa::protocol::config cfg;
  auto made = klynaa::actors::make_provider(cfg, dir.path);
  REQUIRE(std::holds_alternative<klynaa::actors::provider_factory>(made));
  notifier_handler handler(std::make_unique<django_client>(django_at(django.url())),
                           std::get<klynaa::actors::provider_factory>(made)(),
                           std::make_shared<const templates>());
  job j;
  j.id = "evt-9#2";
  j.function = "sendPickupNotification";
  j.data = {{"pickup_id", 7}, {"notification_type", "pickup_delivered"}, {"user_type", "customer"}};
  REQUIRE(handler.run(j).kind == outcome::ok);
  auto lines = klynaa::test::read_lines(dir / "outbox.jsonl");
  REQUIRE(lines.size() == 2);
  auto line = json::parse(lines[0]);
  CHECK(line["job_id"] == "evt-9#2");
  CHECK(line["user_id"] == 11);
  CHECK(line["token"] == "c-1");
  CHECK(line["notification_type"] == "pickup_delivered");
  CHECK(line["title"] == "Pickup delivered");
  CHECK(line["data"]["pickup_id"] == 7);
}

TEST_CASE("the pushes of one job go to the provider in one batch") {
  fixture f;
  auto r = f.run({{"pickup_id", 7}, {"notification_type", "pickup_disputed"}, {"user_type", "admin"}});
  REQUIRE(r.kind == outcome::ok);
  CHECK(f.provider->batches == std::vector<size_t>{2});  // admins 1 and 2, one token each
  CHECK(f.pushed_users() == std::vector<int64_t>{1, 2});
}

TEST_CASE("a Django failure while listing tokens fails the job before any push goes out") {
  fixture f;
  f.django.on("GET", "/api/users/2/tokens/", {503, ""});
  auto r = f.run({{"pickup_id", 7}, {"notification_type", "pickup_disputed"}, {"user_type", "admin"}});
  CHECK(r.kind == outcome::transient);
  CHECK(f.provider->sent.empty());
  CHECK(f.provider->batches.empty());
}

TEST_CASE("a notification through the webhook sends the job's pushes concurrently") {
  fake_server django;
  script_django(django);
  django.on("GET", "/api/users/11/tokens/", {200, tokens(11, {"c-1", "c-2", "c-3"})});
  django.on("DELETE", "/api/users/11/tokens/c-2/", {204, ""});
  fake_server hook;
  hook.on("POST", "/push", [](const klynaa::test::recorded_request& r) -> canned {
    auto body = json::parse(r.body, nullptr, false);
    return {!body.is_discarded() && body.value("token", "") == "c-2" ? 410 : 200, ""};
  });
  hook.hold("POST", "/push", 3);  // nothing is answered until all three are in flight
  klynaa::protocol::config cfg;
  cfg.notifications.service = "webhook";
  cfg.notifications.webhook_url = hook.url() + "/push";
  auto made = klynaa::actors::make_provider(cfg, "/nonexistent-is-fine-for-webhooks");
  REQUIRE(std::holds_alternative<klynaa::actors::provider_factory>(made));
  notifier_handler handler(std::make_unique<django_client>(django_at(django.url())),
                           std::get<klynaa::actors::provider_factory>(made)(),
                           std::make_shared<const templates>());
  auto counts = [] { return klynaa::actors::downstream_counts(); };
  uint64_t ok_before = counts()[{"webhook", "2xx"}], gone_before = counts()[{"webhook", "4xx"}];

  job j;
  j.id = "evt-5#1";
  j.function = "sendPickupNotification";
  j.data = {{"pickup_id", 7}, {"notification_type", "pickup_accepted"}, {"user_type", "customer"}};
  auto r = handler.run(j);
  REQUIRE(r.kind == outcome::ok);
  CHECK(r.result == json{{"sent", 2}, {"failed", 0}, {"invalid_tokens", 1}, {"recipients", {11}}});
  CHECK(hook.max_in_flight("POST", "/push") == 3);
  CHECK(django.requests_to("DELETE", "/api/users/11/tokens/c-2/").size() == 1);
  CHECK(counts()[{"webhook", "2xx"}] == ok_before + 2);
  CHECK(counts()[{"webhook", "4xx"}] == gone_before + 1);
}

// Push providers (docs/events-and-functions.md, "Push providers"): the log
// provider's outbox lines, the webhook's
// status mapping, batches (send_all: concurrent, connections reused, one result
// per push in order), and the factory's choices.
#include "actors/providers.hpp"

#include <regex>
#include <set>
#include <thread>

#include <catch2/catch.hpp>

#include "fake_server.hpp"
#include "tests/support/temp_dir.hpp"

using klynaa::actors::log_provider;
using klynaa::actors::make_provider;
using klynaa::actors::outbox_file;
using klynaa::actors::provider_error;
using klynaa::actors::provider_factory;
using klynaa::actors::push;
using klynaa::actors::push_result;
using klynaa::actors::webhook_provider;
using klynaa::test::canned;
using klynaa::test::fake_server;
using klynaa::test::recorded_request;
using klynaa::test::temp_dir;
using nlohmann::json;

namespace {

push sample_push() {
  push p;
  p.job_id = "evt-1#1";
  p.user_id = 11;
  p.token = "tok-abc";
  p.platform = "ios";
  p.notification_type = "pickup_accepted";
  p.title = "Pickup accepted";
  p.body = "A worker accepted your pickup #7.";
  p.data = {{"pickup_id", 7}, {"notification_type", "pickup_accepted"}};
  return p;
}

std::shared_ptr<outbox_file> open_outbox(const temp_dir& dir) {
  std::string error;
  auto f = outbox_file::open(dir / "outbox.jsonl", error);
  REQUIRE(f);
  return f;
}

klynaa::actors::http_options quick() {
  klynaa::actors::http_options o;
  o.connect_timeout_ms = 1000;
  o.timeout_ms = 2000;
  return o;
}

}  // namespace

TEST_CASE("the log provider appends one contract line per push") {
  temp_dir dir;
  log_provider provider(open_outbox(dir));
  auto r = provider.send(sample_push());
  CHECK(r.kind == push_result::status::delivered);
  auto p2 = sample_push();
  p2.token = "tok-def";
  CHECK(provider.send(p2).kind == push_result::status::delivered);

  auto lines = klynaa::test::read_lines(dir / "outbox.jsonl");
  REQUIRE(lines.size() == 2);
  // Keys in the order of docs/events-and-functions.md ("Push providers"), ts as
  // ISO 8601 UTC with milliseconds.
  std::regex shape(
      R"(^\{"ts":"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z","job_id":"evt-1#1","user_id":11,)"
      R"("token":"tok-abc","platform":"ios","notification_type":"pickup_accepted",)"
      R"("title":"Pickup accepted","body":"A worker accepted your pickup #7\.",)"
      R"("data":\{.*\}\}$)");
  CHECK(std::regex_match(lines[0], shape));
  auto first = json::parse(lines[0]);
  CHECK(first["data"]["pickup_id"] == 7);
  CHECK(json::parse(lines[1])["token"] == "tok-def");
}

TEST_CASE("the log provider appends to an existing outbox") {
  temp_dir dir;
  {
    std::ofstream old(dir / "outbox.jsonl");
    old << "{\"earlier\":true}\n";
  }
  log_provider provider(open_outbox(dir));
  provider.send(sample_push());
  auto lines = klynaa::test::read_lines(dir / "outbox.jsonl");
  REQUIRE(lines.size() == 2);
  CHECK(lines[0] == "{\"earlier\":true}");
}

TEST_CASE("log providers on many threads write whole lines only") {
  temp_dir dir;
  auto outbox = open_outbox(dir);
  constexpr int threads = 8, per_thread = 200;
  std::vector<std::thread> workers;
  for (int t = 0; t < threads; ++t) {
    workers.emplace_back([&, t] {
      log_provider provider(outbox);  // one provider per worker, one shared outbox
      for (int i = 0; i < per_thread; ++i) {
        auto p = sample_push();
        p.user_id = t;
        p.body = std::string(500, 'x') + std::to_string(i);
        provider.send(p);
      }
    });
  }
  for (auto& w : workers) w.join();
  auto lines = klynaa::test::read_lines(dir / "outbox.jsonl");
  REQUIRE(lines.size() == threads * per_thread);
  std::map<int64_t, int> per_user;
  for (const auto& line : lines) {
    auto j = json::parse(line, nullptr, false);
    REQUIRE_FALSE(j.is_discarded());
    ++per_user[j["user_id"].get<int64_t>()];
  }
  for (int t = 0; t < threads; ++t) CHECK(per_user[t] == per_thread);
}

TEST_CASE("invalid UTF-8 in a push does not break the outbox line") {
  temp_dir dir;
  log_provider provider(open_outbox(dir));
  auto p = sample_push();
  p.title = "bad \xff byte";
  CHECK(provider.send(p).kind == push_result::status::delivered);
  auto lines = klynaa::test::read_lines(dir / "outbox.jsonl");
  REQUIRE(lines.size() == 1);
  CHECK_FALSE(json::parse(lines[0], nullptr, false).is_discarded());
}

TEST_CASE("the webhook provider posts the outbox JSON and 2xx is delivered") {
  fake_server hook;
  hook.on("POST", "/push", {202, ""});
  webhook_provider provider(hook.url() + "/push", quick());
  CHECK(provider.send(sample_push()).kind == push_result::status::delivered);
  auto reqs = hook.requests();
  REQUIRE(reqs.size() == 1);
  CHECK(reqs[0].header("Content-Type") == "application/json");
  CHECK(reqs[0].header("Authorization").empty());  // the Django key never leaves for a webhook
  auto body = json::parse(reqs[0].body);
  CHECK(body["job_id"] == "evt-1#1");
  CHECK(body["user_id"] == 11);
  CHECK(body["token"] == "tok-abc");
  CHECK(body["platform"] == "ios");
  CHECK(body["notification_type"] == "pickup_accepted");
  CHECK(body["data"]["pickup_id"] == 7);
  CHECK(body.contains("ts"));
}

TEST_CASE("the webhook's 404 and 410 mean an invalid token") {
  fake_server hook;
  hook.on("POST", "/gone", {410, ""});
  CHECK(webhook_provider(hook.url() + "/gone", quick()).send(sample_push()).kind ==
        push_result::status::invalid_token);
  CHECK(webhook_provider(hook.url() + "/missing", quick()).send(sample_push()).kind ==
        push_result::status::invalid_token);
}

TEST_CASE("the webhook's 5xx, 429 and 408 are transient and other 4xx permanent") {
  fake_server hook;
  hook.on("POST", "/500", {500, ""});
  hook.on("POST", "/429", {429, "", {{"Retry-After", "4"}}});
  hook.on("POST", "/408", {408, ""});
  hook.on("POST", "/400", {400, ""});
  hook.on("POST", "/401", {401, ""});
  auto send = [&](const std::string& path) {
    return webhook_provider(hook.url() + path, quick()).send(sample_push());
  };
  CHECK(send("/500").kind == push_result::status::transient);
  auto limited = send("/429");
  CHECK(limited.kind == push_result::status::transient);
  CHECK(limited.retry_after_ms == 4000);
  CHECK(send("/408").kind == push_result::status::transient);
  auto bad = send("/400");
  CHECK(bad.kind == push_result::status::permanent);
  CHECK(bad.http_status == 400);
  CHECK(send("/401").kind == push_result::status::permanent);
}

TEST_CASE("an unreachable webhook is transient") {
  webhook_provider provider("http://127.0.0.1:" + std::to_string(klynaa::test::closed_port()) + "/",
                            quick());
  auto r = provider.send(sample_push());
  CHECK(r.kind == push_result::status::transient);
  CHECK_FALSE(r.error.empty());
}

namespace {

std::vector<push> pushes_to(const std::vector<std::string>& tokens) {
  std::vector<push> out;
  for (const auto& t : tokens) {
    auto p = sample_push();
    p.token = t;
    out.push_back(p);
  }
  return out;
}

std::string token_of(const recorded_request& r) {
  auto j = json::parse(r.body, nullptr, false);
  return j.is_discarded() ? "" : j.value("token", "");
}

uint64_t downstream(const std::string& service, const std::string& outcome) {
  return klynaa::actors::downstream_counts()[{service, outcome}];
}

}  // namespace

TEST_CASE("the webhook provider sends the pushes of a batch concurrently, one result per push in order") {
  fake_server hook;
  hook.on("POST", "/push", [](const recorded_request& r) -> canned {
    std::string t = token_of(r);
    if (t == "gone") return {410, ""};
    if (t == "busy") return {503, "", {{"Retry-After", "6"}}};
    return {202, ""};
  });
  hook.hold("POST", "/push", 4);  // nothing is answered until all four are in flight
  webhook_provider provider(hook.url() + "/push", quick());
  uint64_t ok_before = downstream("webhook", "2xx"), gone_before = downstream("webhook", "4xx"),
           busy_before = downstream("webhook", "5xx");

  auto results = provider.send_all(pushes_to({"a", "gone", "busy", "b"}));
  REQUIRE(results.size() == 4);
  CHECK(results[0].kind == push_result::status::delivered);
  CHECK(results[1].kind == push_result::status::invalid_token);
  CHECK(results[1].http_status == 410);
  CHECK(results[2].kind == push_result::status::transient);
  CHECK(results[2].retry_after_ms == 6000);
  CHECK(results[3].kind == push_result::status::delivered);
  CHECK(hook.max_in_flight("POST", "/push") == 4);
  std::multiset<std::string> tokens;
  for (const auto& r : hook.requests()) {
    tokens.insert(token_of(r));
    CHECK(r.header("Content-Type") == "application/json");
  }
  CHECK(tokens == std::multiset<std::string>{"a", "gone", "busy", "b"});
  // Downstream metrics count each request.
  CHECK(downstream("webhook", "2xx") == ok_before + 2);
  CHECK(downstream("webhook", "4xx") == gone_before + 1);
  CHECK(downstream("webhook", "5xx") == busy_before + 1);
}

TEST_CASE("the webhook provider reuses its connections from one batch to the next") {
  fake_server hook(30);  // idle connections stay open between the batches
  hook.on("POST", "/push", {200, ""});
  hook.hold("POST", "/push", 3);
  webhook_provider provider(hook.url() + "/push", quick());
  for (int batch = 0; batch < 2; ++batch)
    for (const auto& r : provider.send_all(pushes_to({"a", "b", "c"})))
      CHECK(r.kind == push_result::status::delivered);
  CHECK(provider.send(sample_push()).kind == push_result::status::delivered);
  CHECK(hook.requests().size() == 7);
  CHECK(hook.max_in_flight("POST", "/push") == 3);
  CHECK(hook.connections() == 3);
}

TEST_CASE("the webhook provider keeps at most its connection bound in flight") {
  fake_server hook;
  hook.on("POST", "/push", {200, ""});
  hook.hold("POST", "/push", 2);
  webhook_provider provider(hook.url() + "/push", quick(), 2);
  auto results = provider.send_all(pushes_to({"a", "b", "c", "d", "e"}));
  REQUIRE(results.size() == 5);
  for (const auto& r : results) CHECK(r.kind == push_result::status::delivered);
  CHECK(hook.max_in_flight("POST", "/push") == 2);
}

TEST_CASE("an unreachable webhook fails every push of a batch transiently") {
  webhook_provider provider("http://127.0.0.1:" + std::to_string(klynaa::test::closed_port()) + "/",
                            quick());
  auto results = provider.send_all(pushes_to({"a", "b", "c"}));
  REQUIRE(results.size() == 3);
  for (const auto& r : results) {
    CHECK(r.kind == push_result::status::transient);
    CHECK_FALSE(r.error.empty());
  }
  CHECK(provider.send_all({}).empty());
}

TEST_CASE("the log provider's batch writes one line per push, in order") {
  temp_dir dir;
  log_provider provider(open_outbox(dir));
  auto results = provider.send_all(pushes_to({"t1", "t2", "t3"}));
  REQUIRE(results.size() == 3);
  for (const auto& r : results) CHECK(r.kind == push_result::status::delivered);
  auto lines = klynaa::test::read_lines(dir / "outbox.jsonl");
  REQUIRE(lines.size() == 3);
  CHECK(json::parse(lines[0])["token"] == "t1");
  CHECK(json::parse(lines[2])["token"] == "t3");
}

TEST_CASE("the factory makes log providers that share the data dir's outbox") {
  temp_dir dir;
  klynaa::protocol::config cfg;  // service "log" by default
  std::string data_dir = dir / "nested/data";  // created on demand
  auto made = make_provider(cfg, data_dir);
  REQUIRE(std::holds_alternative<provider_factory>(made));
  auto factory = std::get<provider_factory>(made);
  auto a = factory(), b = factory();
  CHECK(a->name() == "log");
  a->send(sample_push());
  b->send(sample_push());
  CHECK(klynaa::test::read_lines(std::filesystem::path(data_dir) / "outbox.jsonl").size() == 2);
}

TEST_CASE("the factory makes a webhook provider from webhook_url") {
  fake_server hook;
  hook.on("POST", "/hook", {200, ""});
  klynaa::protocol::config cfg;
  cfg.notifications.service = "webhook";
  cfg.notifications.webhook_url = hook.url() + "/hook";
  auto made = make_provider(cfg, "/nonexistent-is-fine-for-webhooks");
  REQUIRE(std::holds_alternative<provider_factory>(made));
  auto provider = std::get<provider_factory>(made)();
  CHECK(provider->name() == "webhook");
  CHECK(provider->send(sample_push()).kind == push_result::status::delivered);
}

TEST_CASE("the factory refuses a webhook without a URL, an unknown service and an unwritable dir") {
  klynaa::protocol::config cfg;
  cfg.notifications.service = "webhook";
  auto no_url = make_provider(cfg, "/tmp");
  REQUIRE(std::holds_alternative<provider_error>(no_url));
  CHECK_THAT(std::get<provider_error>(no_url).message, Catch::Contains("webhook_url"));

  cfg.notifications.service = "pigeon";
  auto unknown = make_provider(cfg, "/tmp");
  REQUIRE(std::holds_alternative<provider_error>(unknown));
  CHECK_THAT(std::get<provider_error>(unknown).message, Catch::Contains("pigeon"));

  temp_dir dir;
  { std::ofstream file(dir / "a-file"); }
  cfg.notifications.service = "log";
  auto unwritable = make_provider(cfg, dir / "a-file");
  REQUIRE(std::holds_alternative<provider_error>(unwritable));
}

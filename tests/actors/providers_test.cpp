// Push providers (contract §6): the log provider's outbox lines, the webhook's
// status mapping, and the factory's choices.
#include "actors/providers.hpp"

#include <regex>
#include <thread>

#include <catch2/catch.hpp>

#include "fake_server.hpp"
#include "scratch_dir.hpp"

using klynaa::actors::log_provider;
using klynaa::actors::make_provider;
using klynaa::actors::outbox_file;
using klynaa::actors::provider_error;
using klynaa::actors::provider_factory;
using klynaa::actors::push;
using klynaa::actors::push_result;
using klynaa::actors::webhook_provider;
using klynaa::test::fake_server;
using klynaa::test::scratch_dir;
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

std::shared_ptr<outbox_file> open_outbox(const scratch_dir& dir) {
  std::string error;
  auto f = outbox_file::open((dir / "outbox.jsonl").string(), error);
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
  scratch_dir dir;
  log_provider provider(open_outbox(dir));
  auto r = provider.send(sample_push());
  CHECK(r.kind == push_result::status::delivered);
  auto p2 = sample_push();
  p2.token = "tok-def";
  CHECK(provider.send(p2).kind == push_result::status::delivered);

  auto lines = klynaa::test::read_lines(dir / "outbox.jsonl");
  REQUIRE(lines.size() == 2);
  // Keys in the contract's order, ts as ISO 8601 UTC with milliseconds.
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
  scratch_dir dir;
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
  scratch_dir dir;
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
  scratch_dir dir;
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

TEST_CASE("the factory makes log providers that share the data dir's outbox") {
  scratch_dir dir;
  klynaa::protocol::config cfg;  // service "log" by default
  std::string data_dir = (dir / "nested" / "data").string();  // created on demand
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

  scratch_dir dir;
  { std::ofstream file(dir / "a-file"); }
  cfg.notifications.service = "log";
  auto unwritable = make_provider(cfg, (dir / "a-file").string());
  REQUIRE(std::holds_alternative<provider_error>(unwritable));
}

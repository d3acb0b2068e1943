// The firebase provider's access token (docs/events-and-functions.md, "Push
// providers") against a fake Google token endpoint: fetched once and shared by a
// node's workers, refreshed before it expires, the RS256 assertion verified with
// PyJWT, and a token endpoint that refuses or fails.
#include "actors/firebase.hpp"

#include <atomic>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <cstdlib>
#include <set>
#include <thread>

#include <catch2/catch.hpp>

#include "actors/http_loop.hpp"
#include "actors/registry.hpp"
#include "nodes/fiber.hpp"
#include "nodes/suspend.hpp"
#include "fake_server.hpp"
#include "firebase_fixture.hpp"
#include "tests/support/temp_dir.hpp"

using klynaa::actors::firebase_provider;
using klynaa::actors::google_token_source;
using klynaa::actors::make_provider;
using klynaa::actors::provider_error;
using klynaa::actors::provider_factory;
using klynaa::actors::push;
using klynaa::actors::push_result;
using klynaa::actors::rs256_key;
using klynaa::actors::service_account;
using klynaa::test::canned;
using klynaa::test::fake_server;
using klynaa::test::recorded_request;
using klynaa::test::temp_dir;
using nlohmann::json;
using namespace firebase_fixture;

TEST_CASE("firebase: one access token is fetched and shared by every push of the node", "[providers]") {
  temp_dir dir;
  fake_server google;
  google.on("POST", "/token", token_answer("ya29.klynaa-test-access-token"));
  google.on("POST", send_path, {200, fcm_ok});
  auto factory = factory_for(firebase_config(google, write_key_file(dir, key_file_json("unused"))));
  auto a = factory(), b = factory();
  CHECK(a->name() == "firebase");
  CHECK(a->send(sample_push()).kind == push_result::status::delivered);
  CHECK(b->send(sample_push("fcm-token-2")).kind == push_result::status::delivered);
  CHECK(a->send(sample_push("fcm-token-3")).kind == push_result::status::delivered);

  auto token_reqs = google.requests_to("POST", "/token");
  REQUIRE(token_reqs.size() == 1);
  CHECK(token_reqs[0].header("Content-Type") == "application/x-www-form-urlencoded");
  CHECK_THAT(token_reqs[0].body,
             Catch::StartsWith("grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer"
                               "&assertion=ey"));

  auto sends = google.requests_to("POST", send_path);
  REQUIRE(sends.size() == 3);
  for (const auto& s : sends) {
    CHECK(s.header("Authorization") == "Bearer ya29.klynaa-test-access-token");
    CHECK_THAT(s.header("Content-Type"), Catch::StartsWith("application/json"));
  }
  auto body = json::parse(sends[0].body);
  CHECK(body == json{{"message",
                      {{"token", "fcm-token-1"},
                       {"notification",
                        {{"title", "Pickup accepted"}, {"body", "A worker accepted your pickup #7."}}},
                       {"data",
                        {{"pickup_id", "7"},
                         {"notification_type", "pickup_accepted"},
                         {"job_id", "evt-3#1"}}}}}});
  CHECK(token_of(sends[1]) == "fcm-token-2");
}

TEST_CASE("firebase: the RS256 assertion verifies with PyJWT and carries the service-account claims",
          "[providers]") {
  temp_dir dir;
  fake_server google;
  google.on("POST", "/token", token_answer("ya29.jwt-check"));
  google.on("POST", send_path, {200, fcm_ok});
  std::string audience = google.url() + "/token";
  auto provider = factory_for(firebase_config(google, write_key_file(dir, key_file_json("unused"))))();
  int64_t before = now_s();
  REQUIRE(provider->send(sample_push()).kind == push_result::status::delivered);
  auto token_reqs = google.requests_to("POST", "/token");
  REQUIRE(token_reqs.size() == 1);
  std::string assertion = assertion_of(token_reqs[0]);

  auto verified = verify_with_pyjwt(assertion, key().public_pem, audience);
  INFO(verified.dump());
  REQUIRE(verified["valid"] == true);
  CHECK(verified["header"] == json{{"alg", "RS256"}, {"typ", "JWT"}});
  const json& claims = verified["claims"];
  CHECK(claims["iss"] == client_email);
  CHECK(claims["scope"] == "https://www.googleapis.com/auth/firebase.messaging");
  CHECK(claims["aud"] == audience);
  CHECK(claims["iat"].get<int64_t>() >= before - 1);
  CHECK(claims["iat"].get<int64_t>() <= now_s() + 1);
  CHECK(claims["exp"].get<int64_t>() - claims["iat"].get<int64_t>() == 3600);
  CHECK(claims.size() == 5);

  // The check is not vacuous: a changed signature, another key or another
  // audience are refused.
  std::string tampered = assertion;
  char& last = tampered[tampered.size() - 2];
  last = last == 'A' ? 'B' : 'A';
  CHECK(verify_with_pyjwt(tampered, key().public_pem, audience)["valid"] == false);
  auto other = generate_key();
  CHECK(verify_with_pyjwt(assertion, other.public_pem, audience)["valid"] == false);
  CHECK(verify_with_pyjwt(assertion, key().public_pem, "https://oauth2.googleapis.com/token")["valid"] ==
        false);
}

TEST_CASE("firebase: the key file's token_uri is used when firebase_token_url is empty", "[providers]") {
  temp_dir dir;
  fake_server google;
  google.on("POST", "/o/token", token_answer("ya29.from-token-uri"));
  google.on("POST", send_path, {200, fcm_ok});
  auto key_json = key_file_json(google.url() + "/o/token");
  auto cfg = firebase_config(google, write_key_file(dir, key_json));
  cfg.notifications.firebase_token_url = "";
  CHECK(factory_for(cfg)()->send(sample_push()).kind == push_result::status::delivered);
  auto token_reqs = google.requests_to("POST", "/o/token");
  REQUIRE(token_reqs.size() == 1);
  auto verified = verify_with_pyjwt(assertion_of(token_reqs[0]), key().public_pem, google.url() + "/o/token");
  CHECK(verified["valid"] == true);
}

TEST_CASE("firebase: many worker threads wait for one token fetch", "[providers]") {
  temp_dir dir;
  fake_server google;
  google.on("POST", "/token", canned{200, token_answer("ya29.shared").body, {}, 200});
  google.on("POST", send_path, {200, fcm_ok});
  auto factory = factory_for(firebase_config(google, write_key_file(dir, key_file_json("unused"))));
  constexpr int threads = 6, per_thread = 4;
  std::atomic<int> delivered{0};
  std::vector<std::thread> workers;
  for (int t = 0; t < threads; ++t)
    workers.emplace_back([&, t] {
      auto provider = factory();  // one provider per worker, one token source per node
      for (int i = 0; i < per_thread; ++i)
        if (provider->send(sample_push("tok-" + std::to_string(t) + "-" + std::to_string(i))).kind ==
            push_result::status::delivered)
          ++delivered;
    });
  for (auto& w : workers) w.join();
  CHECK(delivered == threads * per_thread);
  CHECK(google.requests_to("POST", "/token").size() == 1);
  for (const auto& s : google.requests_to("POST", send_path))
    CHECK(s.header("Authorization") == "Bearer ya29.shared");
}

TEST_CASE("firebase: the access token is fetched again shortly before it expires", "[providers]") {
  fake_server google;
  google.on_sequence("POST", "/token",
                     {token_answer("ya29.one", 3600), token_answer("ya29.two", 60),
                      token_answer("ya29.three", 3600)});
  std::string error;
  auto k = rs256_key::from_pem(key().private_pem, error);
  REQUIRE(k);
  service_account account{client_email, key().private_pem, "", "klynaa-test"};
  auto clock = std::make_shared<std::atomic<int64_t>>(1'700'000'000'000);
  klynaa::actors::http_options opts;
  opts.timeout_ms = 3000;
  google_token_source tokens(account, k, google.url() + "/token", opts, [clock] { return clock->load(); });

  CHECK(tokens.get().token == "ya29.one");
  // expires_in 3600: refreshed 300 s early.
  *clock += 3299'000;
  CHECK(tokens.get().token == "ya29.one");
  CHECK(tokens.fetches() == 1);
  *clock += 1'000;
  CHECK(tokens.get().token == "ya29.two");
  // expires_in 60: refreshed at half its life.
  *clock += 29'000;
  CHECK(tokens.get().token == "ya29.two");
  *clock += 1'000;
  CHECK(tokens.get().token == "ya29.three");
  CHECK(tokens.fetches() == 3);

  // invalidate() forgets only the token it names.
  tokens.invalidate("ya29.one");
  CHECK(tokens.get().token == "ya29.three");
  CHECK(tokens.fetches() == 3);
}

TEST_CASE("firebase: a token endpoint that fails fails every push of the batch, with no send",
          "[providers]") {
  temp_dir dir;
  fake_server google;
  google.on("POST", "/token", {503, "", {{"Retry-After", "5"}}});
  auto provider = factory_for(firebase_config(google, write_key_file(dir, key_file_json("unused"))))();
  auto results = provider->send_all({sample_push("a"), sample_push("b")});
  REQUIRE(results.size() == 2);
  for (const auto& r : results) {
    CHECK(r.kind == push_result::status::transient);
    CHECK(r.retry_after_ms == 5000);
  }
  CHECK(google.requests_to("POST", "/token").size() == 1);
  CHECK(google.requests_to("POST", send_path).empty());
  CHECK(provider->send_all({}).empty());
}

TEST_CASE("firebase: a refusing token endpoint is permanent and an unavailable one transient",
          "[providers]") {
  temp_dir dir;
  std::string key_path = write_key_file(dir, key_file_json("unused"));
  {
    fake_server google;
    google.on("POST", "/token",
              {400, R"({"error": "invalid_grant", "error_description": "Invalid JWT Signature."})"});
    auto r = factory_for(firebase_config(google, key_path))()->send(sample_push());
    CHECK(r.kind == push_result::status::permanent);
    CHECK(r.http_status == 400);
    CHECK_THAT(r.error, Catch::Contains("GOOGLE_APPLICATION_CREDENTIALS") &&
                            Catch::Contains("invalid_grant: Invalid JWT Signature."));
    CHECK(google.requests_to("POST", send_path).empty());
  }
  {
    fake_server google;
    google.on("POST", "/token", {503, "", {{"Retry-After", "5"}}});
    auto r = factory_for(firebase_config(google, key_path))()->send(sample_push());
    CHECK(r.kind == push_result::status::transient);
    CHECK(r.retry_after_ms == 5000);
    CHECK(google.requests_to("POST", send_path).empty());
  }
  {
    fake_server google;
    google.on("POST", "/token", {200, "<html>proxy error</html>"});
    auto r = factory_for(firebase_config(google, key_path))()->send(sample_push());
    CHECK(r.kind == push_result::status::transient);
  }
  {
    fake_server google;
    auto cfg = firebase_config(google, key_path);
    cfg.notifications.firebase_token_url =
        "http://127.0.0.1:" + std::to_string(klynaa::test::closed_port()) + "/token";
    CHECK(factory_for(cfg)()->send(sample_push()).kind == push_result::status::transient);
  }
}

TEST_CASE("firebase: job fibers that need a token at once wait for one fetch, made through the event loop",
          "[providers]") {
  using klynaa::nodes::fiber;
  using klynaa::nodes::job_fiber_context;
  using klynaa::nodes::job_fiber_scope;
  fake_server google;
  google.on("POST", "/token", canned{200, json{{"access_token", "ya29.fiber"}, {"expires_in", 3599}}.dump(), {}, 300});
  std::string error;
  auto k = rs256_key::from_pem(key().private_pem, error);
  REQUIRE(k);
  service_account account{client_email, key().private_pem, "", "klynaa-test"};
  auto loop = std::make_shared<klynaa::actors::http_loop>();
  klynaa::actors::http_options opts;
  opts.timeout_ms = 5000;
  opts.loop = loop;
  google_token_source tokens(account, k, google.url() + "/token", opts);

  // 20 job fibers, resumed on this one thread as their waits end.
  const int n = 20;
  std::mutex m;
  std::condition_variable woken;
  std::deque<int> ready;
  std::vector<job_fiber_context> jobs(n);
  std::vector<std::unique_ptr<fiber>> fibers;
  std::vector<std::string> got(n);
  for (int i = 0; i < n; ++i) {
    jobs[i].function = "sendPickupNotification";
    jobs[i].post_resume = [&, i] {
      std::lock_guard<std::mutex> lock(m);
      ready.push_back(i);
      woken.notify_one();
    };
    fibers.push_back(std::make_unique<fiber>([&, i] { got[i] = tokens.get().token; }));
  }
  for (int i = 0; i < n; ++i) {
    job_fiber_scope scope(&jobs[i]);
    fibers[i]->resume();
  }
  // The token endpoint answers after 300 ms: every fiber is waiting, none
  // blocked this thread (a blocking fetch would have finished the first).
  for (int i = 0; i < n; ++i) CHECK(!fibers[i]->done());
  CHECK(loop->snapshot().submitted == 1);
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  int finished = 0;
  while (finished < n && std::chrono::steady_clock::now() < deadline) {
    int i;
    {
      std::unique_lock<std::mutex> lock(m);
      if (!woken.wait_until(lock, deadline, [&] { return !ready.empty(); })) break;
      i = ready.front();
      ready.pop_front();
    }
    if (fibers[i]->done()) continue;
    job_fiber_scope scope(&jobs[i]);
    fibers[i]->resume();
    if (fibers[i]->done()) ++finished;
  }
  REQUIRE(finished == n);
  for (const auto& t : got) CHECK(t == "ya29.fiber");
  CHECK(tokens.fetches() == 1);
  CHECK(google.requests_to("POST", "/token").size() == 1);
}

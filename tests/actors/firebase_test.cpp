// The firebase provider (docs/events-and-functions.md, "Push providers") against
// a fake FCM: the FCM v1 message, the answers mapped to push results, the 401
// refresh, batches, and the credentials file's errors. The access token has its
// own file (firebase_token_test.cpp); the fixture (firebase_fixture.hpp) makes
// the RSA key at run time: no key is committed.
#include "actors/firebase.hpp"

#include <atomic>
#include <cstdlib>
#include <set>
#include <thread>

#include <catch2/catch.hpp>

#include "actors/registry.hpp"
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

TEST_CASE("firebase: UNREGISTERED and an invalid registration token mean an invalid token",
          "[providers]") {
  temp_dir dir;
  fake_server google;
  google.on("POST", "/token", token_answer("ya29.t"));
  google.on("POST", send_path, [](const recorded_request& r) -> canned {
    std::string t = token_of(r);
    if (t == "unregistered")
      return {404, fcm_error(404, "NOT_FOUND", "Requested entity was not found.", fcm_code("UNREGISTERED"))};
    if (t == "malformed") {
      json details = fcm_code("INVALID_ARGUMENT");
      details.push_back({{"@type", "type.googleapis.com/google.rpc.BadRequest"},
                         {"fieldViolations",
                          {{{"field", "message.token"},
                            {"description", "Invalid registration token"}}}}});
      return {400, fcm_error(400, "INVALID_ARGUMENT",
                             "The registration token is not a valid FCM registration token", details)};
    }
    return {400, fcm_error(400, "INVALID_ARGUMENT", "Invalid value at 'message.data[0].value'",
                           fcm_code("INVALID_ARGUMENT"))};
  });
  auto provider = factory_for(firebase_config(google, write_key_file(dir, key_file_json("unused"))))();
  auto gone = provider->send(sample_push("unregistered"));
  CHECK(gone.kind == push_result::status::invalid_token);
  CHECK(gone.http_status == 404);
  CHECK_THAT(gone.error, Catch::Contains("UNREGISTERED"));
  CHECK(provider->send(sample_push("malformed")).kind == push_result::status::invalid_token);
  auto other = provider->send(sample_push("fine-token"));
  CHECK(other.kind == push_result::status::permanent);
  CHECK_THAT(other.error, Catch::Contains("message.data"));
}

TEST_CASE("firebase: a 404 that is not FCM's is permanent, never an invalid token", "[providers]") {
  temp_dir dir;
  fake_server google;  // answers unscripted paths with a non-FCM 404 body
  google.on("POST", "/token", token_answer("ya29.t"));
  auto cfg = firebase_config(google, write_key_file(dir, key_file_json("unused")));
  cfg.notifications.firebase_project = "wrong-project";
  auto r = factory_for(cfg)()->send(sample_push());
  CHECK(r.kind == push_result::status::permanent);
  CHECK_THAT(r.error, Catch::Contains("firebase_url"));
  REQUIRE(google.requests_to("POST", "/v1/projects/wrong-project/messages:send").size() == 1);
}

TEST_CASE("firebase: FCM's NOT_FOUND without UNREGISTERED (a wrong project) is permanent, not an invalid token",
          "[providers]") {
  temp_dir dir;
  fake_server google;
  google.on("POST", "/token", token_answer("ya29.t"));
  google.on("POST", send_path, [](const recorded_request&) -> canned {
    return {404, fcm_error(404, "NOT_FOUND", "Requested entity was not found.", json::array())};
  });
  auto r = factory_for(firebase_config(google, write_key_file(dir, key_file_json("unused"))))()->send(sample_push());
  CHECK(r.kind == push_result::status::permanent);
  CHECK_THAT(r.error, Catch::Contains("firebase_project"));
}

TEST_CASE("firebase: a 401 fetches a new access token and sends once more", "[providers]") {
  temp_dir dir;
  std::atomic<bool> accept_fresh{true};  // before the server: its handler reads it
  fake_server google;
  google.on_sequence("POST", "/token",
                     {token_answer("ya29.revoked"), token_answer("ya29.fresh"),
                      token_answer("ya29.later")});
  google.on("POST", send_path, [&accept_fresh](const recorded_request& r) -> canned {
    if (accept_fresh && r.header("Authorization") == "Bearer ya29.fresh") return {200, fcm_ok};
    return {401, fcm_error(401, "UNAUTHENTICATED", "Request had invalid authentication credentials.",
                           json::array())};
  });
  auto provider = factory_for(firebase_config(google, write_key_file(dir, key_file_json("unused"))))();
  CHECK(provider->send(sample_push()).kind == push_result::status::delivered);
  CHECK(google.requests_to("POST", "/token").size() == 2);
  auto sends = google.requests_to("POST", send_path);
  REQUIRE(sends.size() == 2);
  CHECK(sends[0].header("Authorization") == "Bearer ya29.revoked");
  CHECK(sends[1].header("Authorization") == "Bearer ya29.fresh");

  // FCM keeps refusing: one refresh, one more try, then transient.
  accept_fresh = false;
  auto r = provider->send(sample_push());
  CHECK(r.kind == push_result::status::transient);
  CHECK(r.http_status == 401);
  CHECK(google.requests_to("POST", "/token").size() == 3);
  CHECK(google.requests_to("POST", send_path).size() == 4);
  CHECK_THAT(r.error, !Catch::Contains("ya29."));
}

TEST_CASE("firebase: the pushes of a batch go out concurrently after one token fetch, over reused connections",
          "[providers]") {
  temp_dir dir;
  fake_server google(30);  // idle connections stay open between the batches
  google.on("POST", "/token", token_answer("ya29.batch"));
  google.on("POST", send_path, [](const recorded_request& r) -> canned {
    if (token_of(r) == "gone")
      return {404, fcm_error(404, "NOT_FOUND", "Requested entity was not found.", fcm_code("UNREGISTERED"))};
    return {200, fcm_ok};
  });
  google.hold("POST", send_path, 4);  // nothing is answered until all four are in flight
  auto provider = factory_for(firebase_config(google, write_key_file(dir, key_file_json("unused"))))();
  uint64_t before = klynaa::actors::downstream_counts()[{"firebase", "2xx"}];

  std::vector<push> batch{sample_push("a"), sample_push("gone"), sample_push("b"), sample_push("c")};
  auto results = provider->send_all(batch);
  REQUIRE(results.size() == 4);
  CHECK(results[0].kind == push_result::status::delivered);
  CHECK(results[1].kind == push_result::status::invalid_token);
  CHECK(results[2].kind == push_result::status::delivered);
  CHECK(results[3].kind == push_result::status::delivered);
  CHECK(google.max_in_flight("POST", send_path) == 4);

  batch[1] = sample_push("d");
  for (const auto& r : provider->send_all(batch)) CHECK(r.kind == push_result::status::delivered);
  auto sends = google.requests_to("POST", send_path);
  CHECK(sends.size() == 8);
  for (const auto& s : sends) CHECK(s.header("Authorization") == "Bearer ya29.batch");
  CHECK(google.requests_to("POST", "/token").size() == 1);
  CHECK(google.connections("POST", send_path) == 4);
  CHECK(klynaa::actors::downstream_counts()[{"firebase", "2xx"}] == before + 7);
}

TEST_CASE("firebase: a 401 in a batch fetches one new token and resends only the refused pushes",
          "[providers]") {
  temp_dir dir;
  fake_server google;
  google.on_sequence("POST", "/token", {token_answer("ya29.revoked"), token_answer("ya29.fresh")});
  // The revoked token still works for the pushes to "ok-…" (FCM answered them
  // before it noticed); the others get 401 until the fresh token comes.
  google.on("POST", send_path, [](const recorded_request& r) -> canned {
    if (r.header("Authorization") == "Bearer ya29.fresh" || token_of(r).rfind("ok-", 0) == 0)
      return {200, fcm_ok};
    return {401, fcm_error(401, "UNAUTHENTICATED", "Request had invalid authentication credentials.",
                           json::array())};
  });
  google.hold("POST", send_path, 4);
  auto provider = factory_for(firebase_config(google, write_key_file(dir, key_file_json("unused"))))();
  auto results = provider->send_all({sample_push("ok-1"), sample_push("r-1"), sample_push("ok-2"),
                                     sample_push("r-2")});
  REQUIRE(results.size() == 4);
  for (const auto& r : results) CHECK(r.kind == push_result::status::delivered);
  CHECK(google.max_in_flight("POST", send_path) == 4);
  CHECK(google.requests_to("POST", "/token").size() == 2);
  auto sends = google.requests_to("POST", send_path);
  REQUIRE(sends.size() == 6);
  std::multiset<std::string> resent;
  for (const auto& s : sends)
    if (s.header("Authorization") == "Bearer ya29.fresh") resent.insert(token_of(s));
  CHECK(resent == std::multiset<std::string>{"r-1", "r-2"});
}

TEST_CASE("firebase: FCM's 503 and 429 are transient with Retry-After, 403 is permanent", "[providers]") {
  temp_dir dir;
  fake_server google;
  google.on("POST", "/token", token_answer("ya29.t"));
  google.on("POST", send_path, [](const recorded_request& r) -> canned {
    std::string t = token_of(r);
    if (t == "busy")
      return {503, fcm_error(503, "UNAVAILABLE", "The service is unavailable.", fcm_code("UNAVAILABLE")),
              {{"Retry-After", "7"}}};
    if (t == "quota")
      return {429, fcm_error(429, "RESOURCE_EXHAUSTED", "Quota exceeded.", fcm_code("QUOTA_EXCEEDED")),
              {{"Retry-After", "30"}}};
    if (t == "broken") return {500, fcm_error(500, "INTERNAL", "Internal error.", fcm_code("INTERNAL"))};
    return {403, fcm_error(403, "PERMISSION_DENIED", "SenderId mismatch", fcm_code("SENDER_ID_MISMATCH"))};
  });
  auto provider = factory_for(firebase_config(google, write_key_file(dir, key_file_json("unused"))))();
  auto busy = provider->send(sample_push("busy"));
  CHECK(busy.kind == push_result::status::transient);
  CHECK(busy.retry_after_ms == 7000);
  auto quota = provider->send(sample_push("quota"));
  CHECK(quota.kind == push_result::status::transient);
  CHECK(quota.retry_after_ms == 30000);
  CHECK(provider->send(sample_push("broken")).kind == push_result::status::transient);
  auto mismatch = provider->send(sample_push("other-project"));
  CHECK(mismatch.kind == push_result::status::permanent);
  CHECK_THAT(mismatch.error, Catch::Contains("SENDER_ID_MISMATCH"));
  CHECK(google.requests_to("POST", "/token").size() == 1);
}

TEST_CASE("firebase: a bad credentials file is a config error naming GOOGLE_APPLICATION_CREDENTIALS",
          "[providers]") {
  temp_dir dir;
  fake_server google;
  auto good = key_file_json("unused");
  auto without = [&](const char* field) {
    json j = good;
    j.erase(field);
    return j;
  };
  json bad_pem = good;
  bad_pem["private_key"] = "-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n";
  json encrypted = good;
  encrypted["private_key"] = key().encrypted_pem;
  json user_creds = good;
  user_creds["type"] = "authorized_user";
  { std::ofstream(dir / "not-json.json") << "client_email = nope\n"; }

  std::vector<std::pair<std::string, std::string>> cases = {
      {"", "is not set"},
      {dir / "missing.json", "cannot read"},
      {dir / "not-json.json", "not a JSON object"},
      {write_key_file(dir, without("client_email"), "no-email.json"), "client_email"},
      {write_key_file(dir, without("private_key"), "no-key.json"), "private_key"},
      {write_key_file(dir, bad_pem, "bad-pem.json"), "PEM RSA private key"},
      {write_key_file(dir, encrypted, "encrypted.json"), "PEM RSA private key"},
      {write_key_file(dir, user_creds, "user.json"), "authorized_user"},
  };
  for (const auto& [path, why] : cases) {
    INFO(path);
    auto cfg = firebase_config(google, path);
    if (path.empty()) cfg.env.erase("GOOGLE_APPLICATION_CREDENTIALS");
    auto made = make_provider(cfg, dir.path);
    REQUIRE(std::holds_alternative<provider_error>(made));
    const std::string& message = std::get<provider_error>(made).message;
    CHECK_THAT(message, Catch::Contains("GOOGLE_APPLICATION_CREDENTIALS") && Catch::Contains(why));
    CHECK_THAT(message, !Catch::Contains("PRIVATE KEY") && !Catch::Contains("bm90IGEga2V5"));
    // The same message stops `klynaa run` at start (exit 2) through the check path.
    auto problem = klynaa::actors::check_actor_config(cfg, dir.path, {"notifier"});
    REQUIRE(problem);
    CHECK(*problem == message);
  }

  // No project anywhere: named too.
  auto cfg = firebase_config(google, write_key_file(dir, without("project_id"), "no-project.json"));
  auto no_project = make_provider(cfg, dir.path);
  REQUIRE(std::holds_alternative<provider_error>(no_project));
  CHECK_THAT(std::get<provider_error>(no_project).message, Catch::Contains("firebase_project"));
  cfg.notifications.firebase_project = "klynaa-test";
  CHECK(std::holds_alternative<provider_factory>(make_provider(cfg, dir.path)));
}

TEST_CASE("firebase: FCM data values are strings and reserved keys are left out", "[providers]") {
  auto p = sample_push();
  p.data = {{"pickup_id", 7},     {"amount", 12.5},   {"urgent", true}, {"tags", {"a", "b"}},
            {"reason", "late"},   {"nothing", nullptr}, {"from", "x"},   {"google.c.a", "y"},
            {"gcm.n", "z"},       {"message_type", "q"}};
  auto data = klynaa::actors::fcm_request(p)["message"]["data"];
  CHECK(data == json{{"pickup_id", "7"},
                     {"amount", "12.5"},
                     {"urgent", "true"},
                     {"tags", R"(["a","b"])"},
                     {"reason", "late"},
                     {"job_id", "evt-3#1"},
                     {"notification_type", "pickup_accepted"}});
}

TEST_CASE("firebase: base64url has no padding and the URL-safe alphabet", "[providers]") {
  using klynaa::actors::base64url;
  CHECK(base64url("") == "");
  CHECK(base64url("f") == "Zg");
  CHECK(base64url("fo") == "Zm8");
  CHECK(base64url("foo") == "Zm9v");
  CHECK(base64url("foob") == "Zm9vYg");
  CHECK(base64url(std::string("\xfb\xff\xbf", 3)) == "-_-_");
  CHECK(base64url(R"({"alg":"RS256","typ":"JWT"})") == "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9");
}

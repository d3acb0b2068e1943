// The firebase provider (contract §6) against a fake token endpoint and a fake
// FCM: the access token fetched once and shared, the FCM v1 message, the answers
// mapped to push results, the 401 refresh, and the credentials file's errors.
// The RS256 assertion is verified independently with PyJWT (Debian's
// python3-jwt, tests/actors/jwt_reference.py) against the public key.
//
// The RSA key is generated here, at run time; no key is committed.
#include "actors/firebase.hpp"

#include <atomic>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <cstdlib>
#include <set>
#include <thread>

#include <catch2/catch.hpp>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>

#include "actors/http_loop.hpp"
#include "actors/registry.hpp"
#include "nodes/fiber.hpp"
#include "nodes/suspend.hpp"
#include "fake_server.hpp"
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

namespace {

const std::string client_email = "klynaa-jobs@klynaa-test.iam.gserviceaccount.com";
const std::string send_path = "/v1/projects/klynaa-test/messages:send";

struct test_key {
  std::string private_pem;  // PKCS#8, as in Google's key files
  std::string public_pem;
  std::string encrypted_pem;
};

std::string bio_text(BIO* bio) {
  char* data = nullptr;
  long n = BIO_get_mem_data(bio, &data);
  std::string out(data, static_cast<size_t>(n));
  BIO_free(bio);
  return out;
}

test_key generate_key() {
  EVP_PKEY* pkey = EVP_RSA_gen(2048);
  REQUIRE(pkey != nullptr);
  test_key k;
  BIO* priv = BIO_new(BIO_s_mem());
  REQUIRE(PEM_write_bio_PrivateKey(priv, pkey, nullptr, nullptr, 0, nullptr, nullptr) == 1);
  k.private_pem = bio_text(priv);
  BIO* pub = BIO_new(BIO_s_mem());
  REQUIRE(PEM_write_bio_PUBKEY(pub, pkey) == 1);
  k.public_pem = bio_text(pub);
  BIO* enc = BIO_new(BIO_s_mem());
  char pass[] = "klynaa-test-passphrase";
  REQUIRE(PEM_write_bio_PrivateKey(enc, pkey, EVP_aes_256_cbc(), nullptr, 0, nullptr, pass) == 1);
  k.encrypted_pem = bio_text(enc);
  EVP_PKEY_free(pkey);
  return k;
}

/// One key for the whole run (2048-bit generation is slow under sanitizers).
const test_key& key() {
  static const test_key k = generate_key();
  return k;
}

json key_file_json(const std::string& token_uri) {
  return {{"type", "service_account"},
          {"project_id", "klynaa-test"},
          {"private_key_id", "0000000000000000000000000000000000000000"},
          {"private_key", key().private_pem},
          {"client_email", client_email},
          {"client_id", "100000000000000000000"},
          {"auth_uri", "https://accounts.google.com/o/oauth2/auth"},
          {"token_uri", token_uri}};
}

std::string write_key_file(const temp_dir& dir, const json& j, const std::string& name = "sa.json") {
  std::ofstream(dir / name) << j.dump(2);
  return dir / name;
}

klynaa::protocol::config firebase_config(const fake_server& google, const std::string& key_path) {
  klynaa::protocol::config cfg;
  cfg.django.url = "http://127.0.0.1:1";  // check_actor_config wants one; never called here
  cfg.django.connect_timeout_ms = 1000;
  cfg.django.timeout_ms = 3000;
  cfg.notifications.service = "firebase";
  cfg.notifications.firebase_url = google.url();
  cfg.notifications.firebase_token_url = google.url() + "/token";
  cfg.env["GOOGLE_APPLICATION_CREDENTIALS"] = key_path;
  return cfg;
}

canned token_answer(const std::string& token, int expires_in = 3599) {
  return {200, json{{"access_token", token}, {"expires_in", expires_in}, {"token_type", "Bearer"}}.dump()};
}

const std::string fcm_ok = R"({"name": "projects/klynaa-test/messages/0:1700000000000000%abc"})";

std::string fcm_error(int code, const std::string& status, const std::string& message,
                      const json& details) {
  return json{{"error", {{"code", code}, {"message", message}, {"status", status}, {"details", details}}}}
      .dump();
}

json fcm_code(const std::string& error_code) {
  return json::array({{{"@type", "type.googleapis.com/google.firebase.fcm.v1.FcmError"},
                       {"errorCode", error_code}}});
}

push sample_push(const std::string& token = "fcm-token-1") {
  push p;
  p.job_id = "evt-3#1";
  p.user_id = 42;
  p.token = token;
  p.platform = "android";
  p.notification_type = "pickup_accepted";
  p.title = "Pickup accepted";
  p.body = "A worker accepted your pickup #7.";
  p.data = {{"pickup_id", 7}, {"notification_type", "pickup_accepted"}};
  return p;
}

/// The FCM token a send carried.
std::string token_of(const recorded_request& r) {
  auto j = json::parse(r.body, nullptr, false);
  return j.is_discarded() ? "" : j["message"].value("token", "");
}

provider_factory factory_for(const klynaa::protocol::config& cfg) {
  auto made = make_provider(cfg, "/nonexistent-is-fine-for-firebase");
  if (auto* err = std::get_if<provider_error>(&made)) FAIL(err->message);
  return std::get<provider_factory>(made);
}

/// The form field `assertion` of a token request (base64url and dots: never encoded).
std::string assertion_of(const recorded_request& r) {
  auto pos = r.body.find("assertion=");
  REQUIRE(pos != std::string::npos);
  return r.body.substr(pos + 10, r.body.find('&', pos) - pos - 10);
}

json verify_with_pyjwt(const std::string& assertion, const std::string& public_pem,
                       const std::string& audience) {
  temp_dir dir;
  json input = {{"assertion", assertion}, {"public_key_pem", public_pem}, {"audience", audience},
                {"issuer", client_email}};
  { std::ofstream(dir / "in.json") << input.dump(); }
  std::string command = "timeout 60 /usr/bin/python3 " KLYNAA_SOURCE_DIR
                        "/tests/actors/jwt_reference.py < " + dir / "in.json" + " > " +
                        dir / "out.json" + " 2> " + dir / "err.txt";
  int rc = std::system(command.c_str());
  INFO(klynaa::test::read_file(dir / "err.txt"));
  REQUIRE(rc == 0);
  auto out = json::parse(klynaa::test::read_file(dir / "out.json"), nullptr, false);
  REQUIRE_FALSE(out.is_discarded());
  return out;
}

int64_t now_s() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

}  // namespace

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

// What the firebase provider's tests share (firebase_test.cpp,
// firebase_token_test.cpp): an RSA key generated at run time (no key is
// committed), the service-account file, the config pointing at a fake Google
// (token endpoint and FCM), canned FCM answers, and the RS256 assertion checked
// independently with PyJWT (Debian's python3-jwt, tests/actors/jwt_reference.py).
#pragma once

#include "actors/firebase.hpp"

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <string>

#include <catch2/catch.hpp>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>

#include "actors/providers.hpp"
#include "fake_server.hpp"
#include "tests/support/temp_dir.hpp"

namespace firebase_fixture {

using klynaa::actors::make_provider;
using klynaa::actors::provider_error;
using klynaa::actors::provider_factory;
using klynaa::actors::push;
using klynaa::test::canned;
using klynaa::test::fake_server;
using klynaa::test::recorded_request;
using klynaa::test::temp_dir;
using nlohmann::json;

inline const std::string client_email = "klynaa-jobs@klynaa-test.iam.gserviceaccount.com";
inline const std::string send_path = "/v1/projects/klynaa-test/messages:send";

struct test_key {
  std::string private_pem;  // PKCS#8, as in Google's key files
  std::string public_pem;
  std::string encrypted_pem;
};

inline std::string bio_text(BIO* bio) {
  char* data = nullptr;
  long n = BIO_get_mem_data(bio, &data);
  std::string out(data, static_cast<size_t>(n));
  BIO_free(bio);
  return out;
}

inline test_key generate_key() {
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
inline const test_key& key() {
  static const test_key k = generate_key();
  return k;
}

inline json key_file_json(const std::string& token_uri) {
  return {{"type", "service_account"},
          {"project_id", "klynaa-test"},
          {"private_key_id", "0000000000000000000000000000000000000000"},
          {"private_key", key().private_pem},
          {"client_email", client_email},
          {"client_id", "100000000000000000000"},
          {"auth_uri", "https://accounts.google.com/o/oauth2/auth"},
          {"token_uri", token_uri}};
}

inline std::string write_key_file(const temp_dir& dir, const json& j, const std::string& name = "sa.json") {
  std::ofstream(dir / name) << j.dump(2);
  return dir / name;
}

inline klynaa::protocol::config firebase_config(const fake_server& google, const std::string& key_path) {
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

inline canned token_answer(const std::string& token, int expires_in = 3599) {
  return {200, json{{"access_token", token}, {"expires_in", expires_in}, {"token_type", "Bearer"}}.dump()};
}

inline const std::string fcm_ok = R"({"name": "projects/klynaa-test/messages/0:1700000000000000%abc"})";

inline std::string fcm_error(int code, const std::string& status, const std::string& message,
                             const json& details) {
  return json{{"error", {{"code", code}, {"message", message}, {"status", status}, {"details", details}}}}
      .dump();
}

inline json fcm_code(const std::string& error_code) {
  return json::array({{{"@type", "type.googleapis.com/google.firebase.fcm.v1.FcmError"},
                       {"errorCode", error_code}}});
}

inline push sample_push(const std::string& token = "fcm-token-1") {
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
inline std::string token_of(const recorded_request& r) {
  auto j = json::parse(r.body, nullptr, false);
  return j.is_discarded() ? "" : j["message"].value("token", "");
}

inline provider_factory factory_for(const klynaa::protocol::config& cfg) {
  auto made = make_provider(cfg, "/nonexistent-is-fine-for-firebase");
  if (auto* err = std::get_if<provider_error>(&made)) FAIL(err->message);
  return std::get<provider_factory>(made);
}

/// The form field `assertion` of a token request (base64url and dots: never encoded).
inline std::string assertion_of(const recorded_request& r) {
  auto pos = r.body.find("assertion=");
  REQUIRE(pos != std::string::npos);
  return r.body.substr(pos + 10, r.body.find('&', pos) - pos - 10);
}

inline json verify_with_pyjwt(const std::string& assertion, const std::string& public_pem,
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

inline int64_t now_s() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

}  // namespace firebase_fixture

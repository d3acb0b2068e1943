// processEscrowRelease (docs/events-and-functions.md) against a fake Django.
#include "actors/escrow.hpp"

#include <catch2/catch.hpp>

#include "fake_server.hpp"

using klynaa::actors::django_client;
using klynaa::actors::escrow_handler;
using klynaa::nodes::job;
using klynaa::nodes::outcome;
using klynaa::test::canned;
using klynaa::test::fake_server;
using nlohmann::json;

namespace {

const char* release_path = "/api/serverless/escrow/7/release/";

struct fixture {
  fake_server django;
  escrow_handler handler;

  fixture() : handler(make_client(django.url())) {}

  static std::unique_ptr<django_client> make_client(const std::string& url) {
    klynaa::protocol::config::django_section d;
    d.url = url;
    d.api_key = "escrow-test-key";
    d.connect_timeout_ms = 1000;
    d.timeout_ms = 3000;
    return std::make_unique<django_client>(d);
  }

  klynaa::nodes::job_result run(json data) {
    job j;
    j.id = "evt-3#1";
    j.function = "processEscrowRelease";
    j.data = std::move(data);
    return handler.run(j);
  }
};

void check_child(const klynaa::nodes::job_result& r) {
  REQUIRE(r.children.size() == 1);
  const auto& c = r.children[0];
  CHECK(c.id == "#escrow-released-7");
  CHECK(c.function == "sendPickupNotification");
  CHECK(c.data == json{{"pickup_id", 7}, {"notification_type", "escrow_released"}, {"user_type", "worker"}});
  CHECK(c.due_ms == 0);
}

}  // namespace

TEST_CASE("a released escrow succeeds and creates the worker's notification job") {
  fixture f;
  f.django.on("POST", release_path,
              {200, R"({"pickup_id": 7, "status": "released", "amount": 25.5, "currency": "GHS"})"});
  auto r = f.run({{"pickup_id", 7}, {"release_reason", "customer_confirmed"}});
  REQUIRE(r.kind == outcome::ok);
  CHECK(r.result == json{{"status", "released"}, {"amount", 25.5}, {"currency", "GHS"}});
  check_child(r);
  auto reqs = f.django.requests_to("POST", release_path);
  REQUIRE(reqs.size() == 1);
  CHECK(reqs[0].header("Idempotency-Key") == "escrow-release-7");
  CHECK(reqs[0].header("Authorization") == "Api-Key escrow-test-key");
  CHECK(json::parse(reqs[0].body) == json{{"reason", "customer_confirmed"}});
}

TEST_CASE("an escrow already released succeeds with null amount and still creates the job") {
  fixture f;
  f.django.on("POST", release_path, {409, R"({"status": "already_released"})"});
  auto r = f.run({{"pickup_id", 7}, {"release_reason", "auto_release"}});
  REQUIRE(r.kind == outcome::ok);
  CHECK(r.result == json{{"status", "already_released"}, {"amount", nullptr}, {"currency", nullptr}});
  check_child(r);
}

TEST_CASE("an escrow already released keeps the amount Django sends") {
  fixture f;
  f.django.on("POST", release_path, {409, R"({"status": "already_released", "amount": "10.00", "currency": "GHS"})"});
  auto r = f.run({{"pickup_id", 7}, {"release_reason", "admin"}});
  REQUIRE(r.kind == outcome::ok);
  CHECK(r.result["amount"] == "10.00");
  CHECK(r.result["currency"] == "GHS");
}

TEST_CASE("a disputed pickup's release fails permanently without a child job") {
  fixture f;
  f.django.on("POST", release_path, {409, R"({"status": "disputed"})"});
  auto r = f.run({{"pickup_id", 7}, {"release_reason", "auto_release"}});
  CHECK(r.kind == outcome::permanent);
  CHECK(r.error_code == "disputed");
  CHECK(r.http_status == 409);
  CHECK(r.children.empty());
}

TEST_CASE("an unknown pickup's release fails permanently") {
  fixture f;  // unscripted: 404
  auto r = f.run({{"pickup_id", 7}, {"release_reason", "auto_release"}});
  CHECK(r.kind == outcome::permanent);
  CHECK(r.http_status == 404);
  CHECK(r.children.empty());
}

TEST_CASE("a release that meets a 5xx or 429 is retried, with the same idempotency key") {
  fixture f;
  f.django.on_sequence("POST", release_path,
                       {{502, ""},
                        {429, "", {{"Retry-After", "1"}}},
                        {200, R"({"pickup_id": 7, "status": "released", "amount": 1, "currency": "GHS"})"}});
  auto first = f.run({{"pickup_id", 7}, {"release_reason", "auto_release"}});
  CHECK(first.kind == outcome::transient);
  CHECK(first.children.empty());
  auto second = f.run({{"pickup_id", 7}, {"release_reason", "auto_release"}});
  CHECK(second.kind == outcome::transient);
  CHECK(second.retry_after_ms == 1000);
  auto third = f.run({{"pickup_id", 7}, {"release_reason", "auto_release"}});
  CHECK(third.kind == outcome::ok);
  auto reqs = f.django.requests_to("POST", release_path);
  REQUIRE(reqs.size() == 3);
  for (auto& r : reqs) CHECK(r.header("Idempotency-Key") == "escrow-release-7");
}

TEST_CASE("a release with a garbage 200 body is transient") {
  fixture f;
  f.django.on("POST", release_path, {200, "{not json"});
  auto r = f.run({{"pickup_id", 7}, {"release_reason", "auto_release"}});
  CHECK(r.kind == outcome::transient);
  CHECK(r.error_code == "bad_response");
  CHECK(r.children.empty());
}

TEST_CASE("a release other 4xx is permanent") {
  fixture f;
  f.django.on("POST", release_path, {403, R"({"detail": "forbidden"})"});
  auto r = f.run({{"pickup_id", 7}, {"release_reason", "auto_release"}});
  CHECK(r.kind == outcome::permanent);
  CHECK(r.error_code == "http_403");
}

TEST_CASE("invalid escrow job data is permanent and calls nobody") {
  fixture f;
  CHECK(f.run({{"release_reason", "admin"}}).kind == outcome::permanent);
  CHECK(f.run({{"pickup_id", -1}, {"release_reason", "admin"}}).kind == outcome::permanent);
  CHECK(f.run({{"pickup_id", "7"}, {"release_reason", "admin"}}).kind == outcome::permanent);
  auto bad_reason = f.run({{"pickup_id", 7}, {"release_reason", "because"}});
  CHECK(bad_reason.kind == outcome::permanent);
  CHECK_THAT(bad_reason.message, Catch::Contains("data.release_reason"));
  CHECK(f.run(json::array()).kind == outcome::permanent);
  CHECK(f.django.requests().empty());
}

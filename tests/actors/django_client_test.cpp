// The Django client against a fake Django on 127.0.0.1 (docs/events-and-functions.md,
// "The Django API"): headers, every answer's outcome, and the typed helpers.
#include "actors/django_client.hpp"

#include <chrono>

#include <catch2/catch.hpp>

#include "fake_server.hpp"

using klynaa::actors::django_client;
using klynaa::nodes::outcome;
using klynaa::test::canned;
using klynaa::test::fake_server;
using nlohmann::json;

namespace {

klynaa::protocol::config::django_section django_at(const std::string& url) {
  klynaa::protocol::config::django_section d;
  d.url = url;
  d.api_key = "sekrit-api-key-123";
  d.connect_timeout_ms = 1000;
  d.timeout_ms = 3000;
  return d;
}

const char* pickup_json =
    R"({"id": 7, "status": "accepted", "customer_id": 11, "worker_id": 22, "lat": 1.5,
        "lng": 2.5, "price": 12.5, "currency": "GHS", "created_at": "2024-01-01T00:00:00Z",
        "accepted_at": null, "delivered_at": null})";

}  // namespace

TEST_CASE("every request carries the Api-Key and Accept headers") {
  fake_server django;
  django.on("GET", "/api/serverless/pickups/7/", {200, pickup_json});
  django_client client(django_at(django.url()));
  REQUIRE(client.get_pickup(7));
  auto reqs = django.requests_to("GET", "/api/serverless/pickups/7/");
  REQUIRE(reqs.size() == 1);
  CHECK(reqs[0].header("Authorization") == "Api-Key sekrit-api-key-123");
  CHECK(reqs[0].header("Accept") == "application/json");
  CHECK(reqs[0].header("Content-Type").empty());
}

TEST_CASE("a trailing slash on the base URL is not doubled") {
  fake_server django;
  django.on("GET", "/api/users/admins/", {200, R"({"admins": []})"});
  django_client client(django_at(django.url() + "/"));
  CHECK(client.get_admins());
  CHECK(django.requests().at(0).target == "/api/users/admins/");
}

TEST_CASE("the escrow release posts JSON with the Idempotency-Key header") {
  fake_server django;
  django.on("POST", "/api/serverless/escrow/7/release/",
            {200, R"({"pickup_id": 7, "status": "released", "amount": "12.50", "currency": "GHS"})"});
  django_client client(django_at(django.url()));
  auto r = client.release_escrow(7, "customer_confirmed");
  REQUIRE(r);
  CHECK_FALSE(r->already_released);
  CHECK(r->amount == "12.50");
  CHECK(r->currency == "GHS");
  auto req = django.requests().at(0);
  CHECK(req.header("Idempotency-Key") == "escrow-release-7");
  CHECK(req.header("Content-Type") == "application/json");
  CHECK(req.header("Authorization") == "Api-Key sekrit-api-key-123");
  CHECK(json::parse(req.body) == json{{"reason", "customer_confirmed"}});
}

TEST_CASE("the escrow release answer 409 already_released is a success") {
  fake_server django;
  django.on("POST", "/api/serverless/escrow/7/release/", {409, R"({"status": "already_released"})"});
  django_client client(django_at(django.url()));
  auto r = client.release_escrow(7, "auto_release");
  REQUIRE(r);
  CHECK(r->already_released);
  CHECK(r->amount.is_null());
  CHECK(r->currency.is_null());
}

TEST_CASE("the escrow release answer 409 disputed is a permanent failure") {
  fake_server django;
  django.on("POST", "/api/serverless/escrow/7/release/", {409, R"({"status": "disputed"})"});
  django_client client(django_at(django.url()));
  auto r = client.release_escrow(7, "auto_release");
  REQUIRE_FALSE(r);
  CHECK(r.error.kind == outcome::permanent);
  CHECK(r.error.error_code == "disputed");
  CHECK(r.error.http_status == 409);
}

TEST_CASE("the escrow release answer 409 with an undocumented body is permanent") {
  fake_server django;
  django.on("POST", "/api/serverless/escrow/7/release/", {409, "<html>conflict</html>"});
  django_client client(django_at(django.url()));
  auto r = client.release_escrow(7, "admin");
  REQUIRE_FALSE(r);
  CHECK(r.error.kind == outcome::permanent);
  CHECK(r.error.error_code == "http_409");
}

TEST_CASE("a 200 escrow release without status released is a transient bad_response") {
  fake_server django;
  django.on("POST", "/api/serverless/escrow/7/release/", {200, R"({"status": "pending"})"});
  django_client client(django_at(django.url()));
  auto r = client.release_escrow(7, "admin");
  REQUIRE_FALSE(r);
  CHECK(r.error.kind == outcome::transient);
  CHECK(r.error.error_code == "bad_response");
}

TEST_CASE("a pickup answer is parsed, worker_id null included") {
  fake_server django;
  django.on("GET", "/api/serverless/pickups/7/", {200, pickup_json});
  django.on("GET", "/api/serverless/pickups/8/",
            {200, R"({"id": 8, "status": "requested", "customer_id": 11, "worker_id": null,
                      "price": null, "currency": "GHS"})"});
  django_client client(django_at(django.url()));
  auto p = client.get_pickup(7);
  REQUIRE(p);
  CHECK(p->id == 7);
  CHECK(p->status == "accepted");
  CHECK(p->customer_id == 11);
  CHECK(p->worker_id == 22);
  CHECK(p->price == 12.5);
  CHECK(p->currency == "GHS");
  CHECK(p->raw["lat"] == 1.5);
  auto q = client.get_pickup(8);
  REQUIRE(q);
  CHECK_FALSE(q->worker_id);
  CHECK(q->price.is_null());
}

TEST_CASE("201 and 204 are successes") {
  fake_server django;
  django.on("POST", "/api/reports/", {201, R"({"id": 99})"});
  django.on("DELETE", "/api/users/5/tokens/abc/", {204, ""});
  django_client client(django_at(django.url()));
  auto report = client.post_report({{"kind", "daily"}});
  REQUIRE(report);
  CHECK(*report == 99);
  auto del = client.delete_token(5, "abc");
  CHECK(del.kind == outcome::ok);
  CHECK(del.http_status == 204);
}

TEST_CASE("a 404 is a permanent failure that names the pickup") {
  fake_server django;
  django_client client(django_at(django.url()));
  auto p = client.get_pickup(404404);
  REQUIRE_FALSE(p);
  CHECK(p.error.kind == outcome::permanent);
  CHECK(p.error.error_code == "http_404");
  CHECK(p.error.http_status == 404);
  CHECK_THAT(p.error.message, Catch::Contains("404404"));
}

TEST_CASE("a 408 is transient") {
  fake_server django;
  django.on("GET", "/api/users/admins/", {408, ""});
  django_client client(django_at(django.url()));
  auto r = client.get_admins();
  REQUIRE_FALSE(r);
  CHECK(r.error.kind == outcome::transient);
  CHECK(r.error.error_code == "http_408");
}

TEST_CASE("a 429 with Retry-After is transient and carries the delay") {
  fake_server django;
  django.on("GET", "/api/users/admins/", {429, R"({"detail": "slow down"})", {{"Retry-After", "3"}}});
  django_client client(django_at(django.url()));
  auto r = client.get_admins();
  REQUIRE_FALSE(r);
  CHECK(r.error.kind == outcome::transient);
  CHECK(r.error.http_status == 429);
  CHECK(r.error.retry_after_ms == 3000);
}

TEST_CASE("a 500 is transient") {
  fake_server django;
  django.on("GET", "/api/users/admins/", {500, "Internal Server Error"});
  django_client client(django_at(django.url()));
  auto r = client.get_admins();
  REQUIRE_FALSE(r);
  CHECK(r.error.kind == outcome::transient);
  CHECK(r.error.error_code == "http_500");
  CHECK_FALSE(r.error.retry_after_ms);
}

TEST_CASE("a 503 with an HTTP-date Retry-After is transient with a delay") {
  fake_server django;
  // A date far in the future gives a large, positive delay whatever today is.
  django.on("GET", "/api/users/admins/", {503, "", {{"Retry-After", "Fri, 01 Jan 2100 00:00:00 GMT"}}});
  django_client client(django_at(django.url()));
  auto r = client.get_admins();
  REQUIRE_FALSE(r);
  CHECK(r.error.kind == outcome::transient);
  REQUIRE(r.error.retry_after_ms);
  CHECK(*r.error.retry_after_ms > 0);
}

TEST_CASE("a 2xx with a garbage body is a transient bad_response and is counted") {
  fake_server django;
  django.on("GET", "/api/users/admins/", {200, "<html>502 Bad Gateway</html>"});
  django.on("GET", "/api/users/3/tokens/", {200, R"({"tokens": "nope"})"});
  django.on("GET", "/api/serverless/pickups/7/", {200, R"([1, 2, 3])"});
  django_client client(django_at(django.url()));
  auto before = klynaa::actors::downstream_counts()[{"django", "bad_response"}];

  auto admins = client.get_admins();
  REQUIRE_FALSE(admins);
  CHECK(admins.error.kind == outcome::transient);
  CHECK(admins.error.error_code == "bad_response");
  CHECK(admins.error.http_status == 200);

  auto tokens = client.get_tokens(3);
  REQUIRE_FALSE(tokens);
  CHECK(tokens.error.error_code == "bad_response");

  auto pickup = client.get_pickup(7);
  REQUIRE_FALSE(pickup);
  CHECK(pickup.error.error_code == "bad_response");

  CHECK(klynaa::actors::downstream_counts()[{"django", "bad_response"}] == before + 3);
}

TEST_CASE("a connection refused is a transient connect failure") {
  django_client client(django_at("http://127.0.0.1:" + std::to_string(klynaa::test::closed_port())));
  auto r = client.get_admins();
  REQUIRE_FALSE(r);
  CHECK(r.error.kind == outcome::transient);
  CHECK(r.error.error_code == "connect");
  CHECK_FALSE(r.error.http_status);
}

TEST_CASE("an answer slower than the timeout is a transient timeout") {
  fake_server django;
  django.on("GET", "/api/users/admins/", {200, R"({"admins": []})", {}, 1500});
  auto cfg = django_at(django.url());
  cfg.timeout_ms = 200;
  django_client client(cfg);
  auto start = std::chrono::steady_clock::now();
  auto r = client.get_admins();
  auto took = std::chrono::steady_clock::now() - start;
  REQUIRE_FALSE(r);
  CHECK(r.error.kind == outcome::transient);
  CHECK(r.error.error_code == "timeout");
  CHECK(took < std::chrono::milliseconds(1200));
}

TEST_CASE("an empty base URL fails transiently without a request") {
  django_client client(django_at(""));
  auto r = client.get_admins();
  REQUIRE_FALSE(r);
  CHECK(r.error.kind == outcome::transient);
  CHECK_THAT(r.error.message, Catch::Contains("django.url"));
}

TEST_CASE("tokens are listed with their platforms") {
  fake_server django;
  django.on("GET", "/api/users/3/tokens/",
            {200, R"({"user_id": 3, "tokens": [{"token": "t1", "platform": "ios"},
                                               {"token": "t2", "platform": "android"}]})"});
  django_client client(django_at(django.url()));
  auto t = client.get_tokens(3);
  REQUIRE(t);
  REQUIRE(t->size() == 2);
  CHECK((*t)[0].token == "t1");
  CHECK((*t)[0].platform == "ios");
  CHECK((*t)[1].token == "t2");
}

TEST_CASE("a token is URL-encoded in the DELETE path") {
  fake_server django;
  django.on("DELETE", "/api/users/5/tokens/ab/c:d e/", {204, ""});
  django_client client(django_at(django.url()));
  auto del = client.delete_token(5, "ab/c:d e");
  CHECK(del.kind == outcome::ok);
  auto reqs = django.requests();
  REQUIRE(reqs.size() == 1);
  CHECK(reqs[0].method == "DELETE");
  CHECK(reqs[0].target == "/api/users/5/tokens/ab%2Fc%3Ad%20e/");
}

TEST_CASE("deleting a token that is already gone succeeds") {
  fake_server django;  // unscripted: 404
  django_client client(django_at(django.url()));
  auto del = client.delete_token(5, "gone");
  CHECK(del.kind == outcome::ok);
  CHECK(del.http_status == 404);
}

TEST_CASE("admins are listed by id") {
  fake_server django;
  django.on("GET", "/api/users/admins/",
            {200, R"({"admins": [{"id": 1, "email": "a@x"}, {"id": 2, "email": "b@x"}]})"});
  django_client client(django_at(django.url()));
  auto a = client.get_admins();
  REQUIRE(a);
  REQUIRE(a->size() == 2);
  CHECK((*a)[0].id == 1);
  CHECK((*a)[1].email == "b@x");
}

TEST_CASE("the analytics query encodes its times and follows the cursor") {
  fake_server django;
  django.on("GET", "/api/analytics/pickups/", [](const klynaa::test::recorded_request& r) {
    if (r.target.find("cursor=") == std::string::npos)
      return canned{200, R"({"pickups": [{"id": 1}], "next": "c/2"})"};
    return canned{200, R"({"pickups": [{"id": 2}], "next": null})"};
  });
  django_client client(django_at(django.url()));
  auto first = client.get_analytics_pickups("2024-01-01T00:00:00Z", "2024-01-02T00:00:00Z", {});
  REQUIRE(first);
  CHECK(first->pickups.size() == 1);
  REQUIRE(first->next == "c/2");
  auto second = client.get_analytics_pickups("2024-01-01T00:00:00Z", "2024-01-02T00:00:00Z", first->next);
  REQUIRE(second);
  CHECK_FALSE(second->next);
  auto reqs = django.requests();
  REQUIRE(reqs.size() == 2);
  CHECK(reqs[0].target ==
        "/api/analytics/pickups/?from=2024-01-01T00%3A00%3A00Z&to=2024-01-02T00%3A00%3A00Z");
  CHECK(reqs[1].target ==
        "/api/analytics/pickups/?from=2024-01-01T00%3A00%3A00Z&to=2024-01-02T00%3A00%3A00Z"
        "&cursor=c%2F2");
}

TEST_CASE("available workers and cleanup answers are read") {
  fake_server django;
  django.on("GET", "/api/workers/available/",
            {200, R"({"workers": [{"id": 4, "lat": 1, "lng": 2, "service_radius_km": 3}]})"});
  django.on("POST", "/api/cleanup/", {200, R"({"deleted": 17})"});
  django_client client(django_at(django.url()));
  auto w = client.get_available_workers();
  REQUIRE(w);
  CHECK(w->size() == 1);
  auto c = client.cleanup(90);
  REQUIRE(c);
  CHECK(*c == 17);
  CHECK(json::parse(django.requests_to("POST", "/api/cleanup/").at(0).body) ==
        json{{"older_than_days", 90}});
}

TEST_CASE("one client reuses its connection across requests") {
  fake_server django;
  django.on("GET", "/api/users/admins/", {200, R"({"admins": []})"});
  django_client client(django_at(django.url()));
  for (int i = 0; i < 3; ++i) REQUIRE(client.get_admins());
  auto reqs = django.requests();
  REQUIRE(reqs.size() == 3);
  // httplib reports the peer's port: one TCP connection means one client port.
  REQUIRE_FALSE(reqs[0].header("REMOTE_PORT").empty());
  CHECK(reqs[0].header("REMOTE_PORT") == reqs[1].header("REMOTE_PORT"));
  CHECK(reqs[0].header("REMOTE_PORT") == reqs[2].header("REMOTE_PORT"));
}

TEST_CASE("the key hint shows at most four characters of the API key") {
  django_client client(django_at("http://127.0.0.1:1"));
  auto hint = client.key_hint();
  CHECK(hint.find("sekrit-api-key-123") == std::string::npos);
  CHECK(hint.rfind("sekr", 0) == 0);
}

// The HTTP failure rules (docs/events-and-functions.md, "Failures and retries"),
// without a server: classify(), Retry-After, escaping.
// Then http_multi against fake servers: a batch's answers in order, at most
// max_connections in flight at once, connections reused across batches, and the
// failures of http_session (no answer, timeout, body too large) per request.
#include "actors/http.hpp"

#include <catch2/catch.hpp>

#include "fake_server.hpp"

using klynaa::actors::classify;
using klynaa::actors::http_multi;
using klynaa::actors::http_options;
using klynaa::actors::http_request;
using klynaa::actors::http_response;
using klynaa::actors::parse_retry_after;
using klynaa::nodes::outcome;
using klynaa::test::canned;
using klynaa::test::fake_server;
using klynaa::test::recorded_request;

namespace {

http_response answer(int status, std::map<std::string, std::string> headers = {}) {
  http_response r;
  r.status = status;
  r.headers = std::move(headers);
  return r;
}

}  // namespace

TEST_CASE("a 2xx answer classifies as ok with its status") {
  for (int s : {200, 201, 204}) {
    auto c = classify(answer(s), "GET /x/");
    CHECK(c.kind == outcome::ok);
    CHECK(c.http_status == s);
  }
}

TEST_CASE("408, 429 and every 5xx classify as transient with their status") {
  for (int s : {408, 429, 500, 502, 503, 504, 599}) {
    auto c = classify(answer(s), "GET /x/");
    CHECK(c.kind == outcome::transient);
    CHECK(c.error_code == "http_" + std::to_string(s));
    CHECK(c.http_status == s);
    CHECK_FALSE(c.retry_after_ms);
  }
}

TEST_CASE("any other 4xx classifies as permanent") {
  for (int s : {400, 401, 403, 404, 405, 409, 410, 422}) {
    auto c = classify(answer(s), "GET /x/");
    CHECK(c.kind == outcome::permanent);
    CHECK(c.error_code == "http_" + std::to_string(s));
    CHECK(c.http_status == s);
  }
}

TEST_CASE("a redirect classifies as permanent and names the Location") {
  auto c = classify(answer(301, {{"location", "https://example.test/api/"}}), "GET /api");
  CHECK(c.kind == outcome::permanent);
  CHECK(c.error_code == "http_301");
  CHECK_THAT(c.message, Catch::Contains("https://example.test/api/"));
}

TEST_CASE("no answer classifies as transient connect, or timeout when a timer expired") {
  http_response refused;
  refused.error = "Connection refused";
  auto c = classify(refused, "GET /x/");
  CHECK(c.kind == outcome::transient);
  CHECK(c.error_code == "connect");
  CHECK_FALSE(c.http_status);
  CHECK_THAT(c.message, Catch::Contains("Connection refused"));

  http_response slow;
  slow.timed_out = true;
  slow.error = "Operation timed out";
  CHECK(classify(slow, "GET /x/").error_code == "timeout");
}

TEST_CASE("Retry-After in seconds on 429 and 503 becomes retry_after_ms") {
  CHECK(classify(answer(429, {{"retry-after", "7"}}), "x").retry_after_ms == 7000);
  CHECK(classify(answer(503, {{"retry-after", " 2 "}}), "x").retry_after_ms == 2000);
}

TEST_CASE("Retry-After is ignored on statuses other than 429 and 503") {
  CHECK_FALSE(classify(answer(500, {{"retry-after", "7"}}), "x").retry_after_ms);
  CHECK_FALSE(classify(answer(502, {{"retry-after", "7"}}), "x").retry_after_ms);
}

TEST_CASE("Retry-After as an HTTP-date is the delay until that date") {
  // Sun, 06 Nov 1994 08:49:37 GMT = 784111777 s since the epoch (RFC 9110's example).
  const int64_t date_ms = 784111777LL * 1000;
  CHECK(parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", date_ms - 30000) == 30000);
  CHECK(parse_retry_after("Sunday, 06-Nov-94 08:49:37 GMT", date_ms - 1000) == 1000);
  CHECK(parse_retry_after("Sun Nov  6 08:49:37 1994", date_ms - 5000) == 5000);
}

TEST_CASE("a Retry-After date in the past means retry now") {
  CHECK(parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", 784111777LL * 1000 + 60000) == 0);
}

TEST_CASE("a Retry-After that is neither seconds nor a date is ignored") {
  CHECK_FALSE(parse_retry_after("soon", 0));
  CHECK_FALSE(parse_retry_after("", 0));
  CHECK_FALSE(parse_retry_after("-5", 0));
  CHECK_FALSE(parse_retry_after("1.5", 0));
  CHECK_FALSE(classify(answer(429, {{"retry-after", "later"}}), "x").retry_after_ms);
}

TEST_CASE("an absurd Retry-After is clamped to a year rather than overflowing") {
  CHECK(parse_retry_after("99999999999999999999999", 0) == 365LL * 24 * 3600 * 1000);
}

TEST_CASE("escape percent-encodes everything but unreserved characters") {
  using klynaa::actors::http_session;
  CHECK(http_session::escape("abcXYZ019-._~") == "abcXYZ019-._~");
  CHECK(http_session::escape("a/b:c d?e&f#g%") == "a%2Fb%3Ac%20d%3Fe%26f%23g%25");
  CHECK(http_session::escape("\xc3\xa9") == "%C3%A9");
}

// ---- http_multi ----

namespace {

http_options quick(int64_t timeout_ms = 5000) {
  http_options o;
  o.connect_timeout_ms = 1000;
  o.timeout_ms = timeout_ms;
  return o;
}

std::vector<http_request> posts(const std::string& url, int n) {
  std::vector<http_request> out;
  for (int i = 0; i < n; ++i) out.push_back({"POST", url, {}, "request " + std::to_string(i)});
  return out;
}

}  // namespace

TEST_CASE("http_multi answers every request of a batch, in the batch's order") {
  fake_server server;
  server.on("GET", "/a", {200, R"({"a": 1})", {{"X-Klynaa-Test", "A"}}});
  server.on("POST", "/echo", [](const recorded_request& r) { return canned{201, r.body}; });
  server.on("DELETE", "/gone", {410, ""});
  server.on("GET", "/busy", {503, "", {{"Retry-After", "3"}}});
  http_multi client(quick());
  auto answers = client.perform({{"GET", server.url() + "/a", {}, std::nullopt},
                                 {"POST", server.url() + "/echo", {{"X-Id", "7"}}, "hello"},
                                 {"DELETE", server.url() + "/gone", {}, std::nullopt},
                                 {"GET", server.url() + "/busy", {}, std::nullopt}});
  REQUIRE(answers.size() == 4);
  CHECK(answers[0].status == 200);
  CHECK(answers[0].body == R"({"a": 1})");
  CHECK(answers[0].header("x-klynaa-test") == "A");  // names lower-cased
  CHECK(answers[1].status == 201);
  CHECK(answers[1].body == "hello");
  CHECK(answers[2].status == 410);
  CHECK(answers[3].status == 503);
  CHECK(answers[3].header("retry-after") == "3");
  for (const auto& a : answers) CHECK(a.error.empty());
  auto echoed = server.requests_to("POST", "/echo");
  REQUIRE(echoed.size() == 1);
  CHECK(echoed[0].header("X-Id") == "7");
  CHECK(echoed[0].header("Expect").empty());
  CHECK(client.perform({}).empty());
}

TEST_CASE("http_multi sends a batch concurrently, at most max_connections at once") {
  fake_server server;
  server.on("POST", "/slow", {200, "ok"});
  server.hold("POST", "/slow", 3);  // answers nothing until 3 are in flight together
  http_multi client(quick(), 3);
  auto answers = client.perform(posts(server.url() + "/slow", 7));
  REQUIRE(answers.size() == 7);
  for (const auto& a : answers) CHECK(a.status == 200);
  CHECK(server.requests_to("POST", "/slow").size() == 7);
  CHECK(server.max_in_flight("POST", "/slow") == 3);
}

TEST_CASE("http_multi reuses its connections across batches") {
  fake_server server(30);  // keeps idle connections open for the second batch
  server.on("POST", "/push", {200, ""});
  server.hold("POST", "/push", 4);
  http_multi client(quick());
  for (int batch = 0; batch < 2; ++batch) {
    auto answers = client.perform(posts(server.url() + "/push", 4));
    for (const auto& a : answers) CHECK(a.status == 200);
  }
  CHECK(server.requests().size() == 8);
  CHECK(server.max_in_flight("POST", "/push") == 4);
  CHECK(server.connections() == 4);  // one per request in flight, each used twice
}

TEST_CASE("http_multi fails each request on its own: refused, timed out, body too large") {
  fake_server server;
  server.on("GET", "/fast", {200, "fine"});
  server.on("GET", "/slow", {200, "late", {}, 1500});
  server.on("GET", "/big", {200, std::string(2048, 'x')});
  auto opts = quick(300);
  opts.max_body_bytes = 1024;
  http_multi client(opts);
  std::string refused = "http://127.0.0.1:" + std::to_string(klynaa::test::closed_port()) + "/";
  auto answers = client.perform({{"GET", refused, {}, std::nullopt},
                                 {"GET", server.url() + "/slow", {}, std::nullopt},
                                 {"GET", server.url() + "/big", {}, std::nullopt},
                                 {"GET", server.url() + "/fast", {}, std::nullopt}});
  REQUIRE(answers.size() == 4);
  CHECK(answers[0].status == 0);
  CHECK_FALSE(answers[0].timed_out);
  CHECK_FALSE(answers[0].error.empty());
  CHECK(classify(answers[0], "GET /").error_code == "connect");
  CHECK(answers[1].status == 0);
  CHECK(answers[1].timed_out);
  CHECK(answers[1].body.empty());
  CHECK(classify(answers[1], "GET /slow").error_code == "timeout");
  CHECK(answers[2].status == 0);
  CHECK_THAT(answers[2].error, Catch::Contains("1024 bytes"));
  CHECK(answers[2].body.empty());
  CHECK(answers[3].status == 200);
  CHECK(answers[3].body == "fine");
}

TEST_CASE("http_multi starts each request's timeout when the request starts, not the batch") {
  // One connection, five answers of 300 ms each, a 1 s timeout: the batch takes
  // longer than the timeout, yet no request does.
  fake_server server;
  server.on("GET", "/steady", {200, "ok", {}, 300});
  http_multi client(quick(1000), 1);
  std::vector<http_request> batch(5, http_request{"GET", server.url() + "/steady", {}, std::nullopt});
  auto answers = client.perform(batch);
  for (const auto& a : answers) {
    CHECK(a.status == 200);
    CHECK(a.error.empty());
  }
  CHECK(server.max_in_flight("GET", "/steady") == 1);
}

TEST_CASE("http_multi's request() is a batch of one") {
  fake_server server;
  server.on("PUT", "/one", [](const recorded_request& r) { return canned{200, r.method + " " + r.body}; });
  http_multi client(quick());
  auto r = client.request("PUT", server.url() + "/one", {{"Content-Type", "text/plain"}}, "x");
  CHECK(r.status == 200);
  CHECK(r.body == "PUT x");
}

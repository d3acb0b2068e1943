// Contract §3's HTTP rules, without a server: classify(), Retry-After, escaping.
#include "actors/http.hpp"

#include <catch2/catch.hpp>

using klynaa::actors::classify;
using klynaa::actors::http_response;
using klynaa::actors::parse_retry_after;
using klynaa::nodes::outcome;

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

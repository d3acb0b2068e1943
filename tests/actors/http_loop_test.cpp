// http_loop (actors/http_loop.hpp, issue 19): hundreds of requests in flight on
// its one thread, one callback per request whatever happens (answer, error,
// timeout, cancel, shutdown), answers as http_session gives them, connections
// reused (HTTP/1.1 keep-alive) and shared (HTTP/2 streams). Servers:
// fake_server (cpp-httplib) for ordinary answers, event_server for hundreds of
// connections and misbehaviour, h2_server for HTTP/2 (over TLS, or h2c).
#include "actors/http_loop.hpp"

#include <catch2/catch.hpp>

#include <chrono>
#include <condition_variable>
#include <fstream>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <fcntl.h>
#include <sys/resource.h>
#include <unistd.h>

#include "event_server.hpp"
#include "fake_server.hpp"
#include "certificate.hpp"
#include "h2_server.hpp"
#include "tests/support/temp_dir.hpp"
#include "tests/support/threads.hpp"
#include "tests/support/wait.hpp"

using klynaa::actors::classify;
using klynaa::actors::http_loop;
using klynaa::actors::http_request;
using klynaa::actors::http_response;
using klynaa::test::canned;
using klynaa::test::event_server;
using klynaa::test::fake_server;
using klynaa::test::h2_server;
using klynaa::test::recorded_request;
using klynaa::test::thread_count;
using klynaa::test::wait_for;
using namespace std::chrono_literals;

namespace {

/// Records every callback by a key the test picks; declare it before the loop,
/// whose destructor runs callbacks.
class collector {
 public:
  http_loop::callback on(int key) {
    return [this, key](http_response r) {
      std::lock_guard<std::mutex> lock(mutex_);
      answers_[key].push_back(std::move(r));
      threads_.insert(std::this_thread::get_id());
      ++calls_;
      changed_.notify_all();
    };
  }

  /// Waits until `n` callbacks ran in all, up to `limit`.
  bool wait(int n, std::chrono::milliseconds limit = 20s) {
    std::unique_lock<std::mutex> lock(mutex_);
    return changed_.wait_for(lock, limit, [&] { return calls_ >= n; });
  }

  int calls() {
    std::lock_guard<std::mutex> lock(mutex_);
    return calls_;
  }

  /// The answers of `key` (one, unless a bug ran its callback twice).
  std::vector<http_response> of(int key) {
    std::lock_guard<std::mutex> lock(mutex_);
    return answers_[key];
  }

  /// The one answer of `key`; fails the test if there is not exactly one.
  http_response one(int key) {
    auto all = of(key);
    REQUIRE(all.size() == 1);
    return all.front();
  }

  std::set<std::thread::id> threads() {
    std::lock_guard<std::mutex> lock(mutex_);
    return threads_;
  }

 private:
  std::mutex mutex_;
  std::condition_variable changed_;
  std::map<int, std::vector<http_response>> answers_;
  std::set<std::thread::id> threads_;
  int calls_ = 0;
};

http_loop::options quick(int64_t timeout_ms = 5000) {
  http_loop::options o;
  o.http.connect_timeout_ms = 1000;
  o.http.timeout_ms = timeout_ms;
  return o;
}

http_request get(const std::string& url) { return {"GET", url, {}, std::nullopt}; }

}  // namespace

TEST_CASE("http_loop holds 500 requests in flight at once on its one thread", "[http_loop]") {
  const int n = 500;
  // 1000 sockets, both ends: more than a soft limit of 1024 leaves room for.
  rlimit files{};
  REQUIRE(::getrlimit(RLIMIT_NOFILE, &files) == 0);
  if (files.rlim_cur < 4096 && files.rlim_cur < files.rlim_max) {
    files.rlim_cur = std::min<rlim_t>(4096, files.rlim_max);
    REQUIRE(::setrlimit(RLIMIT_NOFILE, &files) == 0);
  }
  event_server server(n);  // answers /gate only once all 500 wait at once
  collector got;
  const int threads_before = thread_count();
  int threads_most = threads_before;
  {
    auto opts = quick(30000);
    opts.max_host_connections = 0;  // one HTTP/1.1 connection per request in flight
    http_loop loop(opts);
    REQUIRE(loop.start_error().empty());
    std::set<uint64_t> ids;
    for (int i = 0; i < n; ++i) ids.insert(loop.submit(get(server.url() + "/gate"), got.on(i)));
    CHECK(ids.size() == static_cast<size_t>(n));
    CHECK(ids.count(0) == 0);
    auto deadline = std::chrono::steady_clock::now() + 60s;
    while (!got.wait(n, 10ms) && std::chrono::steady_clock::now() < deadline)
      threads_most = std::max(threads_most, thread_count());
    REQUIRE(got.calls() == n);
    auto s = loop.snapshot();
    CHECK(s.submitted == n);
    CHECK(s.completed == n);
    CHECK(s.in_flight == 0);
    CHECK(s.failed == 0);
    CHECK(s.connections_opened == n);
  }
  CHECK(server.max_waiting() == n);  // all 500 on the wire together
  CHECK(server.connections() == n);
  for (int i = 0; i < n; ++i) {
    auto r = got.one(i);
    CHECK(r.status == 200);
    CHECK(r.body == "/gate");
  }
  auto threads = got.threads();
  CHECK(threads.size() == 1);
  CHECK(threads.count(std::this_thread::get_id()) == 0);
  CHECK(threads_most <= threads_before + 2);  // the loop's thread, and slack for one more
}

TEST_CASE("http_loop round-trips status, body, headers and a POST body, and a 404", "[http_loop]") {
  fake_server server;
  server.on("GET", "/a", {200, R"({"a": 1})", {{"X-Klynaa-Test", "A"}}});
  server.on("POST", "/echo", [](const recorded_request& r) { return canned{201, r.body}; });
  server.on("GET", "/busy", {503, "", {{"Retry-After", "3"}}});
  collector got;
  http_loop loop(quick());
  loop.submit(get(server.url() + "/a"), got.on(0));
  loop.submit({"POST", server.url() + "/echo", {{"X-Id", "7"}}, "hello"}, got.on(1));
  loop.submit(get(server.url() + "/missing"), got.on(2));
  loop.submit(get(server.url() + "/busy"), got.on(3));
  REQUIRE(got.wait(4));
  auto a = got.one(0);
  CHECK(a.status == 200);
  CHECK(a.body == R"({"a": 1})");
  CHECK(a.header("x-klynaa-test") == "A");  // names lower-cased
  CHECK(a.error.empty());
  auto echo = got.one(1);
  CHECK(echo.status == 201);
  CHECK(echo.body == "hello");
  auto missing = got.one(2);
  CHECK(missing.status == 404);
  CHECK(missing.body == R"({"detail": "Not found."})");
  CHECK(classify(missing, "GET /missing").error_code == "http_404");
  auto busy = got.one(3);
  CHECK(busy.status == 503);
  CHECK(classify(busy, "GET /busy").retry_after_ms == 3000);
  auto sent = server.requests_to("POST", "/echo");
  REQUIRE(sent.size() == 1);
  CHECK(sent[0].header("X-Id") == "7");
  CHECK(sent[0].header("Expect").empty());
}

TEST_CASE("http_loop answers a refused connection with status 0, not timed out", "[http_loop]") {
  collector got;
  http_loop loop(quick());
  loop.submit(get("http://127.0.0.1:" + std::to_string(klynaa::test::closed_port()) + "/"), got.on(0));
  REQUIRE(got.wait(1));
  auto r = got.one(0);
  CHECK(r.status == 0);
  CHECK_FALSE(r.timed_out);
  CHECK_FALSE(r.error.empty());
  CHECK(classify(r, "GET /").error_code == "connect");
  CHECK(loop.snapshot().failed == 1);
}

TEST_CASE("http_loop resolves host names on libcurl's resolver threads, not its own", "[http_loop]") {
  event_server server;  // on 127.0.0.1: "localhost" may try ::1 first, refused, then 127.0.0.1
  collector got;
  http_loop loop(quick());
  std::string url = server.url();
  url.replace(url.find("127.0.0.1"), 9, "localhost");
  for (int i = 0; i < 5; ++i) loop.submit(get(url + "/named"), got.on(i));
  REQUIRE(got.wait(5));
  for (int i = 0; i < 5; ++i) CHECK(got.one(i).status == 200);
  CHECK(got.threads().size() == 1);
}

TEST_CASE("http_loop times a request out by the options' timeout or its own", "[http_loop]") {
  event_server server;
  collector got;
  http_loop loop(quick(300));
  loop.submit(get(server.url() + "/never"), got.on(0));                // the options' 300 ms
  loop.submit(get(server.url() + "/never"), got.on(1), 200);           // its own, shorter
  loop.submit(get(server.url() + "/delay/800"), got.on(2), 10000);     // its own, longer
  REQUIRE(got.wait(3));
  for (int key : {0, 1}) {
    auto r = got.one(key);
    CHECK(r.status == 0);
    CHECK(r.timed_out);
    CHECK(classify(r, "GET /never").error_code == "timeout");
  }
  CHECK(got.one(2).status == 200);
  CHECK(loop.snapshot().timed_out == 2);
}

TEST_CASE("http_loop times out a request still waiting for a free connection", "[http_loop]") {
  // libcurl 7.88 checks no timeout while a transfer waits for a connection;
  // the loop's own deadline does.
  event_server server;
  collector got;
  auto opts = quick(300);
  opts.max_host_connections = 1;
  http_loop loop(opts);
  loop.submit(get(server.url() + "/never"), got.on(0), 20000);  // holds the one connection
  auto start = std::chrono::steady_clock::now();
  loop.submit(get(server.url() + "/queued"), got.on(1));
  REQUIRE(got.wait(1, 10s));
  CHECK(std::chrono::steady_clock::now() - start < 5s);
  CHECK(got.of(0).empty());
  auto r = got.one(1);
  CHECK(r.status == 0);
  CHECK(r.timed_out);
  CHECK(classify(r, "GET /queued").error_code == "timeout");
  CHECK(server.requests() == 1);
}

TEST_CASE("http_loop's cancel answers an in-flight request once and drops the later answer", "[http_loop]") {
  event_server server;
  collector got;
  http_loop loop(quick());
  uint64_t id = loop.submit(get(server.url() + "/delay/400"), got.on(0));
  REQUIRE(wait_for([&] { return server.requests() == 1; }, 10s, 5ms));
  loop.cancel(id);
  REQUIRE(got.wait(1));
  auto r = got.one(0);
  CHECK(r.status == 0);
  CHECK(r.error == http_loop::cancelled_error);
  std::this_thread::sleep_for(600ms);  // past the moment the server would have answered
  loop.cancel(id);  // answered already: nothing happens
  loop.cancel(12345);
  loop.submit(get(server.url() + "/after"), got.on(1));
  REQUIRE(got.wait(2));
  CHECK(got.of(0).size() == 1);
  CHECK(got.one(1).status == 200);
  auto s = loop.snapshot();
  CHECK(s.cancelled == 1);
  CHECK(s.completed == 2);
}

TEST_CASE("http_loop's cancel right after submit answers once with cancelled", "[http_loop]") {
  event_server server;
  collector got;
  http_loop loop(quick());
  for (int i = 0; i < 20; ++i) loop.cancel(loop.submit(get(server.url() + "/never"), got.on(i)));
  REQUIRE(got.wait(20));
  for (int i = 0; i < 20; ++i) CHECK(got.one(i).error == http_loop::cancelled_error);
}

TEST_CASE("http_loop's destructor answers each pending request once with cancelled", "[http_loop]") {
  event_server server;
  collector got;
  {
    http_loop loop(quick());
    // A callback run by the destructor may still submit: answered at once.
    loop.submit(get(server.url() + "/never"), [&](http_response r) {
      got.on(100)(std::move(r));
      loop.submit(get(server.url() + "/"), got.on(101));
    });
    for (int i = 0; i < 20; ++i) loop.submit(get(server.url() + "/never"), got.on(i));
    REQUIRE(wait_for([&] { return server.requests() == 21; }, 10s, 5ms));
    for (int i = 20; i < 25; ++i) loop.submit(get(server.url() + "/never"), got.on(i));  // maybe not started
  }
  CHECK(got.calls() == 27);
  for (int i = 0; i < 25; ++i) {
    auto r = got.one(i);
    CHECK(r.status == 0);
    CHECK(r.error == http_loop::cancelled_error);
  }
  CHECK(got.one(100).error == http_loop::cancelled_error);
  CHECK(got.one(101).error == http_loop::stopped_error);
}

TEST_CASE("http_loop answers a body over max_body_bytes with status 0 and an error", "[http_loop]") {
  fake_server server;
  server.on("GET", "/big", {200, std::string(2048, 'x')});
  server.on("GET", "/small", {200, std::string(1024, 'x')});
  auto opts = quick();
  opts.http.max_body_bytes = 1024;
  collector got;
  http_loop loop(opts);
  loop.submit(get(server.url() + "/big"), got.on(0));
  loop.submit(get(server.url() + "/small"), got.on(1));
  REQUIRE(got.wait(2));
  auto big = got.one(0);
  CHECK(big.status == 0);
  CHECK_FALSE(big.timed_out);
  CHECK_THAT(big.error, Catch::Contains("1024 bytes"));
  CHECK(big.body.empty());
  CHECK(got.one(1).status == 200);
}

TEST_CASE("an upstream that never answers costs http_loop only its own requests", "[http_loop]") {
  event_server server;
  collector got;
  http_loop loop(quick(30000));
  for (int i = 0; i < 5; ++i) loop.submit(get(server.url() + "/never"), got.on(100 + i));
  for (int i = 0; i < 50; ++i) loop.submit(get(server.url() + "/delay/20"), got.on(i));
  REQUIRE(got.wait(50));
  for (int i = 0; i < 50; ++i) CHECK(got.one(i).status == 200);
  std::this_thread::sleep_for(100ms);
  CHECK(got.calls() == 50);  // the five hanging ones wait for their timeout
  CHECK(loop.snapshot().in_flight == 5);
}

TEST_CASE("http_loop answers a response cut off mid-body with status 0", "[http_loop]") {
  event_server server;
  collector got;
  http_loop loop(quick());
  loop.submit(get(server.url() + "/close-mid"), got.on(0));
  REQUIRE(got.wait(1));
  auto r = got.one(0);
  CHECK(r.status == 0);
  CHECK_FALSE(r.timed_out);
  CHECK_FALSE(r.error.empty());
  CHECK(r.body.empty());
}

TEST_CASE("http_loop's total timeout stops a server that trickles its body", "[http_loop]") {
  event_server server;  // 1000 bytes, one every 50 ms: 50 s
  collector got;
  http_loop loop(quick(500));
  auto start = std::chrono::steady_clock::now();
  loop.submit(get(server.url() + "/trickle"), got.on(0));
  REQUIRE(got.wait(1));
  CHECK(std::chrono::steady_clock::now() - start < 10s);
  auto r = got.one(0);
  CHECK(r.status == 0);
  CHECK(r.timed_out);
  CHECK(r.body.empty());
}

TEST_CASE("http_loop sends 100 sequential requests on one HTTP/1.1 keep-alive connection", "[http_loop]") {
  event_server server;
  collector got;
  http_loop loop(quick());
  for (int i = 0; i < 100; ++i) {
    loop.submit(get(server.url() + "/seq/" + std::to_string(i)), got.on(i));
    REQUIRE(got.wait(i + 1));
    CHECK(got.one(i).body == "/seq/" + std::to_string(i));
  }
  CHECK(server.connections() == 1);
  CHECK(server.requests() == 100);
  auto s = loop.snapshot();
  CHECK(s.connections_opened == 1);
  CHECK(s.connections_open == 1);  // idle in the cache
}

namespace {

/// Sends 50 requests at once to `server` (which answers only when all 50 wait)
/// and checks that they came back over one connection.
void check_multiplexed(h2_server& server, const http_loop::options& opts) {
  const int n = 50;
  collector got;
  http_loop loop(opts);
  for (int i = 0; i < n; ++i) loop.submit(get(server.url() + "/h2/" + std::to_string(i)), got.on(i));
  REQUIRE(got.wait(n));
  for (int i = 0; i < n; ++i) {
    auto r = got.one(i);
    CAPTURE(r.error);
    CHECK(r.status == 200);
    CHECK(r.body == "/h2/" + std::to_string(i));
  }
  CHECK(server.max_waiting() == n);  // all 50 streams open together
  CHECK(server.connections() == 1);
  CHECK(loop.snapshot().connections_opened == 1);
}

}  // namespace

TEST_CASE("http_loop multiplexes 50 concurrent HTTPS requests on one HTTP/2 connection", "[http_loop]") {
  klynaa::test::temp_dir dir;
  klynaa::test::make_certificate(dir, "h2", "IP:127.0.0.1");
  h2_server server(50, dir / "h2.crt", dir / "h2.key");  // ALPN h2 only
  auto opts = quick(20000);
  opts.http.ca_file = dir / "h2.crt";
  check_multiplexed(server, opts);
}

TEST_CASE("http_loop's http2_prior_knowledge speaks h2c where libcurl can, else HTTP/1.1", "[http_loop]") {
  auto opts = quick(20000);
  opts.http2_prior_knowledge = true;
  if (http_loop::h2c_supported()) {  // libcurl >= 8.0.0
    h2_server server(50);
    check_multiplexed(server, opts);
    return;
  }
  // libcurl 7.88.1 (Debian 12) cannot reuse an h2c connection (curl issue
  // #10634): the option is ignored, and event_server speaks only HTTP/1.1.
  event_server server;
  collector got;
  http_loop loop(opts);
  for (int i = 0; i < 10; ++i) {
    loop.submit(get(server.url() + "/one"), got.on(i));
    REQUIRE(got.wait(i + 1));
    CHECK(got.one(i).status == 200);
  }
  CHECK(server.connections() == 1);
}

TEST_CASE("http_loop's callbacks may submit more, and one that throws stops nothing", "[http_loop]") {
  event_server server;
  collector got;
  http_loop loop(quick());
  std::function<void(int)> next = [&](int i) {
    loop.submit(get(server.url() + "/chain/" + std::to_string(i)), [&, i](http_response r) {
      got.on(i)(std::move(r));
      if (i < 9) next(i + 1);
      throw std::runtime_error("a callback's bug");
    });
  };
  next(0);
  REQUIRE(got.wait(10));
  for (int i = 0; i < 10; ++i) CHECK(got.one(i).status == 200);
  CHECK(got.threads().size() == 1);
}

TEST_CASE("a http_loop that cannot start answers each submit at once with stopped_error", "[http_loop]") {
  { http_loop warm(quick()); }  // libcurl's global init, before the limit
  // No file descriptor left for epoll_create1: lower the limit to the lowest free one.
  int lowest_free = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  REQUIRE(lowest_free >= 0);
  ::close(lowest_free);
  rlimit saved{};
  REQUIRE(::getrlimit(RLIMIT_NOFILE, &saved) == 0);
  rlimit low = saved;
  low.rlim_cur = static_cast<rlim_t>(lowest_free);
  REQUIRE(::setrlimit(RLIMIT_NOFILE, &low) == 0);
  auto loop = std::make_unique<http_loop>(quick());
  REQUIRE(::setrlimit(RLIMIT_NOFILE, &saved) == 0);
  CHECK_THAT(loop->start_error(), Catch::Contains("epoll_create1"));
  collector got;
  loop->submit(get("http://127.0.0.1:1/"), got.on(0));
  CHECK(got.calls() == 1);  // before submit returned, on this thread
  CHECK(got.threads().count(std::this_thread::get_id()) == 1);
  CHECK(got.one(0).error == http_loop::stopped_error);
  loop->cancel(1);
  loop.reset();
  CHECK(got.calls() == 1);
}

TEST_CASE("http_loop starts tagged requests only as their limit allows, in order, and the rest as slots free",
          "[http_loop][limiter]") {
  event_server server, other;
  collector got;
  auto o = quick();
  o.limits.per_function.initial_limit = 2;
  o.limits.per_function.max_limit = 2;
  http_loop loop(o);
  const http_loop::limit_tag tag{"django", "sendPickupNotification"};
  for (int i = 0; i < 8; ++i) loop.submit(get(server.url() + "/delay/150"), got.on(i), 0, tag);
  // an untagged request is not held back by the tagged ones
  loop.submit(get(other.url() + "/now"), got.on(100));
  REQUIRE(got.wait(1, 5s));
  CHECK(got.of(100).size() == 1);
  REQUIRE(wait_for([&] {
    auto l = loop.limits();
    return !l.limits.empty() && l.waiting["django"] == 6;
  }, 10s, 5ms));
  auto l = loop.limits();
  REQUIRE(l.limits.size() == 1);
  CHECK(l.limits[0].downstream == "django");
  CHECK(l.limits[0].function == "sendPickupNotification");
  CHECK(l.limits[0].limit.in_flight == 2);
  REQUIRE(got.wait(9));
  for (int i = 0; i < 8; ++i) CHECK(got.one(i).status == 200);
  CHECK(server.max_waiting() <= 2);  // never more than the limit at the server
  CHECK(loop.limits().waiting["django"] == 0);
}

TEST_CASE("a 429 with Retry-After pauses its downstream: tagged requests are deferred unsent, others go on",
          "[http_loop][limiter]") {
  fake_server server;
  server.on("GET", "/busy", {429, "", {{"Retry-After", "30"}}});
  server.on("GET", "/ok", {200, "{}", {}});
  collector got;
  http_loop loop(quick());
  loop.submit(get(server.url() + "/busy"), got.on(0), 0, {"django", "f"});
  REQUIRE(got.wait(1));
  CHECK(got.one(0).status == 429);
  loop.submit(get(server.url() + "/ok"), got.on(1), 0, {"django", "g"});  // every function of django
  loop.submit(get(server.url() + "/ok"), got.on(2), 0, {"firebase", "f"});  // another downstream
  REQUIRE(got.wait(3));
  auto deferred = got.one(1);
  CHECK(deferred.status == 0);
  CHECK(deferred.circuit_open_ms > 25000);
  CHECK(deferred.circuit_open_ms <= 30000);
  CHECK(classify(deferred, "GET /ok").error_code == "circuit_open");  // no attempt spent
  CHECK(got.one(2).status == 200);
  CHECK(server.requests_to("GET", "/ok").size() == 1);  // the deferred one never left
}

TEST_CASE("a 503 with Retry-After cuts the limit but pauses nothing: the next call goes out", "[http_loop][limiter]") {
  fake_server server;
  server.on("GET", "/busy", {503, "", {{"Retry-After", "30"}}});
  server.on("GET", "/ok", {200, "{}", {}});
  collector got;
  http_loop loop(quick());
  loop.submit(get(server.url() + "/busy"), got.on(0), 0, {"django", "f"});
  REQUIRE(got.wait(1));
  CHECK(got.one(0).status == 503);
  CHECK(classify(got.one(0), "GET /busy").retry_after_ms == 30000);  // that job waits its Retry-After
  loop.submit(get(server.url() + "/ok"), got.on(1), 0, {"django", "f"});
  REQUIRE(got.wait(2));
  CHECK(got.one(1).status == 200);
  CHECK(server.requests_to("GET", "/ok").size() == 1);
}

TEST_CASE("http_loop's cancel answers a request waiting for its limit, which then never starts",
          "[http_loop][limiter]") {
  event_server server;
  collector got;
  auto o = quick();
  o.limits.per_function.initial_limit = 1;
  o.limits.per_function.max_limit = 1;
  http_loop loop(o);
  loop.submit(get(server.url() + "/delay/300"), got.on(0), 0, {"webhook", "f"});
  auto waiting = loop.submit(get(server.url() + "/second"), got.on(1), 0, {"webhook", "f"});
  REQUIRE(wait_for([&] { return loop.limits().waiting["webhook"] == 1; }, 10s, 5ms));
  loop.cancel(waiting);
  REQUIRE(got.wait(2));
  CHECK(got.one(1).error == http_loop::cancelled_error);
  CHECK(got.one(0).status == 200);
  std::this_thread::sleep_for(100ms);
  CHECK(server.requests() == 1);
}

// Tests of protocol/log: JSON lines on standard error (docs/operations.md, "Watching it").
#include "protocol/log.hpp"

#include <catch2/catch.hpp>

#include <cstdio>
#include <cstdlib>
#include <regex>
#include <sstream>
#include <thread>
#include <sys/wait.h>
#include <unistd.h>
#include <vector>

namespace klog = klynaa::log;  // plain `log` would clash with ::log of <cmath>

namespace {

/// Sends the log to a string for the life of the test, then back to stderr.
struct captured_log {
  std::ostringstream out;
  explicit captured_log(klog::level min = klog::level::trace) { klog::init(min, &out); }
  ~captured_log() { klog::init(klog::level::info); }

  std::vector<nlohmann::json> lines() const {
    std::vector<nlohmann::json> result;
    std::istringstream in(out.str());
    std::string line;
    while (std::getline(in, line)) result.push_back(nlohmann::json::parse(line));  // throws if not JSON
    return result;
  }
};

const std::regex iso_ms(R"(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z)");

}  // namespace

TEST_CASE("a log line is one JSON object with ts, level, component and msg first", "[log]") {
  captured_log cap;
  klog::info("broker", "listening", {{"endpoint", "tcp://127.0.0.1:5555"}});
  std::string text = cap.out.str();
  REQUIRE(!text.empty());
  CHECK(text.back() == '\n');
  CHECK(text.find('\n') == text.size() - 1);
  CHECK(text.rfind("{\"ts\":\"", 0) == 0);
  CHECK(text.find("\"level\":\"info\",\"component\":\"broker\",\"msg\":\"listening\"") != std::string::npos);
  auto lines = cap.lines();
  REQUIRE(lines.size() == 1);
  CHECK(lines[0]["level"] == "info");
  CHECK(lines[0]["component"] == "broker");
  CHECK(lines[0]["msg"] == "listening");
  CHECK(lines[0]["endpoint"] == "tcp://127.0.0.1:5555");
  CHECK(std::regex_match(lines[0]["ts"].get<std::string>(), iso_ms));
}

TEST_CASE("job fields are written as typed JSON values", "[log]") {
  captured_log cap;
  klog::info("escrow", "job end",
            {{"job_id", "evt-1#2"}, {"function", "processEscrowRelease"}, {"attempt", 3}, {"node", "n1"},
             {"duration_ms", 12.5}, {"outcome", "retry"}, {"error", "HTTP 503"}});
  auto lines = cap.lines();
  REQUIRE(lines.size() == 1);
  CHECK(lines[0]["job_id"] == "evt-1#2");
  CHECK(lines[0]["function"] == "processEscrowRelease");
  CHECK(lines[0]["attempt"] == 3);
  CHECK(lines[0]["node"] == "n1");
  CHECK(lines[0]["duration_ms"] == 12.5);
  CHECK(lines[0]["outcome"] == "retry");
  CHECK(lines[0]["error"] == "HTTP 503");
}

TEST_CASE("messages and fields are escaped, and invalid UTF-8 never throws", "[log]") {
  captured_log cap;
  klog::warning("geo", "quote \" newline \n tab \t backslash \\ caf\xc3\xa9", {{"bad", std::string("\xff\xfe")}});
  klog::error(std::string_view("x\0y", 3), "nul", nlohmann::json::object());
  auto lines = cap.lines();
  REQUIRE(lines.size() == 2);
  CHECK(lines[0]["msg"] == "quote \" newline \n tab \t backslash \\ caf\xc3\xa9");
  CHECK(lines[0]["bad"].is_string());
  CHECK(lines[1]["component"] == std::string("x\0y", 3));
}

TEST_CASE("fields_text writes the same line as a JSON object of the same fields and escapes values", "[log]") {
  const std::string tricky = "quote \" backslash \\ newline \n tab \t caf\xc3\xa9 bad \xff";
  klog::fields_text f;
  f.add("job_id", "evt-1#1").add("attempt", 3).add("duration_ms", int64_t{-12}).add("error", tricky);
  const auto text = klog::format_line(1700000000123, klog::level::warning, "geo", "job failed", f);
  // The same members and values (a JSON object's keys come sorted; these in the order added).
  CHECK(nlohmann::json::parse(text) ==
        nlohmann::json::parse(klog::format_line(1700000000123, klog::level::warning, "geo", "job failed",
                                                {{"job_id", "evt-1#1"}, {"attempt", 3}, {"duration_ms", -12},
                                                 {"error", tricky}})));
  CHECK(text.find(R"("msg":"job failed","job_id":"evt-1#1","attempt":3,"duration_ms":-12,"error":)") !=
        std::string::npos);
  captured_log cap;
  klog::write(klog::level::info, "geo", "job started", klog::fields_text().add("job_id", "j").add("attempt", 1));
  klog::write(klog::level::debug, "geo", "below the level", klog::fields_text());
  klog::set_level(klog::level::info);
  klog::write(klog::level::debug, "geo", "dropped", klog::fields_text().add("job_id", "k"));
  auto lines = cap.lines();
  REQUIRE(lines.size() == 2);
  CHECK(lines[0]["job_id"] == "j");
  CHECK(lines[0]["attempt"] == 1);
  CHECK(lines[0]["msg"] == "job started");
  CHECK(lines[1]["msg"] == "below the level");  // trace was the level until set_level
  CHECK(lines[1].size() == 4);  // ts, level, component, msg: no fields
}

TEST_CASE("fields cannot hide the fixed keys", "[log]") {
  captured_log cap;
  klog::info("cli", "real", {{"msg", "fake"}, {"level", "error"}});
  klog::info("cli", "array", nlohmann::json::array({1, 2}));
  auto lines = cap.lines();
  REQUIRE(lines.size() == 2);
  CHECK(lines[0]["msg"] == "real");
  CHECK(lines[0]["level"] == "info");
  CHECK(lines[0]["field.msg"] == "fake");
  CHECK(lines[0]["field.level"] == "error");
  CHECK(lines[1]["fields"] == nlohmann::json::array({1, 2}));
}

TEST_CASE("lines below the minimum level are dropped", "[log]") {
  captured_log cap(klog::level::warning);
  CHECK_FALSE(klog::enabled(klog::level::info));
  CHECK(klog::enabled(klog::level::warning));
  CHECK(klog::enabled(klog::level::error));
  klog::trace("t", "no");
  klog::debug("t", "no");
  klog::info("t", "no");
  klog::warning("t", "yes");
  klog::error("t", "yes");
  auto lines = cap.lines();
  REQUIRE(lines.size() == 2);
  CHECK(lines[0]["level"] == "warning");
  CHECK(lines[1]["level"] == "error");

  klog::set_level(klog::level::trace);
  CHECK(klog::min_level() == klog::level::trace);
  klog::trace("t", "now");
  CHECK(cap.lines().size() == 3);
}

TEST_CASE("KLYNAA_LOG evaluates its arguments only when the level is enabled", "[log]") {
  captured_log cap(klog::level::info);
  int evaluated = 0;
  auto expensive = [&] {
    ++evaluated;
    return nlohmann::json{{"n", evaluated}};
  };
  KLYNAA_LOG(debug, "geo", "skipped", expensive());
  CHECK(evaluated == 0);
  KLYNAA_LOG(info, "geo", "kept", expensive());
  KLYNAA_LOG(info, "geo", "no fields");
  CHECK(evaluated == 1);
  auto lines = cap.lines();
  REQUIRE(lines.size() == 2);
  CHECK(lines[0]["n"] == 1);
  CHECK(lines[1]["msg"] == "no fields");
}

TEST_CASE("level names parse and print", "[log]") {
  klog::level l = klog::level::info;
  CHECK(klog::parse_level("trace", l));
  CHECK(l == klog::level::trace);
  CHECK(klog::parse_level("warn", l));
  CHECK(l == klog::level::warning);
  CHECK(klog::parse_level("error", l));
  CHECK(l == klog::level::error);
  CHECK_FALSE(klog::parse_level("ERROR", l));
  CHECK_FALSE(klog::parse_level("", l));
  CHECK(l == klog::level::error);
  for (auto each : {klog::level::trace, klog::level::debug, klog::level::info, klog::level::warning, klog::level::error}) {
    klog::level back = klog::level::info;
    CHECK(klog::parse_level(klog::to_string(each), back));
    CHECK(back == each);
  }
}

TEST_CASE("timestamps are ISO 8601 UTC with milliseconds", "[log]") {
  CHECK(klog::iso8601_utc_ms(0) == "1970-01-01T00:00:00.000Z");
  CHECK(klog::iso8601_utc_ms(1795817874123) == "2026-11-27T22:17:54.123Z");
  CHECK(klog::iso8601_utc_ms(951782400000) == "2000-02-29T00:00:00.000Z");
  CHECK(klog::iso8601_utc_ms(-1) == "1969-12-31T23:59:59.999Z");
  CHECK(klog::iso8601_utc_ms(253402300799999) == "9999-12-31T23:59:59.999Z");
  CHECK(std::regex_match(klog::iso8601_utc_ms(klog::now_ms()), iso_ms));
}

TEST_CASE("the line's ts is the time of the call", "[log]") {
  captured_log cap;
  int64_t before = klog::now_ms();
  klog::info("t", "now");
  int64_t after = klog::now_ms();
  auto ts = cap.lines().at(0)["ts"].get<std::string>();
  CHECK(ts >= klog::iso8601_utc_ms(before));
  CHECK(ts <= klog::iso8601_utc_ms(after));
}

TEST_CASE("format_line renders a record without writing it", "[log]") {
  CHECK(klog::format_line(0, klog::level::error, "store", "disk full", {{"free", 0}}) ==
        R"({"ts":"1970-01-01T00:00:00.000Z","level":"error","component":"store","msg":"disk full","free":0})");
  CHECK(klog::format_line(0, klog::level::debug, "a", "b") ==
        R"({"ts":"1970-01-01T00:00:00.000Z","level":"debug","component":"a","msg":"b"})");
}

TEST_CASE("redact shows at most the first 4 characters of a secret", "[log]") {
  CHECK(klog::redact("abcdefghijklmnop") == "abcd…");
  CHECK(klog::redact("short-key") == "…");
  CHECK(klog::redact("") == "");
  // A multi-byte character is kept whole.
  CHECK(klog::redact("\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9") == "\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9…");
}

TEST_CASE("lines from many threads never interleave", "[log]") {
  captured_log cap;
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([t] {
      for (int i = 0; i < 200; ++i) klog::info("t", std::string(100, 'x'), {{"thread", t}, {"i", i}});
    });
  for (auto& th : threads) th.join();
  auto lines = cap.lines();
  CHECK(lines.size() == 800);
}

TEST_CASE("logging before init writes JSON lines to standard error", "[log]") {
  // A fresh process is the only place where init() was never called: run this
  // test again in a child, which logs and exits; read the child's stderr.
  if (std::getenv("KLYNAA_LOG_TEST_CHILD")) {
    klog::info("child", "before init", {{"pid", 1}});
    klog::debug("child", "filtered by the default level");
    return;
  }
  char self[4096] = {};
  REQUIRE(::readlink("/proc/self/exe", self, sizeof self - 1) > 0);
  std::string command = std::string("KLYNAA_LOG_TEST_CHILD=1 '") + self +
                        "' 'logging before init writes JSON lines to standard error' 2>&1 >/dev/null";
  FILE* child = ::popen(command.c_str(), "r");
  REQUIRE(child != nullptr);
  std::string output;
  char buf[512];
  while (size_t n = std::fread(buf, 1, sizeof buf, child)) output.append(buf, n);
  CHECK(::pclose(child) == 0);
  INFO(output);
  auto line = nlohmann::json::parse(output);  // exactly one line: debug is filtered by default
  CHECK(line["component"] == "child");
  CHECK(line["msg"] == "before init");
  CHECK(line["level"] == "info");
  CHECK(std::regex_match(line["ts"].get<std::string>(), iso_ms));
}

TEST_CASE("the log can go back to standard error and then to a stream again", "[log]") {
  klog::init(klog::level::info);
  CHECK(klog::min_level() == klog::level::info);
  captured_log cap;
  klog::info("test", "captured");
  CHECK(cap.lines().size() == 1);
}

TEST_CASE("the default sink writes standard error from its thread, and flush returns once every line is out",
          "[log]") {
  char path[] = "/tmp/klynaa-log-test-XXXXXX";
  const int fd = ::mkstemp(path);
  REQUIRE(fd >= 0);
  // A child logs to the default sink and ends with std::_Exit right after
  // flush(), as a fail-stopping broker does: the writer thread gets no chance
  // to write anything after that, so every line must be out when flush returns.
  const pid_t child = ::fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    ::dup2(fd, 2);
    klog::init(klog::level::info);  // the default sink: standard error
    for (int i = 0; i < 2000; ++i) klog::info("test", "line", {{"i", i}});
    klog::flush();
    std::_Exit(0);
  }
  int status = 0;
  REQUIRE(::waitpid(child, &status, 0) == child);
  REQUIRE(WIFEXITED(status));
  std::FILE* f = std::fopen(path, "r");
  REQUIRE(f != nullptr);
  std::vector<int> seen;
  char buf[512];
  while (std::fgets(buf, sizeof buf, f)) {
    auto j = nlohmann::json::parse(buf, nullptr, false);
    if (j.is_object() && j.value("component", "") == "test") seen.push_back(j["i"].get<int>());
  }
  std::fclose(f);
  ::close(fd);
  std::remove(path);
  REQUIRE(seen.size() == 2000);
  for (int i = 0; i < 2000; ++i) CHECK(seen[static_cast<size_t>(i)] == i);  // whole lines, in order
}

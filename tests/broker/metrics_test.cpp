// The Prometheus exposition of /metrics (broker/admin.hpp render_metrics) from a
// stats snapshot with every part filled in: checked by Debian's promtool, and
// every metric it names is documented in docs/operations.md.
#include <sys/wait.h>

#include <cstdio>
#include <fstream>
#include <regex>
#include <set>
#include <sstream>

#include <catch2/catch.hpp>

#include "broker/admin.hpp"

namespace {

nlohmann::json full_snapshot() {
  return nlohmann::json::parse(R"({
    "ts_ms": 1700000000000, "pending": 3, "dead_letters": 1, "dead_total": 2,
    "functions": {
      "processEscrowRelease": {"ready": 1, "running": 1, "retry_wait": 1, "outcomes": {"ok": 5, "retry": 2, "dead": 1}},
      "sendPickupNotification": {"ready": 0, "outcomes": {"ok": 9}}
    },
    "durations": {"processEscrowRelease": {"bounds": [0.001, 0.01, 0.1, 1], "buckets": [1, 2, 3, 1], "sum": 1.5, "count": 8}},
    "ingress": {"accepted": 10, "duplicate": 1, "rejected": 2, "pong": 3},
    "nodes": [{"name": "node-\"a\"", "kinds": ["escrow"], "credit": 3, "running": 1, "last_heartbeat_ms": 1700000000000,
               "withdrawn": {},
               "stats": {"jobs": {"processEscrowRelease": {"ok": 5, "retry": 2, "dead": 1}}, "running": 1,
                         "extra": {"downstream": {"django/2xx": 7, "django/5xx": 2},
                                   "breakers": {"django": {"state": "open", "consecutive_failures": 5, "opens": 1,
                                                           "retry_in_ms": 3000}}}}}],
    "disk_free_mb": 1234
  })");
}

std::string read_doc(const std::string& name) {
  std::ifstream in(std::string(KLYNAA_SOURCE_DIR) + "/docs/" + name);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

TEST_CASE("/metrics passes promtool check metrics", "[metrics]") {
  auto text = klynaa::broker::render_metrics(full_snapshot());
  char path[] = "/tmp/klynaa-metrics-XXXXXX";
  int fd = ::mkstemp(path);
  REQUIRE(fd >= 0);
  ::close(fd);
  { std::ofstream(path) << text; }
  std::string cmd = "/usr/bin/promtool check metrics < " + std::string(path) + " 2>&1";
  FILE* p = ::popen(cmd.c_str(), "r");
  REQUIRE(p != nullptr);
  std::string out;
  char buf[512];
  while (std::fgets(buf, sizeof buf, p)) out += buf;
  int status = ::pclose(p);
  std::remove(path);
  INFO(text);
  INFO("promtool: " << out);
  REQUIRE(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);  // 127: promtool missing (scripts/setup.sh installs prometheus)
  CHECK(out.empty());               // no lint findings either
}

TEST_CASE("every metric /metrics exposes is documented in docs/operations.md", "[metrics][docs]") {
  auto text = klynaa::broker::render_metrics(full_snapshot());
  auto doc = read_doc("operations.md");
  REQUIRE(!doc.empty());
  std::regex type_line(R"(# TYPE (klynaa_[a-z_]+) (counter|gauge|histogram))");
  std::set<std::string> names;
  for (std::sregex_iterator it(text.begin(), text.end(), type_line), end; it != end; ++it) names.insert((*it)[1]);
  CHECK(names.size() >= 12);
  for (auto& n : names) {
    INFO(n);
    CHECK(doc.find(n) != std::string::npos);
  }
  // The names docs/operations.md ("Watching it") lists are among them.
  for (auto n : {"klynaa_jobs_total", "klynaa_job_duration_seconds", "klynaa_queue_depth", "klynaa_dead_letters",
                 "klynaa_nodes", "klynaa_ingress_requests_total", "klynaa_downstream_requests_total"})
    CHECK(names.count(n) == 1);
}

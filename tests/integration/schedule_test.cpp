// Schedules (docs/configuration.md, "Schedules"): a firing is recorded before its job exists and
// happens once per scheduled time across restarts; a time missed while the
// broker was down fires at start within scheduler.misfire_grace_seconds.
#include <ctime>

#include <httplib.h>

#include "support.hpp"

using namespace klynaa::test;

namespace {

/// A daily cron expression for the UTC minute `minutes_ago` minutes before now.
std::string cron_minutes_ago(int minutes_ago) {
  std::time_t t = std::time(nullptr) - minutes_ago * 60;
  std::tm tm{};
  gmtime_r(&t, &tm);
  return std::to_string(tm.tm_min) + " " + std::to_string(tm.tm_hour) + " * * *";
}

int64_t cleanup_jobs(const klynaa_server& srv) {
  auto addr = srv.endpoints()["admin"].get<std::string>();
  auto colon = addr.rfind(':');
  httplib::Client c(addr.substr(0, colon), std::stoi(addr.substr(colon + 1)));
  auto r = c.Get("/stats");
  if (!r) return -1;
  auto s = json::parse(r->body, nullptr, false);
  if (!s.contains("functions") || !s["functions"].contains("cleanupData")) return 0;
  return s["functions"]["cleanupData"].value("ready", int64_t{0});
}

}  // namespace

TEST_CASE("a schedule missed while the broker was down fires once at start, and not again after a restart",
          "[schedule]") {
  temp_dir d;
  write_file(d / "klynaa.toml", "[[schedule]]\nname = \"purge\"\ncron = \"" + cron_minutes_ago(3) +
                                    "\"\nfunction = \"cleanupData\"\ndata = { older_than_days = 30 }\n");
  klynaa_server srv("broker", {{"KLYNAA_SCHEDULER_MISFIRE_GRACE_SECONDS", "3600"}}, {"--config", d / "klynaa.toml"});
  CHECK(wait_for([&] { return cleanup_jobs(srv) == 1; }, 5000ms));
  CHECK(srv.log().find("schedule fired") != std::string::npos);
  srv.kill9_and_restart();
  std::this_thread::sleep_for(1000ms);
  CHECK(cleanup_jobs(srv) == 1);  // the same scheduled instant: recorded, not fired twice
}

TEST_CASE("a schedule missed by more than the misfire grace is skipped with a log line", "[schedule]") {
  temp_dir d;
  write_file(d / "klynaa.toml", "[scheduler]\nmisfire_grace_seconds = 60\n[[schedule]]\nname = \"purge\"\ncron = \"" +
                                    cron_minutes_ago(5) + "\"\nfunction = \"cleanupData\"\n");
  klynaa_server srv("broker", {{"KLYNAA_SCHEDULER_MISFIRE_GRACE_SECONDS", "60"}}, {"--config", d / "klynaa.toml"});
  std::this_thread::sleep_for(1000ms);
  CHECK(cleanup_jobs(srv) == 0);
  CHECK(srv.log().find("missed schedule skipped") != std::string::npos);
}

TEST_CASE("a bad cron expression or time zone exits 2 naming the schedule and the key", "[schedule][cli]") {
  temp_dir d;
  write_file(d / "a.toml", "[[schedule]]\nname = \"x\"\ncron = \"0 25 * * *\"\nfunction = \"cleanupData\"\n");
  auto [c1, o1] = run_cli({"broker", "--config", d / "a.toml", "--data-dir", d / "data"});
  CHECK(c1 == 2);
  CHECK(o1.find("\"x\" cron") != std::string::npos);
  write_file(d / "b.toml", "[[schedule]]\nname = \"y\"\ncron = \"0 6 * * *\"\nfunction = \"cleanupData\"\ntimezone = \"Mars/Olympus\"\n");
  auto [c2, o2] = run_cli({"broker", "--config", d / "b.toml", "--data-dir", d / "data"});
  CHECK(c2 == 2);
  CHECK(o2.find("timezone") != std::string::npos);
}

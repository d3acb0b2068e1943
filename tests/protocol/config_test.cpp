// Tests of protocol/config: the TOML file and environment of contract §5 and §8.
#include "protocol/config.hpp"

#include <catch2/catch.hpp>

#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "tests/support/temp_dir.hpp"

using klynaa::protocol::config;
using klynaa::protocol::config_error;
using klynaa::protocol::parse_config;
using klynaa::test::temp_dir;
using klynaa::test::write_file;
using env_map = std::map<std::string, std::string>;

namespace {

config parse_ok(std::string_view text, const env_map& env = {}) {
  auto result = parse_config(text, "klynaa.toml", env);
  if (auto* e = std::get_if<config_error>(&result)) FAIL("unexpected config error: " << e->message);
  return std::get<config>(result);
}

std::string parse_error(std::string_view text, const env_map& env = {}) {
  auto result = parse_config(text, "klynaa.toml", env);
  if (std::holds_alternative<config>(result)) FAIL("expected a config error for:\n" << text);
  return std::get<config_error>(result).message;
}

void check_defaults(const config& c) {
  CHECK(c.ingress.bind == "tcp://127.0.0.1:5555");
  CHECK(c.ingress.max_bytes == 1048576);
  CHECK_FALSE(c.ingress.curve);
  CHECK(c.ingress.curve_secret_file.empty());
  CHECK(c.ingress.curve_allow_file.empty());
  CHECK(c.ingress.max_pending == 1000000);
  CHECK(c.cluster.bind == "tcp://127.0.0.1:5556");
  CHECK(c.cluster.heartbeat_ms == 1000);
  CHECK(c.cluster.lease_ms == 30000);
  CHECK(c.cluster.node_timeout_ms == 5000);
  CHECK(c.admin.bind == "127.0.0.1:9464");
  CHECK(c.admin.token.empty());
  CHECK(c.django.url.empty());
  CHECK(c.django.api_key.empty());
  CHECK(c.django.connect_timeout_ms == 2000);
  CHECK(c.django.timeout_ms == 10000);
  CHECK(c.django.ca_file.empty());
  CHECK(c.notifications.service == "log");
  CHECK(c.notifications.webhook_url.empty());
  CHECK(c.notifications.firebase_url == "https://fcm.googleapis.com");
  CHECK(c.notifications.firebase_token_url == "https://oauth2.googleapis.com/token");
  CHECK(c.notifications.templates.empty());
  CHECK(c.escrow.hold_seconds == 86400);
  CHECK(c.geo.radius_km == 5.0);
  CHECK(c.geo.max_workers == 10);
  CHECK(c.geo.refresh_seconds == 300);
  CHECK(c.retry.max_attempts == 8);
  CHECK(c.retry.base_delay_ms == 1000);
  CHECK(c.retry.max_delay_ms == 3600000);
  CHECK(c.retry_functions.empty());
  CHECK(c.scheduler.misfire_grace_seconds == 3600);
  CHECK(c.shutdown.grace_seconds == 30);
  CHECK(c.log.level == "info");
  CHECK(c.store.backend == "sqlite");
  CHECK(c.store.synchronous == "full");
  CHECK(c.store.dedup_retention_days == 7);
  CHECK(c.node.notifier_workers == 1000);
  CHECK(c.node.limit_initial == 10);
  CHECK(c.node.downstream_max_in_flight == 2000);
  CHECK(c.schedules.empty());
  CHECK(c.env.empty());
}

}  // namespace

TEST_CASE("an empty config gives every default", "[config]") {
  check_defaults(parse_ok(""));
  check_defaults(parse_ok("# only a comment\n\n"));
}

TEST_CASE("a config with no source name is still parsed and errors name it config", "[config]") {
  auto ok = parse_config("", "", {});
  REQUIRE(std::holds_alternative<config>(ok));
  auto bad = parse_config("[nope]\n", "", {});
  REQUIRE(std::holds_alternative<config_error>(bad));
  CHECK(std::get<config_error>(bad).message.rfind("config: unknown section [nope]", 0) == 0);
}

TEST_CASE("every section of the contract is parsed", "[config]") {
  auto c = parse_ok(R"(
[ingress]
bind = "tcp://0.0.0.0:6000"
max_bytes = 2048
curve = true
curve_secret_file = "/etc/klynaa/broker.key"
curve_allow_file = "/etc/klynaa/clients"
max_pending = 50

[cluster]
bind = "tcp://0.0.0.0:6001"
heartbeat_ms = 250
lease_ms = 9000
node_timeout_ms = 1500

[admin]
bind = "0.0.0.0:9999"
token = "s3cret-token"

[django]
url = "https://api.klynaa.example"
api_key = "k-123"
connect_timeout_ms = 500
timeout_ms = 4000
ca_file = "/etc/ssl/ca.pem"

[notifications]
service = "webhook"
webhook_url = "http://127.0.0.1:8000/push"
firebase_url = "http://127.0.0.1:1/fcm"
firebase_token_url = "http://127.0.0.1:1/token"
firebase_project = "klynaa-prod"
sns_endpoint = "http://127.0.0.1:1/sns"

[escrow]
hold_seconds = 0

[geo]
radius_km = 7.5
max_workers = 3
refresh_seconds = 60

[retry]
max_attempts = 4
base_delay_ms = 10
max_delay_ms = 100

[scheduler]
misfire_grace_seconds = 0

[shutdown]
grace_seconds = 5

[log]
level = "debug"

[store]
backend = "postgres"
url = "postgres://localhost/klynaa"
synchronous = "normal"
dedup_retention_days = 30

[node]
notifier_workers = 2
escrow_workers = 3
geo_workers = 6
geo_prefetch = 0
scheduler_workers = 5
)");
  CHECK(c.ingress.bind == "tcp://0.0.0.0:6000");
  CHECK(c.ingress.max_bytes == 2048);
  CHECK(c.ingress.curve);
  CHECK(c.ingress.curve_secret_file == "/etc/klynaa/broker.key");
  CHECK(c.ingress.curve_allow_file == "/etc/klynaa/clients");
  CHECK(c.ingress.max_pending == 50);
  CHECK(c.cluster.bind == "tcp://0.0.0.0:6001");
  CHECK(c.cluster.heartbeat_ms == 250);
  CHECK(c.cluster.lease_ms == 9000);
  CHECK(c.cluster.node_timeout_ms == 1500);
  CHECK(c.admin.bind == "0.0.0.0:9999");
  CHECK(c.admin.token == "s3cret-token");
  CHECK(c.django.url == "https://api.klynaa.example");
  CHECK(c.django.api_key == "k-123");
  CHECK(c.django.connect_timeout_ms == 500);
  CHECK(c.django.timeout_ms == 4000);
  CHECK(c.django.ca_file == "/etc/ssl/ca.pem");
  CHECK(c.notifications.service == "webhook");
  CHECK(c.notifications.webhook_url == "http://127.0.0.1:8000/push");
  CHECK(c.notifications.firebase_url == "http://127.0.0.1:1/fcm");
  CHECK(c.notifications.firebase_token_url == "http://127.0.0.1:1/token");
  CHECK(c.notifications.firebase_project == "klynaa-prod");
  CHECK(c.notifications.sns_endpoint == "http://127.0.0.1:1/sns");
  CHECK(c.escrow.hold_seconds == 0);
  CHECK(c.geo.radius_km == 7.5);
  CHECK(c.geo.max_workers == 3);
  CHECK(c.geo.refresh_seconds == 60);
  CHECK(c.retry.max_attempts == 4);
  CHECK(c.retry.base_delay_ms == 10);
  CHECK(c.retry.max_delay_ms == 100);
  CHECK(c.scheduler.misfire_grace_seconds == 0);
  CHECK(c.shutdown.grace_seconds == 5);
  CHECK(c.log.level == "debug");
  CHECK(c.store.backend == "postgres");
  CHECK(c.store.url == "postgres://localhost/klynaa");
  CHECK(c.store.synchronous == "normal");
  CHECK(c.store.dedup_retention_days == 30);
  CHECK(c.node.notifier_workers == 2);
  CHECK(c.node.escrow_workers == 3);
  CHECK(c.node.geo_workers == 6);
  CHECK(c.node.geo_prefetch == 0);
  CHECK(c.node.scheduler_workers == 5);
}

TEST_CASE("an integer is accepted where a number is expected", "[config]") {
  CHECK(parse_ok("[geo]\nradius_km = 12\n").geo.radius_km == 12.0);
}

TEST_CASE("notification templates are parsed per type", "[config]") {
  auto c = parse_ok(R"(
[notifications.templates.pickup_accepted]
title = "Accepted"
body = "Your pickup {pickup_id} was accepted"

[notifications.templates.daily_report]
title = "Report"
)");
  REQUIRE(c.notifications.templates.size() == 2);
  CHECK(c.notifications.templates["pickup_accepted"]["title"] == "Accepted");
  CHECK(c.notifications.templates["pickup_accepted"]["body"] == "Your pickup {pickup_id} was accepted");
  CHECK(c.notifications.templates["daily_report"].count("body") == 0);
}

TEST_CASE("a template for an unknown notification type or with an unknown key is refused", "[config]") {
  auto e = parse_error("[notifications.templates.pickup_lost]\ntitle = \"x\"\n");
  CHECK_THAT(e, Catch::Contains("unknown notification type [notifications.templates.pickup_lost]"));
  e = parse_error("[notifications.templates.pickup_accepted]\nsubtitle = \"x\"\n");
  CHECK_THAT(e, Catch::Contains("unknown key [notifications.templates.pickup_accepted] subtitle"));
  e = parse_error("[notifications.templates.pickup_accepted]\ntitle = 3\n");
  CHECK_THAT(e, Catch::Contains("title: expected a string, got an integer"));
}

TEST_CASE("an unknown key is an error naming section and key", "[config]") {
  auto e = parse_error("[geo]\nradius_km = 3\nradious_km = 4\n");
  CHECK(e.rfind("klynaa.toml: unknown key [geo] radious_km", 0) == 0);
  CHECK_THAT(e, Catch::Contains("line 3"));
}

TEST_CASE("a key outside any section is an error", "[config]") {
  CHECK_THAT(parse_error("bind = \"x\"\n"), Catch::Contains("unknown key bind outside any section"));
}

TEST_CASE("an unknown section is an error naming it", "[config]") {
  CHECK(parse_error("[geography]\nradius_km = 3\n").rfind("klynaa.toml: unknown section [geography]", 0) == 0);
  CHECK_THAT(parse_error("[ingress.extra]\nx = 1\n"), Catch::Contains("unknown key [ingress] extra"));
}

TEST_CASE("a section that is not a table is an error", "[config]") {
  CHECK_THAT(parse_error("geo = 5\n"), Catch::Contains("[geo]: expected a table, got an integer"));
}

TEST_CASE("a value of the wrong type names the key and the expected type", "[config]") {
  CHECK_THAT(parse_error("[geo]\nradius_km = \"five\"\n"),
             Catch::Contains("klynaa.toml: [geo] radius_km: expected a number, got a string"));
  CHECK_THAT(parse_error("[geo]\nmax_workers = 2.5\n"),
             Catch::Contains("[geo] max_workers: expected an integer, got a float"));
  CHECK_THAT(parse_error("[ingress]\ncurve = \"yes\"\n"),
             Catch::Contains("[ingress] curve: expected a boolean, got a string"));
  CHECK_THAT(parse_error("[ingress]\nbind = 5555\n"),
             Catch::Contains("[ingress] bind: expected a string, got an integer"));
  CHECK_THAT(parse_error("[django]\nurl = [\"a\"]\n"),
             Catch::Contains("[django] url: expected a string, got an array"));
}

TEST_CASE("invalid values are errors naming the key and the rule", "[config]") {
  CHECK_THAT(parse_error("[django]\ntimeout_ms = -1\n"),
             Catch::Contains("[django] timeout_ms: must be at least 1, got -1"));
  CHECK_THAT(parse_error("[django]\nconnect_timeout_ms = -5\n"), Catch::Contains("connect_timeout_ms"));
  CHECK_THAT(parse_error("[shutdown]\ngrace_seconds = -1\n"),
             Catch::Contains("[shutdown] grace_seconds: must not be negative"));
  CHECK_THAT(parse_error("[notifications]\nservice = \"pigeon\"\n"),
             Catch::Contains("[notifications] service: must be one of log, webhook, firebase, sns, got \"pigeon\""));
  CHECK_THAT(parse_error("[store]\nbackend = \"mysql\"\n"),
             Catch::Contains("[store] backend: must be one of sqlite, postgres"));
  CHECK_THAT(parse_error("[log]\nlevel = \"loud\"\n"), Catch::Contains("[log] level: must be one of"));
  CHECK_THAT(parse_error("[ingress]\nmax_bytes = 0\n"), Catch::Contains("[ingress] max_bytes"));
  CHECK_THAT(parse_error("[geo]\nradius_km = 0\n"), Catch::Contains("[geo] radius_km"));
  CHECK_THAT(parse_error("[geo]\nradius_km = inf\n"), Catch::Contains("[geo] radius_km"));
  CHECK_THAT(parse_error("[retry]\nmax_attempts = 0\n"), Catch::Contains("[retry] max_attempts"));
  CHECK_THAT(parse_error("[store]\ndedup_retention_days = 1\n"), Catch::Contains("dedup_retention_days"));
  CHECK_THAT(parse_error("[escrow]\nhold_seconds = 9223372036854775807\n"),
             Catch::Contains("[escrow] hold_seconds: must be between 0 and 315360000"));
  CHECK_THAT(parse_error("[circuit_breaker]\nfailure_threshold = 0\n"), Catch::Contains("failure_threshold"));
  CHECK_THAT(parse_error("[node]\nmax_restarts = 0\n"), Catch::Contains("[node] max_restarts"));
  CHECK_THAT(parse_error("[node]\ngeo_prefetch = -1\n"),
             Catch::Contains("[node] geo_prefetch: must be between 0 and 100000"));
  CHECK_THAT(parse_error("[node]\ngeo_prefetch = 100001\n"), Catch::Contains("[node] geo_prefetch"));
  CHECK_THAT(parse_error("[node]\nnotifier_workers = 100001\n"),
             Catch::Contains("[node] notifier_workers: must be between 1 and 100000"));
  CHECK_THAT(parse_error("[node]\ngeo_workers = 0\n"), Catch::Contains("[node] geo_workers: must be between 1 and 100000"));
  CHECK_THAT(parse_error("[node]\nlimit_max = 0\n"), Catch::Contains("[node] limit_max: must be between 1 and 1000000"));
  CHECK_THAT(parse_error("[node]\nlimit_min = 20\n"),
             Catch::Contains("[node] limit_min (20) <= limit_initial (10) <= limit_max (1000) must hold"));
  CHECK_THAT(parse_error("[retry]\nbase_delay_ms = 5000\nmax_delay_ms = 100\n"),
             Catch::Contains("base_delay_ms (5000) must not exceed max_delay_ms (100)"));
  CHECK_THAT(parse_error("[cluster]\nheartbeat_ms = 5000\nnode_timeout_ms = 5000\n"),
             Catch::Contains("node_timeout_ms (5000) must exceed heartbeat_ms (5000)"));
}

TEST_CASE("empty strings are valid where the default is empty", "[config]") {
  auto c = parse_ok("[django]\nurl = \"\"\napi_key = \"\"\n");
  CHECK(c.django.url.empty());
  CHECK_THAT(parse_error("[ingress]\nbind = \"\"\n"), Catch::Contains("[ingress] bind: must not be empty"));
}

TEST_CASE("bad TOML syntax is reported with file, line and column", "[config]") {
  auto e = parse_error("[geo]\nradius_km = 5\nmax_workers = = 3\n");
  CHECK(e.rfind("klynaa.toml:3:", 0) == 0);
  CHECK_THAT(e, Catch::Contains("invalid TOML"));
  CHECK(parse_error("[geo\n").rfind("klynaa.toml:1:", 0) == 0);
  // A key defined twice is a TOML error too.
  CHECK(parse_error("[geo]\nmax_workers = 1\nmax_workers = 2\n").rfind("klynaa.toml:3:", 0) == 0);
}

TEST_CASE("retry_for merges a function's keys over [retry]", "[config]") {
  auto c = parse_ok(R"(
[retry]
max_attempts = 5
base_delay_ms = 200

[retry.processEscrowRelease]
max_attempts = 20

[retry.cleanupData]
max_delay_ms = 60000
)");
  auto escrow = c.retry_for("processEscrowRelease");
  CHECK(escrow.max_attempts == 20);
  CHECK(escrow.base_delay_ms == 200);
  CHECK(escrow.max_delay_ms == 3600000);
  auto cleanup = c.retry_for("cleanupData");
  CHECK(cleanup.max_attempts == 5);
  CHECK(cleanup.max_delay_ms == 60000);
  auto other = c.retry_for("notifyNearbyWorkers");
  CHECK(other.max_attempts == 5);
  CHECK(other.base_delay_ms == 200);
  CHECK(other.max_delay_ms == 3600000);
}

TEST_CASE("a [retry.FUNCTION] table may come before the [retry] keys it inherits", "[config]") {
  auto c = parse_ok("[retry.cleanupData]\nmax_attempts = 2\n[retry]\nbase_delay_ms = 7\n");
  CHECK(c.retry_for("cleanupData").max_attempts == 2);
  CHECK(c.retry_for("cleanupData").base_delay_ms == 7);
}

TEST_CASE("per-function retry keys inherit environment overrides of [retry]", "[config]") {
  auto c = parse_ok("[retry.cleanupData]\nmax_attempts = 2\n", {{"KLYNAA_RETRY_BASE_DELAY_MS", "42"}});
  CHECK(c.retry_for("cleanupData").base_delay_ms == 42);
  CHECK(c.retry_for("cleanupData").max_attempts == 2);
}

TEST_CASE("a retry table for an unknown function is an error", "[config]") {
  auto e = parse_error("[retry.sendEmail]\nmax_attempts = 3\n");
  CHECK_THAT(e, Catch::Contains("unknown function [retry.sendEmail]"));
  CHECK_THAT(e, Catch::Contains("processEscrowRelease"));
  CHECK_THAT(parse_error("[retry.cleanupData]\nmax_attempts = 0\n"),
             Catch::Contains("[retry.cleanupData] max_attempts: must be at least 1"));
  CHECK_THAT(parse_error("[retry.cleanupData]\ntries = 3\n"),
             Catch::Contains("unknown key [retry.cleanupData] tries"));
  CHECK_THAT(parse_error("[retry.cleanupData]\nbase_delay_ms = 10\nmax_delay_ms = 5\n"),
             Catch::Contains("[retry.cleanupData] base_delay_ms (10) must not exceed max_delay_ms (5)"));
}

TEST_CASE("schedules are parsed with their data as JSON", "[config]") {
  auto c = parse_ok(R"(
[[schedule]]
name = "daily-report"
cron = "0 6 * * *"
function = "generateDailyReport"

[[schedule]]
name = "cleanup-often"
cron = "*/15  3-5 1,15 * 1-5"
function = "cleanupData"
data = { older_than_days = 30, tags = ["a", "b"], nested = { ok = true, ratio = 0.5 } }
timezone = "Europe/Paris"
)");
  REQUIRE(c.schedules.size() == 2);
  CHECK(c.schedules[0].name == "daily-report");
  CHECK(c.schedules[0].cron == "0 6 * * *");
  CHECK(c.schedules[0].function == "generateDailyReport");
  CHECK(c.schedules[0].data == nlohmann::json::object());
  CHECK(c.schedules[0].timezone == "UTC");
  CHECK(c.schedules[1].timezone == "Europe/Paris");
  CHECK(c.schedules[1].data == nlohmann::json::parse(
                                   R"({"older_than_days":30,"tags":["a","b"],"nested":{"ok":true,"ratio":0.5}})"));
}

TEST_CASE("invalid schedules are errors naming the entry", "[config]") {
  CHECK_THAT(parse_error("[[schedule]]\ncron = \"0 6 * * *\"\nfunction = \"cleanupData\"\n"),
             Catch::Contains("[[schedule]] #1: missing name"));
  CHECK_THAT(parse_error("[[schedule]]\nname = \"x\"\nfunction = \"cleanupData\"\n"),
             Catch::Contains("[[schedule]] #1 (x): missing cron"));
  CHECK_THAT(parse_error("[[schedule]]\nname = \"x\"\ncron = \"0 6 * *\"\nfunction = \"cleanupData\"\n"),
             Catch::Contains("cron: expected 5 fields"));
  CHECK_THAT(parse_error("[[schedule]]\nname = \"x\"\ncron = \"0 6 * * *\"\n"), Catch::Contains("missing function"));
  CHECK_THAT(parse_error("[[schedule]]\nname = \"x\"\ncron = \"0 6 * * *\"\nfunction = \"rm\"\n"),
             Catch::Contains("unknown function \"rm\""));
  CHECK_THAT(parse_error("[[schedule]]\nname = \"x\"\ncron = \"0 6 * * *\"\nfunction = \"cleanupData\"\n"
                         "data = 3\n"),
             Catch::Contains("data: expected a table, got an integer"));
  CHECK_THAT(parse_error("[[schedule]]\nname = \"x\"\ncron = \"0 6 * * *\"\nfunction = \"cleanupData\"\n"
                         "every = \"day\"\n"),
             Catch::Contains("[[schedule]] #1 (x): unknown key every"));
  CHECK_THAT(parse_error("[[schedule]]\nname = \"x\"\ncron = \"0 6 * * *\"\nfunction = \"cleanupData\"\n"
                         "[[schedule]]\nname = \"x\"\ncron = \"0 7 * * *\"\nfunction = \"cleanupData\"\n"),
             Catch::Contains("[[schedule]] #2: duplicate name \"x\""));
  CHECK_THAT(parse_error("[schedule]\nname = \"x\"\n"), Catch::Contains("written [[schedule]]"));
}

TEST_CASE("effective schedules add the defaults for functions no entry names", "[config]") {
  auto defaults = parse_ok("").effective_schedules();
  REQUIRE(defaults.size() == 3);
  std::set<std::string> functions;
  for (const auto& s : defaults) functions.insert(s.function);
  CHECK(functions == std::set<std::string>{"generateDailyReport", "generateWeeklyAnalytics", "cleanupData"});
  auto c = parse_ok("[[schedule]]\nname = \"cleanup\"\ncron = \"0 4 * * *\"\nfunction = \"generateDailyReport\"\n");
  auto effective = c.effective_schedules();
  REQUIRE(effective.size() == 3);
  CHECK(effective[0].cron == "0 4 * * *");
  std::set<std::string> names;
  for (const auto& s : effective) names.insert(s.name);
  CHECK(names.size() == 3);  // the default "cleanup" was renamed, names stay unique
}

TEST_CASE("the legacy environment variables override the file", "[config]") {
  auto c = parse_ok("[django]\nurl = \"http://file\"\napi_key = \"file-key\"\n",
                    {{"DJANGO_API_URL", "http://env"}, {"DJANGO_API_KEY", "env-key"},
                     {"NOTIFICATION_SERVICE", "sns"}});
  CHECK(c.django.url == "http://env");
  CHECK(c.django.api_key == "env-key");
  CHECK(c.notifications.service == "sns");
}

TEST_CASE("an empty environment variable counts as unset", "[config]") {
  auto c = parse_ok("[django]\nurl = \"http://file\"\n", {{"DJANGO_API_URL", ""}, {"FIREBASE_SERVER_KEY", ""}});
  CHECK(c.django.url == "http://file");
}

TEST_CASE("an invalid NOTIFICATION_SERVICE is an error naming the variable", "[config]") {
  auto e = parse_error("", {{"NOTIFICATION_SERVICE", "pigeon"}});
  CHECK(e.rfind("NOTIFICATION_SERVICE", 0) == 0);
  CHECK_THAT(e, Catch::Contains("must be one of log, webhook, firebase, sns"));
}

TEST_CASE("FIREBASE_SERVER_KEY is refused with a pointer to GOOGLE_APPLICATION_CREDENTIALS", "[config]") {
  auto e = parse_error("", {{"FIREBASE_SERVER_KEY", "AAAA1234"}});
  CHECK_THAT(e, Catch::Contains("FIREBASE_SERVER_KEY"));
  CHECK_THAT(e, Catch::Contains("legacy FCM API"));
  CHECK_THAT(e, Catch::Contains("GOOGLE_APPLICATION_CREDENTIALS"));
  CHECK_THAT(e, Catch::Contains("service account"));
  CHECK_THAT(e, !Catch::Contains("AAAA1234"));
}

TEST_CASE("provider credentials are copied from the environment", "[config]") {
  auto c = parse_ok("", {{"GOOGLE_APPLICATION_CREDENTIALS", "/etc/sa.json"},
                         {"AWS_ACCESS_KEY_ID", "AKID"},
                         {"AWS_SECRET_ACCESS_KEY", "secret"},
                         {"AWS_REGION", "eu-west-1"},
                         {"HOME", "/root"}});
  CHECK(c.env == env_map{{"GOOGLE_APPLICATION_CREDENTIALS", "/etc/sa.json"},
                         {"AWS_ACCESS_KEY_ID", "AKID"},
                         {"AWS_SECRET_ACCESS_KEY", "secret"},
                         {"AWS_REGION", "eu-west-1"}});
}

TEST_CASE("KLYNAA_SECTION_KEY variables override any scalar key by its type", "[config]") {
  auto c = parse_ok("[ingress]\nbind = \"tcp://file:1\"\n",
                    {{"KLYNAA_INGRESS_BIND", "tcp://127.0.0.1:7000"},
                     {"KLYNAA_GEO_RADIUS_KM", "2.5"},
                     {"KLYNAA_GEO_MAX_WORKERS", "4"},
                     {"KLYNAA_INGRESS_CURVE", "true"},
                     {"KLYNAA_LOG_LEVEL", "warning"},
                     {"KLYNAA_NOTIFICATIONS_WEBHOOK_URL", "http://hook"}});
  CHECK(c.ingress.bind == "tcp://127.0.0.1:7000");
  CHECK(c.geo.radius_km == 2.5);
  CHECK(c.geo.max_workers == 4);
  CHECK(c.ingress.curve);
  CHECK(c.log.level == "warning");
  CHECK(c.notifications.webhook_url == "http://hook");
}

TEST_CASE("a KLYNAA_ variable wins over the legacy variable for the same key", "[config]") {
  auto c = parse_ok("", {{"DJANGO_API_URL", "http://legacy"}, {"KLYNAA_DJANGO_URL", "http://new"}});
  CHECK(c.django.url == "http://new");
}

TEST_CASE("a KLYNAA_ variable of the wrong type or value is an error naming the variable", "[config]") {
  CHECK_THAT(parse_error("", {{"KLYNAA_GEO_MAX_WORKERS", "many"}}),
             Catch::Contains("KLYNAA_GEO_MAX_WORKERS: expected an integer for [geo] max_workers, got \"many\""));
  CHECK_THAT(parse_error("", {{"KLYNAA_GEO_RADIUS_KM", "5km"}}), Catch::Contains("KLYNAA_GEO_RADIUS_KM"));
  CHECK_THAT(parse_error("", {{"KLYNAA_INGRESS_CURVE", "yes"}}),
             Catch::Contains("KLYNAA_INGRESS_CURVE: expected a boolean"));
  CHECK_THAT(parse_error("", {{"KLYNAA_DJANGO_TIMEOUT_MS", "-3"}}),
             Catch::Contains("KLYNAA_DJANGO_TIMEOUT_MS ([django] timeout_ms): must be at least 1, got -3"));
}

TEST_CASE("config_keys lists every key with its type, default and variable", "[config]") {
  auto keys = klynaa::protocol::config_keys();
  CHECK(keys.size() > 30);
  bool found = false;
  for (const auto& k : keys) {
    CHECK_FALSE(k.help.empty());
    if (k.section == "geo" && k.key == "radius_km") {
      found = true;
      CHECK(k.type == "number");
      CHECK(k.default_value == "5.0");
      CHECK(k.env == "KLYNAA_GEO_RADIUS_KM");
    }
  }
  CHECK(found);
}

TEST_CASE("the example config names every key and parses to the defaults", "[config]") {
  std::string example = klynaa::protocol::example_config();
  for (const auto& k : klynaa::protocol::config_keys()) {
    INFO(k.section << "." << k.key);
    CHECK_THAT(example, Catch::Contains("\n" + k.key + " = " + k.default_value + "\n"));
    CHECK_THAT(example, Catch::Contains("[" + k.section + "]"));
  }
  CHECK_THAT(example, Catch::Contains("[[schedule]]"));
  check_defaults(parse_ok(example));
}

TEST_CASE("the commented parts of the example config parse when uncommented", "[config]") {
  // Turn "# key = value" and "# [table]" lines into live TOML.
  std::string example = klynaa::protocol::example_config(), live, line;
  std::istringstream in(example);
  while (std::getline(in, line)) {
    if (line.rfind("# [", 0) == 0 || (line.rfind("# ", 0) == 0 && line.find(" = ") != std::string::npos))
      line = line.substr(2);
    live += line + "\n";
  }
  auto c = parse_ok(live);
  CHECK(c.schedules.size() == 3);
  CHECK(c.retry_for("processEscrowRelease").max_attempts == 20);
  CHECK(c.notifications.templates.count("pickup_accepted") == 1);
}

TEST_CASE("process_environment reads the environment", "[config]") {
  ::setenv("KLYNAA_CONFIG_TEST_VARIABLE", "a=b", 1);
  auto env = klynaa::protocol::process_environment();
  ::unsetenv("KLYNAA_CONFIG_TEST_VARIABLE");
  CHECK(env["KLYNAA_CONFIG_TEST_VARIABLE"] == "a=b");
}

TEST_CASE("store lease_ms and broker_name have defaults, env overrides and a lower bound", "[config]") {
  auto d = parse_ok("");
  CHECK(d.store.lease_ms == 5000);
  CHECK(d.store.broker_name.empty());
  auto c = parse_ok("[store]\nlease_ms = 2000\nbroker_name = \"broker-a\"\n");
  CHECK(c.store.lease_ms == 2000);
  CHECK(c.store.broker_name == "broker-a");
  auto e = parse_ok("", {{"KLYNAA_STORE_LEASE_MS", "3000"}, {"KLYNAA_STORE_BROKER_NAME", "broker-b"}});
  CHECK(e.store.lease_ms == 3000);
  CHECK(e.store.broker_name == "broker-b");
  CHECK_THAT(parse_error("[store]\nlease_ms = 999\n"), Catch::Contains("[store] lease_ms: must be between 1000"));
  CHECK_THAT(parse_error("[store]\nlease_ms = 0\n"), Catch::Contains("lease_ms"));
  CHECK_THAT(parse_error("", {{"KLYNAA_STORE_LEASE_MS", "500"}}), Catch::Contains("KLYNAA_STORE_LEASE_MS"));
}

// --- Reading the config file (klynaa ... --config PATH) ----------------------

TEST_CASE("read_config_file reads a file whole, an empty one too", "[config]") {
  temp_dir d;
  std::string text, err;
  REQUIRE(klynaa::protocol::read_config_file(write_file(d / "k.toml", "[geo]\nradius_km = 3.0\n"), text, err));
  CHECK(text == "[geo]\nradius_km = 3.0\n");
  REQUIRE(klynaa::protocol::read_config_file(write_file(d / "empty.toml", ""), text, err));
  CHECK(text.empty());
}

TEST_CASE("a config path that is a directory is an error naming it, not the defaults", "[config]") {
  // std::ifstream opens a directory and reads nothing: `--config DIR` used to
  // start on the defaults.
  temp_dir d;
  std::string text = "unchanged", err;
  CHECK_FALSE(klynaa::protocol::read_config_file(d.path, text, err));
  CHECK_THAT(err, Catch::Contains(d.path));
  CHECK_THAT(err, Catch::Contains("directory"));
  CHECK(text == "unchanged");
}

TEST_CASE("a missing config file is an error naming it", "[config]") {
  std::string text, err;
  CHECK_FALSE(klynaa::protocol::read_config_file("/nonexistent/klynaa.toml", text, err));
  CHECK_THAT(err, Catch::Contains("/nonexistent/klynaa.toml"));
  CHECK_THAT(err, Catch::Contains("no such file"));
}

// Mode 000 is no obstacle to root, and the tests usually run as root: then the
// read is done with the effective uid of `nobody` (65534), restored afterwards
// (the saved uid stays 0), which is what a broker running as an unprivileged
// user meets. Root that cannot change its uid (no CAP_SETUID) fails the test:
// the case would go unchecked.
TEST_CASE("a config file without read permission is an error naming it", "[config]") {
  temp_dir d;
  const auto file = write_file(d / "secret.toml", "[geo]\nradius_km = 3.0\n");
  REQUIRE(::chmod(file.c_str(), 0) == 0);
  REQUIRE(::chmod(d.path.c_str(), 0711) == 0);  // anyone may reach the file, no one but root read it
  struct as_nobody {
    bool active = false;
    as_nobody() {
      if (::geteuid() == 0) active = ::seteuid(65534) == 0;
    }
    ~as_nobody() {
      if (active) (void)::seteuid(0);
    }
  };
  std::string text = "unchanged", err;
  bool read = false;
  {
    as_nobody guard;
    if (::geteuid() == 0)
      FAIL("root without CAP_SETUID cannot act as nobody: run this test as root with CAP_SETUID or as another user");
    read = klynaa::protocol::read_config_file(file, text, err);
  }
  CHECK_FALSE(read);
  CHECK(text == "unchanged");
  CHECK_THAT(err, Catch::Contains(file));
  CHECK_THAT(err, Catch::Contains("permission denied"));
}

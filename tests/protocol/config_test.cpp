// Tests of protocol/config: the TOML file and environment (docs/configuration.md).
#include "config_support.hpp"

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

namespace {

// One value other than the default for every key of every section.
const char* const every_section = R"(
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
)";

}  // namespace

TEST_CASE("every section of the config file is parsed", "[config]") {
  auto c = parse_ok(every_section);
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
             Catch::Contains("[store] backend: must be one of sqlite, postgres, journal"));
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

TEST_CASE("store.backend = \"journal\" is the journal store, with store.synchronous", "[config]") {
  auto c = parse_ok("[store]\nbackend = \"journal\"\nsynchronous = \"normal\"\n");
  CHECK(c.store.backend == "journal");
  CHECK(c.store.synchronous == "normal");
  CHECK(parse_ok("").store.backend == "sqlite");  // the default, for now
}

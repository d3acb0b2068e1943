// Tests of protocol/config: the environment over the file, the example config,
// and reading the file (docs/configuration.md, "Environment").
#include "config_support.hpp"

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

// Helpers of the config tests (config_*_test.cpp).
#pragma once

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

namespace klynaa::protocol::config_test {

inline config parse_ok(std::string_view text, const env_map& env = {}) {
  auto result = parse_config(text, "klynaa.toml", env);
  if (auto* e = std::get_if<config_error>(&result)) FAIL("unexpected config error: " << e->message);
  return std::get<config>(result);
}

inline std::string parse_error(std::string_view text, const env_map& env = {}) {
  auto result = parse_config(text, "klynaa.toml", env);
  if (std::holds_alternative<config>(result)) FAIL("expected a config error for:\n" << text);
  return std::get<config_error>(result).message;
}

inline void check_defaults(const config& c) {
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

}  // namespace klynaa::protocol::config_test

using namespace klynaa::protocol::config_test;

// protocol::function_registry: the one run-time lookup of function -> actor
// kind, built from the fixed table (docs/design.md, "One source for each fixed list").
#include <catch2/catch.hpp>

#include "protocol/config.hpp"
#include "protocol/function_registry.hpp"
#include "protocol/schema.hpp"

using klynaa::protocol::function_registry;
using klynaa::protocol::registered_function;

TEST_CASE("the built-in registry holds the schema's functions under their kinds", "[registry]") {
  auto r = function_registry::built_in();
  REQUIRE(r.all().size() == klynaa::protocol::functions().size());
  for (const auto& f : klynaa::protocol::functions()) {
    INFO(f.name);
    REQUIRE(r.find(f.name) != nullptr);
    CHECK(r.kind_of(f.name) == f.actor);
    CHECK(r.find(f.name)->fanout == f.fanout);
    CHECK(r.find(f.name)->prunes_store == f.prunes_store);
  }
  CHECK(r.kinds() == std::vector<std::string>{"notifier", "escrow", "geo", "scheduler"});
  CHECK(r.functions_of("geo") == std::vector<std::string>{"notifyNearbyWorkers", "updateWorkerLocation"});
  CHECK(r.functions_of("scheduler") ==
        std::vector<std::string>{"generateDailyReport", "generateWeeklyAnalytics", "cleanupData"});
  CHECK(r.find("updateWorkerLocation")->fanout);
  CHECK(r.find("cleanupData")->prunes_store);
}

TEST_CASE("the registry answers nothing for a name it does not hold", "[registry]") {
  auto r = function_registry::built_in();
  CHECK(r.find("pickup.created") == nullptr);
  CHECK(r.kind_of("SendPickupNotification").empty());
  CHECK(r.functions_of("nobody").empty());
  CHECK(function_registry{}.kinds().empty());
}

TEST_CASE("the registry refuses a function listed twice", "[registry]") {
  auto r = function_registry::built_in();
  auto e = r.add({"processEscrowRelease", "tasks"});
  REQUIRE(e.has_value());
  CHECK_THAT(*e, Catch::Contains("processEscrowRelease is listed twice") && Catch::Contains("escrow"));
  CHECK(r.kind_of("processEscrowRelease") == "escrow");  // unchanged
  CHECK(r.all().size() == klynaa::protocol::functions().size());

  function_registry fresh;
  CHECK_FALSE(fresh.add({"syncInvoices", "tasks"}).has_value());
  auto again = fresh.add({"syncInvoices", "tasks"});
  REQUIRE(again.has_value());
  CHECK_THAT(*again, Catch::Contains("syncInvoices is listed twice"));
  CHECK(fresh.all().size() == 1);
}

TEST_CASE("a function added at run time joins the registry and its kind", "[registry]") {
  auto r = function_registry::built_in();
  REQUIRE_FALSE(r.add({"syncInvoices", "tasks"}).has_value());
  CHECK(r.kind_of("syncInvoices") == "tasks");
  CHECK(r.functions_of("tasks") == std::vector<std::string>{"syncInvoices"});
  CHECK(r.kinds().back() == "tasks");
  CHECK_FALSE(r.find("syncInvoices")->fanout);
}

TEST_CASE("the registry refuses a function without a name or kind", "[registry]") {
  function_registry r;
  CHECK(r.add({"", "tasks"}).has_value());
  CHECK(r.add({"syncInvoices", ""}).has_value());
  CHECK(r.all().empty());
}

TEST_CASE("a config's registry is the built-in one while no key defines functions", "[registry]") {
  klynaa::protocol::config cfg;
  auto r = function_registry::of(cfg);
  CHECK(r.all().size() == function_registry::built_in().all().size());
  CHECK(r.kinds() == function_registry::built_in().kinds());
}

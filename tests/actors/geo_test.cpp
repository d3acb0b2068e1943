// The geo actor (docs/events-and-functions.md): notifyNearbyWorkers and updateWorkerLocation
// through geo_handler, the loader against a fake Django, the shared index of a
// node's handlers, and the "geo" actor kind of make_actor_kinds.
#include "actors/geo.hpp"

#include <atomic>
#include <chrono>
#include <thread>

#include <catch2/catch.hpp>

#include "actors/registry.hpp"
#include "fake_server.hpp"
#include "protocol/log.hpp"
#include "tests/support/temp_dir.hpp"
#include "tests/support/wait.hpp"

using klynaa::actors::geo_handler;
using klynaa::actors::geo_handler_factory;
using klynaa::actors::geo_options;
using klynaa::actors::geo_service;
using klynaa::actors::haversine_km;
using klynaa::actors::parse_available_workers;
using klynaa::nodes::job;
using klynaa::nodes::job_result;
using klynaa::nodes::outcome;
using klynaa::test::canned;
using klynaa::test::fake_server;
using klynaa::test::wait_for;
using nlohmann::json;
using namespace std::chrono_literals;

namespace {

const char* workers_path = "/api/workers/available/";
constexpr double pickup_lat = 6.6018, pickup_lng = 3.3515;  // Ikeja, Lagos

/// The longitude `km` east of the pickup on its parallel (by bisection).
double lng_km_east(double km) {
  double lo = 0, hi = 1;
  for (int i = 0; i < 200; ++i) {
    double mid = (lo + hi) / 2;
    (haversine_km(pickup_lat, pickup_lng, pickup_lat, pickup_lng + mid) < km ? lo : hi) = mid;
  }
  return pickup_lng + lo;
}

json worker(int64_t id, double km_east, json service_radius = nullptr) {
  json w = {{"id", id}, {"lat", pickup_lat}, {"lng", lng_km_east(km_east)}};
  if (!service_radius.is_null()) w["service_radius_km"] = service_radius;
  return w;
}

std::string workers_body(const json& workers) { return json{{"workers", workers}}.dump(); }

/// The usual list: 11 at the pickup, 12 at 1 km, 13 at 2 km, 14 at 3 km but
/// travelling only 1 km, 15 at 8 km travelling 20.
json usual_workers() {
  return json::array({worker(13, 2.0, 10), worker(11, 0.0), worker(12, 1.0, 10), worker(14, 3.0, 1),
                      worker(15, 8.0, 20)});
}

klynaa::protocol::config::django_section django_cfg(const std::string& url) {
  klynaa::protocol::config::django_section d;
  d.url = url;
  d.api_key = "geo-test-key-123456";
  d.connect_timeout_ms = 1000;
  d.timeout_ms = 3000;
  return d;
}

geo_options test_options() {
  geo_options o;
  o.radius_km = 5.0;
  o.max_workers = 10;
  o.refresh = 60s;
  o.first_retry = 20ms;
  o.clock = [] { return int64_t{1000}; };  // every load began at t = 1000 ms
  return o;
}

std::shared_ptr<geo_service> make_service(const std::string& url, geo_options o = test_options()) {
  return std::make_shared<geo_service>(std::make_unique<klynaa::actors::django_client>(django_cfg(url)),
                                       std::move(o));
}

job make_job(std::string id, std::string function, json data, int64_t ts_ms = 5000) {
  job j;
  j.id = std::move(id);
  j.function = std::move(function);
  j.data = std::move(data);
  j.ts_ms = ts_ms;
  j.node = "test-node";
  return j;
}

json pickup(int64_t id = 7) { return {{"pickup_id", id}, {"lat", pickup_lat}, {"lng", pickup_lng}}; }

json location(int64_t worker_id, double km_east, bool available) {
  return {{"worker_id", worker_id}, {"lat", pickup_lat}, {"lng", lng_km_east(km_east)}, {"available", available}};
}

std::vector<int64_t> workers_of(const job_result& r) { return r.result.at("workers").get<std::vector<int64_t>>(); }

struct fixture {
  fake_server django;
  std::shared_ptr<geo_service> service;
  geo_handler handler;

  explicit fixture(json workers = usual_workers(), geo_options o = test_options())
      : handler(start(workers, std::move(o))) {}

  std::shared_ptr<geo_service> start(const json& workers, geo_options o) {
    django.on("GET", workers_path, {200, workers_body(workers)});
    service = make_service(django.url(), std::move(o));
    REQUIRE(service->wait_ready(10s));
    return service;
  }

  job_result run(const job& j) { return handler.run(j); }
};

}  // namespace

TEST_CASE("notifyNearbyWorkers selects the nearest workers and creates one notification job each", "[geo]") {
  fixture f;
  auto r = f.run(make_job("evt-1#1", "notifyNearbyWorkers", pickup(7)));
  REQUIRE(r.kind == outcome::ok);
  // 14 is near but does not travel that far; 15 is beyond the default 5 km.
  CHECK(r.result == json{{"workers", {11, 12, 13}}, {"distances_km", {0.0, 1.0, 2.0}}});
  REQUIRE(r.children.size() == 3);
  const int64_t expected[] = {11, 12, 13};
  for (size_t n = 0; n < 3; ++n) {
    const auto& c = r.children[n];
    CHECK(c.id == "evt-1#1#" + std::to_string(n + 1));
    CHECK(c.function == "sendPickupNotification");
    CHECK(c.data == json{{"pickup_id", 7},
                         {"notification_type", "pickup_requested"},
                         {"user_type", "worker"},
                         {"user_id", expected[n]}});
    CHECK(c.due_ms == 0);
  }
  // The answer's shape: exactly the two lists, of equal length.
  CHECK(r.result.size() == 2);
  CHECK(r.result["distances_km"].size() == r.result["workers"].size());
}

TEST_CASE("radius_km in the data overrides geo.radius_km and geo.max_workers caps the answer", "[geo]") {
  auto o = test_options();
  o.max_workers = 3;
  fixture f(usual_workers(), o);
  auto data = pickup();
  data["radius_km"] = 10;  // an integer is accepted where a number is expected
  auto wide = f.run(make_job("evt-2#1", "notifyNearbyWorkers", data));
  REQUIRE(wide.kind == outcome::ok);
  CHECK(workers_of(wide) == std::vector<int64_t>{11, 12, 13});
  CHECK(wide.children.size() == 3);

  o.max_workers = 10;
  fixture g(usual_workers(), o);
  auto all = g.run(make_job("evt-2#1", "notifyNearbyWorkers", data));
  CHECK(workers_of(all) == std::vector<int64_t>{11, 12, 13, 15});
  data["radius_km"] = 1.5;
  auto narrow = g.run(make_job("evt-3#1", "notifyNearbyWorkers", data));
  CHECK(workers_of(narrow) == std::vector<int64_t>{11, 12});
  data["radius_km"] = nullptr;  // null counts as absent
  CHECK(workers_of(g.run(make_job("evt-4#1", "notifyNearbyWorkers", data))) == std::vector<int64_t>{11, 12, 13});
}

TEST_CASE("a pickup with no worker nearby succeeds with empty lists and no jobs", "[geo]") {
  fixture f;
  auto r = f.run(make_job("evt-5#1", "notifyNearbyWorkers", {{"pickup_id", 8}, {"lat", 9.0765}, {"lng", 7.3986}}));
  REQUIRE(r.kind == outcome::ok);
  CHECK(r.result == json{{"workers", json::array()}, {"distances_km", json::array()}});
  CHECK(r.children.empty());
}

TEST_CASE("updateWorkerLocation upserts and removes workers as of the event's time", "[geo]") {
  fixture f;  // loaded as of t = 1000
  auto moved = f.run(make_job("w-1#1", "updateWorkerLocation", location(15, 0.5, true), 2000));
  REQUIRE(moved.kind == outcome::ok);
  CHECK(moved.result == json::object());
  CHECK(moved.children.empty());
  CHECK(workers_of(f.run(make_job("p#1", "notifyNearbyWorkers", pickup()))) == std::vector<int64_t>{11, 15, 12, 13});

  auto gone = f.run(make_job("w-2#1", "updateWorkerLocation", location(11, 0.0, false), 3000));
  REQUIRE(gone.kind == outcome::ok);
  CHECK(gone.result == json::object());
  CHECK(workers_of(f.run(make_job("p#2", "notifyNearbyWorkers", pickup()))) == std::vector<int64_t>{15, 12, 13});

  // Older than the removal: ignored, and still a success.
  auto late = f.run(make_job("w-3#1", "updateWorkerLocation", location(11, 0.0, true), 2500));
  REQUIRE(late.kind == outcome::ok);
  // Older than the load: ignored.
  REQUIRE(f.run(make_job("w-4#1", "updateWorkerLocation", location(12, 9.0, true), 999)).kind == outcome::ok);
  CHECK(workers_of(f.run(make_job("p#3", "notifyNearbyWorkers", pickup()))) == std::vector<int64_t>{15, 12, 13});

  // A new worker unknown to Django gets geo.radius_km as its service radius.
  REQUIRE(f.run(make_job("w-5#1", "updateWorkerLocation", location(99, 4.9, true), 4000)).kind == outcome::ok);
  CHECK(f.service->index().service_radius_km(99) == 5.0);
  CHECK(workers_of(f.run(make_job("p#4", "notifyNearbyWorkers", pickup()))) ==
        std::vector<int64_t>{15, 12, 13, 99});
}

TEST_CASE("notifyNearbyWorkers fails transiently until the first load succeeds", "[geo]") {
  fake_server django;
  std::atomic<bool> up{false};
  django.on("GET", workers_path, [&](const klynaa::test::recorded_request&) {
    return up ? canned{200, workers_body(usual_workers())} : canned{503, R"({"detail": "down"})"};
  });
  auto service = make_service(django.url());
  geo_handler handler(service);
  REQUIRE(wait_for([&] { return service->load_attempts() >= 2; }));  // it retries
  REQUIRE_FALSE(service->ready());

  auto early = handler.run(make_job("evt-9#1", "notifyNearbyWorkers", pickup()));
  CHECK(early.kind == outcome::transient);
  CHECK(early.error_code == "geo_not_loaded");
  CHECK_THAT(early.message, Catch::Contains("/api/workers/available/"));
  CHECK(early.children.empty());

  // Updates are applied before the first load, and survive it when newer.
  REQUIRE(handler.run(make_job("w#1", "updateWorkerLocation", location(42, 0.1, true), 2000)).kind == outcome::ok);
  REQUIRE(handler.run(make_job("w#2", "updateWorkerLocation", location(43, 0.1, true), 500)).kind == outcome::ok);

  up = true;
  REQUIRE(service->wait_ready(10s));
  auto later = handler.run(make_job("evt-9#1", "notifyNearbyWorkers", pickup()));
  REQUIRE(later.kind == outcome::ok);
  CHECK(workers_of(later) == std::vector<int64_t>{11, 42, 12, 13});
}

TEST_CASE("the loader reloads every refresh period and keeps the last list when a reload fails", "[geo]") {
  fake_server django;
  std::atomic<int> phase{0};
  django.on("GET", workers_path, [&](const klynaa::test::recorded_request&) {
    switch (phase.load()) {
      case 0: return canned{200, workers_body(usual_workers())};
      case 1: return canned{200, workers_body(json::array({worker(21, 0.2)}))};
      case 2: return canned{500, "oops"};
      default: return canned{200, "<html>not json</html>"};
    }
  });
  auto o = test_options();
  o.refresh = 50ms;
  auto service = make_service(django.url(), o);
  geo_handler handler(service);
  REQUIRE(service->wait_ready(10s));
  auto selected = [&] { return workers_of(handler.run(make_job("p#1", "notifyNearbyWorkers", pickup()))); };
  CHECK(selected() == std::vector<int64_t>{11, 12, 13});

  phase = 1;
  CHECK(wait_for([&] { return selected() == std::vector<int64_t>{21}; }));

  for (int p : {2, 3}) {
    phase = p;
    auto before = service->load_attempts();
    REQUIRE(wait_for([&] { return service->load_attempts() >= before + 3; }));
    CHECK(service->ready());
    CHECK(selected() == std::vector<int64_t>{21});
  }
  // Every request carried the API key.
  auto reqs = django.requests_to("GET", workers_path);
  REQUIRE(reqs.size() >= 4);
  for (const auto& r : reqs) CHECK(r.header("Authorization") == "Api-Key geo-test-key-123456");
}

TEST_CASE("invalid geo data is a permanent failure naming the field", "[geo]") {
  fixture f;
  struct bad_case {
    const char* function;
    json data;
    const char* field;
  };
  const bad_case cases[] = {
      {"notifyNearbyWorkers", {{"lat", 1}, {"lng", 1}}, "data.pickup_id"},
      {"notifyNearbyWorkers", {{"pickup_id", 0}, {"lat", 1}, {"lng", 1}}, "data.pickup_id"},
      {"notifyNearbyWorkers", {{"pickup_id", "7"}, {"lat", 1}, {"lng", 1}}, "data.pickup_id"},
      {"notifyNearbyWorkers", {{"pickup_id", 7}, {"lat", 90.5}, {"lng", 1}}, "data.lat"},
      {"notifyNearbyWorkers", {{"pickup_id", 7}, {"lng", 1}}, "data.lat"},
      {"notifyNearbyWorkers", {{"pickup_id", 7}, {"lat", 1}, {"lng", "east"}}, "data.lng"},
      {"notifyNearbyWorkers", {{"pickup_id", 7}, {"lat", 1}, {"lng", -181}}, "data.lng"},
      {"notifyNearbyWorkers", {{"pickup_id", 7}, {"lat", 1}, {"lng", 1}, {"radius_km", 0}}, "data.radius_km"},
      {"notifyNearbyWorkers", {{"pickup_id", 7}, {"lat", 1}, {"lng", 1}, {"radius_km", -2.5}}, "data.radius_km"},
      {"notifyNearbyWorkers", {{"pickup_id", 7}, {"lat", 1}, {"lng", 1}, {"radius_km", "5"}}, "data.radius_km"},
      {"updateWorkerLocation", {{"lat", 1}, {"lng", 1}, {"available", true}}, "data.worker_id"},
      {"updateWorkerLocation", {{"worker_id", -3}, {"lat", 1}, {"lng", 1}, {"available", true}}, "data.worker_id"},
      {"updateWorkerLocation", {{"worker_id", 3}, {"lat", 1}, {"lng", 1}}, "data.available"},
      {"updateWorkerLocation", {{"worker_id", 3}, {"lat", 1}, {"lng", 1}, {"available", 1}}, "data.available"},
      {"updateWorkerLocation", {{"worker_id", 3}, {"lat", 1}, {"available", false}}, "data.lng"},
  };
  for (const auto& c : cases) {
    INFO(c.function << " " << c.data.dump());
    auto r = f.run(make_job("bad#1", c.function, c.data));
    CHECK(r.kind == outcome::permanent);
    CHECK(r.error_code == "invalid_data");
    CHECK_THAT(r.message, Catch::StartsWith(c.field));
    CHECK(r.children.empty());
  }
  auto not_map = f.run(make_job("bad#2", "notifyNearbyWorkers", json::array()));
  CHECK(not_map.kind == outcome::permanent);
  auto other = f.run(make_job("bad#3", "sendPickupNotification", pickup()));
  CHECK(other.kind == outcome::permanent);
  CHECK(other.error_code == "unknown_function");
  CHECK(f.service->index().size() == 5);  // nothing was changed
}

TEST_CASE("Django's worker list is read leniently, skipping invalid entries", "[geo]") {
  json list = json::parse(R"([
    {"id": 1, "lat": 6.5, "lng": 3.4, "service_radius_km": 7.5},
    {"id": 2, "lat": 6.5, "lng": 3.4},
    {"id": 3, "lat": 6.5, "lng": 3.4, "service_radius_km": null},
    {"id": 4, "lat": 6.5, "lng": 3.4, "service_radius_km": -1},
    {"id": 5, "lat": 6.5, "lng": 3.4, "service_radius_km": "far"},
    {"id": 0, "lat": 6.5, "lng": 3.4},
    {"id": "6", "lat": 6.5, "lng": 3.4},
    {"id": 7, "lat": 95, "lng": 3.4},
    {"id": 8, "lat": 6.5},
    {"id": 9, "lat": 6, "lng": -180, "extra": true},
    "worker 10"
  ])");
  size_t skipped = 0;
  auto workers = parse_available_workers(list, &skipped);
  CHECK(skipped == 5);
  REQUIRE(workers.size() == 6);
  CHECK(workers[0].id == 1);
  CHECK(workers[0].service_radius_km == 7.5);
  for (size_t i = 1; i < 5; ++i) CHECK_FALSE(workers[i].service_radius_km.has_value());
  CHECK(workers[5].id == 9);
  CHECK(workers[5].lat == 6.0);
  CHECK(workers[5].lng == -180.0);
  CHECK(parse_available_workers(json::object()).empty());
}

TEST_CASE("the handlers of one factory share one index, and the last one stops the loader", "[geo]") {
  fake_server django;
  django.on("GET", workers_path, {200, workers_body(usual_workers())});
  auto o = test_options();
  o.refresh = 30ms;
  auto make = geo_handler_factory(django_cfg(django.url()), o);
  auto a = make();
  auto b = make();
  REQUIRE(wait_for([&] { return django.requests_to("GET", workers_path).size() >= 3; }));
  // An update through one handler is seen through the other.
  REQUIRE(a->run(make_job("w#1", "updateWorkerLocation", location(77, 0.01, true), 9000)).kind == outcome::ok);
  auto seen = b->run(make_job("p#1", "notifyNearbyWorkers", pickup()));
  REQUIRE(seen.kind == outcome::ok);
  CHECK(workers_of(seen) == std::vector<int64_t>{11, 77, 12, 13});

  a.reset();
  auto still = django.requests_to("GET", workers_path).size();
  REQUIRE(wait_for([&] { return django.requests_to("GET", workers_path).size() > still; }));  // b keeps it
  b.reset();  // joins the loader
  auto stopped = django.requests_to("GET", workers_path).size();
  std::this_thread::sleep_for(200ms);
  CHECK(django.requests_to("GET", workers_path).size() == stopped);

  // A handler made afterwards gets a new index, loaded anew (77 is gone).
  auto c = make();
  REQUIRE(wait_for([&] { return django.requests_to("GET", workers_path).size() > stopped; }));
  job_result fresh;
  REQUIRE(wait_for([&] {
    fresh = c->run(make_job("p#2", "notifyNearbyWorkers", pickup()));
    return fresh.kind == outcome::ok;
  }));
  CHECK(workers_of(fresh) == std::vector<int64_t>{11, 12, 13});
}

TEST_CASE("make_actor_kinds builds geo with its functions, worker count and a shared index", "[geo]") {
  fake_server django;
  django.on("GET", workers_path, {200, workers_body(usual_workers())});
  klynaa::test::temp_dir dir;
  klynaa::protocol::config cfg;
  cfg.django = django_cfg(django.url());
  cfg.node.geo_workers = 3;
  cfg.geo.max_workers = 2;
  cfg.geo.radius_km = 2.5;
  REQUIRE_FALSE(klynaa::actors::check_actor_config(cfg, dir.path, {"geo"}));
  auto specs = klynaa::actors::make_actor_kinds(cfg, dir.path, {"geo", "escrow", "geo"});
  REQUIRE(specs.size() == 2);
  CHECK(specs[0].kind == "geo");
  CHECK(specs[0].functions == std::vector<std::string>{"notifyNearbyWorkers", "updateWorkerLocation"});
  CHECK(specs[0].workers == 3);
  CHECK(specs[1].kind == "escrow");

  auto first = specs[0].make_handler();
  auto second = specs[0].make_handler();
  REQUIRE(first != nullptr);
  int64_t later = klynaa::log::now_ms() + 60000;  // newer than any load
  REQUIRE(first->run(make_job("w#1", "updateWorkerLocation", location(12, 0.5, true), later)).kind == outcome::ok);
  job_result r;
  REQUIRE(wait_for([&] {
    r = second->run(make_job("p#1", "notifyNearbyWorkers", pickup()));
    return r.kind == outcome::ok;
  }));
  // geo.max_workers = 2 and geo.radius_km = 2.5 from the config; 12 moved to 0.5 km.
  CHECK(workers_of(r) == std::vector<int64_t>{11, 12});
  CHECK(r.result["distances_km"] == json{0.0, 0.5});

  // Without django.url geo cannot start.
  cfg.django.url.clear();
  auto err = klynaa::actors::check_actor_config(cfg, dir.path, {"geo"});
  REQUIRE(err);
  CHECK_THAT(*err, Catch::Contains("[django] url"));
}

// notifyNearbyWorkers and updateWorkerLocation, and the loader that keeps the
// node's geo index in step with Django. The rules are documented in geo.hpp.
#include "actors/geo.hpp"

#include <algorithm>
#include <cmath>
#include <exception>
#include <optional>
#include <string>

#include "actors/handler_support.hpp"
#include "protocol/backoff.hpp"
#include "protocol/jobs.hpp"
#include "protocol/log.hpp"

namespace klynaa::actors {
namespace {

using nlohmann::json;
using nodes::job_result;
using nodes::outcome;

/// A positive integer that fits int64_t (Python may send it unsigned).
std::optional<int64_t> positive_id(const json& v) {
  if (!v.is_number_integer()) return std::nullopt;
  if (v.is_number_unsigned()) {
    auto u = v.get<uint64_t>();
    if (u == 0 || u > static_cast<uint64_t>(INT64_MAX)) return std::nullopt;
    return static_cast<int64_t>(u);
  }
  auto i = v.get<int64_t>();
  return i > 0 ? std::optional<int64_t>(i) : std::nullopt;
}

/// A finite number in [lo, hi] (integers accepted, docs/events-and-functions.md).
std::optional<double> number_in(const json& v, double lo, double hi) {
  if (!v.is_number()) return std::nullopt;
  double d = v.get<double>();
  if (!std::isfinite(d) || d < lo || d > hi) return std::nullopt;
  return d;
}

const json* field(const json& d, const char* name) {
  auto it = d.find(name);
  return it == d.end() || it->is_null() ? nullptr : &*it;
}

/// Reads lat and lng into the outputs, or returns the failure naming the field.
std::optional<job_result> read_position(const json& d, double& lat, double& lng) {
  const json* v = field(d, "lat");
  auto la = v ? number_in(*v, -90.0, 90.0) : std::nullopt;
  if (!la) return invalid_data("lat", "must be a number from -90 to 90");
  v = field(d, "lng");
  auto ln = v ? number_in(*v, -180.0, 180.0) : std::nullopt;
  if (!ln) return invalid_data("lng", "must be a number from -180 to 180");
  lat = *la;
  lng = *ln;
  return std::nullopt;
}

/// Metre precision is what a person reads; the order was decided on the exact value.
double round_to_metre(double km) { return std::round(km * 1000.0) / 1000.0; }

}  // namespace

// --- options and Django's list ---------------------------------------------

geo_options geo_options::from_config(const protocol::config::geo_section& geo) {
  geo_options o;
  o.radius_km = geo.radius_km;
  o.max_workers = geo.max_workers > 0 ? static_cast<size_t>(geo.max_workers) : 1;
  o.refresh = std::chrono::seconds(std::max<int64_t>(geo.refresh_seconds, 1));
  return o;
}

std::vector<worker_location> parse_available_workers(const json& workers, size_t* skipped) {
  std::vector<worker_location> out;
  size_t bad = 0;
  if (workers.is_array()) {
    out.reserve(workers.size());
    for (const auto& w : workers) {
      if (!w.is_object()) {
        ++bad;
        continue;
      }
      const json* id = field(w, "id");
      const json* lat = field(w, "lat");
      const json* lng = field(w, "lng");
      auto i = id ? positive_id(*id) : std::nullopt;
      auto la = lat ? number_in(*lat, -90.0, 90.0) : std::nullopt;
      auto ln = lng ? number_in(*lng, -180.0, 180.0) : std::nullopt;
      if (!i || !la || !ln) {
        ++bad;
        continue;
      }
      worker_location loc{*i, *la, *ln, std::nullopt};
      const json* r = field(w, "service_radius_km");
      if (r) loc.service_radius_km = number_in(*r, 0.0, INFINITY);
      if (loc.service_radius_km && *loc.service_radius_km <= 0.0) loc.service_radius_km.reset();
      out.push_back(loc);
    }
  }
  if (skipped) *skipped = bad;
  return out;
}

// --- geo_service: the index and its loader ---------------------------------

geo_service::geo_service(std::unique_ptr<django_client> loader, geo_options opts)
    : opts_(std::move(opts)), index_(opts_.radius_km), django_(std::move(loader)) {
  loader_ = std::thread([this] { loader_loop(); });
}

geo_service::~geo_service() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (loader_.joinable()) loader_.join();
}

bool geo_service::wait_ready(std::chrono::milliseconds timeout) const {
  std::unique_lock<std::mutex> lock(mutex_);
  cv_.wait_for(lock, timeout, [this] { return stopping_ || index_.loaded(); });
  return index_.loaded();
}

int64_t geo_service::now_ms() const { return opts_.clock ? opts_.clock() : log::now_ms(); }

void geo_service::loader_loop() {
  auto retry = std::max(opts_.first_retry, std::chrono::milliseconds(1));
  for (;;) {
    bool ok = load_once();
    attempts_.fetch_add(1);
    std::chrono::milliseconds wait = opts_.refresh;
    if (!ok && !index_.loaded()) {
      wait = std::min(retry, opts_.refresh);
      retry = std::chrono::milliseconds{protocol::capped_doubling(retry.count(), opts_.refresh.count(), 1)};
    }
    std::unique_lock<std::mutex> lock(mutex_);
    // Wakes wait_ready() callers too: the index may have just loaded.
    cv_.notify_all();
    if (cv_.wait_for(lock, wait, [this] { return stopping_; })) return;
  }
}

bool geo_service::load_once() {
  try {
    int64_t started = now_ms();
    auto answer = django_->get_available_workers();
    if (!answer) {
      log::warning("geo", "could not load the available workers; will retry",
                   {{"error", answer.error.error_code}, {"message", answer.error.message},
                    {"http_status", answer.error.http_status ? json(*answer.error.http_status) : json()}});
      return false;
    }
    size_t skipped = 0;
    auto workers = parse_available_workers(*answer, &skipped);
    if (skipped > 0)
      log::warning("geo", "skipped invalid entries of GET /api/workers/available/",
                   {{"skipped", skipped}});
    if (!index_.load(workers, started)) {
      log::warning("geo", "a newer load happened first; this one was dropped", {{"started_ms", started}});
      return false;
    }
    log::info("geo", "available workers loaded",
              {{"listed", workers.size()}, {"available", index_.size()}, {"duration_ms", now_ms() - started}});
    return true;
  } catch (const std::exception& e) {  // bad_alloc and the like: try again next period
    log::error("geo", "loading the available workers failed", {{"error", e.what()}});
  } catch (...) {
    log::error("geo", "loading the available workers failed");
  }
  return false;
}

// --- geo_handler -----------------------------------------------------------

geo_handler::geo_handler(std::shared_ptr<geo_service> service) : service_(std::move(service)) {}

job_result geo_handler::run(const nodes::job& j) {
  return guarded_run("geo", j, [this](const nodes::job& job) { return run_checked(job); });
}

job_result geo_handler::run_checked(const nodes::job& j) {
  if (!j.data.is_object()) return invalid_data("", "must be a map");
  if (j.function == "updateWorkerLocation") return update_location(j);
  if (j.function == "notifyNearbyWorkers") return notify_nearby(j);
  return job_result::failure(outcome::permanent, "unknown_function",
                             "The geo actor runs notifyNearbyWorkers and updateWorkerLocation, not " +
                                 j.function + ".");
}

job_result geo_handler::update_location(const nodes::job& j) {
  const json& d = j.data;
  const json* v = field(d, "worker_id");
  auto worker = v ? positive_id(*v) : std::nullopt;
  if (!worker) return invalid_data("worker_id", "must be a positive integer");
  double lat = 0, lng = 0;
  if (auto bad = read_position(d, lat, lng)) return *bad;
  v = field(d, "available");
  if (!v || !v->is_boolean()) return invalid_data("available", "must be true or false");
  bool available = v->get<bool>();

  auto& index = service_->index();
  bool applied = available ? index.upsert(*worker, lat, lng, j.ts_ms) : index.remove(*worker, j.ts_ms);
  KLYNAA_LOG(debug, "geo", applied ? "worker location applied" : "older worker location ignored",
             {{"job_id", j.id}, {"worker_id", *worker}, {"available", available}, {"ts_ms", j.ts_ms}});
  return job_result::success(json::object());
}

job_result geo_handler::notify_nearby(const nodes::job& j) {
  const json& d = j.data;
  const json* v = field(d, "pickup_id");
  auto pickup = v ? positive_id(*v) : std::nullopt;
  if (!pickup) return invalid_data("pickup_id", "must be a positive integer");
  double lat = 0, lng = 0;
  if (auto bad = read_position(d, lat, lng)) return *bad;
  const auto& opts = service_->options();
  double radius = opts.radius_km;
  if ((v = field(d, "radius_km"))) {
    auto r = number_in(*v, 0.0, INFINITY);
    if (!r || *r <= 0.0) return invalid_data("radius_km", "must be a positive number");
    radius = *r;
  }
  if (!service_->ready())
    return job_result::failure(
        outcome::transient, "geo_not_loaded",
        "The geo index has not loaded the available workers from Django yet "
        "(GET /api/workers/available/); the job will be retried.");

  auto found = service_->index().nearest(lat, lng, radius, opts.max_workers);
  json workers = json::array();
  json distances = json::array();
  job_result ok;
  for (size_t n = 0; n < found.size(); ++n) {
    workers.push_back(found[n].id);
    distances.push_back(round_to_metre(found[n].distance_km));
    nodes::child_job c;
    c.id = protocol::child_job_id(j.id, static_cast<int64_t>(n) + 1);
    c.function = "sendPickupNotification";
    c.data = {{"pickup_id", *pickup},
              {"notification_type", "pickup_requested"},
              {"user_type", "worker"},
              {"user_id", found[n].id}};
    ok.children.push_back(std::move(c));
  }
  ok.result = {{"workers", std::move(workers)}, {"distances_km", std::move(distances)}};
  log::info("geo", "nearby workers selected",
            {{"job_id", j.id}, {"pickup_id", *pickup}, {"radius_km", radius}, {"workers", ok.result["workers"]}});
  return ok;
}

// --- the factory -----------------------------------------------------------

std::function<std::unique_ptr<nodes::job_handler>()> geo_handler_factory(
    protocol::config::django_section django, geo_options opts) {
  struct shared {
    std::mutex mutex;
    std::weak_ptr<geo_service> service;
  };
  auto state = std::make_shared<shared>();
  return [state, django = std::move(django), opts = std::move(opts)]() -> std::unique_ptr<nodes::job_handler> {
    std::shared_ptr<geo_service> service;
    {
      std::lock_guard<std::mutex> lock(state->mutex);
      service = state->service.lock();
      if (!service) {
        service = std::make_shared<geo_service>(std::make_unique<django_client>(django), opts);
        state->service = service;
      }
    }
    return std::make_unique<geo_handler>(std::move(service));
  };
}

}  // namespace klynaa::actors

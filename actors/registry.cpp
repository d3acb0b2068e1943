// Builds the actor_kind_specs of the kinds this build implements.
#include "actors/registry.hpp"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <memory>
#include <variant>

#include "actors/django_client.hpp"
#include "actors/escrow.hpp"
#include "actors/geo.hpp"
#include "actors/notifier.hpp"
#include "actors/providers.hpp"
#include "actors/scheduler.hpp"
#include "actors/templates.hpp"

namespace klynaa::actors {
namespace {

bool contains(const std::vector<std::string>& v, const std::string& s) {
  return std::find(v.begin(), v.end(), s) != v.end();
}

bool calls_django(const std::vector<std::string>& kinds) {
  return contains(kinds, "notifier") || contains(kinds, "escrow") || contains(kinds, "geo") ||
         contains(kinds, "scheduler");
}

/// A CA bundle named in the config must be readable: otherwise every HTTPS call
/// would fail at run time (libcurl error 77) instead of the node refusing to start.
std::optional<std::string> check_ca_file(const std::string& path, const char* key) {
  if (path.empty() || ::access(path.c_str(), R_OK) == 0) return std::nullopt;
  return std::string(key) + ": cannot read the CA bundle " + path + ": " + std::strerror(errno);
}

/// The config check keeps node.*_workers within 1..1024; a config built in code is clamped the same way.
int workers_of(int64_t configured) {
  return configured > 0 ? static_cast<int>(std::min<int64_t>(configured, 1024)) : 1;
}

nodes::actor_kind_spec notifier_spec(const protocol::config& cfg, provider_factory providers) {
  auto texts = std::make_shared<const templates>(cfg.notifications.templates);
  auto django_cfg = cfg.django;
  nodes::actor_kind_spec s;
  s.kind = "notifier";
  s.functions = {"sendPickupNotification"};
  s.workers = workers_of(cfg.node.notifier_workers);
  s.make_handler = [django_cfg, providers, texts]() -> std::unique_ptr<nodes::job_handler> {
    return std::make_unique<notifier_handler>(std::make_unique<django_client>(django_cfg),
                                              providers(), texts);
  };
  return s;
}

nodes::actor_kind_spec escrow_spec(const protocol::config& cfg) {
  auto django_cfg = cfg.django;
  nodes::actor_kind_spec s;
  s.kind = "escrow";
  s.functions = {"processEscrowRelease"};
  s.workers = workers_of(cfg.node.escrow_workers);
  s.make_handler = [django_cfg]() -> std::unique_ptr<nodes::job_handler> {
    return std::make_unique<escrow_handler>(std::make_unique<django_client>(django_cfg));
  };
  return s;
}

nodes::actor_kind_spec geo_spec(const protocol::config& cfg) {
  nodes::actor_kind_spec s;
  s.kind = "geo";
  s.functions = {"notifyNearbyWorkers", "updateWorkerLocation"};
  s.workers = workers_of(cfg.node.geo_workers);
  s.prefetch = static_cast<int>(cfg.node.geo_prefetch);  // 0..100000 (config check)
  s.blocking = false;  // in-memory index work only: the workers share CAF's scheduler threads
  // One factory per spec: every handler of this node shares its index and loader.
  s.make_handler = geo_handler_factory(cfg.django, geo_options::from_config(cfg.geo));
  return s;
}

nodes::actor_kind_spec scheduler_spec(const protocol::config& cfg) {
  auto django_cfg = cfg.django;
  double default_radius_km = cfg.geo.radius_km;
  nodes::actor_kind_spec s;
  s.kind = "scheduler";
  s.functions = {"generateDailyReport", "generateWeeklyAnalytics", "cleanupData"};
  s.workers = workers_of(cfg.node.scheduler_workers);
  s.make_handler = [django_cfg, default_radius_km]() -> std::unique_ptr<nodes::job_handler> {
    return std::make_unique<scheduler_handler>(std::make_unique<django_client>(django_cfg),
                                               default_radius_km);
  };
  return s;
}

/// check_actor_config, also handing back the provider factory it had to make
/// (making it twice would open the outbox twice).
std::optional<std::string> check(const protocol::config& cfg, const std::string& data_dir,
                                 const std::vector<std::string>& kinds,
                                 provider_factory* providers) {
  for (const auto& k : kinds)
    if (!contains(known_actor_kinds(), k))
      return "--actors: unknown actor kind \"" + k + "\"; expected notifier, escrow, geo or scheduler";
  if (calls_django(kinds) && cfg.django.url.empty())
    return "[django] url: not set (nor DJANGO_API_URL); the actors call Django and need its base URL";
  if (calls_django(kinds))
    if (auto e = check_ca_file(cfg.django.ca_file, "[django] ca_file")) return e;
  if (!contains(kinds, "notifier")) return std::nullopt;
  if (cfg.notifications.service != "log")
    if (auto e = check_ca_file(cfg.notifications.ca_file, "[notifications] ca_file")) return e;
  auto problems = templates::check_overrides(cfg.notifications.templates);
  if (!problems.empty()) return problems.front();
  auto made = make_provider(cfg, data_dir);
  if (auto* err = std::get_if<provider_error>(&made)) return err->message;
  if (providers) *providers = std::get<provider_factory>(std::move(made));
  return std::nullopt;
}

}  // namespace

const std::vector<std::string>& known_actor_kinds() {
  static const std::vector<std::string> kinds{"notifier", "escrow", "geo", "scheduler"};
  return kinds;
}

std::optional<std::string> check_actor_config(const protocol::config& cfg,
                                              const std::string& data_dir,
                                              const std::vector<std::string>& kinds) {
  return check(cfg, data_dir, kinds, nullptr);
}

std::vector<nodes::actor_kind_spec> make_actor_kinds(const protocol::config& cfg,
                                                     const std::string& data_dir,
                                                     const std::vector<std::string>& kinds) {
  provider_factory providers;
  if (auto err = check(cfg, data_dir, kinds, &providers)) throw actor_config_error(*err);
  std::vector<nodes::actor_kind_spec> specs;
  std::vector<std::string> done;
  for (const auto& k : kinds) {
    if (contains(done, k)) continue;
    done.push_back(k);
    if (k == "notifier") specs.push_back(notifier_spec(cfg, providers));
    if (k == "escrow") specs.push_back(escrow_spec(cfg));
    if (k == "geo") specs.push_back(geo_spec(cfg));
    if (k == "scheduler") specs.push_back(scheduler_spec(cfg));
  }
  return specs;
}

}  // namespace klynaa::actors

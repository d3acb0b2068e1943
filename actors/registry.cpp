// Builds the actor_kind_specs of the kinds this build implements. Which
// functions each kind runs comes from protocol::function_registry (built from
// protocol/schema.cpp's table), never from a list here.
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
#include "actors/http_loop.hpp"
#include "actors/notifier.hpp"
#include "actors/providers.hpp"
#include "actors/scheduler.hpp"
#include "actors/templates.hpp"
#include "protocol/function_registry.hpp"

namespace klynaa::actors {
namespace {

bool contains(const std::vector<std::string>& v, const std::string& s) {
  return std::find(v.begin(), v.end(), s) != v.end();
}

/// Every kind built here calls Django: hosting any known kind needs django.url.
bool calls_django(const std::vector<std::string>& kinds) { return !kinds.empty(); }

/// "notifier, escrow, geo or scheduler".
std::string one_of(const std::vector<std::string>& names) {
  std::string out;
  for (size_t i = 0; i < names.size(); ++i)
    out += (i == 0 ? "" : i + 1 == names.size() ? " or " : ", ") + names[i];
  return out;
}

/// A CA bundle named in the config must be readable: otherwise every HTTPS call
/// would fail at run time (libcurl error 77) instead of the node refusing to start.
std::optional<std::string> check_ca_file(const std::string& path, const char* key) {
  if (path.empty() || ::access(path.c_str(), R_OK) == 0) return std::nullopt;
  return std::string(key) + ": cannot read the CA bundle " + path + ": " + std::strerror(errno);
}

/// The config check keeps node.*_workers within 1..100000; a config built in code is clamped the same way.
int workers_of(int64_t configured) {
  return configured > 0 ? static_cast<int>(std::min<int64_t>(configured, 100000)) : 1;
}

/// Jobs of kinds that call Django run on fibers when the node has an event
/// loop (nodes/suspend.hpp); without one (tests that make the specs alone)
/// each worker blocks a thread of its own, as before.
void run_on_fibers(nodes::actor_kind_spec& s, const std::shared_ptr<http_loop>& loop) {
  s.fibers = loop != nullptr;
  s.blocking = loop == nullptr;
}

nodes::actor_kind_spec notifier_spec(const protocol::config& cfg, const protocol::function_registry& fns,
                                     provider_factory providers, std::shared_ptr<http_loop> loop) {
  auto texts = std::make_shared<const templates>(cfg.notifications.templates);
  auto django_cfg = cfg.django;
  nodes::actor_kind_spec s;
  s.kind = "notifier";
  s.functions = fns.functions_of(s.kind);
  s.workers = workers_of(cfg.node.notifier_workers);
  run_on_fibers(s, loop);
  s.make_handler = [django_cfg, providers, texts, loop]() -> std::unique_ptr<nodes::job_handler> {
    return std::make_unique<notifier_handler>(std::make_unique<django_client>(django_cfg, loop),
                                              providers(), texts);
  };
  return s;
}

nodes::actor_kind_spec escrow_spec(const protocol::config& cfg, const protocol::function_registry& fns,
                                   std::shared_ptr<http_loop> loop) {
  auto django_cfg = cfg.django;
  nodes::actor_kind_spec s;
  s.kind = "escrow";
  s.functions = fns.functions_of(s.kind);
  s.workers = workers_of(cfg.node.escrow_workers);
  run_on_fibers(s, loop);
  s.make_handler = [django_cfg, loop]() -> std::unique_ptr<nodes::job_handler> {
    return std::make_unique<escrow_handler>(std::make_unique<django_client>(django_cfg, loop));
  };
  return s;
}

nodes::actor_kind_spec geo_spec(const protocol::config& cfg, const protocol::function_registry& fns) {
  nodes::actor_kind_spec s;
  s.kind = "geo";
  s.functions = fns.functions_of(s.kind);
  s.workers = workers_of(cfg.node.geo_workers);
  s.prefetch = static_cast<int>(cfg.node.geo_prefetch);  // 0..100000 (config check)
  s.blocking = false;  // in-memory index work only: the workers share CAF's scheduler threads
  // One factory per spec: every handler of this node shares its index and loader.
  s.make_handler = geo_handler_factory(cfg.django, geo_options::from_config(cfg.geo));
  return s;
}

nodes::actor_kind_spec scheduler_spec(const protocol::config& cfg, const protocol::function_registry& fns,
                                      std::shared_ptr<http_loop> loop) {
  auto django_cfg = cfg.django;
  double default_radius_km = cfg.geo.radius_km;
  nodes::actor_kind_spec s;
  s.kind = "scheduler";
  s.functions = fns.functions_of(s.kind);
  s.workers = workers_of(cfg.node.scheduler_workers);
  run_on_fibers(s, loop);
  s.make_handler = [django_cfg, default_radius_km, loop]() -> std::unique_ptr<nodes::job_handler> {
    return std::make_unique<scheduler_handler>(std::make_unique<django_client>(django_cfg, loop),
                                               default_radius_km);
  };
  return s;
}

/// check_actor_config, also handing back the provider factory it had to make
/// (making it twice would open the outbox twice).
std::optional<std::string> check(const protocol::config& cfg, const std::string& data_dir,
                                 const std::vector<std::string>& kinds,
                                 provider_factory* providers, std::shared_ptr<http_loop> loop = nullptr) {
  const auto known = protocol::function_registry::of(cfg).kinds();
  for (const auto& k : kinds)
    if (!contains(known, k))
      return "--actors: unknown actor kind \"" + k + "\"; expected " + one_of(known);
  if (calls_django(kinds) && cfg.django.url.empty())
    return "[django] url: not set (nor DJANGO_API_URL); the actors call Django and need its base URL";
  if (calls_django(kinds))
    if (auto e = check_ca_file(cfg.django.ca_file, "[django] ca_file")) return e;
  if (!contains(kinds, "notifier")) return std::nullopt;
  if (cfg.notifications.service != "log")
    if (auto e = check_ca_file(cfg.notifications.ca_file, "[notifications] ca_file")) return e;
  auto problems = templates::check_overrides(cfg.notifications.templates);
  if (!problems.empty()) return problems.front();
  auto made = make_provider(cfg, data_dir, std::move(loop));
  if (auto* err = std::get_if<provider_error>(&made)) return err->message;
  if (providers) *providers = std::get<provider_factory>(std::move(made));
  return std::nullopt;
}

}  // namespace

const std::vector<std::string>& known_actor_kinds() {
  static const std::vector<std::string> kinds = protocol::function_registry::built_in().kinds();
  return kinds;
}

std::optional<std::string> check_actor_config(const protocol::config& cfg,
                                              const std::string& data_dir,
                                              const std::vector<std::string>& kinds) {
  return check(cfg, data_dir, kinds, nullptr);
}

std::shared_ptr<http_loop> make_http_loop(const protocol::config& cfg) {
  http_loop::options o;
  o.http.connect_timeout_ms = cfg.django.connect_timeout_ms > 0 ? cfg.django.connect_timeout_ms : 2000;
  o.http.timeout_ms = cfg.django.timeout_ms > 0 ? cfg.django.timeout_ms : 10000;
  o.http.ca_file = cfg.django.ca_file;
  // The adaptive limits bound the calls; connections follow them (on HTTP/2 a
  // connection carries many). A connection is a file descriptor: the units set
  // LimitNOFILE=65536 (deploy/systemd).
  o.max_host_connections = static_cast<int>(std::min<int64_t>(cfg.node.downstream_max_in_flight, 60000));
  o.limits.max_in_flight = cfg.node.downstream_max_in_flight;
  o.limits.per_function.min_limit = cfg.node.limit_min;
  o.limits.per_function.max_limit = cfg.node.limit_max;
  o.limits.per_function.initial_limit = cfg.node.limit_initial;
  return std::make_shared<http_loop>(o);
}

std::vector<nodes::actor_kind_spec> make_actor_kinds(const protocol::config& cfg,
                                                     const std::string& data_dir,
                                                     const std::vector<std::string>& kinds,
                                                     std::shared_ptr<http_loop> loop) {
  provider_factory providers;
  if (auto err = check(cfg, data_dir, kinds, &providers, loop)) throw actor_config_error(*err);
  const auto fns = protocol::function_registry::of(cfg);
  std::vector<nodes::actor_kind_spec> specs;
  std::vector<std::string> done;
  for (const auto& k : kinds) {
    if (contains(done, k)) continue;
    done.push_back(k);
    if (k == "notifier") specs.push_back(notifier_spec(cfg, fns, providers, loop));
    if (k == "escrow") specs.push_back(escrow_spec(cfg, fns, loop));
    if (k == "geo") specs.push_back(geo_spec(cfg, fns));
    if (k == "scheduler") specs.push_back(scheduler_spec(cfg, fns, loop));
  }
  return specs;
}

}  // namespace klynaa::actors

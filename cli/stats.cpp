// `klynaa stats`: the broker's queues and nodes through its admin endpoint
// (docs/operations.md, "Watching it"): a table for people, read from the typed
// stats (broker/stats.hpp); --json prints the broker's document as it came.
#include <cstdio>
#include <iostream>

#include "broker/stats.hpp"
#include "cli/admin_client.hpp"
#include "cli/commands.hpp"

namespace klynaa::cli {

namespace {

int64_t num(const nlohmann::json& j, const char* key) {
  return j.is_object() && j.contains(key) && j[key].is_number() ? j[key].get<int64_t>() : 0;
}

int64_t count(const std::map<std::string, int64_t>& m, const char* key) {
  auto it = m.find(key);
  return it == m.end() ? 0 : it->second;
}

void print_functions(const broker::broker_stats& s) {
  std::printf("%-26s %8s %8s %8s %10s %8s %8s\n", "function", "queued", "running", "retrying", "done", "retries",
              "dead");
  for (auto& [fn, f] : s.functions)
    std::printf("%-26s %8lld %8lld %8lld %10lld %8lld %8lld\n", fn.c_str(),
                static_cast<long long>(count(f.states, "ready")), static_cast<long long>(count(f.states, "running")),
                static_cast<long long>(count(f.states, "retry_wait")),
                static_cast<long long>(count(f.outcomes, "ok")), static_cast<long long>(count(f.outcomes, "retry")),
                static_cast<long long>(count(f.outcomes, "dead")));
  std::printf("\ndead-letter queue: %lld job(s)\n\n", static_cast<long long>(s.dead_letters));
  if (!s.retrying.empty()) {
    std::printf("%-44s %-26s %8s %12s\n", "next retries", "function", "attempts", "in");
    for (auto& r : s.retrying)
      std::printf("%-44s %-26s %8lld %10.1f s\n", r.job_id.c_str(), r.function.c_str(),
                  static_cast<long long>(r.attempts), static_cast<double>(r.next_run_ms - s.ts_ms) / 1000.0);
    std::printf("\n");
  }
}

// What a node reports of itself (NODE_STATS, docs/cluster-protocol.md): circuit
// breakers that are not closed and adaptive in-flight limits.
void print_node_report(const broker::node_view& n) {
  const auto extra = n.stats.value("extra", nlohmann::json::object());
  const auto breakers = extra.value("breakers", nlohmann::json::object());
  for (auto& [service, b] : breakers.items())
    if (b.value("state", "closed") != "closed")
      std::printf("%s: %s circuit breaker %s (retry in %.1f s, %lld failures in a row)\n", n.name.c_str(),
                  service.c_str(), b.value("state", "").c_str(), static_cast<double>(num(b, "retry_in_ms")) / 1000.0,
                  static_cast<long long>(num(b, "consecutive_failures")));
  // Adaptive in-flight limits: one line per downstream and function in use.
  const auto limits = extra.value("limits", nlohmann::json::object());
  const auto downstreams = limits.value("downstreams", nlohmann::json::object());  // items() refers to it
  for (auto& [downstream, d] : downstreams.items()) {
    const auto functions = d.value("functions", nlohmann::json::object());
    for (auto& [fn, f] : functions.items())
      std::printf("%s: %s/%s limit %lld, in flight %lld, waiting %lld, latency %.1f ms (floor %.1f ms)%s\n",
                  n.name.c_str(), downstream.c_str(), fn.c_str(), static_cast<long long>(num(f, "limit")),
                  static_cast<long long>(num(f, "in_flight")), static_cast<long long>(num(d, "waiting")),
                  f.value("latency_ms", 0.0), f.value("min_rtt_ms", 0.0),
                  num(d, "paused_ms") > 0 ? (" paused " + std::to_string(num(d, "paused_ms")) + " ms").c_str() : "");
  }
  for (auto& [kind, why] : n.withdrawn) std::printf("%s: withdrew %s (%s)\n", n.name.c_str(), kind.c_str(), why.c_str());
}

void print_table(const broker::broker_stats& s) {
  print_functions(s);
  std::printf("%-24s %-34s %8s %8s %16s\n", "node", "actors", "running", "credit", "last heartbeat");
  for (auto& n : s.nodes) {
    std::string kinds;
    for (auto& k : n.kinds) kinds += (kinds.empty() ? "" : ",") + k;
    std::printf("%-24s %-34s %8lld %8lld %13lld ms\n", n.name.c_str(), kinds.c_str(),
                static_cast<long long>(n.running), static_cast<long long>(n.credit),
                static_cast<long long>(s.ts_ms - n.last_heartbeat_ms));
  }
  if (s.nodes.empty()) std::printf("(no node connected)\n");
  for (auto& n : s.nodes) print_node_report(n);
}

}  // namespace

int cmd_stats(int argc, char** argv) {
  parsed_args args;
  std::string err;
  std::vector<flag_spec> specs = {{"admin", true, "admin endpoint HOST:PORT (default admin.bind)"},
                                  {"config", true, "config file (for admin.bind and admin.token)"},
                                  {"json", false, "print the broker's JSON"}};
  if (!parse_args(argc, argv, 2, specs, args, err) || !args.positional.empty()) {
    std::cerr << "klynaa stats: " << (err.empty() ? "unexpected argument" : err) << "\n";
    return 2;
  }
  protocol::config cfg;
  if (!load_config(args, cfg, err)) {
    std::cerr << "klynaa: " << err << "\n";
    return 2;
  }
  auto s = admin_call("GET", args.get("admin").value_or(cfg.admin.bind), cfg.admin.token, "/stats", err);
  if (!s) {
    std::cerr << "klynaa stats: " << err << "\n";
    return 1;
  }
  if (args.has("json"))
    std::cout << s->dump(2, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
  else
    print_table(broker::stats_from_json(*s));
  return 0;
}

}  // namespace klynaa::cli

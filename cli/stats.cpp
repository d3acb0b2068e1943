// `klynaa stats`: the broker's queues and nodes through its admin endpoint
// (contract §5): a table for people, --json for scripts.
#include <cstdio>
#include <iostream>

#include "cli/admin_client.hpp"
#include "cli/commands.hpp"

namespace klynaa::cli {

namespace {

int64_t num(const nlohmann::json& j, const char* key) {
  return j.is_object() && j.contains(key) && j[key].is_number() ? j[key].get<int64_t>() : 0;
}

void print_table(const nlohmann::json& s) {
  std::printf("%-26s %8s %8s %8s %10s %8s %8s\n", "function", "queued", "running", "retrying",
              "done", "retries", "dead");
  const auto functions = s.value("functions", nlohmann::json::object());
  for (auto& [fn, f] : functions.items()) {
    auto o = f.value("outcomes", nlohmann::json::object());
    std::printf("%-26s %8lld %8lld %8lld %10lld %8lld %8lld\n", fn.c_str(),
                static_cast<long long>(num(f, "ready")), static_cast<long long>(num(f, "running")),
                static_cast<long long>(num(f, "retry_wait")), static_cast<long long>(num(o, "ok")),
                static_cast<long long>(num(o, "retry")), static_cast<long long>(num(o, "dead")));
  }
  std::printf("\ndead-letter queue: %lld job(s)\n\n", static_cast<long long>(num(s, "dead_letters")));
  const auto retrying = s.value("retrying", nlohmann::json::array());
  if (!retrying.empty()) {
    std::printf("%-44s %-26s %8s %12s\n", "next retries", "function", "attempts", "in");
    for (auto& r : retrying)
      std::printf("%-44s %-26s %8lld %10.1f s\n", r.value("job_id", "").c_str(), r.value("function", "").c_str(),
                  static_cast<long long>(num(r, "attempts")),
                  static_cast<double>(num(r, "next_run_ms") - num(s, "ts_ms")) / 1000.0);
    std::printf("\n");
  }
  auto nodes = s.value("nodes", nlohmann::json::array());
  std::printf("%-24s %-34s %8s %8s %16s\n", "node", "actors", "running", "credit", "last heartbeat");
  const int64_t now = num(s, "ts_ms");
  for (auto& n : nodes) {
    std::string kinds;
    const auto kind_list = n.value("kinds", nlohmann::json::array());
    for (auto& k : kind_list)
      kinds += (kinds.empty() ? "" : ",") + k.get<std::string>();
    std::printf("%-24s %-34s %8lld %8lld %13lld ms\n", n.value("name", "").c_str(), kinds.c_str(),
                static_cast<long long>(num(n, "running")), static_cast<long long>(num(n, "credit")),
                static_cast<long long>(now - num(n, "last_heartbeat_ms")));
  }
  if (nodes.empty()) std::printf("(no node connected)\n");
  // Circuit breakers that are not closed, and actor kinds a node withdrew.
  for (auto& n : nodes) {
    const auto extra = n.value("stats", nlohmann::json::object()).value("extra", nlohmann::json::object());
    const auto breakers = extra.value("breakers", nlohmann::json::object());
    for (auto& [service, b] : breakers.items())
      if (b.value("state", "closed") != "closed")
        std::printf("%s: %s circuit breaker %s (retry in %.1f s, %lld failures in a row)\n",
                    n.value("name", "").c_str(), service.c_str(), b.value("state", "").c_str(),
                    static_cast<double>(num(b, "retry_in_ms")) / 1000.0,
                    static_cast<long long>(num(b, "consecutive_failures")));
    // Adaptive in-flight limits: one line per downstream and function in use.
    const auto limits = extra.value("limits", nlohmann::json::object());
    const auto downstreams = limits.value("downstreams", nlohmann::json::object());  // items() refers to it
    for (auto& [downstream, d] : downstreams.items()) {
      const auto functions = d.value("functions", nlohmann::json::object());
      for (auto& [fn, f] : functions.items())
        std::printf("%s: %s/%s limit %lld, in flight %lld, waiting %lld, latency %.1f ms (floor %.1f ms)%s\n",
                    n.value("name", "").c_str(), downstream.c_str(), fn.c_str(),
                    static_cast<long long>(num(f, "limit")), static_cast<long long>(num(f, "in_flight")),
                    static_cast<long long>(num(d, "waiting")), f.value("latency_ms", 0.0),
                    f.value("min_rtt_ms", 0.0),
                    num(d, "paused_ms") > 0 ? (" paused " + std::to_string(num(d, "paused_ms")) + " ms").c_str() : "");
    }
    const auto withdrawn = n.value("withdrawn", nlohmann::json::object());
    for (auto& [kind, why] : withdrawn.items())
      std::printf("%s: withdrew %s (%s)\n", n.value("name", "").c_str(), kind.c_str(),
                  why.is_string() ? why.get<std::string>().c_str() : "");
  }
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
    print_table(*s);
  return 0;
}

}  // namespace klynaa::cli

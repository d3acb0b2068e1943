// `klynaa dlq list | show JOB | replay JOB|--all | purge JOB|--all` (docs/operations.md,
// "The dead-letter queue"):
// the dead-letter queue through the broker's admin endpoint. Replay makes a dead
// job ready again with the same id, data and ordering key (so the escrow's
// Idempotency-Key and the broker's job-id dedup still hold) and a fresh attempt
// budget; purge deletes it with its history.
#include <cstdio>
#include <ctime>
#include <iostream>

#include "cli/admin_client.hpp"
#include "cli/commands.hpp"

namespace klynaa::cli {

namespace {

std::string utc(int64_t ms) {
  std::time_t t = static_cast<std::time_t>(ms / 1000);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

std::string error_text(const nlohmann::json& e) {
  if (!e.is_object()) return e.is_null() ? "" : e.dump();
  std::string s = e.value("code", "");
  if (e.contains("http_status") && e["http_status"].is_number() && e["http_status"].get<int>() > 0)
    s += " (HTTP " + std::to_string(e["http_status"].get<int>()) + ")";
  auto m = e.value("message", "");
  return s + (m.empty() ? "" : ": " + m);
}

void print_list(const nlohmann::json& l) {
  const auto jobs = l.value("jobs", nlohmann::json::array());
  std::printf("%-44s %-24s %8s  %-20s  %s\n", "job", "function", "attempts", "died", "last error");
  for (auto& j : jobs) {
    auto err = error_text(j.value("last_error", nlohmann::json()));
    if (err.size() > 70) err = err.substr(0, 67) + "...";
    std::printf("%-44s %-24s %8lld  %-20s  %s\n", j.value("job_id", "").c_str(), j.value("function", "").c_str(),
                static_cast<long long>(j.value("attempts", int64_t{0})), utc(j.value("died_ms", int64_t{0})).c_str(),
                err.c_str());
  }
  const auto total = l.value("total", int64_t{0});
  std::printf("\n%lld dead job(s)%s\n", static_cast<long long>(total),
              total > static_cast<int64_t>(jobs.size()) ? " (the most recent shown; --limit N for more)" : "");
}

void print_job(const nlohmann::json& j) {
  std::printf("job:          %s\n", j.value("job_id", "").c_str());
  std::printf("function:     %s\n", j.value("function", "").c_str());
  std::printf("ordering key: %s\n", j.value("ordering_key", "").empty() ? "(none)" : j.value("ordering_key", "").c_str());
  std::printf("request:      %s\n", j.value("request_id", "").c_str());
  std::printf("attempts:     %lld\n", static_cast<long long>(j.value("attempts", int64_t{0})));
  std::printf("died:         %s\n", utc(j.value("died_ms", int64_t{0})).c_str());
  std::printf("last error:   %s\n", error_text(j.value("last_error", nlohmann::json())).c_str());
  std::printf("data:         %s\n", j.value("data", nlohmann::json::object()).dump().c_str());
  std::printf("\n%-8s %-20s %-10s %10s  %s\n", "attempt", "at", "outcome", "ms", "node / error");
  for (auto& a : j.value("history", nlohmann::json::array())) {
    std::printf("%-8lld %-20s %-10s %10lld  %s %s\n", static_cast<long long>(a.value("attempt", int64_t{0})),
                utc(a.value("at_ms", int64_t{0})).c_str(), a.value("outcome", "").c_str(),
                static_cast<long long>(a.value("duration_ms", int64_t{0})), a.value("node", "").c_str(),
                error_text(a.value("error", nlohmann::json())).c_str());
  }
}

int usage_error(const std::string& msg) {
  std::cerr << "klynaa dlq: " << msg
            << "\nusage: klynaa dlq list [--limit N] | show JOB | replay JOB|--all | purge JOB|--all"
               "  [--admin HOST:PORT] [--config F] [--json]\n";
  return 2;
}

}  // namespace

int cmd_dlq(int argc, char** argv) {
  parsed_args args;
  std::string err;
  std::vector<flag_spec> specs = {{"admin", true, "admin endpoint HOST:PORT (default admin.bind)"},
                                  {"config", true, "config file (for admin.bind and admin.token)"},
                                  {"limit", true, "list: at most N jobs (default 100)"},
                                  {"all", false, "replay/purge: every dead job"},
                                  {"json", false, "print the broker's JSON"}};
  if (!parse_args(argc, argv, 2, specs, args, err)) return usage_error(err);
  if (args.positional.empty()) return usage_error("missing the action");
  const std::string action = args.positional[0];
  protocol::config cfg;
  if (!load_config(args, cfg, err)) {
    std::cerr << "klynaa: " << err << "\n";
    return 2;
  }
  const std::string admin = args.get("admin").value_or(cfg.admin.bind);
  std::string path;
  std::string method = "GET";
  if (action == "list") {
    if (args.positional.size() != 1 || args.has("all")) return usage_error("list takes no job");
    std::string limit = args.get("limit").value_or("100");
    if (limit.empty() || limit.find_first_not_of("0123456789") != std::string::npos)
      return usage_error("--limit must be a positive number, got '" + limit + "'");
    path = "/dlq?limit=" + limit;
  } else if (action == "show") {
    if (args.positional.size() != 2) return usage_error("show takes one JOB");
    path = "/dlq/job?id=" + url_encode(args.positional[1]);
  } else if (action == "replay" || action == "purge") {
    const bool all = args.has("all");
    if (all == (args.positional.size() > 1))
      return usage_error(action + " takes JOB... or --all");
    path = "/dlq/" + action + "?";
    if (all) path += "all=1";
    for (size_t i = 1; i < args.positional.size(); ++i)
      path += (i > 1 ? "&id=" : "id=") + url_encode(args.positional[i]);
    method = "POST";
  } else {
    return usage_error("unknown action '" + action + "'");
  }
  auto r = admin_call(method, admin, cfg.admin.token, path, err);
  if (!r) {
    std::cerr << "klynaa dlq " << action << ": " << err << "\n";
    return 1;
  }
  if (args.has("json")) {
    std::cout << r->dump(2, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
  } else if (action == "list") {
    print_list(*r);
  } else if (action == "show") {
    print_job(*r);
  } else {
    const char* key = action == "replay" ? "replayed" : "purged";
    for (auto& id : r->value(key, nlohmann::json::array()))
      std::printf("%s %s\n", key, id.get<std::string>().c_str());
    for (auto& id : r->value("missing", nlohmann::json::array()))
      std::printf("not in the dead-letter queue: %s\n", id.get<std::string>().c_str());
    if (r->value("more", false))
      std::printf("more dead jobs remain: run `klynaa dlq %s --all` again\n", action.c_str());
  }
  // A job named but not dead is an error the caller should see.
  return r->value("missing", nlohmann::json::array()).empty() ? 0 : 1;
}

}  // namespace klynaa::cli

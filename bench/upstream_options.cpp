// klynaa-upstream's command line (upstream_options.hpp).
#include "bench/upstream_options.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <cstdio>
#include <cstdlib>

namespace klynaa::upstream {

namespace {

constexpr const char* help_text = R"(klynaa-upstream: a fake Django API and push upstream for benchmarks
(HTTP/1.1 and cleartext HTTP/2 with prior knowledge, one epoll thread).

  --bind ADDR              IPv4 address to listen on (default 127.0.0.1)
  --port N                 port; 0 picks a free one (default 0)
  --latency-ms N           hold every answer N ms (default 0)
  --latency-step-ms N      ... and N ms once --step-after-s seconds have passed
  --step-after-s T         (both or neither)
  --capacity N             at most N requests in flight; above, 503 at once (0: no limit)
  --retry-after-s S        the Retry-After of those 503s (default 1)
  --tokens-per-user N      push tokens GET /api/users/{id}/tokens/ lists (default 1)
  --api-key K              require `Authorization: Api-Key K` on /api/ (default: none needed)
  --h2-max-streams N       SETTINGS_MAX_CONCURRENT_STREAMS of HTTP/2 connections (default 1000)

The first stdout line is {"listening": "ADDR:PORT"}. GET /_stats answers the
counters as JSON; SIGTERM or SIGINT prints them as a final JSON line and exits 0.
)";

[[noreturn]] void usage_error(const std::string& msg) {
  std::fprintf(stderr, "klynaa-upstream: %s (see --help)\n", msg.c_str());
  std::exit(2);
}

bool parse_int(const std::string& s, int64_t lo, int64_t hi, int64_t& out) {
  if (s.empty() || s.size() > 18) return false;
  for (char ch : s)
    if (ch < '0' || ch > '9') return false;
  int64_t v = std::strtoll(s.c_str(), nullptr, 10);
  if (v < lo || v > hi) return false;
  out = v;
  return true;
}

}  // namespace

options parse_args(int argc, char** argv) {
  options o;
  bool have_step_ms = false, have_step_after = false;
  for (int i = 1; i < argc; ++i) {
    std::string flag = argv[i];
    std::optional<std::string> inline_value;
    if (flag == "--help" || flag == "-h") {
      std::fputs(help_text, stdout);
      std::exit(0);
    }
    if (auto eq = flag.find('='); flag.rfind("--", 0) == 0 && eq != std::string::npos) {
      inline_value = flag.substr(eq + 1);
      flag.resize(eq);
    }
    auto value = [&]() -> std::string {
      if (inline_value) return *inline_value;
      if (i + 1 >= argc) usage_error(flag + " needs a value");
      return argv[++i];
    };
    auto integer = [&](int64_t lo, int64_t hi) {
      std::string s = value();
      int64_t v = 0;
      if (!parse_int(s, lo, hi, v))
        usage_error(flag + ": expected an integer from " + std::to_string(lo) + " to " +
                    std::to_string(hi) + ", got \"" + s + "\"");
      return v;
    };
    if (flag == "--bind") {
      o.bind = value();
      in_addr a{};
      if (::inet_pton(AF_INET, o.bind.c_str(), &a) != 1)
        usage_error("--bind: expected an IPv4 address, got \"" + o.bind + "\"");
    } else if (flag == "--port") {
      o.port = static_cast<int>(integer(0, 65535));
    } else if (flag == "--latency-ms") {
      o.latency_ms = integer(0, 3600 * 1000);
    } else if (flag == "--latency-step-ms") {
      o.step_latency_ms = integer(0, 3600 * 1000);
      have_step_ms = true;
    } else if (flag == "--step-after-s") {
      std::string s = value();
      char* end = nullptr;
      double v = std::strtod(s.c_str(), &end);
      if (s.empty() || *end != '\0' || !(v >= 0 && v <= 86400 * 365))
        usage_error("--step-after-s: expected seconds (>= 0), got \"" + s + "\"");
      o.step_after_s = v;
      have_step_after = true;
    } else if (flag == "--capacity") {
      o.capacity = integer(0, 100000000);
    } else if (flag == "--retry-after-s") {
      o.retry_after_s = integer(0, 86400);
    } else if (flag == "--tokens-per-user") {
      o.tokens_per_user = integer(0, 1000);
    } else if (flag == "--api-key") {
      o.api_key = value();
    } else if (flag == "--h2-max-streams") {
      o.h2_max_streams = integer(1, 1000000);
    } else {
      usage_error("unknown option " + flag);
    }
  }
  if (have_step_ms != have_step_after)
    usage_error("--latency-step-ms and --step-after-s go together");
  return o;
}

}  // namespace klynaa::upstream

// klynaa-bench's view of the admin endpoint (bench_admin.hpp).
#include "bench/bench_admin.hpp"

#include <cstdlib>

#include <httplib.h>

#include "bench/bench_common.hpp"

namespace klynaa::bench {

admin_client::admin_client(std::string addr) {
  if (addr.rfind("http://", 0) == 0) addr = addr.substr(7);
  while (!addr.empty() && addr.back() == '/') addr.pop_back();
  auto c = addr.rfind(':');
  if (c == std::string::npos) fail(2, "--admin must be HOST:PORT, got '" + addr + "'");
  int port = std::atoi(addr.substr(c + 1).c_str());
  cli = std::make_unique<httplib::Client>(addr.substr(0, c), port);
  cli->set_connection_timeout(2, 0);
  cli->set_read_timeout(10, 0);
  cli->set_keep_alive(true);
}

admin_client::~admin_client() = default;

std::optional<nlohmann::json> admin_client::stats() {
  auto r = cli->Get("/stats");
  if (!r || r->status != 200) return std::nullopt;
  auto j = nlohmann::json::parse(r->body, nullptr, false);
  if (!j.is_object()) return std::nullopt;
  return j;
}

fn_counts counts_of(const nlohmann::json& stats, const std::string& fn) {
  fn_counts c;
  auto fns = stats.find("functions");
  if (fns == stats.end() || !fns->is_object()) return c;
  auto f = fns->find(fn);
  if (f == fns->end() || !f->is_object()) return c;
  auto get = [](const nlohmann::json& o, const char* k) -> int64_t {
    auto it = o.find(k);
    return it != o.end() && it->is_number() ? it->get<int64_t>() : 0;
  };
  c.ready = get(*f, "ready");
  c.running = get(*f, "running");
  c.retry_wait = get(*f, "retry_wait");
  auto oc = f->find("outcomes");
  if (oc != f->end() && oc->is_object()) {
    c.ok = get(*oc, "ok");
    c.retry = get(*oc, "retry");
    c.dead = get(*oc, "dead");
  }
  return c;
}

}  // namespace klynaa::bench

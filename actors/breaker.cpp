#include "actors/breaker.hpp"

#include <algorithm>
#include <chrono>
#include <map>
#include <memory>

#include "protocol/backoff.hpp"
#include "protocol/log.hpp"

namespace klynaa::actors {

namespace {

const char* name_of(circuit_breaker::state s) {
  switch (s) {
    case circuit_breaker::state::closed: return "closed";
    case circuit_breaker::state::open: return "open";
    case circuit_breaker::state::half_open: return "half_open";
  }
  return "closed";
}

/// A probe that never recorded (its caller failed in between) is given up after this.
constexpr int64_t probe_timeout_ms = 60000;

struct registry {
  std::mutex mu;
  breaker_options opts;
  std::map<std::string, std::unique_ptr<circuit_breaker>, std::less<>> breakers;
};

registry& reg() {
  static registry r;
  return r;
}

}  // namespace

circuit_breaker::circuit_breaker(std::string service, breaker_options opts, std::function<int64_t()> clock)
    : service_(std::move(service)), opts_(opts), clock_(std::move(clock)) {
  opts_.failure_threshold = std::max<int64_t>(1, opts_.failure_threshold);
  opts_.open_ms = std::max<int64_t>(1, opts_.open_ms);
  opts_.max_open_ms = std::max(opts_.open_ms, opts_.max_open_ms);
}

int64_t circuit_breaker::now() const {
  if (clock_) return clock_();
  using namespace std::chrono;
  return duration_cast<milliseconds>(steady_clock::now().time_since_epoch()).count();
}

void circuit_breaker::open(int64_t now_ms, int64_t for_ms) {
  state_ = state::open;
  opened_at_ = now_ms;
  open_for_ = for_ms;
  probe_started_ = 0;
  ++opens_;
  log::warning("breaker", "circuit opened: calls to this service wait instead of failing",
               {{"service", service_}, {"consecutive_failures", failures_}, {"open_ms", for_ms}});
}

bool circuit_breaker::allow(int64_t& retry_in_ms) {
  std::lock_guard<std::mutex> lk(mu_);
  const int64_t t = now();
  retry_in_ms = 0;
  switch (state_) {
    case state::closed:
      return true;
    case state::open:
      if (t - opened_at_ < open_for_) {
        retry_in_ms = opened_at_ + open_for_ - t;
        return false;
      }
      state_ = state::half_open;
      probe_started_ = t;
      log::info("breaker", "circuit half-open: one probe call goes through", {{"service", service_}});
      return true;
    case state::half_open:
      if (probe_started_ != 0 && t - probe_started_ < probe_timeout_ms) {
        retry_in_ms = std::min<int64_t>(opts_.open_ms, 1000);
        return false;
      }
      probe_started_ = t;
      return true;
  }
  return true;
}

void circuit_breaker::record(bool failure) {
  std::lock_guard<std::mutex> lk(mu_);
  const int64_t t = now();
  if (!failure) {
    if (state_ != state::closed)
      log::info("breaker", "circuit closed: the service answers again", {{"service", service_}});
    state_ = state::closed;
    failures_ = 0;
    probe_started_ = 0;
    return;
  }
  ++failures_;
  if (state_ == state::half_open) {
    open(t, protocol::capped_doubling(open_for_, opts_.max_open_ms, 1));  // the probe failed
  } else if (state_ == state::closed && failures_ >= opts_.failure_threshold) {
    open(t, opts_.open_ms);
  }
}

circuit_breaker::state circuit_breaker::current() const {
  std::lock_guard<std::mutex> lk(mu_);
  return state_;
}

nlohmann::json circuit_breaker::snapshot() const {
  std::lock_guard<std::mutex> lk(mu_);
  int64_t retry_in = state_ == state::open ? std::max<int64_t>(0, opened_at_ + open_for_ - now()) : 0;
  return {{"state", name_of(state_)}, {"consecutive_failures", failures_}, {"opens", opens_},
          {"retry_in_ms", retry_in}};
}

void configure_breakers(const breaker_options& opts) {
  std::lock_guard<std::mutex> lk(reg().mu);
  reg().opts = opts;
}

circuit_breaker& breaker_for(std::string_view service) {
  auto& r = reg();
  std::lock_guard<std::mutex> lk(r.mu);
  auto it = r.breakers.find(service);
  if (it == r.breakers.end())
    it = r.breakers.emplace(std::string(service), std::make_unique<circuit_breaker>(std::string(service), r.opts)).first;
  return *it->second;
}

nlohmann::json breaker_states() {
  auto& r = reg();
  std::lock_guard<std::mutex> lk(r.mu);
  nlohmann::json out = nlohmann::json::object();
  for (auto& [name, b] : r.breakers) out[name] = b->snapshot();
  return out;
}

bool breaker_failure(int http_status) {
  return http_status == 0 || http_status == 408 || http_status == 429 || http_status >= 500;
}

}  // namespace klynaa::actors

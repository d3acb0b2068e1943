// http_loop's adaptive in-flight limits (http_loop.hpp, limit_tag;
// docs/reliability.md, "Adaptive in-flight limits"): a tagged request waits in
// `waiting` until the limiter (actors/limiter.hpp) has a slot for its downstream
// and function, the limiter learns how each call went, and a Retry-After on a
// 429 pauses the downstream. Runs on the loop thread, except limits() and
// limits_json(), which read a copy under limits_mutex from any thread.
#include <algorithm>
#include <chrono>
#include <string>
#include <vector>

#include "actors/http_loop_impl.hpp"

namespace klynaa::actors {
namespace {

using loop_detail::no_answer;
using loop_detail::now_ms;
using steady = loop_detail::steady;

int64_t wall_now_ms() {  // Retry-After may be an HTTP date
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch()).count();
}

/// The answer of a tagged request refused because its downstream asked to wait
/// (Retry-After): classify() makes it the deferred outcome "circuit_open".
http_response deferred(const std::string& downstream, int64_t left_ms) {
  http_response r = no_answer(downstream + " asked to wait (Retry-After): " + std::to_string(left_ms) +
                              " ms left; not sent");
  r.circuit_open_ms = std::max<int64_t>(left_ms, 0);
  return r;
}

/// How an answer counts for the limiter (actors/limiter.hpp).
call_outcome outcome_of(const http_response& r) {
  if (r.status == 0) {
    if (r.error == http_loop::cancelled_error) return call_outcome::cancelled;
    return r.timed_out ? call_outcome::timeout : call_outcome::failed;
  }
  if (r.status == 429 || r.status == 503) return call_outcome::overloaded;
  if (r.status == 504) return call_outcome::timeout;
  if (r.status >= 500) return call_outcome::failed;
  return call_outcome::ok;
}

}  // namespace

/// Starts `j` now, or, when it is tagged, once its limit has a slot for it: it
/// waits in `waiting` meanwhile; refused at once while its downstream is
/// paused by a Retry-After.
void http_loop::impl::admit(std::unique_ptr<job> j) {
  if (j->tag.downstream.empty()) return begin(std::move(j));
  const int64_t now = now_ms();
  int64_t paused = 0;
  {
    std::lock_guard<std::mutex> lock(limits_mutex);
    auto key = std::make_pair(j->tag.downstream, j->tag.function);
    auto w = waiting.find(key);
    const bool queued_before = w != waiting.end() && !w->second.empty();  // keep the order
    if (!queued_before && limiter.try_acquire(j->tag.downstream, j->tag.function, now)) {
      j->acquired = true;
    } else {
      paused = limiter.paused_until(j->tag.downstream);
      if (paused <= now) {
        waiting[key].push_back(std::move(j));
        return;
      }
    }
  }
  if (!j->acquired) return answer(*j, deferred(j->tag.downstream, paused - now));
  begin(std::move(j));
}

/// The limiter learns how `j` went; a Retry-After on 429/503 pauses its downstream.
void http_loop::impl::settle(job& j, const http_response& r) {
  if (!j.acquired) return;
  j.acquired = false;
  const int64_t now = now_ms();
  const auto latency_us =
      std::chrono::duration_cast<std::chrono::microseconds>(steady::now() - j.started).count();
  const auto outcome = outcome_of(r);
  int64_t pause_until = 0;
  // A 429 (rate limited) asks the client to wait: the whole downstream pauses.
  // A 503 comes from one overloaded moment: the limit is cut, and only the job
  // that got it waits its Retry-After (its retry, docs/reliability.md); pausing
  // every call on each 503 would leave the downstream idle most of the time.
  if (outcome == call_outcome::overloaded && r.status == 429)
    if (auto ra = r.header("retry-after"))
      if (auto ms = parse_retry_after(*ra, wall_now_ms()); ms && *ms > 0)
        pause_until = now + std::min<int64_t>(*ms, 3600000);  // at most 1 h (docs/reliability.md)
  std::lock_guard<std::mutex> lock(limits_mutex);
  limiter.on_done(j.tag.downstream, j.tag.function, now, latency_us, outcome);
  if (pause_until > 0) limiter.pause(j.tag.downstream, pause_until);
}

/// Answers `j` with `r`, after the limiter has counted it; its slot may start
/// the next request waiting for that downstream.
void http_loop::impl::complete(std::unique_ptr<job> j, http_response r) {
  settle(*j, r);
  const std::string downstream = j->tag.downstream;
  answer(*j, std::move(r));
  j.reset();  // destroyed on this thread, right after its callback
  if (!downstream.empty()) pump(downstream);
}

/// Starts the waiting requests of `downstream` that its limits now allow, one
/// per function in turn so that no function waits behind another's queue;
/// while it is paused, answers them all as deferred instead.
void http_loop::impl::pump(const std::string& downstream) {
  if (draining) return;
  for (;;) {
    std::vector<std::unique_ptr<job>> ready;
    int64_t paused = 0;
    const int64_t now = now_ms();
    {
      std::lock_guard<std::mutex> lock(limits_mutex);
      paused = limiter.paused_until(downstream);
      if (paused <= now) {
        for (auto it = waiting.lower_bound({downstream, std::string{}});
             it != waiting.end() && it->first.first == downstream; ++it) {
          if (it->second.empty() || !limiter.try_acquire(downstream, it->first.second, now)) continue;
          it->second.front()->acquired = true;
          ready.push_back(std::move(it->second.front()));
          it->second.pop_front();
        }
      }
    }
    if (paused > now) return refuse_waiting(downstream, paused);
    if (ready.empty()) return;
    for (auto& j : ready) begin(std::move(j));
  }
}

/// Every request waiting for `downstream` gets the deferred answer: it is
/// paused until `until` (ms of the steady clock).
void http_loop::impl::refuse_waiting(const std::string& downstream, int64_t until) {
  std::vector<std::unique_ptr<job>> refused;
  {
    std::lock_guard<std::mutex> lock(limits_mutex);
    for (auto it = waiting.lower_bound({downstream, std::string{}});
         it != waiting.end() && it->first.first == downstream; ++it) {
      for (auto& j : it->second) refused.push_back(std::move(j));
      it->second.clear();
    }
  }
  const int64_t now = now_ms();
  for (auto& j : refused) answer(*j, deferred(downstream, until - now));
}

/// Takes request `id` out of `waiting`, or returns nullptr.
std::unique_ptr<http_loop::impl::job> http_loop::impl::take_waiting(uint64_t id) {
  std::lock_guard<std::mutex> lock(limits_mutex);
  for (auto& [key, queue] : waiting)
    for (auto it = queue.begin(); it != queue.end(); ++it)
      if ((*it)->id == id) {
        auto j = std::move(*it);
        queue.erase(it);
        return j;
      }
  return nullptr;
}

/// Publishes how many requests wait for their limit, for snapshot() (the
/// node's credit follows it: nodes/gateway.hpp, backed_up).
void http_loop::impl::count_waiting() {
  int64_t n = 0;
  {
    std::lock_guard<std::mutex> lock(limits_mutex);
    for (const auto& entry : waiting) n += static_cast<int64_t>(entry.second.size());
  }
  waiting_count.store(n, std::memory_order_relaxed);
}

http_loop::limit_stats http_loop::limits() const {
  limit_stats out;
  std::lock_guard<std::mutex> lock(impl_->limits_mutex);
  out.limits = impl_->limiter.snapshot();
  for (const auto& [key, queue] : impl_->waiting)
    if (!queue.empty()) out.waiting[key.first] += static_cast<int64_t>(queue.size());
  return out;
}

nlohmann::json limits_json(const http_loop& loop) {
  const auto counters = loop.snapshot();
  const auto limits = loop.limits();
  const int64_t now = now_ms();
  nlohmann::json downstreams = nlohmann::json::object();
  for (const auto& f : limits.limits) {
    auto& d = downstreams[f.downstream];
    if (!d.contains("functions")) {
      auto w = limits.waiting.find(f.downstream);
      d = {{"in_flight", f.downstream_in_flight},
           {"max_in_flight", f.downstream_max_in_flight},
           {"waiting", w == limits.waiting.end() ? 0 : w->second},
           {"paused_ms", std::max<int64_t>(0, f.limit.paused_until_ms - now)},
           {"functions", nlohmann::json::object()}};
    }
    d["functions"][f.function] = {{"limit", f.limit.limit},
                                  {"in_flight", f.limit.in_flight},
                                  {"min_rtt_ms", static_cast<double>(f.limit.min_rtt_us) / 1000.0},
                                  {"latency_ms", static_cast<double>(f.limit.recent_latency_us) / 1000.0},
                                  {"overload_cuts", f.limit.overload_cuts},
                                  {"latency_cuts", f.limit.latency_cuts},
                                  {"floor_probes", f.limit.floor_probes},
                                  {"slow_start", f.limit.slow_start}};
  }
  return {{"in_flight", counters.in_flight},
          {"waiting", counters.waiting},
          {"connections_open", counters.connections_open},
          {"connections_opened", counters.connections_opened},
          {"downstreams", downstreams}};
}

}  // namespace klynaa::actors

// Completion (completion.hpp): one function per kind of end.
#include "broker/completion.hpp"

#include <nlohmann/json.hpp>

#include "broker/backoff.hpp"
#include "protocol/jobs.hpp"

namespace klynaa::broker {

namespace cl = protocol::cluster;

std::string failure_json(const std::string& kind, const std::string& code, const std::string& message,
                         int64_t http_status) {
  nlohmann::json e = {{"kind", kind}, {"code", code}, {"message", message}};
  if (http_status > 0) e["http_status"] = http_status;
  return e.dump();
}

namespace {

completion succeeded(const live_job& j, const cl::done& d, int64_t now) {
  completion c;
  c.what = completion::verdict::done;
  c.state = job_state::done;
  c.history = c.counted = "ok";
  c.result_json = d.result_json;
  c.observe_duration = true;
  c.note = finished_note{j.id, protocol::reply_status::ok, d.result_json, std::nullopt};
  for (auto& ch : d.children) {
    job_record r;
    r.id = ch.job_id;
    r.request_id = j.request_id;
    r.function = ch.function;
    r.data_json = ch.data_json;
    auto data = nlohmann::json::parse(ch.data_json, nullptr, false);
    r.ordering_key = data.is_object() ? protocol::ordering_key_of(data) : std::string();
    r.due_ms = ch.due_ms;
    r.ts_ms = j.ts_ms;
    r.created_ms = now;
    c.children.push_back(std::move(r));
  }
  return c;
}

// Not run at all: the node's breaker for the downstream is open. The job waits
// for it without using an attempt (actors/breaker.hpp; docs/reliability.md,
// "Circuit breakers").
completion breaker_open(const live_job& j, const cl::done& d, int64_t now) {
  completion c;
  c.what = completion::verdict::circuit_wait;
  c.state = job_state::retry_wait;
  c.counted = "retry";  // no history entry: nothing ran
  c.give_back_attempt = j.attempts > j.attempt_base;
  c.due_ms = now + circuit_open_delay(d.retry_after_ms);
  c.failure_message = d.error_message;
  return c;
}

completion failed(const live_job& j, const cl::done& d, const protocol::retry_policy& policy, int64_t now,
                  std::mt19937_64& rng) {
  const int64_t spent = j.attempts - j.attempt_base;  // the budget counts from the last replay
  const bool permanent = cl::outcome_of(d) == cl::outcome::permanent;
  const bool exhausted = !permanent && spent >= policy.max_attempts;
  completion c;
  c.error_json = failure_json(permanent ? "permanent" : (exhausted ? "exhausted" : "transient"), d.error_code,
                              d.error_message, d.http_status);
  c.observe_duration = true;
  c.failure_code = d.error_code;
  c.failure_message = d.error_message;
  if (!permanent && !exhausted) {
    c.what = completion::verdict::retry;
    c.state = job_state::retry_wait;
    c.history = c.counted = "retry";
    c.due_ms = now + backoff_delay(policy, spent, d.retry_after_ms, rng);
    return c;
  }
  c.what = completion::verdict::dead;
  c.state = job_state::dead;
  c.history = c.counted = "dead";
  protocol::error_info e;
  e.code = permanent ? "permanent" : "exhausted";
  e.message = exhausted ? "gave up after " + std::to_string(spent) + " attempts; last error: " + d.error_message
                        : d.error_message;
  if (d.http_status > 0) e.http_status = static_cast<int>(d.http_status);
  c.note = finished_note{j.id, protocol::reply_status::failed, "", e};
  return c;
}

}  // namespace

completion complete_job(const live_job& j, const cl::done& d, const protocol::retry_policy& policy, int64_t now,
                        std::mt19937_64& rng) {
  switch (cl::outcome_of(d)) {
    case cl::outcome::ok:
      return succeeded(j, d, now);
    case cl::outcome::deferred:
      return breaker_open(j, d, now);
    case cl::outcome::transient:
    case cl::outcome::permanent:
      break;
  }
  return failed(j, d, policy, now, rng);
}

completion lose_job(const live_job& j, const std::string& why, const protocol::retry_policy& policy) {
  const int64_t spent = j.attempts - j.attempt_base;
  completion c;
  c.failure_code = "lost";
  c.failure_message = why;
  if (spent >= policy.max_attempts) {
    c.what = completion::verdict::dead;
    c.state = job_state::dead;
    c.history = c.counted = "dead";
    c.error_json = failure_json("exhausted", "lost", why, 0);
    c.note = finished_note{j.id, protocol::reply_status::failed, "",
                           protocol::error_info{"exhausted",
                                                "gave up after " + std::to_string(spent) + " attempts; last: " + why,
                                                "", std::nullopt}};
    return c;
  }
  c.what = completion::verdict::run_again;
  c.state = job_state::ready;
  c.history = "lost";
  c.counted = "retry";
  c.error_json = failure_json("transient", "lost", why, 0);
  return c;
}

}  // namespace klynaa::broker

// The dispatcher's host (dispatcher.hpp): the ends of jobs, decided by
// completion.hpp, applied to the live queue, the open batch and the stats.
#include "broker/core_impl.hpp"

#include "protocol/log.hpp"
#include "protocol/schema.hpp"

namespace klynaa::broker {

namespace {
constexpr const char* component = "broker";
}  // namespace

void broker_core::impl::job_changed(live_job& j, job_state s) { record(j, s); }

void broker_core::impl::note_failure(const live_job& j, const completion& c, int64_t now) {
  counters.note_failure({now, j.id, j.function, j.attempts, j.node_name(), c.counted, c.failure_code,
                         c.failure_message});
}

void broker_core::impl::job_done(live_job& j, const protocol::cluster::done& d, int64_t now) {
  auto c = complete_job(j, d, opts.cfg.retry_for(j.function), now, rng);
  const std::string function = j.function;  // the job is gone after finish()
  const std::string id = j.id;
  using v = completion::verdict;
  switch (c.what) {
    case v::done: {
      for (auto& child : c.children) {
        child.seq = next_seq();
        current.b.children.push_back(std::move(child));
      }
      auto& u = record(j, job_state::done, c.history, "", c.result_json, d.duration_ms);
      if (function == protocol::prune_function()) start_prune(u, *c.note, now);  // its waiters hear once pruned
      queue.finish(id, job_state::done);
      break;
    }
    case v::circuit_wait:
      if (c.give_back_attempt) --j.attempts;
      log::info(component, "job waits for an open circuit breaker; the attempt is not counted",
                {{"job_id", id}, {"function", function}, {"error", c.failure_message},
                 {"next_run", log::iso8601_utc_ms(c.due_ms)}});
      queue.retry_later(id, c.due_ms);
      record(j, job_state::retry_wait);  // no history entry: nothing ran
      break;
    case v::dead:
      record(j, job_state::dead, c.history, c.error_json, "", d.duration_ms);
      note_failure(j, c, now);
      ++counters.dead_total;  // dead_letters follows the store: count_dead_letters()
      log::warning(component, "job dead", {{"job_id", id}, {"function", function}, {"attempt", j.attempts},
                                           {"error", d.error_message}});
      queue.finish(id, job_state::dead);
      break;
    default:  // retry
      note_failure(j, c, now);
      log::info(component, "job will retry", {{"job_id", id}, {"function", function}, {"attempt", j.attempts},
                                              {"error", d.error_message},
                                              {"next_run", log::iso8601_utc_ms(c.due_ms)},
                                              {"retry_in_ms", c.due_ms - now}});
      queue.retry_later(id, c.due_ms);
      record(j, job_state::retry_wait, c.history, c.error_json, "", d.duration_ms);
  }
  ++counters.outcomes[function][c.counted];
  if (c.observe_duration) counters.durations[function].observe(static_cast<double>(d.duration_ms) / 1000.0);
  if (c.note && !(c.what == v::done && function == protocol::prune_function())) current.finished.push_back(std::move(*c.note));
}

void broker_core::impl::job_lost(live_job& j, const std::string& why, int64_t now) {
  auto c = lose_job(j, why, opts.cfg.retry_for(j.function));
  const std::string id = j.id;
  note_failure(j, c, now);
  ++counters.outcomes[j.function][c.counted];
  if (c.what == completion::verdict::dead) {
    record(j, job_state::dead, c.history, c.error_json);
    ++counters.dead_total;  // dead_letters follows the store: count_dead_letters()
    queue.finish(id, job_state::dead);
    current.finished.push_back(std::move(*c.note));
    return;
  }
  log::warning(component, "job lease lost; it runs again", {{"job_id", id}, {"reason", why}});
  queue.retry_now(id);
  record(j, job_state::ready, c.history, c.error_json);
}

}  // namespace klynaa::broker

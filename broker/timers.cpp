// Timers and schedules (timers.hpp).
#include "broker/timers.hpp"

#include <algorithm>
#include <climits>

#include <nlohmann/json.hpp>

#include "protocol/jobs.hpp"
#include "protocol/message.hpp"

namespace klynaa::broker {

int64_t loop_timers::poll_timeout(int64_t now, int64_t job_due, int64_t schedule_due) {
  const int64_t due = std::min(job_due, schedule_due);
  if (due == INT64_MAX) return max_poll_ms;
  return std::max<int64_t>(0, std::min<int64_t>(max_poll_ms, due - now));
}

bool loop_timers::take_tick(int64_t now, int64_t job_due, int64_t schedule_due) {
  if (now - last_tick_ < tick_ms && job_due > now && schedule_due > now) return false;
  last_tick_ = now;
  return true;
}

bool loop_timers::take(int64_t& last, int64_t period, int64_t now) {
  if (now - last < period) return false;
  last = now;
  return true;
}

int64_t running_jobs(const state_counts& counts) {
  int64_t running = 0;
  for (auto& [fn, per] : counts) {
    auto it = per.find(job_state::running);
    if (it != per.end()) running += it->second;
  }
  return running;
}

bool drain_over(int64_t running, int64_t now, int64_t drain_deadline, bool stopping, bool batch_empty,
                bool store_failing, bool writer_busy) {
  const bool done_waiting = running == 0 || now >= drain_deadline || stopping;
  const bool flushed = batch_empty || (stopping && store_failing);
  return done_waiting && flushed && !writer_busy;
}

new_request firing_request(const firing& f, int64_t now, int64_t seq) {
  new_request nr;
  nr.id = f.request_id;
  nr.op = static_cast<int>(protocol::op::publish);
  nr.type = f.function;
  nr.ts_ms = f.at_ms;
  nr.accepted_ms = now;
  job_record r;
  r.id = protocol::child_job_id(f.request_id, 1);
  r.request_id = f.request_id;
  r.function = f.function;
  r.data_json = f.data_json;
  auto data = nlohmann::json::parse(f.data_json, nullptr, false);
  r.ordering_key = data.is_object() ? protocol::ordering_key_of(data) : std::string();
  r.seq = seq;
  r.ts_ms = f.at_ms;
  r.created_ms = now;
  nr.jobs.push_back(std::move(r));
  return nr;
}

}  // namespace klynaa::broker

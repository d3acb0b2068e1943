#include "broker/ack_timeline.hpp"

namespace klynaa::broker {

const char* ack_timeline::name_of(stage s) {
  switch (s) {
    case queued: return "queued";
    case handoff: return "handoff";
    case commit: return "commit";
    case wakeup: return "wakeup";
    case reply: return "reply";
    case total: return "total";
    case stage_count: break;
  }
  return "?";
}

void ack_timeline::rotate(int64_t now_us) {
  if (now_us - window_start_us_ < window_us) return;
  const bool keep = now_us - window_start_us_ < 2 * window_us;
  for (int s = 0; s < stage_count; ++s) {
    if (keep)
      std::swap(prev_[s], cur_[s]);
    else
      prev_[s].reset();
    cur_[s].reset();
  }
  window_start_us_ = now_us;
}

void ack_timeline::observe(const ack_points& p) {
  rotate(p.sent);
  auto& h_ = cur_;
  const int64_t at[] = {p.received, p.submitted, p.commit_start, p.commit_end, p.taken, p.sent};
  for (int s = queued; s <= reply; ++s)
    if (at[s] > 0 && at[s + 1] >= at[s]) h_[s].record(static_cast<uint64_t>(at[s + 1] - at[s]));
  if (p.received > 0 && p.sent >= p.received) h_[total].record(static_cast<uint64_t>(p.sent - p.received));
}

std::map<std::string, stage_summary> ack_timeline::summary(int64_t now_us) {
  rotate(now_us);
  std::map<std::string, stage_summary> out;
  for (int s = 0; s < stage_count; ++s) {
    protocol::histogram h = prev_[s];
    h += cur_[s];
    if (h.count() == 0) continue;
    stage_summary x;
    x.n = static_cast<int64_t>(h.count());
    x.p50_us = static_cast<int64_t>(h.quantile(0.5));
    x.p90_us = static_cast<int64_t>(h.quantile(0.9));
    x.p99_us = static_cast<int64_t>(h.quantile(0.99));
    x.max_us = static_cast<int64_t>(h.max());
    out[name_of(static_cast<stage>(s))] = x;
  }
  return out;
}

}  // namespace klynaa::broker

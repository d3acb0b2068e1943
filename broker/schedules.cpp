#include "broker/schedules.hpp"

#include <climits>

#include "protocol/log.hpp"
#include "protocol/schema.hpp"

namespace klynaa::broker {

namespace {
instant to_instant(int64_t ms) { return instant(std::chrono::seconds(ms / 1000)); }
int64_t to_ms(instant t) { return static_cast<int64_t>(t.time_since_epoch().count()) * 1000; }
}  // namespace

bool schedule_set::init(const protocol::config& cfg, std::string& err) {
  entries_.clear();
  for (auto& s : cfg.effective_schedules()) {
    auto where = "[[schedule]] \"" + s.name + "\"";
    auto c = parse_cron(s.cron);
    if (auto* e = std::get_if<cron_error>(&c)) {
      err = where + " cron: " + e->message;
      return false;
    }
    auto z = find_zone(s.timezone);
    if (auto* e = std::get_if<cron_error>(&z)) {
      err = where + " timezone: " + e->message;
      return false;
    }
    if (protocol::actor_of(s.function).empty()) {
      err = where + " function: unknown function '" + s.function + "'";
      return false;
    }
    entry en;
    en.spec = s;
    en.expr = std::get<cron>(c);
    en.zone = std::get<const date::time_zone*>(z);
    entries_.push_back(std::move(en));
  }
  return true;
}

firing schedule_set::make_firing(const entry& e, int64_t at_ms) const {
  firing f;
  f.name = e.spec.name;
  f.function = e.spec.function;
  f.data_json = e.spec.data.dump();
  f.at_ms = at_ms;
  auto iso = log::iso8601_utc_ms(at_ms);  // 2026-11-27T06:00:00.000Z
  f.request_id = "schedule:" + e.spec.name + ":" + iso.substr(0, 19) + "Z";
  return f;
}

void schedule_set::advance(entry& e, int64_t after_ms) {
  auto next = next_fire(e.expr, e.zone, to_instant(after_ms));
  e.next_ms = next ? to_ms(*next) : INT64_MAX;
}

std::vector<firing> schedule_set::catch_up(int64_t now_ms, int64_t misfire_grace_ms,
                                           std::vector<std::string>& skipped) {
  std::vector<firing> out;
  for (auto& e : entries_) {
    // The latest scheduled time at or before now, looking back one grace (and at
    // least a day so that a skipped time is named).
    int64_t look_back = std::max<int64_t>(misfire_grace_ms, 86400000);
    auto times = fire_times_between(e.expr, e.zone, to_instant(now_ms - look_back),
                                    to_instant(now_ms), 100000);
    if (!times.empty()) {
      int64_t last = to_ms(times.back());
      if (now_ms - last <= misfire_grace_ms)
        out.push_back(make_firing(e, last));
      else
        skipped.push_back(e.spec.name + " at " + log::iso8601_utc_ms(last));
    }
    advance(e, now_ms);
  }
  return out;
}

std::vector<firing> schedule_set::due(int64_t now_ms) {
  std::vector<firing> out;
  for (auto& e : entries_) {
    while (e.next_ms <= now_ms) {
      out.push_back(make_firing(e, e.next_ms));
      advance(e, e.next_ms);
    }
  }
  return out;
}

int64_t schedule_set::next_due_ms() const {
  int64_t n = INT64_MAX;
  for (auto& e : entries_) n = std::min(n, e.next_ms);
  return n;
}

}  // namespace klynaa::broker

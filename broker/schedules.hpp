// The broker's schedules (docs/configuration.md, "Schedules"): which `[[schedule]]` entries
// fire when. Each firing becomes a request with the deterministic id
// `schedule:{name}:{UTC instant}` committed like any other: the store's request
// dedup records the firing before its job exists, so a time fires once across
// brokers and restarts. Pure apart from the clock the caller passes in.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "broker/cron.hpp"
#include "protocol/config.hpp"

namespace klynaa::broker {

struct firing {
  std::string request_id;   ///< schedule:{name}:{YYYY-MM-DDTHH:MM:SSZ}
  std::string name;
  std::string function;
  std::string data_json;
  int64_t at_ms = 0;        ///< the scheduled UTC instant
};

class schedule_set {
 public:
  /// Parses every effective schedule. False and `err` naming the entry, the key
  /// and the problem (for exit 2) on a bad cron expression or time zone.
  bool init(const protocol::config& cfg, std::string& err);

  /// At start: the most recent scheduled time of each schedule, if it is within
  /// `misfire_grace_ms` of `now_ms` (it fires once; a duplicate if it already
  /// did). Older missed times are skipped and named in `skipped`.
  std::vector<firing> catch_up(int64_t now_ms, int64_t misfire_grace_ms,
                               std::vector<std::string>& skipped);

  /// Firings due at `now_ms` (and advances past them).
  std::vector<firing> due(int64_t now_ms);

  /// The next scheduled instant in ms, or INT64_MAX when none.
  int64_t next_due_ms() const;

 private:
  struct entry {
    protocol::schedule_entry spec;
    cron expr;
    const date::time_zone* zone = nullptr;
    int64_t next_ms = 0;
  };
  firing make_firing(const entry& e, int64_t at_ms) const;
  void advance(entry& e, int64_t after_ms);
  std::vector<entry> entries_;
};

}  // namespace klynaa::broker

// Cron expressions and their fire times in an IANA time zone, for the broker's
// schedules (docs/configuration.md, "Schedules": the `[[schedule]]` entries and
// their `cron` syntax). Pure code: no I/O except
// the time zone database, which Howard Hinnant's date/tz reads from the system's
// tzdata (/usr/share/zoneinfo, Debian package `tzdata`) on first use.
//
// Syntax: Vixie cron, five fields separated by blanks,
//   minute (0-59)  hour (0-23)  day-of-month (1-31)  month (1-12 or jan-dec)
//   day-of-week (0-7 or sun-sat; 0 and 7 are Sunday)
// each a comma-separated list of `*`, `N`, `A-B`, `*/S` or `A-B/S` (names are
// case-insensitive and allowed wherever a number is). The macros @yearly
// (@annually), @monthly, @weekly, @daily (@midnight) and @hourly stand for their
// usual five fields. Like Vixie cron, a single number with a step (`5/10`) is
// an error: write `5-59/10`.
//
// Matching: a minute matches when minute, hour and month match and the day
// matches. The day rule is Vixie's: when both day-of-month and day-of-week are
// restricted (neither field starts with `*`), a day matching EITHER fires;
// otherwise both must match (so `*/2` in a day field counts as unrestricted,
// exactly as in Vixie cron).
//
// Time zones: the fields are local wall-clock times in the schedule's zone.
//  - A local time skipped by a DST change (spring forward) fires at the first
//    instant after the gap (03:00 local for a skipped 02:30 in New York), once:
//    several skipped times, and a firing at the gap's end, are one firing.
//  - A local time that happens twice (fall back) fires once, at its first
//    occurrence; the repeated hour produces no firings.
//
// Thread-safety: every function is safe to call from any thread; `cron` values
// are immutable after parsing and a `const date::time_zone*` stays valid for the
// life of the process.
#pragma once

#include <bitset>
#include <chrono>
#include <cstddef>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

namespace date {
class time_zone;
}

namespace klynaa::broker {

/// A UTC instant with second resolution (== date::sys_seconds).
using instant = std::chrono::time_point<std::chrono::system_clock, std::chrono::seconds>;

/// A parsed cron expression. Bit i is set when value i matches.
struct cron {
  std::bitset<60> minutes;
  std::bitset<24> hours;
  std::bitset<32> days_of_month;  ///< bits 1..31
  std::bitset<13> months;         ///< bits 1..12
  std::bitset<7> days_of_week;    ///< bits 0..6, 0 = Sunday (7 is folded into 0)
  bool dom_restricted = false;    ///< the day-of-month field did not start with `*`
  bool dow_restricted = false;    ///< the day-of-week field did not start with `*`
  std::string text;               ///< the expression as given, for messages
};

/// Why an expression or zone name was refused: one sentence naming the field,
/// e.g. `cron "0 25 * * *": hour: 25 is out of range 0-23`.
struct cron_error {
  std::string message;
};

/// Parses a five-field expression (or an @macro). Never throws except bad_alloc.
/// Errors: wrong number of fields, an unknown name, a value out of the field's
/// range, a reversed range (`5-1`), a step of 0 or on a single number, an empty
/// list item, and a day-of-month that no selected month has (`0 0 30 2 *`
/// would never fire, so it is refused rather than silently never firing).
std::variant<cron, cron_error> parse_cron(std::string_view text);

/// The zone named `name` (an IANA name such as "Europe/Berlin", or "UTC"), or
/// an error saying so. Errors: an empty or malformed name, a name the database
/// does not know, and a missing time zone database (tzdata not installed).
/// The pointer is owned by the database and valid until the process exits.
/// Never throws except bad_alloc.
std::variant<const date::time_zone*, cron_error> find_zone(std::string_view name);

/// The first instant strictly after `after` at which `c` fires in `zone`
/// (see the DST rules above), or nullopt when there is none within 400 years or
/// before the end of year 9999. Every expression parse_cron accepts fires within
/// that window (the Gregorian calendar repeats every 400 years; the longest wait
/// is for Feb 29, up to 8 years, or 40 with a day-of-week), so nullopt means
/// "past the end of the calendar" or a hand-built `cron` that never matches.
/// Cost: a scan over local days, at most one time zone lookup per candidate
/// minute. `zone` must not be null.
std::optional<instant> next_fire(const cron& c, const date::time_zone* zone, instant after);

/// Every instant t with from_exclusive < t <= to_inclusive at which `c` fires,
/// ascending, at most `limit` of them (the earliest ones). For misfire handling:
/// the times a broker missed while it was down.
std::vector<instant> fire_times_between(const cron& c, const date::time_zone* zone,
                                        instant from_exclusive, instant to_inclusive,
                                        std::size_t limit);

}  // namespace klynaa::broker

// Cron parsing and fire times; the rules are documented once, in cron.hpp.
//
// next_fire walks local calendar days from the local date of `after`, and within
// a matching day the matching minutes in order, mapping each local time to UTC
// with `resolve` (gap → end of the gap, overlap → first occurrence). That
// mapping never goes backwards as local time goes forwards, so the first
// candidate that lands strictly after `after` is the answer, and candidates that
// land on the same instant (several skipped times in a gap) fire once.
#include "broker/cron.hpp"

#include <array>
#include <cctype>
#include <cstdint>
#include <exception>

#include <date/date.h>
#include <date/tz.h>

namespace klynaa::broker {
namespace {

using std::chrono::hours;
using std::chrono::minutes;

/// One of the five fields: its name in messages, its range and its names.
struct field_def {
  const char* name;
  int lo;
  int hi;
  const char* const* names;  ///< names[i] stands for lo_name + i; nullptr when none
  int names_count;
  int names_base;            ///< the value of names[0]
};

constexpr const char* month_names[] = {"jan", "feb", "mar", "apr", "may", "jun",
                                       "jul", "aug", "sep", "oct", "nov", "dec"};
constexpr const char* weekday_names[] = {"sun", "mon", "tue", "wed", "thu", "fri", "sat"};
constexpr const char* month_titles[] = {"", "January", "February", "March", "April", "May", "June",
                                        "July", "August", "September", "October", "November",
                                        "December"};

constexpr field_def fields[5] = {
    {"minute", 0, 59, nullptr, 0, 0},
    {"hour", 0, 23, nullptr, 0, 0},
    {"day-of-month", 1, 31, nullptr, 0, 0},
    {"month", 1, 12, month_names, 12, 1},
    {"day-of-week", 0, 7, weekday_names, 7, 0},
};

/// The longest day each month can have (February 29 in leap years).
constexpr int max_days[13] = {0, 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};

bool is_blank(char c) { return std::isspace(static_cast<unsigned char>(c)) != 0; }

std::string lower(std::string_view s) {
  std::string out(s);
  for (auto& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

/// Parses one field into a set of values in [def.lo, def.hi]; throws nothing,
/// returns the problem as text (without the "cron ...: field:" prefix).
class field_parser {
 public:
  field_parser(const field_def& def, std::vector<bool>& bits) : def_(def), bits_(bits) {}

  std::optional<std::string> parse(std::string_view text) {
    size_t start = 0;
    while (true) {
      size_t comma = text.find(',', start);
      std::string_view item =
          text.substr(start, comma == std::string_view::npos ? std::string_view::npos : comma - start);
      if (item.empty()) return std::string("empty list item in \"") + std::string(text) + "\"";
      if (auto err = parse_item(item)) return err;
      if (comma == std::string_view::npos) return std::nullopt;
      start = comma + 1;
    }
  }

 private:
  std::optional<std::string> parse_item(std::string_view item) {
    std::string_view base = item;
    std::optional<int> step;
    size_t slash = item.find('/');
    if (slash != std::string_view::npos) {
      base = item.substr(0, slash);
      std::string_view s = item.substr(slash + 1);
      int n = 0;
      if (!parse_digits(s, n))
        return "step \"" + std::string(s) + "\" in \"" + std::string(item) +
               "\" is not a positive number";
      if (n < 1 || n > def_.hi)
        return "step " + std::string(s) + " in \"" + std::string(item) + "\" is out of range 1-" +
               std::to_string(def_.hi);
      step = n;
    }
    int first = def_.lo, last = def_.hi;
    if (base == "*") {
      // first..last is the whole range
    } else {
      size_t dash = base.find('-', 1);
      std::string_view a = base.substr(0, dash);
      if (auto err = value(a, first)) return err;
      if (dash != std::string_view::npos) {
        if (auto err = value(base.substr(dash + 1), last)) return err;
        if (last < first)
          return "range \"" + std::string(base) + "\" goes backwards; write the lower bound first";
      } else {
        if (step)
          return "a step needs a range or *: write \"" + std::string(base) + "-" +
                 std::to_string(def_.hi) + "/" + std::to_string(*step) + "\" instead of \"" +
                 std::string(item) + "\"";
        last = first;
      }
    }
    for (int v = first; v <= last; v += step.value_or(1)) bits_[static_cast<size_t>(v)] = true;
    return std::nullopt;
  }

  /// A number or (where the field has them) a three-letter name, in range.
  std::optional<std::string> value(std::string_view s, int& out) const {
    if (s.empty()) return std::string("missing value");
    if (std::isdigit(static_cast<unsigned char>(s[0]))) {
      if (!parse_digits(s, out)) return "\"" + std::string(s) + "\" is not a number";
    } else {
      std::string l = lower(s);
      bool found = false;
      for (int i = 0; i < def_.names_count; ++i) {
        if (l == def_.names[i]) {
          out = def_.names_base + i;
          found = true;
        }
      }
      if (!found) {
        if (def_.names_count == 0) return "\"" + std::string(s) + "\" is not a number";
        return "\"" + std::string(s) + "\" is neither a number nor a name (" +
               std::string(def_.names[0]) + ", " + def_.names[1] + ", ...)";
      }
    }
    if (out < def_.lo || out > def_.hi)
      return std::to_string(out) + " is out of range " + std::to_string(def_.lo) + "-" +
             std::to_string(def_.hi);
    return std::nullopt;
  }

  /// Decimal digits only, at most 4 of them (every range fits).
  static bool parse_digits(std::string_view s, int& out) {
    if (s.empty() || s.size() > 4) return false;
    int n = 0;
    for (char c : s) {
      if (!std::isdigit(static_cast<unsigned char>(c))) return false;
      n = n * 10 + (c - '0');
    }
    out = n;
    return true;
  }

  const field_def& def_;
  std::vector<bool>& bits_;
};

std::optional<std::string_view> expand_macro(std::string_view name) {
  static const std::array<std::pair<const char*, const char*>, 7> macros{{
      {"@yearly", "0 0 1 1 *"},
      {"@annually", "0 0 1 1 *"},
      {"@monthly", "0 0 1 * *"},
      {"@weekly", "0 0 * * 0"},
      {"@daily", "0 0 * * *"},
      {"@midnight", "0 0 * * *"},
      {"@hourly", "0 * * * *"},
  }};
  std::string l = lower(name);
  for (const auto& [m, expansion] : macros)
    if (l == m) return std::string_view(expansion);
  return std::nullopt;
}

std::vector<std::string_view> split_blanks(std::string_view s) {
  std::vector<std::string_view> out;
  size_t i = 0;
  while (i < s.size()) {
    while (i < s.size() && is_blank(s[i])) ++i;
    size_t j = i;
    while (j < s.size() && !is_blank(s[j])) ++j;
    if (j > i) out.push_back(s.substr(i, j - i));
    i = j;
  }
  return out;
}

/// With the AND day rule, a day-of-month that no selected month has never fires.
std::optional<std::string> never_fires(const cron& c) {
  if (!c.dom_restricted || c.dow_restricted) return std::nullopt;
  int some_month = 0;
  for (int m = 1; m <= 12; ++m) {
    if (!c.months[m]) continue;
    some_month = m;
    for (int d = 1; d <= max_days[m]; ++d)
      if (c.days_of_month[d]) return std::nullopt;
  }
  std::string which = c.months.count() == 1 ? std::string(month_titles[some_month]) + " has"
                                            : std::string("none of the selected months has");
  return "day-of-month: " + which + " none of the selected days, so this schedule would never fire";
}

/// The UTC instant of local time `l` in `zone`: unique → itself; in a gap → the
/// instant the gap ends; repeated → its first occurrence.
instant resolve(const date::time_zone* zone, date::local_seconds l) {
  date::local_info info = zone->get_info(l);
  if (info.result == date::local_info::nonexistent) return info.second.begin;
  return instant{l.time_since_epoch() - info.first.offset};
}

bool day_matches(const cron& c, const date::year_month_day& ymd, date::weekday wd) {
  bool dom = c.days_of_month[static_cast<unsigned>(ymd.day())];
  bool dow = c.days_of_week[wd.c_encoding()];
  if (c.dom_restricted && c.dow_restricted) return dom || dow;  // Vixie: either
  return dom && dow;
}

bool valid_zone_name(std::string_view name) {
  if (name.empty() || name.size() > 255 || name.front() == '/' || name.back() == '/') return false;
  for (char ch : name) {
    unsigned char u = static_cast<unsigned char>(ch);
    if (!std::isalnum(u) && ch != '/' && ch != '_' && ch != '-' && ch != '+') return false;
  }
  return name.find("//") == std::string_view::npos;
}

}  // namespace

std::variant<cron, cron_error> parse_cron(std::string_view text) {
  auto prefix = [&](const std::string& field) {
    return "cron \"" + std::string(text) + "\": " + field + (field.empty() ? "" : ": ");
  };
  std::string_view body = text;
  auto parts = split_blanks(body);
  if (parts.size() == 1 && parts[0].front() == '@') {
    auto expansion = expand_macro(parts[0]);
    if (!expansion)
      return cron_error{prefix("") + "unknown macro " + std::string(parts[0]) +
                        "; expected @yearly, @annually, @monthly, @weekly, @daily, @midnight or "
                        "@hourly"};
    parts = split_blanks(*expansion);
  }
  if (parts.size() != 5)
    return cron_error{prefix("") + "expected 5 fields (minute hour day-of-month month "
                                   "day-of-week), got " +
                      std::to_string(parts.size())};

  cron c;
  c.text = std::string(text);
  for (size_t f = 0; f < 5; ++f) {
    std::vector<bool> bits(static_cast<size_t>(fields[f].hi) + 1, false);
    if (auto err = field_parser(fields[f], bits).parse(parts[f]))
      return cron_error{prefix(fields[f].name) + *err};
    for (size_t v = 0; v < bits.size(); ++v) {
      if (!bits[v]) continue;
      switch (f) {
        case 0: c.minutes.set(v); break;
        case 1: c.hours.set(v); break;
        case 2: c.days_of_month.set(v); break;
        case 3: c.months.set(v); break;
        default: c.days_of_week.set(v % 7); break;  // 7 is Sunday, like 0
      }
    }
  }
  c.dom_restricted = parts[2].front() != '*';
  c.dow_restricted = parts[4].front() != '*';
  if (auto err = never_fires(c)) return cron_error{prefix("") + *err};
  return c;
}

std::variant<const date::time_zone*, cron_error> find_zone(std::string_view name) {
  if (!valid_zone_name(name))
    return cron_error{"time zone \"" + std::string(name) +
                      "\" is not an IANA time zone name such as \"UTC\" or \"Europe/Berlin\""};
  try {
    const date::tzdb& db = date::get_tzdb();
    if (db.zones.empty())
      return cron_error{"time zone \"" + std::string(name) +
                        "\": the time zone database is empty; install the tzdata package "
                        "(/usr/share/zoneinfo)"};
    return date::locate_zone(name);
  } catch (const std::exception& e) {
    return cron_error{"time zone \"" + std::string(name) +
                      "\" is unknown (not in the time zone database in /usr/share/zoneinfo; "
                      "expected an IANA name such as \"UTC\" or \"Europe/Berlin\"): " +
                      e.what()};
  }
}

std::optional<instant> next_fire(const cron& c, const date::time_zone* zone, instant after) {
  // Local times before `after`'s own local time map to instants <= `after`
  // (see the file comment), so the scan starts at that minute.
  const date::local_seconds start_local = zone->to_local(after);
  const date::local_seconds floor_minute = date::floor<minutes>(start_local);
  const date::local_days first_day = date::floor<date::days>(start_local);
  constexpr int scan_days = 146097 + 366;  // 400 years and a bit

  for (int n = 0; n < scan_days; ++n) {
    const date::local_days day = first_day + date::days{n};
    const date::year_month_day ymd{day};
    if (int(ymd.year()) > 9999) return std::nullopt;
    if (!c.months[static_cast<unsigned>(ymd.month())]) continue;
    if (!day_matches(c, ymd, date::weekday{day})) continue;
    for (int h = 0; h < 24; ++h) {
      if (!c.hours[static_cast<size_t>(h)]) continue;
      const date::local_seconds hour_start = day + hours{h};
      if (hour_start + hours{1} <= floor_minute) continue;
      for (int m = 0; m < 60; ++m) {
        if (!c.minutes[static_cast<size_t>(m)]) continue;
        const date::local_seconds l = hour_start + minutes{m};
        if (l < floor_minute) continue;
        const instant t = resolve(zone, l);
        if (t > after) return t;
      }
    }
  }
  return std::nullopt;
}

std::vector<instant> fire_times_between(const cron& c, const date::time_zone* zone,
                                        instant from_exclusive, instant to_inclusive,
                                        std::size_t limit) {
  std::vector<instant> out;
  instant t = from_exclusive;
  while (out.size() < limit) {
    auto next = next_fire(c, zone, t);
    if (!next || *next > to_inclusive) break;
    out.push_back(*next);
    t = *next;
  }
  return out;
}

}  // namespace klynaa::broker

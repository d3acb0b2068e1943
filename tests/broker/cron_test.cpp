// Cron expressions and fire times in time zones (docs/configuration.md, "Schedules"):
// parsing and its errors, the default schedules, Vixie's day rule, DST gaps and
// overlaps, leap days and year boundaries. Expected instants are hand-computed
// from the published tz rules (US: 2nd Sunday of March / 1st Sunday of November
// at 02:00 local; EU: last Sunday of March / October at 01:00 UTC).
#include "broker/cron.hpp"

#include <bitset>
#include <sstream>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include <date/date.h>
#include <date/tz.h>

using klynaa::broker::cron;
using klynaa::broker::cron_error;
using klynaa::broker::find_zone;
using klynaa::broker::fire_times_between;
using klynaa::broker::instant;
using klynaa::broker::next_fire;
using klynaa::broker::parse_cron;
using Catch::Matchers::Contains;

namespace {

cron must_parse(const std::string& text) {
  auto r = parse_cron(text);
  if (auto* err = std::get_if<cron_error>(&r)) FAIL("parse_cron(\"" << text << "\"): " << err->message);
  return std::get<cron>(r);
}

std::string parse_error(const std::string& text) {
  auto r = parse_cron(text);
  if (std::holds_alternative<cron>(r)) FAIL("parse_cron(\"" << text << "\") was accepted");
  return std::get<cron_error>(r).message;
}

const date::time_zone* zone(const std::string& name) {
  auto r = find_zone(name);
  if (auto* err = std::get_if<cron_error>(&r)) FAIL(err->message);
  return std::get<const date::time_zone*>(r);
}

/// "2024-03-10T07:00:00Z" → instant (UTC).
instant utc(const std::string& text) {
  std::istringstream in(text);
  date::sys_seconds t;
  in >> date::parse("%Y-%m-%dT%H:%M:%SZ", t);
  if (in.fail()) FAIL("bad test time " << text);
  return t;
}

std::string iso(std::optional<instant> t) {
  return t ? date::format("%Y-%m-%dT%H:%M:%SZ", *t) : std::string("none");
}

std::string next(const std::string& expr, const std::string& tz, const std::string& after) {
  return iso(next_fire(must_parse(expr), zone(tz), utc(after)));
}

std::vector<std::string> between(const std::string& expr, const std::string& tz,
                                 const std::string& from, const std::string& to,
                                 size_t limit = 100) {
  std::vector<std::string> out;
  for (auto t : fire_times_between(must_parse(expr), zone(tz), utc(from), utc(to), limit))
    out.push_back(iso(t));
  return out;
}

template <size_t N>
std::vector<int> values(const std::bitset<N>& bits) {
  std::vector<int> out;
  for (size_t i = 0; i < N; ++i)
    if (bits[i]) out.push_back(static_cast<int>(i));
  return out;
}

}  // namespace

// ---------------------------------------------------------------- parsing

TEST_CASE("cron: the three default schedules parse and fire at their UTC times", "[cron]") {
  CHECK(next("0 6 * * *", "UTC", "2024-05-01T05:59:59Z") == "2024-05-01T06:00:00Z");
  CHECK(next("0 6 * * *", "UTC", "2024-05-01T06:00:00Z") == "2024-05-02T06:00:00Z");
  // 2024-05-01 is a Wednesday; the next Monday is 2024-05-06.
  CHECK(next("0 7 * * 1", "UTC", "2024-05-01T00:00:00Z") == "2024-05-06T07:00:00Z");
  CHECK(next("0 7 * * 1", "UTC", "2024-05-06T07:00:00Z") == "2024-05-13T07:00:00Z");
  CHECK(next("0 3 * * *", "UTC", "2024-05-01T03:00:00Z") == "2024-05-02T03:00:00Z");
  CHECK(next("0 3 * * *", "UTC", "2024-05-01T02:59:00Z") == "2024-05-01T03:00:00Z");
}

TEST_CASE("cron: numbers, stars, ranges, steps and lists", "[cron]") {
  cron c = must_parse("*/15 1-10/3 1,5,10-12 * *");
  CHECK(values(c.minutes) == std::vector<int>{0, 15, 30, 45});
  CHECK(values(c.hours) == std::vector<int>{1, 4, 7, 10});
  CHECK(values(c.days_of_month) == std::vector<int>{1, 5, 10, 11, 12});
  CHECK(c.months.count() == 12);
  CHECK(c.days_of_week.count() == 7);
  CHECK(c.dom_restricted);
  CHECK_FALSE(c.dow_restricted);
  CHECK(c.text == "*/15 1-10/3 1,5,10-12 * *");

  cron all = must_parse("* * * * *");
  CHECK(all.minutes.count() == 60);
  CHECK(all.hours.count() == 24);
  CHECK(values(all.days_of_month).front() == 1);
  CHECK(all.days_of_month.count() == 31);
  CHECK_FALSE(all.dom_restricted);

  // Tabs and repeated blanks separate fields too.
  CHECK(values(must_parse("5\t 4  *  *  *").minutes) == std::vector<int>{5});
}

TEST_CASE("cron: month and weekday names, any case, and 7 is Sunday", "[cron]") {
  cron c = must_parse("0 0 * JAN,Jul-sep MON-fri");
  CHECK(values(c.months) == std::vector<int>{1, 7, 8, 9});
  CHECK(values(c.days_of_week) == std::vector<int>{1, 2, 3, 4, 5});
  CHECK(values(must_parse("0 0 * * 7").days_of_week) == std::vector<int>{0});
  CHECK(values(must_parse("0 0 * * sun").days_of_week) == std::vector<int>{0});
  CHECK(values(must_parse("0 0 * * 5-7").days_of_week) == std::vector<int>{0, 5, 6});
  CHECK(values(must_parse("0 0 * * 0-7").days_of_week) == std::vector<int>{0, 1, 2, 3, 4, 5, 6});
  CHECK(values(must_parse("0 0 * * */2").days_of_week) == std::vector<int>{0, 2, 4, 6});
  CHECK(values(must_parse("0 0 * dec-dec/5 *").months) == std::vector<int>{12});
}

TEST_CASE("cron: the @ macros stand for their five fields", "[cron]") {
  CHECK(next("@daily", "UTC", "2024-05-01T10:00:00Z") == "2024-05-02T00:00:00Z");
  CHECK(next("@midnight", "UTC", "2024-05-01T10:00:00Z") == "2024-05-02T00:00:00Z");
  CHECK(next("@hourly", "UTC", "2024-05-01T10:00:00Z") == "2024-05-01T11:00:00Z");
  CHECK(next("@weekly", "UTC", "2024-05-01T10:00:00Z") == "2024-05-05T00:00:00Z");  // Sunday
  CHECK(next("@monthly", "UTC", "2024-05-01T10:00:00Z") == "2024-06-01T00:00:00Z");
  CHECK(next("@yearly", "UTC", "2024-05-01T10:00:00Z") == "2025-01-01T00:00:00Z");
  CHECK(next("@ANNUALLY", "UTC", "2024-05-01T10:00:00Z") == "2025-01-01T00:00:00Z");
  CHECK_THAT(parse_error("@reboot"), Contains("unknown macro @reboot"));
}

TEST_CASE("cron: a bad expression is refused with an error naming the field", "[cron]") {
  CHECK_THAT(parse_error(""), Contains("expected 5 fields") && Contains("got 0"));
  CHECK_THAT(parse_error("0 6 * *"), Contains("expected 5 fields") && Contains("got 4"));
  CHECK_THAT(parse_error("0 6 * * * *"), Contains("got 6"));
  CHECK_THAT(parse_error("60 * * * *"), Contains("cron \"60 * * * *\": minute: 60 is out of range 0-59"));
  CHECK_THAT(parse_error("* 24 * * *"), Contains("hour: 24 is out of range 0-23"));
  CHECK_THAT(parse_error("* * 0 * *"), Contains("day-of-month: 0 is out of range 1-31"));
  CHECK_THAT(parse_error("* * 32 * *"), Contains("day-of-month: 32 is out of range 1-31"));
  CHECK_THAT(parse_error("* * * 13 *"), Contains("month: 13 is out of range 1-12"));
  CHECK_THAT(parse_error("* * * 0 *"), Contains("month: 0 is out of range 1-12"));
  CHECK_THAT(parse_error("* * * * 8"), Contains("day-of-week: 8 is out of range 0-7"));
  CHECK_THAT(parse_error("* * * foo *"), Contains("month: \"foo\" is neither a number nor a name"));
  CHECK_THAT(parse_error("* * * * monday"), Contains("day-of-week: \"monday\""));
  CHECK_THAT(parse_error("* mon * * *"), Contains("hour: \"mon\" is not a number"));
  CHECK_THAT(parse_error("5-1 * * * *"), Contains("minute: range \"5-1\" goes backwards"));
  CHECK_THAT(parse_error("*/0 * * * *"), Contains("minute: step \"0\"") || Contains("minute: step 0"));
  CHECK_THAT(parse_error("*/60 * * * *"), Contains("minute: step 60") && Contains("out of range 1-59"));
  CHECK_THAT(parse_error("*/x * * * *"), Contains("minute: step \"x\""));
  CHECK_THAT(parse_error("5/10 * * * *"), Contains("minute: a step needs a range or *") &&
                                              Contains("5-59/10"));
  CHECK_THAT(parse_error("1,,2 * * * *"), Contains("minute: empty list item"));
  CHECK_THAT(parse_error("1, * * * *"), Contains("minute: empty list item"));
  CHECK_THAT(parse_error("-5 * * * *"), Contains("minute: \"-5\" is not a number"));
  CHECK_THAT(parse_error("1-2-3 * * * *"), Contains("minute:"));
  CHECK_THAT(parse_error("99999 * * * *"), Contains("minute: \"99999\" is not a number"));
  CHECK_THAT(parse_error("0 0 * * 1-"), Contains("day-of-week: missing value"));
}

TEST_CASE("cron: a day that no selected month has is refused, since it would never fire",
          "[cron]") {
  CHECK_THAT(parse_error("0 0 30 2 *"), Contains("February has none of the selected days"));
  CHECK_THAT(parse_error("0 0 31 apr,jun,sep,nov *"), Contains("none of the selected months"));
  // ... but with a restricted weekday the Vixie OR rule makes it fire on that weekday.
  // 2025-02-03 is the first Monday of February 2025.
  CHECK(next("0 0 30 2 mon", "UTC", "2024-05-01T00:00:00Z") == "2025-02-03T00:00:00Z");
  // Feb 29 exists, in leap years.
  must_parse("0 0 29 2 *");
  must_parse("0 0 31 1-3 *");
}

// ---------------------------------------------------------------- matching

TEST_CASE("cron: with both day fields restricted, either matching fires (Vixie)", "[cron]") {
  // The 13th, or any Friday. 2024-09-06 is a Friday; 2024-09-13 is both; 2024-10-13 a Sunday.
  CHECK(between("0 0 13 * 5", "UTC", "2024-09-01T00:00:00Z", "2024-10-19T00:00:00Z") ==
        std::vector<std::string>{"2024-09-06T00:00:00Z", "2024-09-13T00:00:00Z",
                                 "2024-09-20T00:00:00Z", "2024-09-27T00:00:00Z",
                                 "2024-10-04T00:00:00Z", "2024-10-11T00:00:00Z",
                                 "2024-10-13T00:00:00Z", "2024-10-18T00:00:00Z"});
  // An unrestricted weekday: the 13th only.
  CHECK(between("0 0 13 * *", "UTC", "2024-09-01T00:00:00Z", "2024-11-30T00:00:00Z") ==
        std::vector<std::string>{"2024-09-13T00:00:00Z", "2024-10-13T00:00:00Z",
                                 "2024-11-13T00:00:00Z"});
  // An unrestricted day-of-month: Fridays only.
  CHECK(between("0 0 * * fri", "UTC", "2024-09-01T00:00:00Z", "2024-09-21T00:00:00Z") ==
        std::vector<std::string>{"2024-09-06T00:00:00Z", "2024-09-13T00:00:00Z",
                                 "2024-09-20T00:00:00Z"});
  // A field starting with `*` counts as unrestricted even with a step (as in Vixie
  // cron), so `1 * */2` means the 1st AND a Sun/Tue/Thu/Sat: in 2024 Feb 1 (Thu),
  // Jun 1 (Sat), Aug 1 (Thu), Sep 1 (Sun), Oct 1 (Tue), Dec 1 (Sun).
  CHECK(between("0 0 1 * */2", "UTC", "2023-12-31T00:00:00Z", "2024-12-31T00:00:00Z") ==
        std::vector<std::string>{"2024-02-01T00:00:00Z", "2024-06-01T00:00:00Z",
                                 "2024-08-01T00:00:00Z", "2024-09-01T00:00:00Z",
                                 "2024-10-01T00:00:00Z", "2024-12-01T00:00:00Z"});
}

TEST_CASE("cron: steps, ranges and names select the right minutes", "[cron]") {
  CHECK(between("*/20 9-17/4 * * mon-fri", "UTC", "2024-05-03T12:00:00Z",
                "2024-05-06T09:40:00Z") ==
        std::vector<std::string>{"2024-05-03T13:00:00Z", "2024-05-03T13:20:00Z",
                                 "2024-05-03T13:40:00Z", "2024-05-03T17:00:00Z",
                                 "2024-05-03T17:20:00Z", "2024-05-03T17:40:00Z",
                                 // Saturday and Sunday skipped; Monday 2024-05-06:
                                 "2024-05-06T09:00:00Z", "2024-05-06T09:20:00Z",
                                 "2024-05-06T09:40:00Z"});
  CHECK(next("15 10 1 jul *", "UTC", "2024-07-01T10:15:00Z") == "2025-07-01T10:15:00Z");
}

TEST_CASE("cron: next_fire is strictly after, at whole minutes", "[cron]") {
  CHECK(next("* * * * *", "UTC", "2024-05-01T12:00:00Z") == "2024-05-01T12:01:00Z");
  CHECK(next("* * * * *", "UTC", "2024-05-01T12:00:30Z") == "2024-05-01T12:01:00Z");
  CHECK(next("* * * * *", "UTC", "2024-05-01T11:59:59Z") == "2024-05-01T12:00:00Z");
  CHECK(next("0 0 * * *", "UTC", "2024-05-01T23:59:59Z") == "2024-05-02T00:00:00Z");
}

TEST_CASE("cron: leap years and Feb 29", "[cron]") {
  CHECK(next("0 0 29 2 *", "UTC", "2024-02-28T12:00:00Z") == "2024-02-29T00:00:00Z");
  CHECK(next("0 0 29 2 *", "UTC", "2024-03-01T00:00:00Z") == "2028-02-29T00:00:00Z");
  // 2100 is not a leap year (divisible by 100, not by 400); 2000 was.
  CHECK(next("0 0 29 2 *", "UTC", "2096-03-01T00:00:00Z") == "2104-02-29T00:00:00Z");
  CHECK(next("0 0 29 2 *", "UTC", "1999-01-01T00:00:00Z") == "2000-02-29T00:00:00Z");
  // Days 28-31 of February: only the 28th in 2023, the 28th and 29th in 2024.
  CHECK(between("0 12 28-31 2 *", "UTC", "2023-01-01T00:00:00Z", "2024-12-31T00:00:00Z") ==
        std::vector<std::string>{"2023-02-28T12:00:00Z", "2024-02-28T12:00:00Z",
                                 "2024-02-29T12:00:00Z"});
}

TEST_CASE("cron: year boundaries", "[cron]") {
  CHECK(next("0 0 1 1 *", "UTC", "2024-12-31T23:59:59Z") == "2025-01-01T00:00:00Z");
  CHECK(next("59 23 31 12 *", "UTC", "2024-12-31T23:59:00Z") == "2025-12-31T23:59:00Z");
  CHECK(next("0 0 * * *", "UTC", "2024-12-31T00:00:00Z") == "2025-01-01T00:00:00Z");
  // New Year in Tokyo (UTC+9) is 15:00 UTC on Dec 31.
  CHECK(next("0 0 1 1 *", "Asia/Tokyo", "2024-06-01T00:00:00Z") == "2024-12-31T15:00:00Z");
  // Dec 31 in Honolulu (UTC-10) ends at 10:00 UTC on Jan 1.
  CHECK(next("30 23 31 12 *", "Pacific/Honolulu", "2024-12-31T12:00:00Z") ==
        "2025-01-01T09:30:00Z");
}

TEST_CASE("cron: fixed-offset and half-hour zones", "[cron]") {
  CHECK(next("0 6 * * *", "Asia/Kolkata", "2024-05-01T00:00:00Z") == "2024-05-01T00:30:00Z");
  CHECK(next("0 6 * * *", "Etc/UTC", "2024-05-01T00:00:00Z") == "2024-05-01T06:00:00Z");
  // A Monday in Auckland (UTC+12 in May) begins on Sunday in UTC.
  CHECK(next("0 7 * * 1", "Pacific/Auckland", "2024-05-01T00:00:00Z") == "2024-05-05T19:00:00Z");
}

// ---------------------------------------------------------------- DST

TEST_CASE("cron: a local time skipped by spring-forward fires once at the end of the gap "
          "(New York)", "[cron]") {
  // 2024-03-10: 02:00 EST becomes 03:00 EDT at 07:00 UTC; 02:30 does not exist.
  CHECK(between("30 2 * * *", "America/New_York", "2024-03-09T00:00:00Z",
                "2024-03-12T00:00:00Z") ==
        std::vector<std::string>{"2024-03-09T07:30:00Z",    // 02:30 EST
                                 "2024-03-10T07:00:00Z",    // 03:00 EDT, the gap's end
                                 "2024-03-11T06:30:00Z"});  // 02:30 EDT
  // Several skipped times and 03:00 itself are one firing at 03:00 EDT.
  CHECK(between("0,30 2,3 * * *", "America/New_York", "2024-03-10T00:00:00Z",
                "2024-03-10T12:00:00Z") ==
        std::vector<std::string>{"2024-03-10T07:00:00Z", "2024-03-10T07:30:00Z"});
  CHECK(between("*/15 * * * *", "America/New_York", "2024-03-10T06:30:00Z",
                "2024-03-10T07:20:00Z") ==
        std::vector<std::string>{"2024-03-10T06:45:00Z", "2024-03-10T07:00:00Z",
                                 "2024-03-10T07:15:00Z"});
  CHECK(next("30 2 * * *", "America/New_York", "2024-03-10T07:00:00Z") == "2024-03-11T06:30:00Z");
}

TEST_CASE("cron: a local time repeated by fall-back fires once, at its first occurrence "
          "(New York)", "[cron]") {
  // 2024-11-03: 02:00 EDT becomes 01:00 EST at 06:00 UTC; 01:00-01:59 happen twice.
  CHECK(between("30 1 * * *", "America/New_York", "2024-11-02T00:00:00Z",
                "2024-11-05T00:00:00Z") ==
        std::vector<std::string>{"2024-11-02T05:30:00Z",    // 01:30 EDT
                                 "2024-11-03T05:30:00Z",    // 01:30 EDT, first occurrence
                                 "2024-11-04T06:30:00Z"});  // 01:30 EST
  // During the repeated hour (01:10 EST) the next 01:30 is the next day's.
  CHECK(next("30 1 * * *", "America/New_York", "2024-11-03T06:10:00Z") == "2024-11-04T06:30:00Z");
  // The repeated hour produces no firings for an every-30-minutes schedule either.
  CHECK(between("*/30 * * * *", "America/New_York", "2024-11-03T04:59:00Z",
                "2024-11-03T07:31:00Z") ==
        std::vector<std::string>{"2024-11-03T05:00:00Z", "2024-11-03T05:30:00Z",
                                 "2024-11-03T07:00:00Z", "2024-11-03T07:30:00Z"});
  // A time outside the overlap is unaffected: 06:00 EST = 11:00 UTC.
  CHECK(next("0 6 * * *", "America/New_York", "2024-11-03T00:00:00Z") == "2024-11-03T11:00:00Z");
}

TEST_CASE("cron: DST gap and overlap in Europe/Berlin", "[cron]") {
  // 2024-03-31: 02:00 CET becomes 03:00 CEST at 01:00 UTC.
  CHECK(between("30 2 * * *", "Europe/Berlin", "2024-03-30T00:00:00Z", "2024-04-02T00:00:00Z") ==
        std::vector<std::string>{"2024-03-30T01:30:00Z",    // 02:30 CET
                                 "2024-03-31T01:00:00Z",    // 03:00 CEST, the gap's end
                                 "2024-04-01T00:30:00Z"});  // 02:30 CEST
  // 2024-10-27: 03:00 CEST becomes 02:00 CET at 01:00 UTC; 02:30 happens twice.
  CHECK(between("30 2 * * *", "Europe/Berlin", "2024-10-26T00:00:00Z", "2024-10-29T00:00:00Z") ==
        std::vector<std::string>{"2024-10-26T00:30:00Z",    // 02:30 CEST
                                 "2024-10-27T00:30:00Z",    // 02:30 CEST, first occurrence
                                 "2024-10-28T01:30:00Z"});  // 02:30 CET
  // The default daily report at 06:00 Berlin time moves with the offset.
  CHECK(next("0 6 * * *", "Europe/Berlin", "2024-03-30T12:00:00Z") == "2024-03-31T04:00:00Z");
  CHECK(next("0 6 * * *", "Europe/Berlin", "2024-10-26T12:00:00Z") == "2024-10-27T05:00:00Z");
}

TEST_CASE("cron: fire_times_between is exclusive at the start, inclusive at the end, and "
          "capped", "[cron]") {
  CHECK(between("0 * * * *", "UTC", "2024-05-01T10:00:00Z", "2024-05-01T13:00:00Z") ==
        std::vector<std::string>{"2024-05-01T11:00:00Z", "2024-05-01T12:00:00Z",
                                 "2024-05-01T13:00:00Z"});
  CHECK(between("0 * * * *", "UTC", "2024-05-01T10:00:00Z", "2024-05-01T13:00:00Z", 2) ==
        std::vector<std::string>{"2024-05-01T11:00:00Z", "2024-05-01T12:00:00Z"});
  CHECK(between("0 * * * *", "UTC", "2024-05-01T10:00:00Z", "2024-05-01T10:59:59Z").empty());
  CHECK(between("0 * * * *", "UTC", "2024-05-01T10:00:00Z", "2024-05-01T13:00:00Z", 0).empty());
  CHECK(between("0 6 * * *", "UTC", "2024-05-01T07:00:00Z", "2024-05-01T06:00:00Z").empty());
  // A week of minutes stays fast enough for a misfire check.
  CHECK(fire_times_between(must_parse("* * * * *"), zone("Europe/Berlin"),
                           utc("2024-10-21T00:00:00Z"), utc("2024-10-28T00:00:00Z"), 100000)
            .size() == 7 * 24 * 60 - 60);  // the repeated hour fires nothing
}

TEST_CASE("cron: next_fire reports nothing past the end of the calendar", "[cron]") {
  CHECK(next("0 0 29 2 *", "UTC", "9997-01-01T00:00:00Z") == "none");
  CHECK(next("0 0 1 1 *", "UTC", "9998-06-01T00:00:00Z") == "9999-01-01T00:00:00Z");
}

// ---------------------------------------------------------------- zones

TEST_CASE("cron: find_zone knows IANA names and refuses others with a clear error", "[cron]") {
  CHECK(zone("UTC")->name() == "UTC");
  CHECK(zone("Europe/Berlin")->name() == "Europe/Berlin");
  CHECK(zone("America/New_York")->name() == "America/New_York");
  CHECK(zone("America/Argentina/Buenos_Aires") != nullptr);
  CHECK(zone("Etc/GMT+5") != nullptr);

  auto error_of = [](const std::string& name) {
    auto r = find_zone(name);
    if (std::holds_alternative<const date::time_zone*>(r)) FAIL("zone " << name << " was accepted");
    return std::get<cron_error>(r).message;
  };
  CHECK_THAT(error_of("Mars/Olympus_Mons"),
             Contains("time zone \"Mars/Olympus_Mons\" is unknown") && Contains("IANA"));
  CHECK_THAT(error_of(""), Contains("time zone \"\" is not an IANA time zone name"));
  CHECK_THAT(error_of("../../etc/passwd"), Contains("is not an IANA time zone name"));
  CHECK_THAT(error_of("/usr/share/zoneinfo/UTC"), Contains("is not an IANA time zone name"));
  CHECK_THAT(error_of("Europe Berlin"), Contains("is not an IANA time zone name"));
}

// The JSON log on Boost.Log. A record carries four attributes (time, level,
// component, fields) and its message; the sink's formatter (format_record) turns
// them into one JSON line. Level filtering happens before a record is opened, on
// one atomic, so a filtered-out call builds nothing.
//
// Lock order: none of ours. Boost.Log's core and the synchronous sink take their
// own locks; the sink's lock is what keeps lines from interleaving.
#include "protocol/log.hpp"

#include <atomic>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <mutex>

#include <boost/core/null_deleter.hpp>
#include <boost/log/attributes/constant.hpp>
#include <boost/log/attributes/value_extraction.hpp>
#include <boost/log/core.hpp>
#include <boost/log/sinks/sync_frontend.hpp>
#include <boost/log/sinks/text_ostream_backend.hpp>
#include <boost/log/sources/record_ostream.hpp>
#include <boost/log/utility/exception_handler.hpp>
#include <boost/shared_ptr.hpp>
#include <boost/smart_ptr/make_shared_object.hpp>

namespace klynaa::log {
namespace {

namespace bl = boost::log;
using sink_t = bl::sinks::synchronous_sink<bl::sinks::text_ostream_backend>;

constexpr const char* time_attr = "KlynaaTimeMs";
constexpr const char* level_attr = "KlynaaLevel";
constexpr const char* component_attr = "KlynaaComponent";
constexpr const char* fields_attr = "KlynaaFields";

std::atomic<int> min_level_{static_cast<int>(level::info)};
std::once_flag default_sink_once_;
std::mutex sink_mutex_;  // serialises init() calls, so one sink is installed at a time
boost::shared_ptr<sink_t> sink_;

std::string dump(const nlohmann::json& j) {
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

std::string quote(std::string_view s) {
  return dump(nlohmann::json(std::string(s)));
}

// Replaces the sink; the caller holds sink_mutex_.
void install_sink(std::ostream* os) {
  auto core = bl::core::get();
  if (sink_) core->remove_sink(sink_);
  auto backend = boost::make_shared<bl::sinks::text_ostream_backend>();
  backend->add_stream(boost::shared_ptr<std::ostream>(os ? os : &std::clog, boost::null_deleter()));
  backend->auto_flush(true);  // a line is on stderr before the next thing can crash
  sink_ = boost::make_shared<sink_t>(backend);
  sink_->set_formatter([](const bl::record_view& rec, bl::formatting_ostream& out) {
    auto ms = bl::extract<int64_t>(time_attr, rec);
    auto lv = bl::extract<level>(level_attr, rec);
    auto component = bl::extract<std::string>(component_attr, rec);
    auto fields = bl::extract<nlohmann::json>(fields_attr, rec);
    auto msg = bl::extract<std::string>("Message", rec);
    out << format_line(ms ? *ms : 0, lv ? *lv : level::info, component ? *component : "",
                       msg ? *msg : "", fields ? *fields : nlohmann::json());
  });
  core->add_sink(sink_);
  // Logging must never throw into the caller: a failing stream loses the line.
  core->set_exception_handler(bl::make_exception_suppressor());
}

void ensure_default_sink() {
  std::call_once(default_sink_once_, [] {
    std::lock_guard<std::mutex> lock(sink_mutex_);
    if (!sink_) install_sink(nullptr);
  });
}

// Days since 1970-01-01 to a civil date (H. Hinnant's days_from_civil inverse).
void civil_from_days(int64_t z, int64_t& y, unsigned& m, unsigned& d) {
  z += 719468;
  const int64_t era = (z >= 0 ? z : z - 146096) / 146097;
  const auto doe = static_cast<unsigned>(z - era * 146097);
  const unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
  y = static_cast<int64_t>(yoe) + era * 400;
  const unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
  const unsigned mp = (5 * doy + 2) / 153;
  d = doy - (153 * mp + 2) / 5 + 1;
  m = mp < 10 ? mp + 3 : mp - 9;
  if (m <= 2) ++y;
}

int64_t floor_div(int64_t a, int64_t b) {
  int64_t q = a / b;
  if ((a % b != 0) && ((a < 0) != (b < 0))) --q;
  return q;
}

bool is_reserved(const std::string& key) {
  return key == "ts" || key == "level" || key == "component" || key == "msg";
}

}  // namespace

void init(level min, std::ostream* sink) {
  try {
    // The default sink must not be installed after (and over) this one.
    std::call_once(default_sink_once_, [] {});
    std::lock_guard<std::mutex> lock(sink_mutex_);
    install_sink(sink);
  } catch (...) {
    // Boost.Log could not set up the sink (out of memory): keep the old one.
  }
  set_level(min);
}

void set_level(level min) noexcept {
  min_level_.store(static_cast<int>(min), std::memory_order_relaxed);
}

level min_level() noexcept {
  return static_cast<level>(min_level_.load(std::memory_order_relaxed));
}

std::string_view to_string(level l) noexcept {
  switch (l) {
    case level::trace: return "trace";
    case level::debug: return "debug";
    case level::info: return "info";
    case level::warning: return "warning";
    case level::error: return "error";
  }
  return "info";
}

bool parse_level(std::string_view text, level& out) noexcept {
  for (level l : {level::trace, level::debug, level::info, level::warning, level::error}) {
    if (text == to_string(l)) {
      out = l;
      return true;
    }
  }
  if (text == "warn") {
    out = level::warning;
    return true;
  }
  return false;
}

bool enabled(level l) noexcept {
  return static_cast<int>(l) >= min_level_.load(std::memory_order_relaxed);
}

void write(level l, std::string_view component, std::string_view msg,
           const nlohmann::json& fields) noexcept {
  if (!enabled(l)) return;
  try {
    ensure_default_sink();
    auto core = bl::core::get();
    bl::attribute_set attrs;
    attrs.insert(time_attr, bl::attributes::constant<int64_t>(now_ms()));
    attrs.insert(level_attr, bl::attributes::constant<level>(l));
    attrs.insert(component_attr, bl::attributes::constant<std::string>(std::string(component)));
    attrs.insert(fields_attr, bl::attributes::constant<nlohmann::json>(fields));
    bl::record rec = core->open_record(attrs);
    if (!rec) return;
    {
      bl::record_ostream strm(rec);
      strm << msg;
      strm.flush();
    }
    core->push_record(std::move(rec));
  } catch (...) {
    // Never throw into the caller; the line is lost.
  }
}

std::string format_line(int64_t unix_ms, level l, std::string_view component, std::string_view msg,
                        const nlohmann::json& fields) {
  // Built by hand so the fixed keys come first, in a stable order; every value
  // goes through nlohmann::json for escaping.
  std::string line;
  line.reserve(96 + msg.size());
  line += "{\"ts\":\"";
  line += iso8601_utc_ms(unix_ms);
  line += "\",\"level\":\"";
  line += to_string(l);
  line += "\",\"component\":";
  line += quote(component);
  line += ",\"msg\":";
  line += quote(msg);
  if (fields.is_object()) {
    for (auto it = fields.begin(); it != fields.end(); ++it) {
      line += ',';
      line += quote(is_reserved(it.key()) ? "field." + it.key() : it.key());
      line += ':';
      line += dump(it.value());
    }
  } else if (!fields.is_null()) {
    line += ",\"fields\":";
    line += dump(fields);
  }
  line += '}';
  return line;
}

int64_t now_ms() noexcept {
  using namespace std::chrono;
  return duration_cast<milliseconds>(system_clock::now().time_since_epoch()).count();
}

std::string iso8601_utc_ms(int64_t unix_ms) {
  const int64_t days = floor_div(unix_ms, 86400000);
  const int64_t ms_of_day = unix_ms - days * 86400000;
  int64_t y = 0;
  unsigned m = 0, d = 0;
  civil_from_days(days, y, m, d);
  const auto hh = static_cast<int>(ms_of_day / 3600000);
  const auto mm = static_cast<int>(ms_of_day / 60000 % 60);
  const auto ss = static_cast<int>(ms_of_day / 1000 % 60);
  const auto mss = static_cast<int>(ms_of_day % 1000);
  char buf[64];
  std::snprintf(buf, sizeof buf, "%04lld-%02u-%02uT%02d:%02d:%02d.%03dZ", static_cast<long long>(y), m,
                d, hh, mm, ss, mss);
  return buf;
}

std::string redact(std::string_view secret) {
  constexpr size_t shown = 4;        // characters (code points) shown
  constexpr size_t min_length = 12;  // bytes below which nothing is shown
  if (secret.empty()) return {};
  if (secret.size() < min_length) return "…";
  size_t end = 0;
  for (size_t points = 0; end < secret.size() && points < shown; ++points) {
    ++end;  // skip UTF-8 continuation bytes so a character is never cut in half
    while (end < secret.size() && (static_cast<unsigned char>(secret[end]) & 0xC0) == 0x80) ++end;
  }
  return std::string(secret.substr(0, end)) + "…";
}

}  // namespace klynaa::log

// The JSON log on Boost.Log. write() renders the JSON line on the caller's
// thread (format_line) and pushes it through the Boost.Log core as the record's
// message; the sink's formatter passes it on as is. Level filtering happens
// before anything is built, on one atomic.
//
// The default sink (standard error) hands each line to a writer thread that
// writes whatever has accumulated with one write(2): under load many lines per
// system call, and a line is out within about a millisecond. A job logs two lines
// (start and end, docs/operations.md, "Watching it"); before this, formatting through Boost.Log
// attributes and one flushed write per line cost half of a job's CPU
// (docs/performance.md). The buffer is bounded (writers wait when stderr does
// not drain), flushed at exit and by log::flush(); only a process killed with
// SIGKILL can lose the lines of its last few microseconds. A sink given to
// init() (tests: an ostringstream) stays synchronous.
//
// Lock order: the writer's write_mu_ before its buf_mu_. Boost.Log's core and
// the synchronous sink take their own locks; the sink's lock is what keeps
// lines from interleaving.
#include "protocol/log.hpp"

#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <mutex>
#include <thread>

#include <boost/core/null_deleter.hpp>
#include <boost/log/attributes/attribute_value_impl.hpp>
#include <boost/log/attributes/constant.hpp>
#include <boost/log/attributes/value_extraction.hpp>
#include <boost/log/core.hpp>
#include <boost/log/sinks/basic_sink_backend.hpp>
#include <boost/log/sinks/sync_frontend.hpp>
#include <boost/log/sinks/text_ostream_backend.hpp>
#include <boost/log/sources/record_ostream.hpp>
#include <boost/log/utility/exception_handler.hpp>
#include <boost/shared_ptr.hpp>
#include <boost/smart_ptr/make_shared_object.hpp>

namespace klynaa::log {
namespace {

namespace bl = boost::log;

std::atomic<int> min_level_{static_cast<int>(level::info)};
std::once_flag default_sink_once_;
std::mutex sink_mutex_;  // serialises init() calls, so one sink is installed at a time
boost::shared_ptr<bl::sinks::sink> sink_;

/// Standard error, written by a thread of its own in batches (see the top).
class stderr_writer {
 public:
  static stderr_writer& get() {
    // Never destroyed: lines may be written while statics are torn down, and a
    // joinable std::thread must not be destroyed. std::atexit flushes it.
    static stderr_writer* w = [] {
      auto* p = new stderr_writer();
      std::atexit([] { get().flush(); });
      return p;
    }();
    return *w;
  }

  void append(const std::string& line) {
    std::unique_lock<std::mutex> lock(buf_mu_);
    // Backpressure instead of unbounded memory when stderr does not drain.
    drained_.wait(lock, [this] { return buf_.size() < max_buffer; });
    buf_ += line;
    buf_ += '\n';
    if (!pending_) {
      pending_ = true;
      ready_.notify_one();
    }
  }

  /// Writes everything appended so far before returning.
  void flush() {
    std::lock_guard<std::mutex> write_lock(write_mu_);
    write_out();
  }

 private:
  static constexpr size_t max_buffer = 8u << 20;

  stderr_writer() {
    std::thread([this] { run(); }).detach();
  }

  void run() {
    for (;;) {
      {
        std::unique_lock<std::mutex> lock(buf_mu_);
        ready_.wait(lock, [this] { return pending_; });
      }
      // Let a burst gather: one wake-up and one write(2) for the lines of the
      // next millisecond instead of one each (a line is out within ~1 ms).
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
      std::lock_guard<std::mutex> write_lock(write_mu_);
      write_out();
    }
  }

  // Takes what is buffered and writes it; the caller holds write_mu_, so lines
  // leave in the order they were appended.
  void write_out() {
    {
      std::lock_guard<std::mutex> lock(buf_mu_);
      out_.swap(buf_);
      pending_ = false;
    }
    drained_.notify_all();
    size_t done = 0;
    while (done < out_.size()) {
      ssize_t n = ::write(2, out_.data() + done, out_.size() - done);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) break;  // stderr is gone: the lines are lost, never thrown
      done += static_cast<size_t>(n);
    }
    out_.clear();
  }

  std::mutex write_mu_;
  std::mutex buf_mu_;
  std::condition_variable ready_, drained_;
  std::string buf_, out_;
  bool pending_ = false;
};

/// The Boost.Log backend of the default sink: each formatted record (one JSON
/// line) goes to the stderr writer.
class stderr_backend
    : public bl::sinks::basic_formatted_sink_backend<
          char, bl::sinks::combine_requirements<bl::sinks::synchronized_feeding, bl::sinks::flushing>::type> {
 public:
  void consume(const bl::record_view&, const string_type& line) { stderr_writer::get().append(line); }
  void flush() { stderr_writer::get().flush(); }
};

std::string dump(const nlohmann::json& j) {
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

/// Appends `s` as a JSON string. Printable ASCII without quote or backslash (ids,
/// names, most messages) is copied as is; anything else goes through
/// nlohmann::json, which escapes and replaces invalid UTF-8.
void append_quoted(std::string& out, std::string_view s) {
  bool plain = true;
  for (unsigned char c : s)
    if (c < 0x20 || c >= 0x7f || c == '"' || c == '\\') {
      plain = false;
      break;
    }
  if (plain) {
    out += '"';
    out += s;
    out += '"';
  } else {
    out += dump(nlohmann::json(std::string(s)));
  }
}

void append_value(std::string& out, const nlohmann::json& v) {
  if (v.is_string())
    append_quoted(out, v.get_ref<const std::string&>());
  else if (v.is_number_integer())
    out += v.is_number_unsigned() ? std::to_string(v.get<uint64_t>()) : std::to_string(v.get<int64_t>());
  else
    out += dump(v);
}

// Replaces the sink; the caller holds sink_mutex_.
void install_sink(std::ostream* os) {
  auto core = bl::core::get();
  if (sink_) core->remove_sink(sink_);
  // The record's message is the whole JSON line (write() renders it).
  auto message_only = [](const bl::record_view& rec, bl::formatting_ostream& out) {
    static const bl::attribute_name message("Message");  // resolved once, not per line
    if (auto msg = bl::extract<std::string>(message, rec)) out << *msg;
  };
  if (os) {
    auto backend = boost::make_shared<bl::sinks::text_ostream_backend>();
    backend->add_stream(boost::shared_ptr<std::ostream>(os, boost::null_deleter()));
    backend->auto_flush(true);
    auto sink = boost::make_shared<bl::sinks::synchronous_sink<bl::sinks::text_ostream_backend>>(backend);
    sink->set_formatter(message_only);
    sink_ = sink;
  } else {
    auto sink = boost::make_shared<bl::sinks::synchronous_sink<stderr_backend>>();
    sink->set_formatter(message_only);
    sink_ = sink;
  }
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

void flush() noexcept {
  try {
    bl::core::get()->flush();
  } catch (...) {
  }
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

namespace {

/// Pushes a rendered line through the Boost.Log core as the record's message.
void push_line(std::string line) {
  ensure_default_sink();
  auto core = bl::core::get();
  bl::record rec = core->open_record(bl::attribute_set());
  if (!rec) return;
  // The message attribute set directly, as record_ostream would, without
  // building a stream for it.
  static const bl::attribute_name message("Message");
  rec.attribute_values().insert(message, bl::attributes::make_attribute_value(std::move(line)));
  core->push_record(std::move(rec));
}

/// `{"ts":...,"level":...,"component":...,"msg":...` (no closing brace).
std::string line_head(int64_t unix_ms, level l, std::string_view component, std::string_view msg,
                      size_t extra) {
  std::string line;
  line.reserve(96 + msg.size() + extra);
  line += "{\"ts\":\"";
  line += iso8601_utc_ms(unix_ms);
  line += "\",\"level\":\"";
  line += to_string(l);
  line += "\",\"component\":";
  append_quoted(line, component);
  line += ",\"msg\":";
  append_quoted(line, msg);
  return line;
}

}  // namespace

fields_text& fields_text::add(std::string_view key, std::string_view value) {
  text_ += ',';
  append_quoted(text_, key);
  text_ += ':';
  append_quoted(text_, value);
  return *this;
}

fields_text& fields_text::add(std::string_view key, int64_t value) {
  text_ += ',';
  append_quoted(text_, key);
  text_ += ':';
  text_ += std::to_string(value);
  return *this;
}

void write(level l, std::string_view component, std::string_view msg,
           const nlohmann::json& fields) noexcept {
  if (!enabled(l)) return;
  try {
    push_line(format_line(now_ms(), l, component, msg, fields));
  } catch (...) {
    // Never throw into the caller; the line is lost.
  }
}

void write(level l, std::string_view component, std::string_view msg, const fields_text& fields) noexcept {
  if (!enabled(l)) return;
  try {
    push_line(format_line(now_ms(), l, component, msg, fields));
  } catch (...) {
  }
}

std::string format_line(int64_t unix_ms, level l, std::string_view component, std::string_view msg,
                        const fields_text& fields) {
  auto line = line_head(unix_ms, l, component, msg, fields.text().size() + 1);
  line += fields.text();
  line += '}';
  return line;
}

std::string format_line(int64_t unix_ms, level l, std::string_view component, std::string_view msg,
                        const nlohmann::json& fields) {
  // Built by hand so the fixed keys come first, in a stable order; every value
  // goes through nlohmann::json for escaping.
  auto line = line_head(unix_ms, l, component, msg, 0);
  if (fields.is_object()) {
    for (auto it = fields.begin(); it != fields.end(); ++it) {
      line += ',';
      if (is_reserved(it.key()))
        append_quoted(line, "field." + it.key());
      else
        append_quoted(line, it.key());
      line += ':';
      append_value(line, it.value());
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
  if (y < 0 || y > 9999) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "%04lld-%02u-%02uT%02d:%02d:%02d.%03dZ", static_cast<long long>(y), m,
                  d, hh, mm, ss, mss);
    return buf;
  }
  // By hand: snprintf was a third of a log line's cost (two lines a job).
  char buf[] = "0000-00-00T00:00:00.000Z";
  auto put = [&buf](int at, int width, int64_t v) {
    for (int i = at + width - 1; i >= at; --i, v /= 10)
      buf[i] = static_cast<char>('0' + v % 10);
  };
  put(0, 4, y);
  put(5, 2, m);
  put(8, 2, d);
  put(11, 2, hh);
  put(14, 2, mm);
  put(17, 2, ss);
  put(20, 3, mss);
  return std::string(buf, sizeof buf - 1);
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

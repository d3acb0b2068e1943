// Structured logging (docs/operations.md, "Watching it"): one JSON object a line on standard error,
//   {"ts":"2026-11-27T22:17:54.123Z","level":"info","component":"broker","msg":"listening","endpoint":"tcp://..."}
// `ts`, `level`, `component` and `msg` come first, in that order; the extra
// fields follow (job_id, function, attempt, node, duration_ms, outcome, error, ...).
// Built on Boost.Log: each line is rendered by the caller and pushed through the
// core as one record, so lines from many threads never interleave; standard
// error is written in batches by a thread of its own (log.cpp).
//
// Every function here is thread-safe and never throws. Logging works before
// init(): the first line installs the default (level info, standard error).
// `component` is the folder or actor name ("broker", "escrow", "geo", ...).
//
// A filtered-out call costs one atomic load, but its arguments are still built;
// for expensive fields use KLYNAA_LOG, which evaluates them only when enabled:
//   KLYNAA_LOG(debug, "geo", "index loaded", {{"workers", index.size()}});
#pragma once

#include <cstdint>
#include <ostream>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

namespace klynaa::log {

enum class level { trace, debug, info, warning, error };

/// Routes every line to `sink` (nullptr: standard error, through std::clog) and
/// drops lines below `min`. May be called again, e.g. by tests with a
/// std::ostringstream; the caller keeps `sink` alive until the next init() with
/// another sink (tests restore the default with `init(level::info)`).
void init(level min, std::ostream* sink = nullptr);

/// Returns once every line written so far is out (the default sink writes from
/// a thread of its own; it is also flushed at exit). Call before std::_Exit.
void flush() noexcept;

/// Changes the minimum level without touching the sink.
void set_level(level min) noexcept;

/// The current minimum level.
level min_level() noexcept;

/// "trace", "debug", "info", "warning", "error".
std::string_view to_string(level l) noexcept;

/// Parses a level name as to_string() writes it, and also "warn". Returns false
/// (leaving `out` alone) for anything else.
bool parse_level(std::string_view text, level& out) noexcept;

/// True when a line of level `l` would be written.
bool enabled(level l) noexcept;

/// Writes one line if `l` is enabled. `fields` is an object whose members are
/// appended after `msg` (a member named ts, level, component or msg is written
/// as "field.<name>" so it cannot hide the fixed keys); a non-object, non-null
/// `fields` is written as "fields". Invalid UTF-8 is replaced, never thrown.
void write(level l, std::string_view component, std::string_view msg,
           const nlohmann::json& fields = nlohmann::json()) noexcept;

/// Extra fields rendered straight into line text, for the hot path (a job's
/// start and end lines): no JSON object is built. Keys are the caller's
/// constants (ASCII, not ts/level/component/msg); values are escaped as JSON.
///   log::write(level::info, "geo", "job started",
///              log::fields_text().add("job_id", id).add("attempt", 1));
class fields_text {
 public:
  fields_text& add(std::string_view key, std::string_view value);
  fields_text& add(std::string_view key, const char* value) { return add(key, std::string_view(value)); }
  fields_text& add(std::string_view key, const std::string& value) { return add(key, std::string_view(value)); }
  fields_text& add(std::string_view key, int64_t value);
  fields_text& add(std::string_view key, int value) { return add(key, static_cast<int64_t>(value)); }
  /// `,"key":value` for each field, in the order added.
  const std::string& text() const { return text_; }

 private:
  std::string text_;
};

/// Writes one line if `l` is enabled, with the fields of `fields` after `msg`.
void write(level l, std::string_view component, std::string_view msg, const fields_text& fields) noexcept;

inline void trace(std::string_view component, std::string_view msg,
                  const nlohmann::json& fields = nlohmann::json()) noexcept {
  write(level::trace, component, msg, fields);
}
inline void debug(std::string_view component, std::string_view msg,
                  const nlohmann::json& fields = nlohmann::json()) noexcept {
  write(level::debug, component, msg, fields);
}
inline void info(std::string_view component, std::string_view msg,
                 const nlohmann::json& fields = nlohmann::json()) noexcept {
  write(level::info, component, msg, fields);
}
inline void warning(std::string_view component, std::string_view msg,
                    const nlohmann::json& fields = nlohmann::json()) noexcept {
  write(level::warning, component, msg, fields);
}
inline void error(std::string_view component, std::string_view msg,
                  const nlohmann::json& fields = nlohmann::json()) noexcept {
  write(level::error, component, msg, fields);
}

/// Renders the JSON line for a record without writing it (the formatter's
/// output, without the newline). Exposed for tests and for tools that log
/// elsewhere.
std::string format_line(int64_t unix_ms, level l, std::string_view component, std::string_view msg,
                        const nlohmann::json& fields = nlohmann::json());
std::string format_line(int64_t unix_ms, level l, std::string_view component, std::string_view msg,
                        const fields_text& fields);

/// Milliseconds since the Unix epoch, from the system clock.
int64_t now_ms() noexcept;

/// ISO 8601 UTC with milliseconds: 0 -> "1970-01-01T00:00:00.000Z". Also used
/// by the log provider's outbox (docs/events-and-functions.md, "Push
/// providers"). Works for times before 1970.
std::string iso8601_utc_ms(int64_t unix_ms);

/// What may be logged of a secret (API key, token): its first 4 characters and
/// "…" when it has at least 12 characters, only "…" when shorter, "" when empty.
/// A secret is never logged whole.
std::string redact(std::string_view secret);

}  // namespace klynaa::log

/// Logs only when enabled, evaluating `msg` and the fields only then:
///   KLYNAA_LOG(info, "broker", "listening", {{"endpoint", e}});
#define KLYNAA_LOG(LEVEL, COMPONENT, ...)                                  \
  do {                                                                     \
    if (::klynaa::log::enabled(::klynaa::log::level::LEVEL))               \
      ::klynaa::log::write(::klynaa::log::level::LEVEL, COMPONENT, __VA_ARGS__); \
  } while (false)

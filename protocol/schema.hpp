// The one table of what the job system accepts (docs/events-and-functions.md): event types,
// functions, their data fields, which actor kind runs each function, which jobs
// each event creates, and the rejection codes of docs/ingress-protocol.md
// ("Reply"). Validation (validate.hpp), the CLI's help texts and
// the docs all read this table, so a field is declared exactly once.
//
// Everything here is immutable static data, built on first use (thread-safe, C++11
// magic statics) and never freed: share the references freely between threads.
#pragma once

#include <optional>
#include <string_view>
#include <vector>

#include "protocol/message.hpp"

namespace klynaa::protocol {

/// What a data field must hold. Every kind is checked against the msgpack type as
/// it arrived, so an integer sent as a float (7.0) is not an `id`.
enum class field_kind {
  id,               ///< positive integer (1 .. 2^63-1), msgpack int only
  number,           ///< finite number; ints accepted
  positive_number,  ///< finite number > 0; ints accepted (e.g. `radius_km`)
  latitude,         ///< finite number in [-90, 90]
  longitude,        ///< finite number in [-180, 180]
  boolean,          ///< msgpack bool (not 0/1)
  text,             ///< string (valid UTF-8)
  choice,           ///< string, exactly one of `field_spec::choices`
  date,             ///< string `YYYY-MM-DD`, a real calendar date
  monday,           ///< like `date`, and the day is a Monday
  count,            ///< non-negative integer (0 .. 2^63-1), msgpack int only
};

/// "positive integer", "number", ... (as the help texts and docs print it).
std::string_view to_string(field_kind k);

/// `data.<field> == equals` (a string comparison; other types never match).
struct field_condition {
  std::string_view field;
  std::string_view equals;
};

struct field_spec {
  std::string_view name;
  field_kind kind = field_kind::text;
  bool required = false;
  std::vector<std::string_view> choices;  ///< for field_kind::choice
  std::string_view help;                  ///< one line
  /// When set and the condition holds, `required` is inverted. Used by
  /// sendPickupNotification: `pickup_id` is required except for `daily_report`,
  /// where `report_id` is required instead.
  std::optional<field_condition> except_when;
};

/// Whether `spec` is required given the request's data (JSON view, so the CLI can
/// ask too): `spec.required`, inverted when `spec.except_when` holds.
bool is_required(const field_spec& spec, const nlohmann::json& data);

struct function_spec {
  std::string_view name;                ///< e.g. "processEscrowRelease"
  std::string_view actor;               ///< "notifier", "escrow", "geo" or "scheduler"
  std::vector<field_spec> fields;       ///< in the docs' table order (= check order)
  std::string_view help;                ///< one line
  /// Runs on every node hosting its kind, not on one (docs/cluster-protocol.md,
  /// "Fan-out jobs"): updateWorkerLocation.
  bool fanout = false;
  /// Its success makes the broker prune its own finished jobs
  /// (docs/events-and-functions.md, cleanupData): cleanupData.
  bool prunes_store = false;
};

struct event_spec {
  std::string_view name;                ///< e.g. "pickup.delivered"
  std::vector<field_spec> fields;       ///< in the docs' table order (= check order)
  std::vector<std::string_view> jobs;   ///< functions of the jobs it creates, in job-id order
  std::string_view creates;             ///< the jobs it creates, one line for help and docs
  std::string_view help;                ///< one line
};

struct error_code_spec {
  error_code code;
  std::string_view help;  ///< when a request gets it and what to do about it
};

/// The seven functions of docs/events-and-functions.md, "Functions", in its order.
const std::vector<function_spec>& functions();

/// The six event types of docs/events-and-functions.md, "Events", in its order.
const std::vector<event_spec>& events();

/// Every rejection code (docs/events-and-functions.md, "Rejection codes"), in the
/// order of enum error_code.
const std::vector<error_code_spec>& error_codes();

/// The function or event of that name; nullptr when there is none.
const function_spec* find_function(std::string_view name);
const event_spec* find_event(std::string_view name);

/// The fields of a function or event of that name; nullptr when there is none.
const std::vector<field_spec>* fields_of(std::string_view type);

/// The actor kind that runs `function` ("notifier", "escrow", "geo",
/// "scheduler"), or "" when it is not a function name.
std::string_view actor_of(std::string_view function);

/// The four actor kinds, in the order the function table first names them (the
/// order `--actors` lists them in, docs/operations.md, "Roles").
const std::vector<std::string_view>& actor_kinds();

/// The functions that actor kind `actor` runs (empty for an unknown kind).
std::vector<std::string_view> functions_of(std::string_view actor);

/// The function whose success makes the broker prune its store (the one with
/// `prunes_store`): "cleanupData".
std::string_view prune_function();

/// The values of sendPickupNotification's `notification_type`, in the docs'
/// order: the choices of that field, the types [notifications.templates.TYPE]
/// may name, the types the notifier has a text for.
const std::vector<std::string_view>& notification_types();

/// The help line of an error code.
std::string_view help_of(error_code c);

}  // namespace klynaa::protocol

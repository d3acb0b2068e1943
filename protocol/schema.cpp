// The table of docs/events-and-functions.md (and the rejection codes of
// docs/ingress-protocol.md). Field order in each entry is the order of the docs'
// tables, which is the order validation
// checks them in: keep it that way when adding fields.
#include "protocol/schema.hpp"

#include <algorithm>

namespace klynaa::protocol {

namespace {

// Shared field declarations: the same field means the same thing everywhere.
field_spec pickup_id_field(bool required = true) {
  return {"pickup_id", field_kind::id, required, {}, "the pickup's id in Django", {}};
}
field_spec customer_id_field() {
  return {"customer_id", field_kind::id, true, {}, "the customer's user id", {}};
}
field_spec worker_id_field() {
  return {"worker_id", field_kind::id, true, {}, "the worker's id", {}};
}
field_spec lat_field(std::string_view help) {
  return {"lat", field_kind::latitude, true, {}, help, {}};
}
field_spec lng_field(std::string_view help) {
  return {"lng", field_kind::longitude, true, {}, help, {}};
}
field_spec radius_field() {
  return {"radius_km", field_kind::positive_number, false, {},
          "search radius in km (default: geo.radius_km, 5)", {}};
}
field_spec available_field() {
  return {"available", field_kind::boolean, true, {},
          "whether the worker takes pickups; false removes them from the geo index", {}};
}

std::vector<function_spec> make_functions() {
  const field_condition daily_report{"notification_type", "daily_report"};
  return {
      {"sendPickupNotification",
       "notifier",
       {
           {"pickup_id", field_kind::id, true, {},
            "the pickup's id in Django (not for daily_report)", daily_report},
           {"report_id", field_kind::id, false, {},
            "the report's id (required for daily_report, instead of pickup_id)", daily_report},
           {"notification_type", field_kind::choice, true,
            {notification_types().begin(), notification_types().end()}, "which template to send", {}},
           {"user_type", field_kind::choice, true, {"customer", "worker", "admin"},
            "who receives it: the pickup's customer or worker, or the admins", {}},
           {"user_id", field_kind::id, false, {},
            "send to this user instead of the ones user_type names", {}},
       },
       "push a notification to a user's devices through the configured provider"},
      {"processEscrowRelease",
       "escrow",
       {
           pickup_id_field(),
           {"release_reason", field_kind::choice, true,
            {"customer_confirmed", "auto_release", "admin"},
            "why the escrow is released", {}},
       },
       "release a pickup's escrow in Django (idempotent: escrow-release-{pickup_id})"},
      {"notifyNearbyWorkers",
       "geo",
       {
           pickup_id_field(),
           lat_field("the pickup's latitude, -90 to 90"),
           lng_field("the pickup's longitude, -180 to 180"),
           radius_field(),
       },
       "find available workers near a pickup and notify each of them"},
      {"updateWorkerLocation",
       "geo",
       {
           worker_id_field(),
           lat_field("the worker's latitude, -90 to 90"),
           lng_field("the worker's longitude, -180 to 180"),
           available_field(),
       },
       "update a worker's location and availability in every geo index",
       /*fanout=*/true},
      {"generateDailyReport",
       "scheduler",
       {
           {"date", field_kind::date, false, {},
            "the UTC day to report on, YYYY-MM-DD (default: yesterday)", {}},
       },
       "summarise one UTC day's pickups, post the report to Django, tell the admins"},
      {"generateWeeklyAnalytics",
       "scheduler",
       {
           {"week_start", field_kind::monday, false, {},
            "the Monday the week starts on, YYYY-MM-DD (default: the last full week)", {}},
       },
       "summarise seven days of pickups and service-area coverage, post it to Django"},
      {"cleanupData",
       "scheduler",
       {
           {"older_than_days", field_kind::count, false, {},
            "delete data older than this many days (default 90)", {}},
       },
       "ask Django to delete old data and prune the broker's finished jobs",
       /*fanout=*/false,
       /*prunes_store=*/true},
  };
}

std::vector<event_spec> make_events() {
  return {
      {"pickup.created",
       {
           pickup_id_field(),
           customer_id_field(),
           lat_field("the pickup's latitude, -90 to 90"),
           lng_field("the pickup's longitude, -180 to 180"),
           {"waste_type", field_kind::text, false, {}, "what is to be picked up", {}},
           radius_field(),
       },
       {"notifyNearbyWorkers"},
       "notifyNearbyWorkers",
       "a customer requested a pickup"},
      {"pickup.accepted",
       {pickup_id_field(), customer_id_field(), worker_id_field()},
       {"sendPickupNotification"},
       "sendPickupNotification (pickup_accepted -> customer)",
       "a worker accepted a pickup"},
      {"pickup.delivered",
       {pickup_id_field(), customer_id_field(), worker_id_field()},
       {"sendPickupNotification", "processEscrowRelease"},
       "sendPickupNotification (pickup_delivered -> customer); processEscrowRelease "
       "(auto_release) due escrow.hold_seconds after the event's ts",
       "a worker delivered a pickup"},
      {"pickup.confirmed",
       {pickup_id_field(), customer_id_field()},
       {"processEscrowRelease"},
       "processEscrowRelease (customer_confirmed) now; cancels the pending auto-release",
       "the customer confirmed a delivery"},
      {"pickup.disputed",
       {pickup_id_field(),
        {"reason", field_kind::text, false, {}, "why the customer disputes it", {}}},
       {"sendPickupNotification"},
       "cancels the pending auto-release; sendPickupNotification (pickup_disputed -> admin)",
       "the customer disputed a delivery"},
      {"worker.location",
       {worker_id_field(), lat_field("the worker's latitude, -90 to 90"),
        lng_field("the worker's longitude, -180 to 180"), available_field()},
       {"updateWorkerLocation"},
       "updateWorkerLocation, applied by every geo actor in the cluster",
       "a worker moved or changed availability"},
  };
}

std::vector<error_code_spec> make_error_codes() {
  return {
      {error_code::malformed,
       "the frame is not exactly one msgpack map with string keys, or nests deeper than "
       "32 levels; fix the client's encoder"},
      {error_code::unsupported_version,
       "`v` is an integer other than 1; send v=1"},
      {error_code::missing_field,
       "a required key or data field is absent or nil; `field` names it"},
      {error_code::invalid_field,
       "a key or data field has the wrong type or value; `field` names it and the "
       "message says what is expected"},
      {error_code::unknown_type,
       "`type` is not an event type or function name (invoke takes function names "
       "only); see `klynaa publish --help`"},
      {error_code::too_large,
       "the frame is larger than ingress.max_bytes; the id is not read, so it is nil"},
      {error_code::unauthorized,
       "the client is not allowed to send requests (CURVE allow-list)"},
      {error_code::overloaded,
       "the broker cannot take the request now (queue full or store cannot write); "
       "retry after retry_after_ms with the same id"},
      {error_code::shutting_down,
       "the broker is stopping; retry after retry_after_ms, against another broker "
       "if there is one, with the same id"},
  };
}

}  // namespace

std::string_view to_string(field_kind k) {
  switch (k) {
    case field_kind::id: return "positive integer";
    case field_kind::number: return "number";
    case field_kind::positive_number: return "positive number";
    case field_kind::latitude: return "latitude";
    case field_kind::longitude: return "longitude";
    case field_kind::boolean: return "boolean";
    case field_kind::text: return "string";
    case field_kind::choice: return "one of";
    case field_kind::date: return "date YYYY-MM-DD";
    case field_kind::monday: return "Monday YYYY-MM-DD";
    case field_kind::count: return "non-negative integer";
  }
  return "?";
}

bool is_required(const field_spec& spec, const nlohmann::json& data) {
  if (!spec.except_when)
    return spec.required;
  bool holds = false;
  if (data.is_object()) {
    auto it = data.find(std::string{spec.except_when->field});
    holds = it != data.end() && it->is_string() &&
            it->get_ref<const std::string&>() == spec.except_when->equals;
  }
  return holds ? !spec.required : spec.required;
}

const std::vector<function_spec>& functions() {
  static const std::vector<function_spec> table = make_functions();
  return table;
}

const std::vector<event_spec>& events() {
  static const std::vector<event_spec> table = make_events();
  return table;
}

const std::vector<error_code_spec>& error_codes() {
  static const std::vector<error_code_spec> table = make_error_codes();
  return table;
}

const function_spec* find_function(std::string_view name) {
  for (const auto& f : functions())
    if (f.name == name)
      return &f;
  return nullptr;
}

const event_spec* find_event(std::string_view name) {
  for (const auto& e : events())
    if (e.name == name)
      return &e;
  return nullptr;
}

const std::vector<field_spec>* fields_of(std::string_view type) {
  if (const auto* f = find_function(type))
    return &f->fields;
  if (const auto* e = find_event(type))
    return &e->fields;
  return nullptr;
}

std::string_view actor_of(std::string_view function) {
  const auto* f = find_function(function);
  return f ? f->actor : std::string_view{};
}

const std::vector<std::string_view>& actor_kinds() {
  // In the order the function table first names them: notifier, escrow, geo, scheduler.
  static const std::vector<std::string_view> kinds = [] {
    std::vector<std::string_view> out;
    for (const auto& f : functions())
      if (std::find(out.begin(), out.end(), f.actor) == out.end())
        out.push_back(f.actor);
    return out;
  }();
  return kinds;
}

std::vector<std::string_view> functions_of(std::string_view actor) {
  std::vector<std::string_view> out;
  for (const auto& f : functions())
    if (f.actor == actor)
      out.push_back(f.name);
  return out;
}

std::string_view prune_function() {
  for (const auto& f : functions())
    if (f.prunes_store)
      return f.name;
  return {};
}

const std::vector<std::string_view>& notification_types() {
  static const std::vector<std::string_view> types{"pickup_requested", "pickup_accepted", "pickup_delivered",
                                                   "escrow_released",  "pickup_disputed", "daily_report"};
  return types;
}

std::string_view help_of(error_code c) {
  for (const auto& e : error_codes())
    if (e.code == c)
      return e.help;
  return {};
}

}  // namespace klynaa::protocol

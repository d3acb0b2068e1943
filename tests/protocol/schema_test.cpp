// The schema table against docs/events-and-functions.md, written out by hand here
// so a change to the table that drifts from the docs fails a test.
#include <catch2/catch.hpp>

#include <algorithm>
#include <map>
#include <set>

#include "protocol/schema.hpp"

using namespace klynaa::protocol;
using json = nlohmann::json;

namespace {

struct expected_field {
  std::string name;
  field_kind kind;
  bool required;
};

std::vector<expected_field> fields_as(const std::vector<field_spec>& fields) {
  std::vector<expected_field> out;
  for (const auto& f : fields) out.push_back({std::string{f.name}, f.kind, f.required});
  return out;
}

bool operator==(const expected_field& a, const expected_field& b) {
  return a.name == b.name && a.kind == b.kind && a.required == b.required;
}

std::ostream& operator<<(std::ostream& os, const expected_field& f) {
  return os << f.name << ":" << to_string(f.kind) << (f.required ? "*" : "");
}

using K = field_kind;

}  // namespace

TEST_CASE("the functions are the seven of the docs, in their order, with their actors") {
  std::vector<std::pair<std::string, std::string>> got;
  for (const auto& f : functions()) got.emplace_back(std::string{f.name}, std::string{f.actor});
  CHECK(got == std::vector<std::pair<std::string, std::string>>{
                   {"sendPickupNotification", "notifier"},
                   {"processEscrowRelease", "escrow"},
                   {"notifyNearbyWorkers", "geo"},
                   {"updateWorkerLocation", "geo"},
                   {"generateDailyReport", "scheduler"},
                   {"generateWeeklyAnalytics", "scheduler"},
                   {"cleanupData", "scheduler"},
               });
}

TEST_CASE("the events are the six of docs/events-and-functions.md, in its order") {
  std::vector<std::string> got;
  for (const auto& e : events()) got.emplace_back(e.name);
  CHECK(got == std::vector<std::string>{"pickup.created", "pickup.accepted", "pickup.delivered",
                                        "pickup.confirmed", "pickup.disputed", "worker.location"});
}

TEST_CASE("each function's fields match docs/events-and-functions.md in order, kind and requiredness") {
  const std::map<std::string, std::vector<expected_field>> expected = {
      {"sendPickupNotification",
       {{"pickup_id", K::id, true}, {"report_id", K::id, false},
        {"notification_type", K::choice, true}, {"user_type", K::choice, true},
        {"user_id", K::id, false}}},
      {"processEscrowRelease", {{"pickup_id", K::id, true}, {"release_reason", K::choice, true}}},
      {"notifyNearbyWorkers",
       {{"pickup_id", K::id, true}, {"lat", K::latitude, true}, {"lng", K::longitude, true},
        {"radius_km", K::positive_number, false}}},
      {"updateWorkerLocation",
       {{"worker_id", K::id, true}, {"lat", K::latitude, true}, {"lng", K::longitude, true},
        {"available", K::boolean, true}}},
      {"generateDailyReport", {{"date", K::date, false}}},
      {"generateWeeklyAnalytics", {{"week_start", K::monday, false}}},
      {"cleanupData", {{"older_than_days", K::count, false}}},
  };
  for (const auto& [name, fields] : expected) {
    INFO(name);
    const auto* f = find_function(name);
    REQUIRE(f);
    CHECK(fields_as(f->fields) == fields);
  }
}

TEST_CASE("each event's fields match docs/events-and-functions.md in order, kind and requiredness") {
  const std::map<std::string, std::vector<expected_field>> expected = {
      {"pickup.created",
       {{"pickup_id", K::id, true}, {"customer_id", K::id, true}, {"lat", K::latitude, true},
        {"lng", K::longitude, true}, {"waste_type", K::text, false},
        {"radius_km", K::positive_number, false}}},
      {"pickup.accepted",
       {{"pickup_id", K::id, true}, {"customer_id", K::id, true}, {"worker_id", K::id, true}}},
      {"pickup.delivered",
       {{"pickup_id", K::id, true}, {"customer_id", K::id, true}, {"worker_id", K::id, true}}},
      {"pickup.confirmed", {{"pickup_id", K::id, true}, {"customer_id", K::id, true}}},
      {"pickup.disputed", {{"pickup_id", K::id, true}, {"reason", K::text, false}}},
      {"worker.location",
       {{"worker_id", K::id, true}, {"lat", K::latitude, true}, {"lng", K::longitude, true},
        {"available", K::boolean, true}}},
  };
  for (const auto& [name, fields] : expected) {
    INFO(name);
    const auto* e = find_event(name);
    REQUIRE(e);
    CHECK(fields_as(e->fields) == fields);
  }
}

TEST_CASE("the enumerations hold exactly the contract's values") {
  auto choices = [](std::string_view fn, std::string_view field) {
    std::vector<std::string> out;
    for (const auto& f : find_function(fn)->fields)
      if (f.name == field)
        for (auto c : f.choices) out.emplace_back(c);
    return out;
  };
  CHECK(choices("sendPickupNotification", "notification_type") ==
        std::vector<std::string>{"pickup_requested", "pickup_accepted", "pickup_delivered",
                                 "escrow_released", "pickup_disputed", "daily_report"});
  CHECK(choices("sendPickupNotification", "user_type") ==
        std::vector<std::string>{"customer", "worker", "admin"});
  CHECK(choices("processEscrowRelease", "release_reason") ==
        std::vector<std::string>{"customer_confirmed", "auto_release", "admin"});
}

TEST_CASE("every choice field has choices and every other field has none") {
  auto check = [](const std::vector<field_spec>& fields) {
    for (const auto& f : fields) {
      INFO(f.name);
      CHECK((f.kind == field_kind::choice) == !f.choices.empty());
    }
  };
  for (const auto& f : functions()) check(f.fields);
  for (const auto& e : events()) check(e.fields);
}

TEST_CASE("every entry and field has a one-line help text") {
  auto one_line = [](std::string_view s) {
    return !s.empty() && s.find('\n') == std::string_view::npos;
  };
  for (const auto& f : functions()) {
    INFO(f.name);
    CHECK(one_line(f.help));
    for (const auto& field : f.fields) CHECK(one_line(field.help));
  }
  for (const auto& e : events()) {
    INFO(e.name);
    CHECK(one_line(e.help));
    CHECK(one_line(e.creates));
    for (const auto& field : e.fields) CHECK(one_line(field.help));
  }
}

TEST_CASE("the jobs each event creates are functions, in job-id order") {
  const std::map<std::string, std::vector<std::string>> expected = {
      {"pickup.created", {"notifyNearbyWorkers"}},
      {"pickup.accepted", {"sendPickupNotification"}},
      {"pickup.delivered", {"sendPickupNotification", "processEscrowRelease"}},
      {"pickup.confirmed", {"processEscrowRelease"}},
      {"pickup.disputed", {"sendPickupNotification"}},
      {"worker.location", {"updateWorkerLocation"}},
  };
  for (const auto& e : events()) {
    INFO(e.name);
    std::vector<std::string> jobs(e.jobs.begin(), e.jobs.end());
    CHECK(jobs == expected.at(std::string{e.name}));
    for (auto j : e.jobs) CHECK(find_function(j));
    for (auto j : e.jobs) CHECK(e.creates.find(j) != std::string_view::npos);
  }
}

TEST_CASE("the error code table lists every rejection code once, with help") {
  const std::vector<error_code> all = {
      error_code::malformed,    error_code::unsupported_version, error_code::missing_field,
      error_code::invalid_field, error_code::unknown_type,       error_code::too_large,
      error_code::unauthorized, error_code::overloaded,          error_code::shutting_down};
  REQUIRE(error_codes().size() == all.size());
  for (size_t i = 0; i < all.size(); ++i) {
    INFO(to_string(all[i]));
    CHECK(error_codes()[i].code == all[i]);
    CHECK_FALSE(error_codes()[i].help.empty());
    CHECK(help_of(all[i]) == error_codes()[i].help);
  }
}

TEST_CASE("lookups answer for known names and refuse unknown ones") {
  CHECK(find_function("cleanupData")->actor == "scheduler");
  CHECK(find_function("pickup.created") == nullptr);
  CHECK(find_event("pickup.created") != nullptr);
  CHECK(find_event("cleanupData") == nullptr);
  CHECK(find_function("") == nullptr);
  CHECK(fields_of("worker.location") == &find_event("worker.location")->fields);
  CHECK(fields_of("cleanupData") == &find_function("cleanupData")->fields);
  CHECK(fields_of("nothing") == nullptr);
  CHECK(actor_of("sendPickupNotification") == "notifier");
  CHECK(actor_of("processEscrowRelease") == "escrow");
  CHECK(actor_of("notifyNearbyWorkers") == "geo");
  CHECK(actor_of("updateWorkerLocation") == "geo");
  CHECK(actor_of("generateDailyReport") == "scheduler");
  CHECK(actor_of("pickup.created").empty());
  CHECK(actor_of("SendPickupNotification").empty());
}

TEST_CASE("every function belongs to one of the four actor kinds") {
  CHECK(actor_kinds() == std::vector<std::string_view>{"notifier", "escrow", "geo", "scheduler"});
  std::set<std::string_view> seen;
  for (auto kind : actor_kinds())
    for (auto fn : functions_of(kind)) {
      CHECK(actor_of(fn) == kind);
      CHECK(seen.insert(fn).second);
    }
  CHECK(seen.size() == functions().size());
  CHECK(functions_of("geo") ==
        std::vector<std::string_view>{"notifyNearbyWorkers", "updateWorkerLocation"});
  CHECK(functions_of("nobody").empty());
}

TEST_CASE("the notification types are the choices of notification_type") {
  CHECK(notification_types() == std::vector<std::string_view>{"pickup_requested", "pickup_accepted",
                                                              "pickup_delivered", "escrow_released",
                                                              "pickup_disputed", "daily_report"});
  const auto& fields = find_function("sendPickupNotification")->fields;
  auto type = std::find_if(fields.begin(), fields.end(), [](const field_spec& f) { return f.name == "notification_type"; });
  REQUIRE(type != fields.end());
  CHECK(type->choices == notification_types());
}

TEST_CASE("cleanupData is the one function the broker prunes for, updateWorkerLocation the one fan-out") {
  CHECK(prune_function() == "cleanupData");
  std::vector<std::string_view> pruning, fanout;
  for (const auto& f : functions()) {
    if (f.prunes_store) pruning.push_back(f.name);
    if (f.fanout) fanout.push_back(f.name);
  }
  CHECK(pruning == std::vector<std::string_view>{"cleanupData"});
  CHECK(fanout == std::vector<std::string_view>{"updateWorkerLocation"});
}

TEST_CASE("is_required flips pickup_id and report_id for daily_report") {
  const auto& fields = find_function("sendPickupNotification")->fields;
  const field_spec& pickup = fields[0];
  const field_spec& report = fields[1];
  const json normal = {{"notification_type", "pickup_accepted"}};
  const json daily = {{"notification_type", "daily_report"}};
  CHECK(is_required(pickup, normal));
  CHECK_FALSE(is_required(report, normal));
  CHECK_FALSE(is_required(pickup, daily));
  CHECK(is_required(report, daily));
  CHECK(is_required(pickup, json::object()));
  CHECK(is_required(pickup, json{{"notification_type", 5}}));
  CHECK(is_required(fields[2], daily));
}

TEST_CASE("field kinds have printable names") {
  for (auto k : {K::id, K::number, K::positive_number, K::latitude, K::longitude, K::boolean,
                 K::text, K::choice, K::date, K::monday, K::count})
    CHECK_FALSE(to_string(k).empty());
}

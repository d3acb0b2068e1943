// Field validation of docs/events-and-functions.md: every field rule of every event and function,
// driven by the schema table, plus hand-written cases for each rule's edges.
#include <catch2/catch.hpp>

#include <cmath>
#include <limits>

#include "frames.hpp"
#include "protocol/schema.hpp"
#include "protocol/validate.hpp"

using namespace klynaa::protocol;
using namespace klynaa::protocol::test;

namespace {

// Values each kind must accept.
std::vector<json> good_values(const field_spec& f) {
  switch (f.kind) {
    case field_kind::id: return {1, 7, 123456789012LL, std::numeric_limits<int64_t>::max()};
    case field_kind::count: return {0, 1, 90, 36500};
    case field_kind::number: return {0, -3, 2.5, 1e9};
    case field_kind::positive_number: return {1, 0.5, 5, 40000.0};
    case field_kind::latitude: return {-90, -90.0, 0, 5.6037, 45, 90, 90.0};
    case field_kind::longitude: return {-180, -180.0, 0, -0.187, 179.99, 180, 180.0};
    case field_kind::boolean: return {true, false};
    case field_kind::text: return {"", "plastic", "caf\xc3\xa9", std::string(2000, 'x')};
    case field_kind::choice: {
      std::vector<json> out;
      for (auto c : f.choices) out.emplace_back(std::string{c});
      return out;
    }
    case field_kind::date: return {"2024-01-01", "2024-02-29", "2023-12-31", "1999-06-15"};
    case field_kind::monday: return {"2024-01-01", "2024-06-03", "2023-12-25", "2000-01-03"};
  }
  return {};
}

// Values each kind must refuse with invalid_field.
std::vector<json> bad_values(const field_spec& f) {
  const double inf = std::numeric_limits<double>::infinity();
  const double nan = std::nan("");
  const json common_bad_for_numbers[] = {json("5"), json(true), json::array({1}), json::object()};
  std::vector<json> out;
  switch (f.kind) {
    case field_kind::id:
      out = {0, -1, -7, 7.0, 7.5, std::numeric_limits<uint64_t>::max(), json(uint64_t{1} << 63)};
      break;
    case field_kind::count:
      out = {-1, 1.0, 0.5, std::numeric_limits<uint64_t>::max()};
      break;
    case field_kind::number:
      out = {nan, inf, -inf};
      break;
    case field_kind::positive_number:
      out = {0, 0.0, -1, -0.5, nan, inf};
      break;
    case field_kind::latitude:
      out = {90.0001, -90.5, 91, -91, 91.5, nan, inf, -inf, 1000};
      break;
    case field_kind::longitude:
      out = {180.0001, -180.5, 181, -181, nan, inf, -inf};
      break;
    case field_kind::boolean:
      return {0, 1, "true", "false", json::array(), json::object()};
    case field_kind::text:
      return {5, 2.5, true, json::array({"a"}), json::object(), std::string("bad\xff", 4)};
    case field_kind::choice: {
      std::vector<json> v = {5, true, "", json::array()};
      const std::string first{f.choices.front()};
      std::string upper = first;
      for (auto& c : upper) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
      v.emplace_back(upper);         // enumerations are exact: no case folding
      v.emplace_back(first + " ");   // no trimming
      v.emplace_back("x" + first);
      return v;
    }
    case field_kind::date:
      return {"2023-02-29", "2024-13-01", "2024-00-10", "2024-04-31", "2024-01-00", "24-01-01",
              "2024-1-1", "2024/01/01", "2024-01-01T00:00:00Z", "", " 2024-01-01", 20240101,
              "0000-01-01", "2024-01-0a"};
    case field_kind::monday:
      return {"2024-01-02", "2024-01-07", "2023-12-31", "2024-02-30", "2024-1-1", 20240101, ""};
  }
  for (const auto& b : common_bad_for_numbers) out.push_back(b);
  return out;
}

struct type_entry {
  std::string name;
  const std::vector<field_spec>* fields;
  bool is_function;
};

std::vector<type_entry> all_types() {
  std::vector<type_entry> out;
  for (const auto& f : functions()) out.push_back({std::string{f.name}, &f.fields, true});
  for (const auto& e : events()) out.push_back({std::string{e.name}, &e.fields, false});
  return out;
}

// A data map with every field of `fields` set to its first good value.
json full_data(const std::vector<field_spec>& fields) {
  json d = json::object();
  for (const auto& f : fields) d[std::string{f.name}] = good_values(f).front();
  return d;
}

// A data map with only the fields required for it.
json required_data(const std::vector<field_spec>& fields) {
  const json full = full_data(fields);
  json d = json::object();
  for (const auto& f : fields)
    if (is_required(f, full)) d[std::string{f.name}] = full[std::string{f.name}];
  return d;
}

decoded decode_as(const type_entry& t, const json& data) {
  return decode(publish(t.name, data));
}

void expect_ok(const decoded& d) {
  if (d.error) FAIL(d.error->field << ": " << d.error->message);
  CHECK(d.req);
}

void expect_error(const decoded& d, std::string_view code, const std::string& field) {
  REQUIRE_FALSE(d.req);
  REQUIRE(d.error);
  CHECK(d.error->code == code);
  CHECK(d.error->field == field);
  CHECK(d.error->message.rfind(field, 0) == 0);  // the message starts with the field path
}

}  // namespace

// ---- table-driven: every field of every event and function ------------------------

TEST_CASE("every event and function accepts data with all its fields set") {
  for (const auto& t : all_types()) {
    INFO(t.name);
    const auto d = decode_as(t, full_data(*t.fields));
    expect_ok(d);
    CHECK(d.req->data == full_data(*t.fields));
  }
}

TEST_CASE("every event and function accepts data with only its required fields") {
  for (const auto& t : all_types()) {
    INFO(t.name);
    expect_ok(decode_as(t, required_data(*t.fields)));
  }
}

TEST_CASE("every required field, absent or nil, is missing_field at data.<name>") {
  for (const auto& t : all_types()) {
    const json full = full_data(*t.fields);
    for (const auto& f : *t.fields) {
      if (!is_required(f, full)) continue;
      const std::string name{f.name};
      INFO(t.name << " " << name);
      json absent = full;
      absent.erase(name);
      expect_error(decode_as(t, absent), "missing_field", "data." + name);
      json nil = full;
      nil[name] = nullptr;
      expect_error(decode_as(t, nil), "missing_field", "data." + name);
    }
  }
}

TEST_CASE("every optional field may be absent or nil") {
  for (const auto& t : all_types()) {
    const json full = full_data(*t.fields);
    for (const auto& f : *t.fields) {
      if (is_required(f, full)) continue;
      const std::string name{f.name};
      INFO(t.name << " " << name);
      json absent = full;
      absent.erase(name);
      expect_ok(decode_as(t, absent));
      json nil = full;
      nil[name] = nullptr;
      expect_ok(decode_as(t, nil));
    }
  }
}

TEST_CASE("every field accepts each good value of its kind") {
  for (const auto& t : all_types()) {
    for (const auto& f : *t.fields) {
      for (const auto& v : good_values(f)) {
        json data = full_data(*t.fields);
        data[std::string{f.name}] = v;
        if (f.name == "notification_type" && v == "daily_report") {
          data.erase("pickup_id");
          data["report_id"] = 5;
        }
        INFO(t.name << " " << f.name << " = " << v.dump(-1, ' ', false, json::error_handler_t::replace));
        expect_ok(decode_as(t, data));
      }
    }
  }
}

TEST_CASE("every field refuses each bad value of its kind with invalid_field") {
  for (const auto& t : all_types()) {
    for (const auto& f : *t.fields) {
      for (const auto& v : bad_values(f)) {
        json data = full_data(*t.fields);
        data[std::string{f.name}] = v;
        INFO(t.name << " " << f.name << " = " << v.dump(-1, ' ', false, json::error_handler_t::replace));
        expect_error(decode_as(t, data), "invalid_field", "data." + std::string{f.name});
      }
    }
  }
}

TEST_CASE("fields are checked in table order: the first failing field is reported") {
  for (const auto& t : all_types()) {
    const json full = full_data(*t.fields);
    // Break every field; each time the error must name the first broken one, then
    // repair it and expect the next.
    std::vector<const field_spec*> order;
    for (const auto& f : *t.fields) order.push_back(&f);
    json data = full;
    for (const auto* f : order) data[std::string{f->name}] = json::array({"wrong"});
    for (const auto* f : order) {
      INFO(t.name << " expecting " << f->name);
      const auto d = decode_as(t, data);
      REQUIRE(d.error);
      CHECK(d.error->field == "data." + std::string{f->name});
      data[std::string{f->name}] = full[std::string{f->name}];
    }
    expect_ok(decode_as(t, data));
  }
}

TEST_CASE("every function can be invoked with valid data and refused with invalid data") {
  for (const auto& f : functions()) {
    INFO(f.name);
    const auto d = decode(invoke(std::string{f.name}, full_data(f.fields)));
    expect_ok(d);
    CHECK(d.req->operation == op::invoke);
    if (!f.fields.empty()) {
      json bad = full_data(f.fields);
      bad[std::string{f.fields.front().name}] = json::object();
      expect_error(decode(invoke(std::string{f.name}, bad)), "invalid_field",
                   "data." + std::string{f.fields.front().name});
    }
  }
}

// ---- hand-written: each rule at its edges -----------------------------------------

TEST_CASE("ids are positive integers: 7 is accepted, 0, -3, 7.0 and \"7\" are not") {
  auto with = [](json v) {
    auto d = pickup_created_data();
    d["pickup_id"] = v;
    return decode(publish("pickup.created", d));
  };
  CHECK(with(7).req);
  expect_error(with(0), "invalid_field", "data.pickup_id");
  expect_error(with(-3), "invalid_field", "data.pickup_id");
  expect_error(with(7.0), "invalid_field", "data.pickup_id");
  expect_error(with("7"), "invalid_field", "data.pickup_id");
  CHECK(with(-3).error->message == "data.pickup_id must be a positive integer, got -3");
  CHECK(with("7").error->message == "data.pickup_id must be a positive integer, got \"7\"");
}

TEST_CASE("lat and lng accept integers and their bounds, and refuse just beyond") {
  auto with = [](json lat, json lng) {
    auto d = pickup_created_data();
    d["lat"] = lat;
    d["lng"] = lng;
    return decode(publish("pickup.created", d));
  };
  CHECK(with(90, 180).req);
  CHECK(with(-90, -180).req);
  CHECK(with(5, -1).req);
  expect_error(with(90.000001, 0), "invalid_field", "data.lat");
  expect_error(with(0, -180.000001), "invalid_field", "data.lng");
  CHECK(with(0, 200).error->message == "data.lng must be a number between -180 and 180, got 200");
  CHECK(with(-91.5, 0).error->message == "data.lat must be a number between -90 and 90, got -91.5");
}

TEST_CASE("an integer lat keeps its integer value in the request data") {
  auto d = pickup_created_data();
  d["lat"] = 5;
  const auto r = decode(publish("pickup.created", d));
  REQUIRE(r.req);
  CHECK(r.req->data["lat"].get<double>() == 5.0);
}

TEST_CASE("radius_km must be a finite number greater than 0") {
  auto with = [](json v) {
    auto d = pickup_created_data();
    d["radius_km"] = v;
    return decode(publish("pickup.created", d));
  };
  CHECK(with(3).req);
  CHECK(with(2.5).req);
  expect_error(with(0), "invalid_field", "data.radius_km");
  expect_error(with(-2), "invalid_field", "data.radius_km");
  CHECK(with(-2).error->message == "data.radius_km must be a finite number greater than 0, got -2");
}

TEST_CASE("available must be a boolean, not 0 or 1") {
  json d = {{"worker_id", 3}, {"lat", 1.0}, {"lng", 2.0}, {"available", 1}};
  const auto r = decode(publish("worker.location", d));
  expect_error(r, "invalid_field", "data.available");
  CHECK(r.error->message == "data.available must be true or false, got 1");
}

TEST_CASE("enumerations are exact and the message lists the choices") {
  json d = {{"pickup_id", 7}, {"notification_type", "pickup_accepted"}, {"user_type", "Customer"}};
  const auto r = decode(invoke("sendPickupNotification", d));
  expect_error(r, "invalid_field", "data.user_type");
  CHECK(r.error->message ==
        "data.user_type must be one of customer, worker or admin, got \"Customer\"");
}

TEST_CASE("notification_type takes exactly the six contract values") {
  for (const std::string t : {"pickup_requested", "pickup_accepted", "pickup_delivered",
                              "escrow_released", "pickup_disputed", "daily_report"}) {
    json d = {{"pickup_id", 7}, {"report_id", 1}, {"notification_type", t}, {"user_type", "admin"}};
    INFO(t);
    CHECK(decode(invoke("sendPickupNotification", d)).req);
  }
  json d = {{"pickup_id", 7}, {"notification_type", "pickup_cancelled"}, {"user_type", "admin"}};
  expect_error(decode(invoke("sendPickupNotification", d)), "invalid_field", "data.notification_type");
}

TEST_CASE("release_reason takes exactly customer_confirmed, auto_release or admin") {
  for (const std::string r : {"customer_confirmed", "auto_release", "admin"})
    CHECK(decode(invoke("processEscrowRelease", {{"pickup_id", 1}, {"release_reason", r}})).req);
  expect_error(decode(invoke("processEscrowRelease", {{"pickup_id", 1}, {"release_reason", "auto"}})),
               "invalid_field", "data.release_reason");
}

TEST_CASE("sendPickupNotification requires pickup_id, except for daily_report which requires report_id") {
  const json base = {{"notification_type", "pickup_accepted"}, {"user_type", "customer"}};
  // Not daily_report: pickup_id required, report_id not.
  expect_error(decode(invoke("sendPickupNotification", base)), "missing_field", "data.pickup_id");
  json with_pickup = base;
  with_pickup["pickup_id"] = 7;
  CHECK(decode(invoke("sendPickupNotification", with_pickup)).req);

  // daily_report: report_id required, pickup_id not.
  json daily = {{"notification_type", "daily_report"}, {"user_type", "admin"}};
  const auto d = decode(invoke("sendPickupNotification", daily));
  expect_error(d, "missing_field", "data.report_id");
  CHECK(d.error->message.find("daily_report") != std::string::npos);
  daily["report_id"] = 12;
  const auto ok = decode(invoke("sendPickupNotification", daily));
  REQUIRE(ok.req);
  CHECK(ok.req->data == daily);

  // A pickup_id given with daily_report must still be valid; so must a report_id otherwise.
  daily["pickup_id"] = -1;
  expect_error(decode(invoke("sendPickupNotification", daily)), "invalid_field", "data.pickup_id");
  with_pickup["report_id"] = "r1";
  expect_error(decode(invoke("sendPickupNotification", with_pickup)), "invalid_field", "data.report_id");
}

TEST_CASE("an invalid notification_type leaves pickup_id required") {
  json d = {{"notification_type", "DAILY_REPORT"}, {"user_type", "admin"}, {"report_id", 3}};
  expect_error(decode(invoke("sendPickupNotification", d)), "missing_field", "data.pickup_id");
}

TEST_CASE("user_id, when given, must be a positive integer") {
  json d = {{"pickup_id", 7}, {"notification_type", "pickup_requested"}, {"user_type", "worker"},
            {"user_id", 0}};
  expect_error(decode(invoke("sendPickupNotification", d)), "invalid_field", "data.user_id");
  d["user_id"] = 44;
  CHECK(decode(invoke("sendPickupNotification", d)).req);
}

TEST_CASE("date must be a real YYYY-MM-DD date") {
  CHECK(decode(invoke("generateDailyReport", {{"date", "2024-02-29"}})).req);
  const auto r = decode(invoke("generateDailyReport", {{"date", "2023-02-29"}}));
  expect_error(r, "invalid_field", "data.date");
  CHECK(r.error->message ==
        "data.date must be a real date in the form YYYY-MM-DD, got \"2023-02-29\"");
}

TEST_CASE("week_start must be a Monday and the message names the day it was") {
  CHECK(decode(invoke("generateWeeklyAnalytics", {{"week_start", "2024-06-03"}})).req);
  const auto r = decode(invoke("generateWeeklyAnalytics", {{"week_start", "2024-06-04"}}));
  expect_error(r, "invalid_field", "data.week_start");
  CHECK(r.error->message ==
        "data.week_start must be a Monday in the form YYYY-MM-DD, got \"2024-06-04\", a Tuesday");
}

TEST_CASE("older_than_days must be a non-negative integer") {
  CHECK(decode(invoke("cleanupData", {{"older_than_days", 0}})).req);
  CHECK(decode(invoke("cleanupData", {{"older_than_days", 365}})).req);
  expect_error(decode(invoke("cleanupData", {{"older_than_days", -1}})), "invalid_field",
               "data.older_than_days");
  expect_error(decode(invoke("cleanupData", {{"older_than_days", 30.0}})), "invalid_field",
               "data.older_than_days");
}

TEST_CASE("a missing_field message names the type and what the field is") {
  const auto r = decode(publish("pickup.accepted", {{"pickup_id", 7}, {"customer_id", 3}}));
  expect_error(r, "missing_field", "data.worker_id");
  CHECK(r.error->message == "data.worker_id is missing; pickup.accepted requires it (the worker's id)");
}

TEST_CASE("a pickup.created with several problems reports the first in table order") {
  // lat and lng wrong, customer_id missing: customer_id comes first in the table.
  json d = {{"pickup_id", 7}, {"lat", 100}, {"lng", 500}};
  expect_error(decode(publish("pickup.created", d)), "missing_field", "data.customer_id");
  d["customer_id"] = 1;
  expect_error(decode(publish("pickup.created", d)), "invalid_field", "data.lat");
}

// ---- iso_weekday and the JSON form ------------------------------------------------

TEST_CASE("iso_weekday knows real dates and their days") {
  CHECK(iso_weekday("1970-01-01") == 4);  // a Thursday
  CHECK(iso_weekday("2024-01-01") == 1);
  CHECK(iso_weekday("2024-02-29") == 4);
  CHECK(iso_weekday("2000-02-29") == 2);
  CHECK(iso_weekday("0001-01-01") == 1);
  CHECK(iso_weekday("9999-12-31") == 5);
  CHECK_FALSE(iso_weekday("1900-02-29"));
  CHECK_FALSE(iso_weekday("2100-02-29"));
  CHECK_FALSE(iso_weekday("2024-06-31"));
  CHECK_FALSE(iso_weekday("0000-01-01"));
  CHECK_FALSE(iso_weekday("2024-06-1"));
  CHECK_FALSE(iso_weekday("+024-06-01"));
}

TEST_CASE("validate_data on JSON applies the same rules as the codec") {
  CHECK_FALSE(validate_data("pickup.created", pickup_created_data()));
  auto bad = pickup_created_data();
  bad["pickup_id"] = 7.0;
  auto e = validate_data("pickup.created", bad);
  REQUIRE(e);
  CHECK(e->code == "invalid_field");
  CHECK(e->field == "data.pickup_id");
  e = validate_data("pickup.nothing", json::object());
  REQUIRE(e);
  CHECK(e->code == "unknown_type");
  e = validate_data("cleanupData", json::array());
  REQUIRE(e);
  CHECK(e->code == "invalid_field");
  CHECK(e->field == "data");
}

// Push texts per notification_type, placeholders and config overrides.
#include "actors/templates.hpp"

#include <catch2/catch.hpp>

#include <algorithm>

using klynaa::actors::fill_template;
using klynaa::actors::notification_types;
using klynaa::actors::templates;

TEST_CASE("every notification type has a default title and body") {
  templates t;
  for (const auto& type : notification_types()) {
    auto m = t.raw(type);
    REQUIRE(m);
    CHECK_FALSE(m->title.empty());
    CHECK_FALSE(m->body.empty());
  }
  CHECK(notification_types().size() == 6);
  CHECK_FALSE(t.render("pickup_exploded", {}));
}

TEST_CASE("the default texts are exactly one per notification type of the schema") {
  std::vector<std::string> with_text;
  for (const auto& [type, text] : templates::defaults()) with_text.push_back(type);
  std::vector<std::string> types(notification_types());
  std::sort(types.begin(), types.end());
  CHECK(with_text == types);  // std::map: sorted
}

TEST_CASE("the defaults render with their placeholders filled") {
  templates t;
  auto released = t.render("escrow_released", {{"pickup_id", "7"}, {"amount", "12.50"}, {"currency", "GHS"}});
  REQUIRE(released);
  CHECK(released->title == "Payment released");
  CHECK(released->body == "12.50 GHS for pickup #7 has been released to you.");
  auto report = t.render("daily_report", {{"report_id", "42"}});
  REQUIRE(report);
  CHECK(report->body == "Daily report #42 is ready.");
  auto disputed = t.render("pickup_disputed", {{"pickup_id", "7"}, {"reason", "bags missing"}});
  REQUIRE(disputed);
  CHECK(disputed->body == "Pickup #7 was disputed: bags missing");
}

TEST_CASE("a config override replaces only the keys it sets") {
  templates t({{"pickup_accepted", {{"title", "Akwaaba! {pickup_id} accepted"}}},
               {"pickup_delivered", {{"body", "Done: {pickup_id}, {amount} {currency}"}}}});
  auto accepted = t.render("pickup_accepted", {{"pickup_id", "9"}});
  REQUIRE(accepted);
  CHECK(accepted->title == "Akwaaba! 9 accepted");
  CHECK(accepted->body == "A worker accepted your pickup #9.");
  auto delivered = t.render("pickup_delivered", {{"pickup_id", "9"}, {"amount", "3.00"}, {"currency", "GHS"}});
  REQUIRE(delivered);
  CHECK(delivered->title == "Pickup delivered");
  CHECK(delivered->body == "Done: 9, 3.00 GHS");
}

TEST_CASE("a known placeholder without a value renders empty and other braces stay") {
  CHECK(fill_template("#{pickup_id}: {amount}", {{"pickup_id", "3"}}) == "#3: ");
  CHECK(fill_template("{not_ours} {pickup_id} {", {{"pickup_id", "3"}}) == "{not_ours} 3 {");
  CHECK(fill_template("{{pickup_id}}", {{"pickup_id", "3"}}) == "{3}");
}

TEST_CASE("substitution is one pass: a value is never expanded again") {
  CHECK(fill_template("{reason}", {{"reason", "{amount}"}, {"amount", "9"}}) == "{amount}");
}

TEST_CASE("check_overrides names unknown types, keys and placeholders") {
  CHECK(templates::check_overrides({{"pickup_accepted", {{"title", "ok {pickup_id}"}}}}).empty());
  auto problems = templates::check_overrides({{"pickup_sent", {{"title", "x"}}},
                                              {"daily_report", {{"subject", "x"}}},
                                              {"escrow_released", {{"body", "{amount} {price}"}}}});
  REQUIRE(problems.size() == 3);
  CHECK_THAT(problems[0], Catch::Contains("[notifications.templates.daily_report] subject"));
  CHECK_THAT(problems[1], Catch::Contains("{price}"));
  CHECK_THAT(problems[2], Catch::Contains("pickup_sent"));
}

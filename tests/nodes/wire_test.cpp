// Conversions between cluster-protocol messages and the handler interface.
#include "nodes/wire.hpp"

#include <catch2/catch.hpp>

using namespace klynaa;
namespace cl = protocol::cluster;

TEST_CASE("a wire job becomes the handler's job with its data parsed") {
  cl::job w{"evt-1#1", "notifyWorkers", R"({"pickup_id":3})", 2, 9, 1700000000123};
  std::string error;
  auto j = nodes::to_job(w, "n1", &error);
  REQUIRE(j.has_value());
  CHECK(j->id == "evt-1#1");
  CHECK(j->function == "notifyWorkers");
  CHECK(j->data == nlohmann::json{{"pickup_id", 3}});
  CHECK(j->attempt == 2);
  CHECK(j->ts_ms == 1700000000123);
  CHECK(j->node == "n1");
}

TEST_CASE("a wire job whose data is not a JSON object is refused") {
  std::string error;
  CHECK_FALSE(nodes::to_job(cl::job{"j", "f", "[]", 1, 1, 0}, "n", &error).has_value());
  CHECK(error == "data_json is not a JSON object");
  CHECK_FALSE(nodes::to_job(cl::job{"j", "f", "{", 1, 1, 0}, "n", &error).has_value());
}

TEST_CASE("a success becomes done ok with its result and children as JSON text") {
  auto r = nodes::job_result::success({{"sent", 2}});
  r.children.push_back({"j#1", "sendPushNotification", {{"user_id", 7}}, 0});
  r.children.push_back({"#escrow-released-7", "processEscrowRelease", nlohmann::json::object(), 1700000086400000});
  auto d = nodes::to_done(cl::job{"j", "f", "{}", 1, 5, 0}, r, 12);
  CHECK(d.job_id == "j");
  CHECK(d.lease == 5);
  CHECK(d.outcome == "ok");
  CHECK(d.result_json == R"({"sent":2})");
  CHECK(d.http_status == 0);
  CHECK(d.retry_after_ms == -1);
  CHECK(d.duration_ms == 12);
  REQUIRE(d.children.size() == 2);
  CHECK(d.children[0].data_json == R"({"user_id":7})");
  CHECK(d.children[1].job_id == "#escrow-released-7");
  CHECK(d.children[1].due_ms == 1700000086400000);
}

TEST_CASE("a failure becomes done with its outcome and no children") {
  auto r = nodes::job_result::failure(nodes::outcome::transient, "http_503", "unavailable", 503);
  r.retry_after_ms = 1500;
  r.children.push_back({"x", "f", {}, 0});  // only a success creates children
  auto d = nodes::to_done(cl::job{"j", "f", "{}", 1, 5, 0}, r, 3);
  CHECK(d.outcome == "transient");
  CHECK(d.error_code == "http_503");
  CHECK(d.error_message == "unavailable");
  CHECK(d.http_status == 503);
  CHECK(d.retry_after_ms == 1500);
  CHECK(d.result_json.empty());
  CHECK(d.children.empty());
  CHECK(nodes::to_done(cl::job{}, nodes::job_result::failure(nodes::outcome::permanent, "c", "m"), 0).outcome
        == "permanent");
}

TEST_CASE("outcomes are logged as ok, retry and dead") {
  CHECK(std::string{nodes::log_outcome(nodes::outcome::ok)} == "ok");
  CHECK(std::string{nodes::log_outcome(nodes::outcome::transient)} == "retry");
  CHECK(std::string{nodes::log_outcome(nodes::outcome::permanent)} == "dead");
  CHECK(std::string{nodes::log_outcome(nodes::outcome::deferred)} == "retry");
}

TEST_CASE("a deferred result becomes a transient DONE with error code circuit_open") {
  auto r = nodes::job_result::deferred(4200, "the breaker is open");
  CHECK(r.kind == nodes::outcome::deferred);
  CHECK(r.error_code == "circuit_open");
  auto d = nodes::to_done(cl::job{"j", "f", "{}", 1, 5, 0}, r, 0);
  CHECK(d.outcome == "transient");
  CHECK(d.error_code == "circuit_open");
  CHECK(d.error_message == "the breaker is open");
  CHECK(d.retry_after_ms == 4200);
  CHECK(cl::outcome_of(d) == cl::outcome::deferred);
}

TEST_CASE("every outcome crosses between the node's actors as its code") {
  for (auto o : {nodes::outcome::ok, nodes::outcome::transient, nodes::outcome::permanent, nodes::outcome::deferred})
    CHECK(nodes::outcome_of_code(nodes::outcome_code(o)) == o);
  CHECK_FALSE(nodes::outcome_of_code(nodes::unknown_outcome).has_value());
  CHECK_FALSE(nodes::outcome_of_code(4).has_value());
}

TEST_CASE("a result with invalid UTF-8 is encoded with replacement characters instead of throwing") {
  auto r = nodes::job_result::success({{"name", std::string{"\xff\xfe"}}});
  auto d = nodes::to_done(cl::job{"j", "f", "{}", 1, 1, 0}, r, 0);
  CHECK(nlohmann::json::parse(d.result_json)["name"] == "\xEF\xBF\xBD\xEF\xBF\xBD");
}

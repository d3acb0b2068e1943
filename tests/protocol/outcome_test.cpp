// The outcome of a DONE (docs/cluster-protocol.md, "Outcomes"): an enum with a
// name for each value, and the wire's strings unchanged — deferred travels as
// "transient" with error_code circuit_open.
#include <string>

#include <catch2/catch.hpp>
#include <msgpack.hpp>

#include "protocol/cluster.hpp"

namespace cl = klynaa::protocol::cluster;

namespace {

constexpr cl::outcome all[] = {cl::outcome::ok, cl::outcome::transient, cl::outcome::permanent,
                               cl::outcome::deferred};

cl::done decoded(const cl::done& d) {
  auto frame = cl::encode(d);
  std::string error;
  auto m = cl::decode(frame.data(), frame.size(), &error);
  INFO(error);
  REQUIRE(m.has_value());
  REQUIRE(std::holds_alternative<cl::done>(*m));
  return std::get<cl::done>(*m);
}

}  // namespace

TEST_CASE("each outcome's name parses back to it", "[outcome]") {
  for (auto o : all) {
    INFO(cl::to_string(o));
    CHECK(cl::parse_outcome(cl::to_string(o)) == o);
  }
  CHECK(std::string{cl::to_string(cl::outcome::ok)} == "ok");
  CHECK(std::string{cl::to_string(cl::outcome::transient)} == "transient");
  CHECK(std::string{cl::to_string(cl::outcome::permanent)} == "permanent");
  CHECK(std::string{cl::to_string(cl::outcome::deferred)} == "deferred");
}

TEST_CASE("a text that names no outcome does not parse", "[outcome]") {
  for (const char* text : {"", "OK", "retry", "dead", "circuit_open", "ok "})
    CHECK_FALSE(cl::parse_outcome(text).has_value());
}

TEST_CASE("set_outcome writes the wire's strings: deferred is transient with circuit_open", "[outcome]") {
  cl::done d;
  d.error_code = "http_503";
  cl::set_outcome(d, cl::outcome::transient);
  CHECK(d.outcome == "transient");
  CHECK(d.error_code == "http_503");
  cl::set_outcome(d, cl::outcome::ok);
  CHECK(d.outcome == "ok");
  cl::set_outcome(d, cl::outcome::permanent);
  CHECK(d.outcome == "permanent");
  cl::set_outcome(d, cl::outcome::deferred);
  CHECK(d.outcome == "transient");
  CHECK(d.error_code == "circuit_open");
  CHECK(std::string{cl::circuit_open_code} == "circuit_open");
}

TEST_CASE("every outcome survives a DONE's round trip through the codec", "[outcome]") {
  for (auto o : all) {
    INFO(cl::to_string(o));
    cl::done d;
    d.job_id = "evt-1#1";
    d.lease = 3;
    cl::set_outcome(d, o);
    CHECK(cl::outcome_of(decoded(d)) == o);
  }
}

TEST_CASE("a transient DONE with another error code is transient, not deferred", "[outcome]") {
  cl::done d;
  d.outcome = "transient";
  d.error_code = "push_failed";
  CHECK(cl::outcome_of(d) == cl::outcome::transient);
  d.outcome = "permanent";
  d.error_code = "circuit_open";  // only a transient failure can be deferred
  CHECK(cl::outcome_of(d) == cl::outcome::permanent);
}

TEST_CASE("a DONE whose outcome says deferred is rejected: it is not a wire value", "[outcome]") {
  for (const char* text : {"deferred", "retry", ""}) {
    INFO(text);
    cl::done d;
    d.job_id = "j";
    d.outcome = text;
    auto frame = cl::encode(d);
    std::string error;
    CHECK_FALSE(cl::decode(frame.data(), frame.size(), &error).has_value());
    CHECK(error.find("outcome") != std::string::npos);
  }
}

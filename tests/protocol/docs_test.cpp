// The docs are read from the same table as validation: every event, function,
// field and rejection code of protocol/schema.cpp appears in the user docs.
#include <catch2/catch.hpp>

#include <fstream>
#include <sstream>

#include "protocol/cluster.hpp"
#include "protocol/config.hpp"
#include "protocol/schema.hpp"

namespace {
std::string read_doc(const std::string& name) {
  std::ifstream in(std::string(KLYNAA_SOURCE_DIR) + "/docs/" + name);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}
bool mentions(const std::string& doc, std::string_view name) {
  return doc.find("`" + std::string(name) + "`") != std::string::npos;
}
}  // namespace

TEST_CASE("docs/events-and-functions.md names every event and its fields", "[docs]") {
  auto doc = read_doc("events-and-functions.md");
  REQUIRE(!doc.empty());
  for (auto& e : klynaa::protocol::events()) {
    INFO(e.name);
    CHECK(mentions(doc, e.name));
    for (auto& f : e.fields) {
      INFO(f.name);
      CHECK(mentions(doc, f.name));
    }
  }
}

TEST_CASE("docs/events-and-functions.md names every function, its actor, fields and choices", "[docs]") {
  auto doc = read_doc("events-and-functions.md");
  for (auto& fn : klynaa::protocol::functions()) {
    INFO(fn.name);
    CHECK(mentions(doc, fn.name));
    CHECK(doc.find("| `" + std::string(fn.name) + "` | " + std::string(fn.actor) + " |") != std::string::npos);
    for (auto& f : fn.fields) {
      INFO(f.name);
      CHECK(mentions(doc, f.name));
      for (auto& c : f.choices) CHECK(mentions(doc, c));
    }
  }
}

TEST_CASE("both protocol docs list every rejection code", "[docs]") {
  for (auto name : {"events-and-functions.md", "ingress-protocol.md"}) {
    auto doc = read_doc(name);
    for (auto& c : klynaa::protocol::error_codes()) {
      INFO(name << ": " << klynaa::protocol::to_string(c.code));
      CHECK(mentions(doc, klynaa::protocol::to_string(c.code)));
    }
  }
}

TEST_CASE("docs/configuration.md shows every config key", "[docs]") {
  auto doc = read_doc("configuration.md");
  REQUIRE(!doc.empty());
  for (auto& k : klynaa::protocol::config_keys()) {
    INFO(k.section << "." << k.key);
    CHECK(doc.find("[" + k.section + "]") != std::string::npos);
    CHECK(doc.find(k.key + " = ") != std::string::npos);
  }
}

TEST_CASE("docs/cluster-protocol.md has a row for every outcome and names the deferred error code", "[docs]") {
  namespace cl = klynaa::protocol::cluster;
  auto doc = read_doc("cluster-protocol.md");
  REQUIRE(!doc.empty());
  for (auto o : {cl::outcome::ok, cl::outcome::transient, cl::outcome::permanent, cl::outcome::deferred}) {
    INFO(cl::to_string(o));
    CHECK(doc.find(std::string("| ") + cl::to_string(o) + " |") != std::string::npos);
  }
  CHECK(mentions(doc, cl::circuit_open_code));
  CHECK(doc.find("#### Outcomes") != std::string::npos);
}

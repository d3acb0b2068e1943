// CURVE on the ingress and the cluster endpoint (issue 9 item 5, docs/security.md):
// real `klynaa` processes on 127.0.0.1 with keys from `klynaa keygen`. A client
// or node whose public key is in the allow list is served; one with the
// server's key but not listed, or without CURVE, never gets a message through;
// the allow list is re-read when it changes; bad key files are exit 2.
#include <cstring>
#include <set>

#include "django_support.hpp"
#include "protocol/curve_keys.hpp"

using namespace klynaa::test;
using klynaa::protocol::reply_status;

namespace {

/// Key pairs written by `klynaa keygen` into one temp dir.
struct keyring {
  temp_dir dir;
  struct pair {
    std::string public_key, secret_key, key_file, pub_file;
  };
  std::map<std::string, pair> keys;

  const pair& make(const std::string& name) {
    auto [code, out] = run_cli({"keygen", "--out", dir.path, "--name", name});
    INFO(out);
    REQUIRE(code == 0);
    pair p;
    p.key_file = dir / (name + ".key");
    p.pub_file = dir / (name + ".pub");
    auto parsed = klynaa::protocol::parse_key_file(read_file(p.key_file));
    REQUIRE(std::holds_alternative<klynaa::protocol::key_file>(parsed));
    auto& k = std::get<klynaa::protocol::key_file>(parsed);
    p.public_key = k.public_key.value_or("");
    p.secret_key = k.secret_key.value_or("");
    // stdout carries the allow-list line
    CHECK(out.find(p.public_key + " " + name) != std::string::npos);
    return keys[name] = p;
  }
  const pair& operator[](const std::string& name) const { return keys.at(name); }

  /// Replaces the allow list `file` atomically (write, then rename) with the keys of `names`.
  void allow(const std::string& file, const std::vector<std::string>& names, const std::string& extra = "") {
    std::string text = "# written by curve_test\n";
    for (auto& n : names) text += keys.at(n).public_key + " " + n + "\n";
    text += extra;
    write_file(file + ".tmp", text);
    std::filesystem::rename(file + ".tmp", file);
  }
};

/// A DEALER that is a CURVE client with `own` keys towards `server_public` (or a
/// plain one when `own` is null), connected to `endpoint`.
std::unique_ptr<zmq::socket_t> dealer(zmq::context_t& ctx, const std::string& endpoint,
                                      const std::string& server_public, const keyring::pair* own) {
  auto s = std::make_unique<zmq::socket_t>(ctx, zmq::socket_type::dealer);
  s->set(zmq::sockopt::linger, 0);
  if (own) {
    s->set(zmq::sockopt::curve_serverkey, server_public);
    s->set(zmq::sockopt::curve_publickey, own->public_key);
    s->set(zmq::sockopt::curve_secretkey, own->secret_key);
  }
  s->connect(endpoint);
  return s;
}

/// Sends `frame` (with a delimiter) and waits up to `timeout` for the reply.
std::optional<klynaa::protocol::reply> ask(zmq::socket_t& s, const std::string& frame,
                                           std::chrono::milliseconds timeout) {
  s.send(zmq::message_t(), zmq::send_flags::sndmore);
  s.send(zmq::buffer(frame), zmq::send_flags::none);
  zmq::pollitem_t items[] = {{s.handle(), 0, ZMQ_POLLIN, 0}};
  if (zmq::poll(items, 1, timeout) <= 0) return std::nullopt;
  std::vector<std::string> parts;
  zmq::message_t m;
  while (s.recv(m, zmq::recv_flags::dontwait)) {
    parts.push_back(m.to_string());
    if (!m.more()) break;
  }
  if (parts.empty()) return std::nullopt;
  return klynaa::protocol::decode_reply(parts.back().data(), parts.back().size());
}

/// Pings through a fresh socket: true when `pong` came within `timeout`.
bool pong(zmq::context_t& ctx, const std::string& endpoint, const std::string& server_public,
          const keyring::pair* own, std::chrono::milliseconds timeout = 5000ms) {
  auto s = dealer(ctx, endpoint, server_public, own);
  auto r = ask(*s, ping_frame(), timeout);
  return r && r->status == reply_status::pong;
}

const std::string location_data = R"({"worker_id":1,"lat":1,"lng":1,"available":true})";

std::map<std::string, std::string> ingress_curve_env(const keyring& k, const std::string& allow_file) {
  return {{"KLYNAA_INGRESS_CURVE", "true"},
          {"KLYNAA_INGRESS_CURVE_SECRET_FILE", k["broker"].key_file},
          {"KLYNAA_INGRESS_CURVE_ALLOW_FILE", allow_file}};
}

size_t count_of(const std::string& text, const std::string& what) {
  size_t n = 0;
  for (auto p = text.find(what); p != std::string::npos; p = text.find(what, p + 1)) ++n;
  return n;
}

}  // namespace

TEST_CASE("ingress CURVE: a listed client is served, an unlisted key or a plain client gets nothing", "[curve]") {
  keyring k;
  k.make("broker");
  k.make("django");
  k.make("rogue");
  const auto allow = k.dir / "clients.allow";
  k.allow(allow, {"django"});
  klynaa_server srv("broker", ingress_curve_env(k, allow));
  zmq::context_t ctx;
  const auto& server = k["broker"].public_key;

  // Listed: served, by a raw CURVE DEALER and by `klynaa publish` with key files.
  auto listed = dealer(ctx, srv.ingress(), server, &k["django"]);
  auto r = ask(*listed, publish_frame("curve-ok-1", "worker.location", json::parse(location_data)), 10000ms);
  REQUIRE(r);
  CHECK(r->status == reply_status::accepted);
  auto [c1, o1] = run_cli({"publish", "worker.location", "--data", location_data, "--id", "curve-ok-2",
                           "--ingress", srv.ingress(), "--server-key", k["broker"].pub_file, "--key",
                           k["django"].key_file});
  INFO(o1);
  CHECK(c1 == 0);
  CHECK(o1.find("\"accepted\"") != std::string::npos);

  // Right server key, key not listed: the handshake is refused, nothing arrives.
  auto rogue = dealer(ctx, srv.ingress(), server, &k["rogue"]);
  CHECK_FALSE(ask(*rogue, publish_frame("curve-rogue-1", "worker.location", json::parse(location_data)), 2000ms));
  CHECK(wait_for([&] { return srv.log().find("CURVE client refused") != std::string::npos; }, 5000ms));
  const auto log = srv.log();
  CHECK(log.find(klynaa::protocol::key_prefix(k["rogue"].public_key)) != std::string::npos);
  CHECK(log.find(k["rogue"].public_key) == std::string::npos);  // the prefix only
  auto [c2, o2] = run_cli({"publish", "worker.location", "--data", location_data, "--id", "curve-rogue-2",
                           "--ingress", srv.ingress(), "--server-key", k["broker"].pub_file, "--key",
                           k["rogue"].key_file, "--timeout", "2"});
  INFO(o2);
  CHECK(c2 == 1);
  CHECK(o2.find("refused this client's CURVE key") != std::string::npos);

  // No CURVE at all: nothing either.
  auto plain = dealer(ctx, srv.ingress(), "", nullptr);
  CHECK_FALSE(ask(*plain, ping_frame(), 2000ms));

  // The refused requests never reached the broker: their ids are new to it.
  for (auto id : {"curve-rogue-1", "curve-rogue-2"}) {
    auto again = ask(*listed, publish_frame(id, "worker.location", json::parse(location_data)), 10000ms);
    REQUIRE(again);
    CHECK(again->status == reply_status::accepted);
  }
  // A refused client reconnecting does not flood the log (one line a minute per key).
  std::this_thread::sleep_for(1500ms);
  CHECK(count_of(srv.log(), "CURVE client refused") <= 2);
}

TEST_CASE("ingress CURVE: the allow list is re-read when it changes, and a bad edit keeps the old list", "[curve]") {
  keyring k;
  k.make("broker");
  k.make("django");
  k.make("rogue");
  const auto allow = k.dir / "clients.allow";
  k.allow(allow, {"django"});
  klynaa_server srv("broker", ingress_curve_env(k, allow));
  zmq::context_t ctx;
  const auto& server = k["broker"].public_key;
  CHECK(pong(ctx, srv.ingress(), server, &k["django"]));
  CHECK_FALSE(pong(ctx, srv.ingress(), server, &k["rogue"], 1500ms));

  // Adding a key: admitted once the broker has noticed (within about a second).
  auto kept = dealer(ctx, srv.ingress(), server, &k["django"]);  // admitted before the next edits
  REQUIRE(ask(*kept, ping_frame(), 5000ms));
  k.allow(allow, {"django", "rogue"});
  REQUIRE(wait_for([&] { return count_of(srv.log(), "CURVE allow list reloaded") >= 1; }, 5000ms));
  CHECK(pong(ctx, srv.ingress(), server, &k["rogue"]));

  // A malformed edit: logged, and the previous list stays in force.
  k.allow(allow, {"django", "rogue"}, "this is not a key\n");
  REQUIRE(wait_for([&] { return srv.log().find("is not valid; keeping the keys loaded before") != std::string::npos; },
                   5000ms));
  CHECK(pong(ctx, srv.ingress(), server, &k["rogue"]));

  // Removing a key: its new connections are refused. A connection admitted
  // before stays open until it ends (docs/security.md, rotation).
  k.allow(allow, {"rogue"});
  REQUIRE(wait_for([&] { return count_of(srv.log(), "CURVE allow list reloaded") >= 2; }, 5000ms));
  CHECK_FALSE(pong(ctx, srv.ingress(), server, &k["django"], 1500ms));
  auto r = ask(*kept, ping_frame(), 5000ms);
  CHECK((r && r->status == reply_status::pong));
}

TEST_CASE("cluster CURVE: a listed node registers and runs jobs, unlisted and plain nodes never register",
          "[curve][cluster]") {
  keyring k;
  k.make("broker");
  k.make("django");
  k.make("node-good");
  k.make("node-rogue");
  const auto clients = k.dir / "clients.allow", nodes = k.dir / "nodes.allow";
  k.allow(clients, {"django"});
  k.allow(nodes, {"node-good"});
  const int django_port = free_tcp_port();
  std::map<std::string, std::string> env = {{"DJANGO_API_URL", "http://127.0.0.1:" + std::to_string(django_port)},
                                            {"DJANGO_API_KEY", "test-key"},
                                            {"KLYNAA_CLUSTER_HEARTBEAT_MS", "200"},
                                            {"KLYNAA_CLUSTER_NODE_TIMEOUT_MS", "1500"}};
  auto broker_env = env;
  for (auto& [key, value] : ingress_curve_env(k, clients)) broker_env[key] = value;
  broker_env["KLYNAA_CLUSTER_CURVE"] = "true";
  broker_env["KLYNAA_CLUSTER_CURVE_SECRET_FILE"] = k["broker"].key_file;
  broker_env["KLYNAA_CLUSTER_CURVE_ALLOW_FILE"] = nodes;
  klynaa_server broker("broker", broker_env);
  django_app django("tcp://127.0.0.1:9", django_port);  // publishes nothing here

  temp_dir dir;
  auto start_node = [&](const std::string& name, const std::string& key) {
    auto node_env = env;
    if (!key.empty()) {
      node_env["KLYNAA_CLUSTER_CURVE_SERVER_PUBLIC_FILE"] = k["broker"].pub_file;
      node_env["KLYNAA_CLUSTER_CURVE_CLIENT_SECRET_FILE"] = k[key].key_file;
    }
    return std::make_unique<process>(
        std::vector<std::string>{KLYNAA_BINARY, "node", "--broker", broker.cluster(), "--name", name, "--actors",
                                 "escrow", "--data-dir", dir / name},
        node_env, dir / (name + ".log"));
  };
  auto good = start_node("good", "node-good");
  auto rogue = start_node("rogue", "node-rogue");
  auto plain = start_node("plain", "");
  auto node_names = [&] {
    std::set<std::string> names;
    for (auto& n : broker_stats(broker).value("nodes", json::array())) names.insert(n.value("name", ""));
    return names;
  };
  REQUIRE(wait_for([&] { return node_names().count("good") == 1; }, 30000ms));

  // The listed node runs a job, asked for over the CURVE ingress.
  auto p = django.post("/api/demo/pickups/", {{"customer_id", 101}, {"lat", 6.5}, {"lng", 3.4}, {"price", 100},
                                              {"status", "delivered"}, {"worker_id", 201}, {"publish", false}});
  auto pid = std::to_string(p["pickup"]["id"].get<int>());
  auto [code, out] = run_cli({"invoke", "processEscrowRelease", "--ingress", broker.ingress(), "--server-key",
                              k["broker"].pub_file, "--key", k["django"].key_file, "--timeout", "20", "--data",
                              R"({"pickup_id": )" + pid + R"(, "release_reason": "customer_confirmed"})"});
  INFO(out);
  CHECK(code == 0);
  CHECK(out.find("\"released\"") != std::string::npos);

  // The others keep trying and never register; the unlisted one is told why.
  REQUIRE(wait_for([&] { return rogue->log().find("refused this node's CURVE key") != std::string::npos; },
                   10000ms));
  std::this_thread::sleep_for(1500ms);
  CHECK(node_names() == std::set<std::string>{"good"});
  CHECK(rogue->log().find(k["node-rogue"].public_key) != std::string::npos);  // what to add
  CHECK(broker.log().find(klynaa::protocol::key_prefix(k["node-rogue"].public_key)) != std::string::npos);
  CHECK(broker.log().find("\"domain\":\"cluster\"") != std::string::npos);
  for (auto* n : {good.get(), rogue.get(), plain.get()}) {
    n->kill(SIGTERM);
    CHECK(n->wait(15000ms) == 0);
    check_no_sanitizer_report(n->log());
  }
}

namespace {

/// `config --check` reads the key files it names too.
void check_config_check(keyring& k, temp_dir& d, const std::string& allow) {
  {
    write_file(d / "curve.toml", "[ingress]\ncurve = true\ncurve_secret_file = \"" + k["broker"].key_file +
                                     "\"\ncurve_allow_file = \"" + k.dir / "bad.allow" + "\"\n");
    auto [code, out] = run_cli({"config", "--check", "--config", d / "curve.toml"});
    INFO(out);
    CHECK(code == 2);
    CHECK(out.find("[ingress] curve_allow_file") != std::string::npos);
    CHECK(out.find("line 2") != std::string::npos);
    write_file(d / "curve.toml", "[ingress]\ncurve = true\ncurve_secret_file = \"" + k["broker"].key_file +
                                     "\"\ncurve_allow_file = \"" + allow + "\"\n");
    auto [code2, out2] = run_cli({"config", "--check", "--config", d / "curve.toml"});
    INFO(out2);
    CHECK(code2 == 0);
  }

}

/// A node and a client with bad CURVE settings exit 2 naming the key.
void check_node_and_client_errors(keyring& k, temp_dir& d, const std::string& missing) {
  auto node = [&](std::map<std::string, std::string> env) {
    env["DJANGO_API_URL"] = "http://127.0.0.1:9";
    return run_cli({"node", "--broker", "tcp://127.0.0.1:9", "--data-dir", d / "node", "--actors", "escrow"}, env);
  };
  {
    auto [code, out] = node({{"KLYNAA_CLUSTER_CURVE", "true"}});
    INFO(out);
    CHECK(code == 2);
    CHECK(out.find("curve_server_public_file") != std::string::npos);
  }
  {
    auto [code, out] = node({{"KLYNAA_CLUSTER_CURVE_SERVER_PUBLIC_FILE", k["broker"].pub_file}});
    INFO(out);
    CHECK(code == 2);
    CHECK(out.find("[cluster] curve_client_secret_file: not set") != std::string::npos);
  }
  {
    auto [code, out] = node({{"KLYNAA_CLUSTER_CURVE_SERVER_PUBLIC_FILE", missing},
                             {"KLYNAA_CLUSTER_CURVE_CLIENT_SECRET_FILE", k["node"].key_file}});
    INFO(out);
    CHECK(code == 2);
    CHECK(out.find("[cluster] curve_server_public_file") != std::string::npos);
    CHECK(out.find(missing) != std::string::npos);
  }
  {
    auto [code, out] = run_cli({"publish", "worker.location", "--data", location_data, "--key", k["node"].key_file});
    INFO(out);
    CHECK(code == 2);
    CHECK(out.find("--server-key (or [ingress] curve_server_public_file): not set") != std::string::npos);
  }
}

}  // namespace

TEST_CASE("bad CURVE settings exit 2 naming the key and the file", "[curve][cli]") {
  keyring k;
  k.make("broker");
  k.make("node");
  const auto allow = k.dir / "clients.allow";
  k.allow(allow, {"node"});
  write_file(k.dir / "bad.allow", k["node"].public_key + "\nnot a key\n");
  temp_dir d;
  auto broker = [&](std::map<std::string, std::string> env) {
    return run_cli({"broker", "--data-dir", d / "data", "--ingress", "tcp://127.0.0.1:*", "--cluster",
                    "tcp://127.0.0.1:*"},
                   env);
  };
  struct bad_case {
    std::map<std::string, std::string> env;
    std::vector<std::string> expected;
  };
  const std::string missing = k.dir / "missing.key";
  const std::vector<bad_case> cases = {
      {{{"KLYNAA_INGRESS_CURVE", "true"}, {"KLYNAA_INGRESS_CURVE_ALLOW_FILE", allow}},
       {"[ingress] curve_secret_file", "not set"}},
      {{{"KLYNAA_INGRESS_CURVE", "true"}, {"KLYNAA_INGRESS_CURVE_SECRET_FILE", missing},
        {"KLYNAA_INGRESS_CURVE_ALLOW_FILE", allow}},
       {"[ingress] curve_secret_file", missing, "No such file"}},
      {{{"KLYNAA_INGRESS_CURVE", "true"}, {"KLYNAA_INGRESS_CURVE_SECRET_FILE", k["broker"].pub_file},
        {"KLYNAA_INGRESS_CURVE_ALLOW_FILE", allow}},
       {"[ingress] curve_secret_file", k["broker"].pub_file, "no secret-key"}},
      {{{"KLYNAA_INGRESS_CURVE", "true"}, {"KLYNAA_INGRESS_CURVE_SECRET_FILE", k["broker"].key_file}},
       {"[ingress] curve_allow_file", "not set"}},
      {{{"KLYNAA_INGRESS_CURVE", "true"}, {"KLYNAA_INGRESS_CURVE_SECRET_FILE", k["broker"].key_file},
        {"KLYNAA_INGRESS_CURVE_ALLOW_FILE", k.dir / "bad.allow"}},
       {"[ingress] curve_allow_file", "bad.allow", "line 2"}},
      {{{"KLYNAA_CLUSTER_CURVE", "true"}, {"KLYNAA_CLUSTER_CURVE_SECRET_FILE", k["broker"].key_file},
        {"KLYNAA_CLUSTER_CURVE_ALLOW_FILE", missing}},
       {"[cluster] curve_allow_file", missing}},
  };
  for (auto& c : cases) {
    auto [code, out] = broker(c.env);
    INFO(out);
    CHECK(code == 2);
    for (auto& e : c.expected) CHECK(out.find(e) != std::string::npos);
  }

  check_config_check(k, d, allow);
  check_node_and_client_errors(k, d, missing);
}

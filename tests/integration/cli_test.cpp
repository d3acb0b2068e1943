// Command-line conventions (docs/operations.md, "Roles"): exit 2 with a message
// naming the flag, key or file; the clients' exit codes.
#include <atomic>
#include <regex>

#include <httplib.h>
#include <zmq_addon.hpp>

#include "support.hpp"

using namespace klynaa::test;
using klynaa::protocol::reply_status;

TEST_CASE("an unknown flag exits 2 naming the flag", "[cli]") {
  auto [code, out] = run_cli({"broker", "--ingres", "tcp://127.0.0.1:*"});
  CHECK(code == 2);
  CHECK(out.find("--ingres") != std::string::npos);
}

TEST_CASE("an unknown config key exits 2 naming the key and the file", "[cli]") {
  temp_dir d;
  write_file(d / "bad.toml", "[geo]\nradious_km = 3\n");
  auto [code, out] = run_cli({"broker", "--config", d / "bad.toml", "--data-dir", d / "data"});
  CHECK(code == 2);
  CHECK(out.find("radious_km") != std::string::npos);
  CHECK(out.find("bad.toml") != std::string::npos);
}

TEST_CASE("a config value of the wrong type exits 2", "[cli]") {
  temp_dir d;
  write_file(d / "bad.toml", "[ingress]\nmax_bytes = \"big\"\n");
  auto [code, out] = run_cli({"config", "--check", "--config", d / "bad.toml"});
  CHECK(code == 2);
  CHECK(out.find("max_bytes") != std::string::npos);
}

TEST_CASE("a missing config file exits 2 naming the file", "[cli]") {
  auto [code, out] = run_cli({"broker", "--config", "/nonexistent/klynaa.toml"});
  CHECK(code == 2);
  CHECK(out.find("/nonexistent/klynaa.toml") != std::string::npos);
}

TEST_CASE("run --config DIR, a directory, exits 2 naming it instead of starting on defaults", "[cli][config]") {
  temp_dir d;
  std::filesystem::create_directory(d / "conf.d");
  // Everything else a start needs is given: without the check it would run (and
  // be killed after the timeout).
  auto [code, out] = run_cli({"run", "--config", d / "conf.d", "--data-dir", d / "data", "--ingress",
                              "tcp://127.0.0.1:*"},
                             {{"DJANGO_API_URL", "http://127.0.0.1:9"}, {"KLYNAA_ADMIN_BIND", "127.0.0.1:0"},
                              {"KLYNAA_SCHEDULER_MISFIRE_GRACE_SECONDS", "0"}},
                             15000ms);
  INFO(out);
  CHECK(code == 2);
  CHECK(out.find(d / "conf.d") != std::string::npos);
  CHECK(out.find("directory") != std::string::npos);
}

TEST_CASE("the legacy FIREBASE_SERVER_KEY is refused at start", "[cli]") {
  temp_dir d;
  auto [code, out] = run_cli({"broker", "--data-dir", d / "data"}, {{"FIREBASE_SERVER_KEY", "abc"}});
  CHECK(code == 2);
  CHECK(out.find("GOOGLE_APPLICATION_CREDENTIALS") != std::string::npos);
}

TEST_CASE("run without a Django URL exits 2 saying so", "[cli]") {
  temp_dir d;
  auto [code, out] = run_cli({"run", "--data-dir", d / "data"}, {{"DJANGO_API_URL", ""}});
  CHECK(code == 2);
  CHECK(out.find("DJANGO_API_URL") != std::string::npos);
}

TEST_CASE("publish with bad JSON exits 2 with a message", "[cli]") {
  auto [code, out] = run_cli({"publish", "worker.location", "--data", "{nope"});
  CHECK(code == 2);
  CHECK(out.find("--data") != std::string::npos);
}

TEST_CASE("invoke with bad JSON exits 2 with a message", "[cli]") {
  auto [code, out] = run_cli({"invoke", "processEscrowRelease", "--data", "[1,2"});
  CHECK(code == 2);
  CHECK(out.find("--data") != std::string::npos);
}

TEST_CASE("publish with no broker listening exits 1", "[cli]") {
  auto [code, out] = run_cli({"publish", "worker.location", "--data",
                              R"({"worker_id":1,"lat":1,"lng":1,"available":true})", "--ingress",
                              "tcp://127.0.0.1:9", "--timeout", "0.5"});
  CHECK(code == 1);
}

TEST_CASE("publish prints the reply and exits 0 on accepted and on duplicate, 2 on rejected", "[cli]") {
  klynaa_server srv("broker");
  auto data = R"({"worker_id":1,"lat":1,"lng":1,"available":true})";
  auto [c1, o1] = run_cli({"publish", "worker.location", "--data", data, "--id", "cli-1", "--ingress", srv.ingress()});
  CHECK(c1 == 0);
  CHECK(o1.find("\"accepted\"") != std::string::npos);
  auto [c2, o2] = run_cli({"publish", "worker.location", "--data", data, "--id", "cli-1", "--ingress", srv.ingress()});
  CHECK(c2 == 0);
  CHECK(o2.find("\"duplicate\"") != std::string::npos);
  auto [c3, o3] = run_cli({"publish", "worker.location", "--data", R"({"worker_id":1})", "--ingress", srv.ingress()});
  CHECK(c3 == 2);
  CHECK(o3.find("data.lat") != std::string::npos);
}

TEST_CASE("stats shows queued jobs per function as a table and as JSON", "[cli][stats]") {
  klynaa_server srv("broker");
  auto data = R"({"worker_id":1,"lat":1,"lng":1,"available":true})";
  REQUIRE(run_cli({"publish", "worker.location", "--data", data, "--ingress", srv.ingress()}).first == 0);
  auto admin = srv.endpoints()["admin"].get<std::string>();
  std::string table;
  REQUIRE(wait_for([&] {
    auto [code, out] = run_cli({"stats", "--admin", admin});
    table = out;
    return code == 0 && out.find("updateWorkerLocation") != std::string::npos;
  }, 5000ms));
  CHECK(table.find("queued") != std::string::npos);
  CHECK(table.find("(no node connected)") != std::string::npos);
  auto [code, out] = run_cli({"stats", "--admin", admin, "--json"});
  CHECK(code == 0);
  auto j = json::parse(out, nullptr, false);
  REQUIRE(j.is_object());
  CHECK(j["functions"]["updateWorkerLocation"]["ready"] == 1);
}

TEST_CASE("stats with no broker listening exits 1 naming the endpoint", "[cli][stats]") {
  auto [code, out] = run_cli({"stats", "--admin", "127.0.0.1:9"});
  CHECK(code == 1);
  CHECK(out.find("127.0.0.1:9") != std::string::npos);
}

TEST_CASE("ingress.curve = true without a key pair exits 2 naming the key, never runs unencrypted", "[cli]") {
  temp_dir d;
  auto [code, out] = run_cli({"broker", "--data-dir", d / "data"}, {{"KLYNAA_INGRESS_CURVE", "true"}});
  CHECK(code == 2);
  CHECK(out.find("[ingress] curve_secret_file") != std::string::npos);
}

TEST_CASE("with admin.token set, admin requests need the bearer token, except /healthz", "[cli][admin]") {
  klynaa_server srv("broker", {{"KLYNAA_ADMIN_TOKEN", "s3cret-token"}});
  auto admin = srv.endpoints()["admin"].get<std::string>();
  auto [c1, o1] = run_cli({"stats", "--admin", admin});
  CHECK(c1 == 1);
  CHECK(o1.find("401") != std::string::npos);
  auto [c2, o2] = run_cli({"stats", "--admin", admin}, {{"KLYNAA_ADMIN_TOKEN", "s3cret-token"}});
  CHECK(c2 == 0);
  auto colon = admin.rfind(':');
  httplib::Client http(admin.substr(0, colon), std::stoi(admin.substr(colon + 1)));
  auto health = http.Get("/healthz");
  REQUIRE(health);
  CHECK(health->status == 200);
  auto metrics = http.Get("/metrics");
  REQUIRE(metrics);
  CHECK(metrics->status == 401);
}

TEST_CASE("publish passes over a standby broker to the next --ingress endpoint", "[cli]") {
  // A standby (docs/deployment.md) answers everything but ping with overloaded
  // and a message that starts "standby broker"; a real ROUTER plays it here.
  klynaa_server srv("broker");
  zmq::context_t ctx;
  zmq::socket_t standby(ctx, zmq::socket_type::router);
  standby.set(zmq::sockopt::linger, 0);
  standby.bind("tcp://127.0.0.1:*");
  const std::string standby_ep = standby.get(zmq::sockopt::last_endpoint);
  std::atomic<int> refused{0};
  std::atomic<bool> stop{false};
  std::thread t([&] {
    while (!stop) {
      zmq::pollitem_t item{standby.handle(), 0, ZMQ_POLLIN, 0};
      if (zmq::poll(&item, 1, std::chrono::milliseconds(20)) <= 0) continue;
      std::vector<zmq::message_t> parts;
      if (!zmq::recv_multipart(standby, std::back_inserter(parts))) continue;
      auto req = klynaa::protocol::decode_request(parts.back().data(), parts.back().size(), now_ms(), {});
      auto rep = klynaa::protocol::rejection(req.id, klynaa::protocol::error_code::overloaded,
                                             "standby broker: the active broker holds the lease; try another endpoint");
      rep.retry_after_ms = 2500;
      for (size_t i = 0; i + 1 < parts.size(); ++i) standby.send(parts[i], zmq::send_flags::sndmore);
      standby.send(zmq::buffer(klynaa::protocol::encode_reply(rep)));
      ++refused;
    }
  });
  auto data = R"({"worker_id":1,"lat":1,"lng":1,"available":true})";
  auto [code, out] = run_cli({"publish", "worker.location", "--data", data, "--id", "cli-standby",
                              "--ingress", standby_ep + "," + srv.ingress()});
  CHECK(code == 0);
  CHECK(out.find("\"accepted\"") != std::string::npos);
  CHECK(refused == 1);
  // With only the standby, its refusal is what the command prints (exit 2).
  auto [code2, out2] = run_cli({"publish", "worker.location", "--data", data, "--ingress", standby_ep});
  CHECK(code2 == 2);
  CHECK(out2.find("standby broker") != std::string::npos);
  stop = true;
  t.join();
}

TEST_CASE("klynaa --version names the version and commit that pong, /stats and klynaa_build_info carry",
          "[cli][version]") {
  // the version is CMakeLists.txt's project version (docs/deployment.md, "Installing")
  static const std::regex project_re(R"(project\(klynaa VERSION ([0-9]+\.[0-9]+\.[0-9]+))");
  std::smatch m;
  const auto cmake = read_file(std::string(KLYNAA_SOURCE_DIR) + "/CMakeLists.txt");
  REQUIRE(std::regex_search(cmake, m, project_re));
  const std::string version = m[1];
  auto [code, out] = run_cli({"--version"});
  CHECK(code == 0);
  static const std::regex line_re(R"(klynaa ([0-9.]+)( \(commit ([0-9a-f]{12})\))?\n)");
  std::smatch v;
  REQUIRE(std::regex_match(out, v, line_re));
  CHECK(v[1] == version);
  const std::string text = out.substr(7, out.size() - 8);  // without "klynaa " and "\n"
  const std::string commit = v[3];

  klynaa_server srv("broker");
  zmq::context_t ctx;
  raw_client c(ctx, srv.ingress());
  auto pong = c.call(ping_frame());
  REQUIRE(pong);
  CHECK(pong->status == reply_status::pong);
  CHECK(pong->version == std::optional<std::string>(text));

  auto admin = srv.endpoints()["admin"].get<std::string>();
  auto colon = admin.rfind(':');
  httplib::Client http(admin.substr(0, colon), std::stoi(admin.substr(colon + 1)));
  auto stats = http.Get("/stats");
  REQUIRE(stats);
  auto s = json::parse(stats->body);
  CHECK(s["version"] == version);
  CHECK(s["commit"] == commit);
  auto metrics = http.Get("/metrics");
  REQUIRE(metrics);
  CHECK(metrics->body.find("klynaa_build_info{version=\"" + version + "\",commit=\"" + commit + "\"} 1\n") !=
        std::string::npos);
}

TEST_CASE("store migrate refuses a journal data dir, naming it: it copies SQLite stores only", "[cli][migrate]") {
  temp_dir d;
  std::filesystem::create_directories(d / "data/journal");
  auto [code, out] = run_cli({"store", "migrate", "--data-dir", d / "data", "--to", "postgresql://klynaa@127.0.0.1:9/x"});
  INFO(out);
  CHECK(code == 2);
  CHECK(out.find("holds a journal store") != std::string::npos);
  CHECK(out.find(d / "data/journal") != std::string::npos);
}

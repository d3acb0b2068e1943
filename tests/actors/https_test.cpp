// Downstream HTTPS verifies certificates (issue 9, docs/security.md): a server
// whose certificate no trusted CA signed gets no request, and `ca_file`
// ([django] ca_file, [notifications] ca_file) is how an operator trusts a private
// CA. A real TLS server (cpp-httplib's SSLServer) on 127.0.0.1 with certificates
// made by the openssl command line for the test.
#include "actors/django_client.hpp"
#include "actors/http.hpp"

#include <catch2/catch.hpp>

#include <atomic>
#include <cstdlib>
#include <string>
#include <thread>

#include <httplib.h>

#include "certificate.hpp"
#include "tests/support/temp_dir.hpp"

using namespace klynaa::actors;
using klynaa::test::make_certificate;
using klynaa::test::temp_dir;

namespace {

/// An HTTPS server on 127.0.0.1 with DIR/NAME.crt, answering every GET with 200.
class tls_server {
 public:
  tls_server(const temp_dir& dir, const std::string& name)
      : server_((dir / (name + ".crt")).c_str(), (dir / (name + ".key")).c_str()) {
    REQUIRE(server_.is_valid());
    server_.Get(".*", [this](const httplib::Request&, httplib::Response& res) {
      ++served_;
      res.set_content(R"({"ok": true})", "application/json");
    });
    port_ = server_.bind_to_any_port("127.0.0.1");
    REQUIRE(port_ > 0);
    thread_ = std::thread([this] { server_.listen_after_bind(); });
  }
  ~tls_server() {
    server_.stop();
    thread_.join();
  }
  std::string url(const std::string& host = "127.0.0.1") const {
    return "https://" + host + ":" + std::to_string(port_);
  }
  int served() const { return served_; }

 private:
  httplib::SSLServer server_;
  int port_ = 0;
  std::thread thread_;
  std::atomic<int> served_{0};
};

}  // namespace

TEST_CASE("https: a certificate no trusted CA signed is refused before any request is sent", "[https]") {
  temp_dir dir;
  make_certificate(dir, "server", "IP:127.0.0.1");
  tls_server server(dir, "server");

  http_session s;  // the system's CA bundle
  auto r = s.request("GET", server.url() + "/api/users/admins/", {});
  CHECK(r.status == 0);
  INFO(r.error);
  CHECK(r.error.find("certificate") != std::string::npos);
  CHECK(server.served() == 0);
  CHECK(classify(r, "GET /api/users/admins/").kind == klynaa::nodes::outcome::transient);  // retried: an operator can fix the CA
}

TEST_CASE("https: with ca_file naming the server's CA the request goes through", "[https]") {
  temp_dir dir;
  make_certificate(dir, "server", "IP:127.0.0.1");
  tls_server server(dir, "server");

  http_options o;
  o.ca_file = dir / "server.crt";
  http_session s(o);
  auto r = s.request("GET", server.url() + "/x", {});
  INFO(r.error);
  CHECK(r.status == 200);
  CHECK(server.served() == 1);

  http_multi m(o);
  auto rs = m.perform({http_request{"GET", server.url() + "/y", {}, std::nullopt}});
  REQUIRE(rs.size() == 1);
  CHECK(rs[0].status == 200);
  CHECK(server.served() == 2);
}

TEST_CASE("https: a CA file of another CA, or a certificate for another name, is refused", "[https]") {
  temp_dir dir;
  make_certificate(dir, "server", "DNS:elsewhere.example");  // right CA, wrong name
  make_certificate(dir, "other", "IP:127.0.0.1");
  tls_server server(dir, "server");

  SECTION("a CA that did not sign the server's certificate") {
    http_options o;
    o.ca_file = dir / "other.crt";
    auto r = http_session(o).request("GET", server.url() + "/", {});
    CHECK(r.status == 0);
    CHECK(server.served() == 0);
  }
  SECTION("the right CA, but the certificate names another host") {
    http_options o;
    o.ca_file = dir / "server.crt";
    auto r = http_session(o).request("GET", server.url() + "/", {});
    CHECK(r.status == 0);
    INFO(r.error);
    CHECK(!r.error.empty());
    CHECK(server.served() == 0);
  }
}

TEST_CASE("https: the Django client takes [django] ca_file", "[https]") {
  temp_dir dir;
  make_certificate(dir, "server", "IP:127.0.0.1");
  tls_server server(dir, "server");

  klynaa::protocol::config cfg;
  cfg.django.url = server.url();
  cfg.django.api_key = "k";
  django_client refused(cfg.django);
  CHECK(refused.request("GET", "/api/users/admins/").status == 0);
  CHECK(server.served() == 0);

  cfg.django.ca_file = dir / "server.crt";
  django_client trusted(cfg.django);
  CHECK(trusted.request("GET", "/api/users/admins/").status == 200);
  CHECK(server.served() == 1);
}

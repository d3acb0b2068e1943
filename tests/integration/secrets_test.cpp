// Secrets never reach the logs (issue 9, docs/operations.md, "Watching it"): the
// Django API key, the
// admin token, provider credentials and push tokens beyond a short prefix. A
// `klynaa run` that does real work — successes, 401s from Django, pushes, an
// admin call — then its whole log is searched for each secret.
#include "django_support.hpp"

using namespace klynaa::test;
using klynaa::protocol::reply_status;

TEST_CASE("no secret appears in the logs, whatever the jobs did", "[secrets][logs]") {
  const std::string api_key = "sk-live-7f3a9c2e5b8d1f4a";        // Django expects another: 401s
  const std::string admin_token = "adm-tok-5e2b9d8c7a6f1e3d";
  const std::string aws_secret = "AwsSecret/9x8y7z6w5v4u3t2s1r";
  const int django_port = free_tcp_port();
  klynaa_server srv("run", {{"DJANGO_API_URL", "http://127.0.0.1:" + std::to_string(django_port)},
                            {"DJANGO_API_KEY", api_key},
                            {"KLYNAA_ADMIN_TOKEN", admin_token},
                            {"AWS_ACCESS_KEY_ID", "AKIAEXAMPLEKEY123456"},
                            {"AWS_SECRET_ACCESS_KEY", aws_secret},
                            {"KLYNAA_LOG_LEVEL", "debug"},
                            {"KLYNAA_RETRY_MAX_ATTEMPTS", "2"},
                            {"KLYNAA_RETRY_BASE_DELAY_MS", "50"}});
  django_app django(srv.ingress(), django_port);
  zmq::context_t ctx;
  raw_client cl(ctx, srv.ingress());
  for (int i = 0; i < 3; ++i) {
    auto r = cl.call(publish_frame("sec-" + std::to_string(i), "pickup.accepted",
                                   {{"pickup_id", 1}, {"customer_id", 101}, {"worker_id", 201}}));
    REQUIRE(r);
    REQUIRE(r->status == reply_status::accepted);
  }
  // Django refuses the key: the jobs fail (permanent 401) and say so in the log.
  REQUIRE(wait_for([&] { return srv.log().find("job failed") != std::string::npos; }, 30000ms));
  auto addr = srv.endpoints()["admin"].get<std::string>();
  auto [code, out] = run_cli({"stats", "--admin", addr}, {{"KLYNAA_ADMIN_TOKEN", admin_token}});
  CHECK(code == 0);
  std::this_thread::sleep_for(500ms);
  auto log = srv.log();
  CHECK(log.find("\"api_key\"") != std::string::npos);  // the hint is there ...
  for (const auto& secret : {api_key, admin_token, aws_secret}) {
    INFO("secret " << secret);
    CHECK(log.find(secret) == std::string::npos);                 // ... the secret is not
    CHECK(log.find(secret.substr(0, 10)) == std::string::npos);  // nor more than a short prefix
  }
}

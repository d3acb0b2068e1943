// The sns provider (docs/events-and-functions.md, "Push providers"): SigV4 checked against the AWS documentation's
// published examples and, byte for byte, against botocore (Debian's
// python3-botocore, through tests/actors/sigv4_reference.py); SNS's answers
// mapped to push results; the factory's config errors.
#include "actors/sns.hpp"

#include <atomic>
#include <cstdlib>
#include <memory>
#include <set>

#include <catch2/catch.hpp>

#include "actors/registry.hpp"
#include "fake_server.hpp"
#include "tests/support/temp_dir.hpp"

using klynaa::actors::amz_date;
using klynaa::actors::aws_credentials;
using klynaa::actors::make_provider;
using klynaa::actors::provider_error;
using klynaa::actors::provider_factory;
using klynaa::actors::push;
using klynaa::actors::push_result;
using klynaa::actors::sigv4_request;
using klynaa::actors::sigv4_sign;
using klynaa::actors::sns_provider;
using klynaa::actors::sns_settings;
using klynaa::test::canned;
using klynaa::test::fake_server;
using klynaa::test::recorded_request;
using klynaa::test::temp_dir;
using nlohmann::json;

namespace {

// The example credentials of the AWS documentation and its SigV4 test suite.
const aws_credentials doc_credentials{"AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", ""};

// 2024-03-05T06:07:08Z
constexpr int64_t fixed_ms = 1709618828000;

const char* publish_ok =
    R"(<PublishResponse xmlns="http://sns.amazonaws.com/doc/2010-03-31/"><PublishResult>)"
    R"(<MessageId>567910cd-659e-55d4-8ccb-5aaf14679dc0</MessageId></PublishResult>)"
    R"(<ResponseMetadata><RequestId>d74b8436-ae13-5ab4-a9ff-ce54dfea72a0</RequestId>)"
    R"(</ResponseMetadata></PublishResponse>)";

std::string sns_error(const std::string& type, const std::string& code, const std::string& message) {
  return R"(<ErrorResponse xmlns="http://sns.amazonaws.com/doc/2010-03-31/"><Error><Type>)" + type +
         "</Type><Code>" + code + "</Code><Message>" + message +
         "</Message></Error><RequestId>9dd01905-5012-5f99-8663-4b3ecd0dfaef</RequestId></ErrorResponse>";
}

push sample_push(const std::string& arn) {
  push p;
  p.job_id = "evt-9#2";
  p.user_id = 11;
  p.token = arn;
  p.platform = "android";
  p.notification_type = "pickup_accepted";
  p.title = "Abholung bestätigt";
  p.body = "A worker accepted your pickup #7 & will come soon.";
  p.data = {{"pickup_id", 7}, {"notification_type", "pickup_accepted"}};
  return p;
}

const std::string endpoint_arn =
    "arn:aws:sns:eu-west-1:123456789012:endpoint/GCM/klynaa/5e3e9847-3183-3f18-a7e8-671c3a57d4b3";

sns_settings settings_for(const std::string& endpoint, aws_credentials creds = {
                                                          "AKIAKLYNAATEST000001",
                                                          "klynaa/test+secret/not-a-real-key0000000",
                                                          ""}) {
  sns_settings s;
  s.endpoint = endpoint;
  s.region = "eu-west-1";
  s.credentials = std::move(creds);
  s.http.connect_timeout_ms = 1000;
  s.http.timeout_ms = 3000;
  s.now_ms = [] { return fixed_ms; };
  return s;
}

/// Runs a reference script of tests/actors with Debian's python3, `input` on
/// stdin; returns its stdout as JSON (bounded by `timeout`).
json run_reference(const std::string& script, const std::string& mode, const json& input) {
  temp_dir dir;
  { std::ofstream(dir / "in.json") << input.dump(); }
  std::string command = "timeout 60 /usr/bin/python3 " KLYNAA_SOURCE_DIR "/tests/actors/" + script +
                        " " + mode + " < " + dir / "in.json" + " > " +
                        dir / "out.json" + " 2> " + dir / "err.txt";
  int rc = std::system(command.c_str());
  INFO(klynaa::test::read_file(dir / "err.txt"));
  REQUIRE(rc == 0);
  auto out = json::parse(klynaa::test::read_file(dir / "out.json"), nullptr, false);
  REQUIRE_FALSE(out.is_discarded());
  return out;
}

std::string form_decode(const std::string& raw) {
  std::string out;
  for (size_t i = 0; i < raw.size(); ++i) {
    if (raw[i] == '+') {
      out.push_back(' ');
    } else if (raw[i] == '%' && i + 2 < raw.size()) {
      out.push_back(static_cast<char>(std::stoi(raw.substr(i + 1, 2), nullptr, 16)));
      i += 2;
    } else {
      out.push_back(raw[i]);
    }
  }
  return out;
}

/// The decoded value of `name` in a form body, or "".
std::string form_value(const std::string& body, const std::string& name) {
  size_t pos = 0;
  while (pos <= body.size()) {
    size_t amp = body.find('&', pos);
    std::string pair = body.substr(pos, amp == std::string::npos ? std::string::npos : amp - pos);
    auto eq = pair.find('=');
    if (pair.substr(0, eq) == name)
      return eq == std::string::npos ? "" : form_decode(pair.substr(eq + 1));
    if (amp == std::string::npos) break;
    pos = amp + 1;
  }
  return "";
}

klynaa::protocol::config sns_config(const std::string& endpoint) {
  klynaa::protocol::config cfg;
  cfg.django.url = "http://127.0.0.1:1";  // check_actor_config wants one; never called here
  cfg.notifications.service = "sns";
  cfg.notifications.sns_endpoint = endpoint;
  cfg.env = {{"AWS_ACCESS_KEY_ID", "AKIAKLYNAATEST000002"},
             {"AWS_SECRET_ACCESS_KEY", "klynaa/another+test/secret000000000000000"},
             {"AWS_REGION", "eu-central-1"}};
  return cfg;
}

}  // namespace

TEST_CASE("sns: SigV4 reproduces the published AWS examples", "[providers]") {
  // AWS General Reference, "Examples of the complete Signature Version 4
  // signing process" (IAM ListUsers): the signing key, the string to sign and
  // the signature.
  CHECK(klynaa::actors::sigv4_signing_key_hex(doc_credentials.secret_access_key, "20150830",
                                              "us-east-1", "iam") ==
        "c4afb1cc5771d871763a393e44b703571b55cc28424d1a5e86da6ed3c154a4b9");
  sigv4_request list_users{"GET",
                           "https://iam.amazonaws.com/?Action=ListUsers&Version=2010-05-08",
                           {{"Content-Type", "application/x-www-form-urlencoded; charset=utf-8"}},
                           ""};
  auto iam = sigv4_sign(list_users, doc_credentials, "us-east-1", "iam", "20150830T123600Z");
  CHECK(iam.string_to_sign ==
        "AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/iam/aws4_request\n"
        "f536975d06c0309214f805bb90ccff089219ecd68b2577efef23edd43b7e1a59");
  CHECK(iam.authorization ==
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/iam/aws4_request, "
        "SignedHeaders=content-type;host;x-amz-date, "
        "Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7");

  // aws-sig-v4-test-suite: get-vanilla and post-vanilla.
  auto get = sigv4_sign({"GET", "https://example.amazonaws.com/", {}, ""}, doc_credentials,
                        "us-east-1", "service", "20150830T123600Z");
  CHECK(get.canonical_request ==
        "GET\n/\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\n"
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  CHECK(get.signature == "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31");
  auto post = sigv4_sign({"POST", "https://example.amazonaws.com", {}, ""}, doc_credentials,
                         "us-east-1", "service", "20150830T123600Z");
  CHECK(post.signature == "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b");
  // The headers to send: Host, X-Amz-Date, Authorization; no token header without a token.
  REQUIRE(post.headers.size() == 3);
  CHECK(post.headers[0].name == "Host");
  CHECK(post.headers[0].value == "example.amazonaws.com");
  CHECK(post.headers[1].value == "20150830T123600Z");
  CHECK(post.headers[2].value == post.authorization);
}

TEST_CASE("sns: SigV4 signs a request with a path, a query, a port and a session token as botocore", "[providers]") {
  aws_credentials creds{"AKIAKLYNAATEST000003", "klynaa/third+test/secret00000000000000000",
                        "FwoGZXIvYXdzEBoaDKlynaaTestSessionToken//+="};
  sigv4_request req{"POST",
                    "http://127.0.0.1:8443/sns/proxy?b=2&a=1&a=0",
                    {{"Content-Type", "application/x-www-form-urlencoded;  charset=utf-8 "}},
                    "Action=Publish&Version=2010-03-31"};
  auto ours = sigv4_sign(req, creds, "ap-southeast-2", "sns", "20240305T060708Z");
  auto ref = run_reference(
      "sigv4_reference.py", "sign",
      {{"method", req.method}, {"url", req.url},
       {"headers", {{"Content-Type", req.headers[0].value}}}, {"body", req.body},
       {"region", "ap-southeast-2"}, {"service", "sns"}, {"access_key", creds.access_key_id},
       {"secret_key", creds.secret_access_key}, {"token", creds.session_token},
       {"timestamp", "20240305T060708Z"}});
  CHECK(ours.canonical_request == ref["canonical_request"].get<std::string>());
  CHECK(ours.string_to_sign == ref["string_to_sign"].get<std::string>());
  CHECK(ours.authorization == ref["authorization"].get<std::string>());
}

TEST_CASE("sns: the sns provider's Publish is the request botocore sends, byte for byte", "[providers]") {
  for (std::string token : {"", "IQoJb3JpZ2luX2VjEKlynaaTestSessionToken/+=="}) {
    DYNAMIC_SECTION("session token: " << (token.empty() ? "none" : "yes")) {
      fake_server sns;
      sns.on("POST", "/", {200, publish_ok});
      auto settings = settings_for(sns.url());
      settings.credentials.session_token = token;
      sns_provider provider(settings);
      auto p = sample_push(endpoint_arn);
      REQUIRE(provider.send(p).kind == push_result::status::delivered);
      auto reqs = sns.requests();
      REQUIRE(reqs.size() == 1);
      const recorded_request& sent = reqs[0];

      json input = {{"endpoint_url", sns.url()},
                    {"region", settings.region},
                    {"access_key", settings.credentials.access_key_id},
                    {"secret_key", settings.credentials.secret_access_key},
                    {"timestamp", amz_date(fixed_ms)},
                    {"target_arn", p.token},
                    {"message", klynaa::actors::sns_message(p)}};
      if (!token.empty()) input["token"] = token;
      auto ref = run_reference("sigv4_reference.py", "publish", input);
      const json& h = ref["headers"];
      CHECK(sent.body == ref["body"].get<std::string>());
      CHECK(sent.header("Authorization") == h["Authorization"].get<std::string>());
      CHECK(sent.header("X-Amz-Date") == h["X-Amz-Date"].get<std::string>());
      CHECK(sent.header("X-Amz-Date") == "20240305T060708Z");
      CHECK(sent.header("Content-Type") == h["Content-Type"].get<std::string>());
      if (token.empty()) {
        CHECK_FALSE(h.contains("X-Amz-Security-Token"));
        CHECK(sent.header("X-Amz-Security-Token").empty());
      } else {
        CHECK(sent.header("X-Amz-Security-Token") == h["X-Amz-Security-Token"].get<std::string>());
      }
      CHECK(sent.header("Host") == "127.0.0.1:" + std::to_string(sns.port()));
      CHECK(form_value(sent.body, "TargetArn") == endpoint_arn);
    }
  }
}

TEST_CASE("sns: the SNS message has a default text and GCM and APNS payloads with string data", "[providers]") {
  auto p = sample_push(endpoint_arn);
  p.data["amount"] = 12.5;
  auto message = json::parse(klynaa::actors::sns_message(p));
  CHECK(message["default"] == p.body);
  auto gcm = json::parse(message["GCM"].get<std::string>());
  CHECK(gcm["notification"]["title"] == "Abholung bestätigt");
  CHECK(gcm["notification"]["body"] == p.body);
  CHECK(gcm["data"]["pickup_id"] == "7");
  CHECK(gcm["data"]["amount"] == "12.5");
  CHECK(gcm["data"]["job_id"] == "evt-9#2");
  CHECK(gcm["data"]["notification_type"] == "pickup_accepted");
  auto apns = json::parse(message["APNS"].get<std::string>());
  CHECK(apns["aps"]["alert"]["title"] == "Abholung bestätigt");
  CHECK(apns["aps"]["alert"]["body"] == p.body);
  CHECK(apns["pickup_id"] == "7");
  CHECK(message["APNS_SANDBOX"] == message["APNS"]);
}

TEST_CASE("sns: EndpointDisabled and an unknown endpoint ARN mean an invalid token", "[providers]") {
  fake_server sns;
  sns.on("POST", "/", [](const recorded_request& r) -> canned {
    std::string arn = form_value(r.body, "TargetArn");
    if (arn == "arn:disabled")
      return {400, sns_error("Sender", "EndpointDisabled", "Endpoint is disabled")};
    if (arn == "arn:unknown")
      return {400, sns_error("Sender", "InvalidParameter",
                             "Invalid parameter: TargetArn Reason: No endpoint found for the target "
                             "arn specified")};
    if (arn == "arn:deleted") return {404, sns_error("Sender", "NotFound", "Endpoint does not exist")};
    return {400, sns_error("Sender", "InvalidParameter",
                           "Invalid parameter: Message Structure - JSON message body failed to parse")};
  });
  sns_provider provider(settings_for(sns.url()));
  auto disabled = provider.send(sample_push("arn:disabled"));
  CHECK(disabled.kind == push_result::status::invalid_token);
  CHECK_THAT(disabled.error, Catch::Contains("EndpointDisabled"));
  CHECK(provider.send(sample_push("arn:unknown")).kind == push_result::status::invalid_token);
  CHECK(provider.send(sample_push("arn:deleted")).kind == push_result::status::invalid_token);
  auto bad = provider.send(sample_push("arn:other"));
  CHECK(bad.kind == push_result::status::permanent);
  CHECK(bad.http_status == 400);
  CHECK_THAT(bad.error, Catch::Contains("Message Structure"));
}

TEST_CASE("sns: SNS throttling and server errors are transient, a refused signature permanent", "[providers]") {
  fake_server sns;
  sns.on("POST", "/", [](const recorded_request& r) -> canned {
    std::string arn = form_value(r.body, "TargetArn");
    if (arn == "arn:throttled")
      return {400, sns_error("Sender", "Throttling", "Rate exceeded")};
    if (arn == "arn:unavailable") return {503, sns_error("Receiver", "ServiceUnavailable", ""), {{"Retry-After", "3"}}};
    if (arn == "arn:internal") return {500, sns_error("Receiver", "InternalError", "Internal failure")};
    return {403, sns_error("Sender", "SignatureDoesNotMatch",
                           "The request signature we calculated does not match the signature you provided.")};
  });
  auto settings = settings_for(sns.url());
  sns_provider provider(settings);
  auto throttled = provider.send(sample_push("arn:throttled"));
  CHECK(throttled.kind == push_result::status::transient);
  CHECK(throttled.http_status == 400);
  auto unavailable = provider.send(sample_push("arn:unavailable"));
  CHECK(unavailable.kind == push_result::status::transient);
  CHECK(unavailable.retry_after_ms == 3000);
  CHECK(provider.send(sample_push("arn:internal")).kind == push_result::status::transient);
  auto refused = provider.send(sample_push("arn:forbidden"));
  CHECK(refused.kind == push_result::status::permanent);
  CHECK_THAT(refused.error, Catch::Contains("SignatureDoesNotMatch"));
  CHECK_THAT(refused.error, Catch::Contains("AWS_SECRET_ACCESS_KEY"));
  CHECK_THAT(refused.error, !Catch::Contains(settings.credentials.secret_access_key));
}

TEST_CASE("sns: the Publish requests of a batch go out concurrently, each signed on its own", "[providers]") {
  fake_server sns(30);  // idle connections stay open between the batches
  sns.on("POST", "/", [](const recorded_request& r) -> canned {
    if (form_value(r.body, "TargetArn") == "arn:disabled")
      return {400, sns_error("Sender", "EndpointDisabled", "Endpoint is disabled")};
    return {200, publish_ok};
  });
  sns.hold("POST", "/", 4);  // nothing is answered until all four are in flight
  auto settings = settings_for(sns.url());
  // A clock that moves one second per reading: each request gets its own X-Amz-Date.
  auto clock = std::make_shared<std::atomic<int64_t>>(fixed_ms);
  settings.now_ms = [clock] { return clock->fetch_add(1000); };
  sns_provider provider(settings);

  std::vector<push> batch{sample_push("arn:a"), sample_push("arn:disabled"), sample_push("arn:b"),
                          sample_push("arn:c")};
  auto results = provider.send_all(batch);
  REQUIRE(results.size() == 4);
  CHECK(results[0].kind == push_result::status::delivered);
  CHECK(results[1].kind == push_result::status::invalid_token);
  CHECK(results[2].kind == push_result::status::delivered);
  CHECK(results[3].kind == push_result::status::delivered);
  CHECK(sns.max_in_flight("POST", "/") == 4);

  batch[1] = sample_push("arn:d");
  for (const auto& r : provider.send_all(batch)) CHECK(r.kind == push_result::status::delivered);
  auto reqs = sns.requests();
  REQUIRE(reqs.size() == 8);
  std::set<std::string> dates, arns;
  for (const auto& r : reqs) {
    // Recomputed from what arrived: the signature covers this request's own body and date.
    sigv4_request again{"POST", sns.url() + "/", {{"Content-Type", r.header("Content-Type")}}, r.body};
    auto expected = sigv4_sign(again, settings.credentials, settings.region, "sns", r.header("X-Amz-Date"));
    CHECK(r.header("Authorization") == expected.authorization);
    dates.insert(r.header("X-Amz-Date"));
    arns.insert(form_value(r.body, "TargetArn"));
  }
  CHECK(dates.size() == 8);
  CHECK(arns == std::set<std::string>{"arn:a", "arn:b", "arn:c", "arn:d", "arn:disabled"});
  CHECK(sns.connections() == 4);
}

TEST_CASE("sns: an unreachable SNS endpoint is transient", "[providers]") {
  sns_provider provider(
      settings_for("http://127.0.0.1:" + std::to_string(klynaa::test::closed_port())));
  auto r = provider.send(sample_push(endpoint_arn));
  CHECK(r.kind == push_result::status::transient);
  CHECK_FALSE(r.error.empty());
}

TEST_CASE("sns: the factory makes sns providers that publish to sns_endpoint with the environment's keys", "[providers]") {
  fake_server sns;
  sns.on("POST", "/", {200, publish_ok});
  auto cfg = sns_config(sns.url());
  cfg.env["AWS_SESSION_TOKEN"] = "FwoGZXIvYXdzKlynaaFactoryToken";
  auto made = make_provider(cfg, "/nonexistent-is-fine-for-sns");
  REQUIRE(std::holds_alternative<provider_factory>(made));
  auto provider = std::get<provider_factory>(made)();
  CHECK(provider->name() == "sns");
  CHECK(provider->send(sample_push(endpoint_arn)).kind == push_result::status::delivered);
  auto reqs = sns.requests();
  REQUIRE(reqs.size() == 1);
  CHECK_THAT(reqs[0].header("Authorization"),
             Catch::StartsWith("AWS4-HMAC-SHA256 Credential=AKIAKLYNAATEST000002/") &&
                 Catch::Contains("/eu-central-1/sns/aws4_request, SignedHeaders=content-type;host;"
                                 "x-amz-date;x-amz-security-token, Signature="));
  CHECK(reqs[0].header("X-Amz-Security-Token") == "FwoGZXIvYXdzKlynaaFactoryToken");
  CHECK(form_value(reqs[0].body, "Action") == "Publish");
  CHECK(form_value(reqs[0].body, "MessageStructure") == "json");
}

TEST_CASE("sns: missing AWS credentials or region are config errors naming the variable", "[providers]") {
  temp_dir dir;
  for (const char* var : {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION"}) {
    auto cfg = sns_config("");
    cfg.env.erase(var);
    auto made = make_provider(cfg, dir.path);
    REQUIRE(std::holds_alternative<provider_error>(made));
    CHECK_THAT(std::get<provider_error>(made).message, Catch::Contains(var));
    // The same message stops `klynaa run` at start (exit 2) through the check path.
    auto problem = klynaa::actors::check_actor_config(cfg, dir.path, {"notifier"});
    REQUIRE(problem);
    CHECK(*problem == std::get<provider_error>(made).message);
  }
  auto bad_region = sns_config("");
  bad_region.env["AWS_REGION"] = "EU West";
  auto region = make_provider(bad_region, dir.path);
  REQUIRE(std::holds_alternative<provider_error>(region));
  CHECK_THAT(std::get<provider_error>(region).message, Catch::Contains("AWS_REGION"));

  auto bad_endpoint = make_provider(sns_config("sns.eu-west-1.amazonaws.com"), dir.path);
  REQUIRE(std::holds_alternative<provider_error>(bad_endpoint));
  CHECK_THAT(std::get<provider_error>(bad_endpoint).message, Catch::Contains("sns_endpoint"));

  // Without sns_endpoint the region's public endpoint is used (not contacted here).
  CHECK(std::holds_alternative<provider_factory>(make_provider(sns_config(""), dir.path)));
}

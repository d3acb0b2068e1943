// The `sns` push provider (docs/events-and-functions.md, "Push providers"): Amazon
// SNS `Publish` to the device token
// taken as a platform endpoint ARN (TargetArn), over the Query API, signed with
// AWS Signature Version 4. The signer is here too, exposed for its tests.
//
// The request (what botocore sends for sns.publish(TargetArn=, Message=,
// MessageStructure="json"), byte for byte; tests/actors/sigv4_reference.py
// checks that):
//   POST {sns_endpoint}/
//   Content-Type: application/x-www-form-urlencoded; charset=utf-8
//   Host, X-Amz-Date, [X-Amz-Security-Token], Authorization: AWS4-HMAC-SHA256 ...
//   Action=Publish&Version=2010-03-31&TargetArn={token}&Message={sns_message}&MessageStructure=json
//
// The message (MessageStructure=json: one payload per platform, SNS picks the one
// of the endpoint's platform); `data` is the push's data plus job_id and
// notification_type, every value a string (as fcm_data() in firebase.hpp):
//   {"default": body,
//    "GCM": "{\"notification\":{\"title\":…,\"body\":…},\"data\":{…}}",
//    "APNS": "{\"aps\":{\"alert\":{\"title\":…,\"body\":…}},…data keys…}",
//    "APNS_SANDBOX": same as APNS}
//
// Answers: 2xx delivered; error <Code> EndpointDisabled, or InvalidParameter /
// NotFound about the target ARN or endpoint → invalid_token; Throttling (any
// status), 408, 429, 5xx, no answer → transient; other 4xx permanent.
//
// Batches (send_all, the pushes of one job): each Publish is signed on its own,
// then all are sent concurrently (http_multi, at most 8 at once, connections kept
// for the next batch).
//
// Threading: sigv4_* functions are pure and thread-safe; an sns_provider is used
// by one worker thread at a time. Nothing here throws. The secret key and session
// token never appear in messages or logs.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "actors/http.hpp"
#include "actors/providers.hpp"

namespace klynaa::actors {

struct aws_credentials {
  std::string access_key_id;      ///< AWS_ACCESS_KEY_ID
  std::string secret_access_key;  ///< AWS_SECRET_ACCESS_KEY; never logged
  std::string session_token;      ///< AWS_SESSION_TOKEN; "" = none; never logged
};

/// One request to sign. The signer adds Host (from the URL: lower-case host, the
/// port unless it is the scheme's default) and X-Amz-Date, plus
/// X-Amz-Security-Token when the credentials have a session token, and signs
/// those with every header of `headers`.
struct sigv4_request {
  std::string method;                ///< "POST"
  std::string url;                   ///< absolute http(s) URL; path and query are signed
  std::vector<http_header> headers;  ///< e.g. Content-Type; not Host, X-Amz-Date
  std::string body;
};

/// A signature and the steps that led to it (the steps are for tests and debugging;
/// none contains the secret).
struct sigv4_signature {
  std::string canonical_request;
  std::string string_to_sign;
  std::string signature;      ///< lower-case hex
  std::string authorization;  ///< "AWS4-HMAC-SHA256 Credential=…, SignedHeaders=…, Signature=…"
  /// The headers to send besides the request's own: Host, X-Amz-Date,
  /// [X-Amz-Security-Token], Authorization.
  std::vector<http_header> headers;
};

/// Signs `req` for `region` and `service` ("sns") at `amz_date`
/// ("YYYYMMDDTHHMMSSZ", UTC). On a URL it cannot parse, returns a signature with
/// empty `authorization`.
sigv4_signature sigv4_sign(const sigv4_request& req, const aws_credentials& creds,
                           const std::string& region, const std::string& service,
                           const std::string& amz_date);

/// The derived signing key kSigning = HMAC(HMAC(HMAC(HMAC("AWS4"+secret, date),
/// region), service), "aws4_request"), lower-case hex; `date` is "YYYYMMDD".
std::string sigv4_signing_key_hex(const std::string& secret, const std::string& date,
                                  const std::string& region, const std::string& service);

/// "YYYYMMDDTHHMMSSZ" of a UTC time in ms since the epoch.
std::string amz_date(int64_t unix_ms);

/// application/x-www-form-urlencoded, as Python's urlencode (and so botocore)
/// writes it: ALPHA / DIGIT / "-" / "." / "_" / "~" kept, space as "+", the rest
/// percent-encoded as UTF-8 bytes.
std::string form_encode(std::string_view text);

/// The Message of the Publish request for `p` (see the top of this file).
std::string sns_message(const push& p);

/// The form body of Publish to `target_arn` with `message`, MessageStructure json.
std::string sns_publish_body(const std::string& target_arn, const std::string& message);

struct sns_settings {
  std::string endpoint;  ///< "https://sns.eu-west-1.amazonaws.com" (no trailing path needed)
  std::string region;    ///< AWS_REGION
  aws_credentials credentials;
  http_options http;
  /// Wall clock in ms since the epoch, for X-Amz-Date; tests pin it.
  std::function<int64_t()> now_ms;
};

/// `sns` provider: one signed Publish per push; send_all() sends a batch's
/// Publish requests concurrently, at most `max_connections` at once.
class sns_provider : public push_provider {
 public:
  explicit sns_provider(sns_settings settings,
                        int max_connections = http_multi::default_max_connections);
  push_result send(const push& p) override;
  std::vector<push_result> send_all(const std::vector<push>& pushes) override;
  std::string_view name() const override { return "sns"; }

 private:
  /// The signed Publish of `p`, or nothing when the endpoint cannot be parsed.
  std::optional<http_request> signed_publish(const push& p) const;

  sns_settings settings_;
  std::string url_;  ///< endpoint with the path "/" when it had none
  http_multi http_;
};

/// The factory for notifications.service = "sns": needs AWS_ACCESS_KEY_ID,
/// AWS_SECRET_ACCESS_KEY and AWS_REGION in cfg.env (AWS_SESSION_TOKEN optional),
/// and notifications.sns_endpoint, when set, an http(s) URL (default
/// https://sns.{AWS_REGION}.amazonaws.com). Timeouts and CA file from [django].
/// Errors name the variable or key.
/// With `loop`, the publishes made on a job fiber go through it (downstream "sns").
std::variant<provider_factory, provider_error> make_sns_provider(const protocol::config& cfg,
                                                                 std::shared_ptr<http_loop> loop = nullptr);

}  // namespace klynaa::actors

// AWS Signature Version 4 and the sns push provider (see sns.hpp).
//
// SigV4 in four steps (AWS General Reference, "Create a signed AWS API request"):
// canonical request → string to sign → signing key → signature. botocore's
// SigV4Auth is the reference the tests compare against.
#include "actors/sns.hpp"

#include <algorithm>
#include <cctype>
#include <ctime>
#include <optional>

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "actors/firebase.hpp"  // fcm_data(): the same string-valued data for both
#include "protocol/log.hpp"

namespace klynaa::actors {
namespace {

std::string hex(const unsigned char* data, size_t n) {
  static const char* digits = "0123456789abcdef";
  std::string out;
  out.reserve(n * 2);
  for (size_t i = 0; i < n; ++i) {
    out.push_back(digits[data[i] >> 4]);
    out.push_back(digits[data[i] & 15]);
  }
  return out;
}

std::string sha256_hex(std::string_view data) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_Digest(data.data(), data.size(), md, &len, EVP_sha256(), nullptr);
  return hex(md, len);
}

std::string hmac_sha256(std::string_view key, std::string_view data) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()),
       reinterpret_cast<const unsigned char*>(data.data()), data.size(), md, &len);
  return std::string(reinterpret_cast<const char*>(md), len);
}

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}

struct url_parts {
  std::string scheme, host, path, query;  // host as the Host header carries it
};

/// http(s)://host[:port][/path][?query] (no user info, no fragment).
std::optional<url_parts> split_url(const std::string& url) {
  url_parts u;
  auto sep = url.find("://");
  if (sep == std::string::npos) return std::nullopt;
  u.scheme = lower(url.substr(0, sep));
  if (u.scheme != "http" && u.scheme != "https") return std::nullopt;
  size_t start = sep + 3;
  size_t end = url.find_first_of("/?#", start);
  std::string authority = url.substr(start, end == std::string::npos ? std::string::npos : end - start);
  if (authority.empty() || authority.find('@') != std::string::npos) return std::nullopt;
  authority = lower(authority);
  // Like botocore's _host_from_url: the port only when it is not the default.
  auto colon = authority.rfind(':');
  if (colon != std::string::npos && authority.find(']', colon) == std::string::npos) {
    std::string port = authority.substr(colon + 1);
    if ((u.scheme == "http" && port == "80") || (u.scheme == "https" && port == "443") || port.empty())
      authority.resize(colon);
  }
  u.host = authority;
  if (end != std::string::npos) {
    std::string rest = url.substr(end);
    rest = rest.substr(0, rest.find('#'));
    auto q = rest.find('?');
    u.path = rest.substr(0, q);
    if (q != std::string::npos) u.query = rest.substr(q + 1);
  }
  if (u.path.empty()) u.path = "/";
  return u;
}

/// The canonical URI: the path with every byte but unreserved characters and
/// "/" percent-encoded (as botocore's quote(path, safe="/~")).
std::string canonical_uri(const std::string& path) {
  static const char* digits = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : path) {
    if (std::isalnum(c) || c == '-' || c == '.' || c == '_' || c == '~' || c == '/') {
      out.push_back(static_cast<char>(c));
    } else {
      out.push_back('%');
      out.push_back(digits[c >> 4]);
      out.push_back(digits[c & 15]);
    }
  }
  return out;
}

/// The canonical query: the URL's (already encoded) pairs sorted by name, then value.
std::string canonical_query(const std::string& query) {
  if (query.empty()) return "";
  std::vector<std::pair<std::string, std::string>> pairs;
  size_t pos = 0;
  while (pos <= query.size()) {
    size_t amp = query.find('&', pos);
    std::string pair = query.substr(pos, amp == std::string::npos ? std::string::npos : amp - pos);
    auto eq = pair.find('=');
    pairs.emplace_back(pair.substr(0, eq), eq == std::string::npos ? "" : pair.substr(eq + 1));
    if (amp == std::string::npos) break;
    pos = amp + 1;
  }
  std::sort(pairs.begin(), pairs.end());
  std::string out;
  for (const auto& [k, v] : pairs) out += (out.empty() ? "" : "&") + k + "=" + v;
  return out;
}

/// Trimall (SigV4): leading and trailing blanks removed, inner runs made one space.
std::string trim_all(const std::string& v) {
  std::string out;
  bool blank = false;
  for (unsigned char c : v) {
    if (std::isspace(c)) {
      blank = true;
      continue;
    }
    if (blank && !out.empty()) out.push_back(' ');
    blank = false;
    out.push_back(static_cast<char>(c));
  }
  return out;
}

std::string xml_unescape(std::string s) {
  static const std::pair<const char*, const char*> entities[] = {
      {"&lt;", "<"}, {"&gt;", ">"}, {"&quot;", "\""}, {"&apos;", "'"}, {"&amp;", "&"}};
  for (const auto& [from, to] : entities) {
    std::string f(from);
    for (size_t p = s.find(f); p != std::string::npos; p = s.find(f, p + 1)) s.replace(p, f.size(), to);
  }
  return s;
}

/// The text of the first <tag>…</tag> in an AWS error body, or "".
std::string xml_field(const std::string& body, const std::string& tag) {
  auto open = body.find("<" + tag + ">");
  if (open == std::string::npos) return "";
  open += tag.size() + 2;
  auto close = body.find("</" + tag + ">", open);
  if (close == std::string::npos) return "";
  return xml_unescape(body.substr(open, close - open));
}

bool contains_ci(const std::string& text, const std::string& needle) {
  return lower(text).find(lower(needle)) != std::string::npos;
}

int64_t wall_now_ms() { return log::now_ms(); }

push_result fail(push_result::status k, std::string msg, int status) {
  return push_result::fail(k, std::move(msg), status);
}

/// SNS's answer to a Publish, as a push_result (see sns.hpp).
push_result classify_sns(const http_response& r) {
  if (r.status >= 200 && r.status < 300) return push_result::delivered();
  std::string code = xml_field(r.body, "Code");
  std::string message = xml_field(r.body, "Message");
  std::string detail = code.empty() ? "" : " (" + code + (message.empty() ? "" : ": " + message) + ")";
  if (code == "EndpointDisabled" ||
      ((code == "InvalidParameter" || code == "NotFound") &&
       (contains_ci(message, "TargetArn") || contains_ci(message, "endpoint"))))
    return fail(push_result::status::invalid_token,
                "SNS answered HTTP " + std::to_string(r.status) + detail +
                    ": the endpoint is no longer valid.",
                r.status);
  if (contains_ci(code, "Throttl") || code == "TooManyRequestsException")
    return fail(push_result::status::transient,
                "SNS answered HTTP " + std::to_string(r.status) + detail + "; it will be retried.",
                r.status);
  nodes::job_result c = classify(r, "SNS Publish");
  const bool later = c.kind == nodes::outcome::transient || c.kind == nodes::outcome::deferred;
  push_result out = push_result::fail(later ? push_result::status::transient : push_result::status::permanent,
                                      c.message + detail, c.http_status);
  if (r.status == 403)
    out.error += " Check AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_REGION.";
  out.retry_after_ms = c.retry_after_ms;
  out.circuit_open = c.kind == nodes::outcome::deferred;  // not sent (Retry-After pause): no attempt spent
  return out;
}

}  // namespace

std::string amz_date(int64_t unix_ms) {
  time_t t = static_cast<time_t>(unix_ms / 1000);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y%m%dT%H%M%SZ", &tm);
  return buf;
}

std::string form_encode(std::string_view text) {
  static const char* digits = "0123456789ABCDEF";
  std::string out;
  out.reserve(text.size());
  for (unsigned char c : text) {
    if (std::isalnum(c) || c == '-' || c == '.' || c == '_' || c == '~') {
      out.push_back(static_cast<char>(c));
    } else if (c == ' ') {
      out.push_back('+');
    } else {
      out.push_back('%');
      out.push_back(digits[c >> 4]);
      out.push_back(digits[c & 15]);
    }
  }
  return out;
}

std::string sigv4_signing_key_hex(const std::string& secret, const std::string& date,
                                  const std::string& region, const std::string& service) {
  std::string k = hmac_sha256("AWS4" + secret, date);
  k = hmac_sha256(k, region);
  k = hmac_sha256(k, service);
  k = hmac_sha256(k, "aws4_request");
  return hex(reinterpret_cast<const unsigned char*>(k.data()), k.size());
}

sigv4_signature sigv4_sign(const sigv4_request& req, const aws_credentials& creds,
                           const std::string& region, const std::string& service,
                           const std::string& date_time) {
  sigv4_signature s;
  auto url = split_url(req.url);
  if (!url || date_time.size() < 8) return s;

  // The headers to sign: the request's, Host, X-Amz-Date, the session token.
  std::vector<http_header> added{{"Host", url->host}, {"X-Amz-Date", date_time}};
  if (!creds.session_token.empty()) added.push_back({"X-Amz-Security-Token", creds.session_token});
  std::map<std::string, std::string> canonical;  // lower-case name → values joined by ","
  std::vector<http_header> to_sign = req.headers;
  to_sign.insert(to_sign.end(), added.begin(), added.end());
  for (const auto& h : to_sign) {
    std::string& v = canonical[lower(h.name)];
    v += (v.empty() ? "" : ",") + trim_all(h.value);
  }
  std::string headers_block, signed_headers;
  for (const auto& [name, value] : canonical) {
    headers_block += name + ":" + value + "\n";
    signed_headers += (signed_headers.empty() ? "" : ";") + name;
  }

  s.canonical_request = req.method + "\n" + canonical_uri(url->path) + "\n" +
                        canonical_query(url->query) + "\n" + headers_block + "\n" +
                        signed_headers + "\n" + sha256_hex(req.body);
  std::string date = date_time.substr(0, 8);
  std::string scope = date + "/" + region + "/" + service + "/aws4_request";
  s.string_to_sign =
      "AWS4-HMAC-SHA256\n" + date_time + "\n" + scope + "\n" + sha256_hex(s.canonical_request);

  std::string k = hmac_sha256("AWS4" + creds.secret_access_key, date);
  k = hmac_sha256(k, region);
  k = hmac_sha256(k, service);
  k = hmac_sha256(k, "aws4_request");
  std::string mac = hmac_sha256(k, s.string_to_sign);
  s.signature = hex(reinterpret_cast<const unsigned char*>(mac.data()), mac.size());
  s.authorization = "AWS4-HMAC-SHA256 Credential=" + creds.access_key_id + "/" + scope +
                    ", SignedHeaders=" + signed_headers + ", Signature=" + s.signature;
  s.headers = added;
  s.headers.push_back({"Authorization", s.authorization});
  return s;
}

std::string sns_message(const push& p) {
  nlohmann::json data = fcm_data(p);
  nlohmann::json gcm = {{"notification", {{"title", p.title}, {"body", p.body}}}, {"data", data}};
  nlohmann::json apns = data;  // custom keys sit beside "aps" (APNs convention)
  apns["aps"] = {{"alert", {{"title", p.title}, {"body", p.body}}}};
  auto dump = [](const nlohmann::json& j) {
    return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  };
  nlohmann::json message = {{"default", p.body},
                            {"GCM", dump(gcm)},
                            {"APNS", dump(apns)},
                            {"APNS_SANDBOX", dump(apns)}};
  return dump(message);
}

std::string sns_publish_body(const std::string& target_arn, const std::string& message) {
  // The parameter order botocore's query serializer uses (Action, Version, then
  // the Publish input shape's order), so the body compares byte for byte.
  return "Action=Publish&Version=2010-03-31&TargetArn=" + form_encode(target_arn) +
         "&Message=" + form_encode(message) + "&MessageStructure=json";
}

// ---- sns_provider ----

sns_provider::sns_provider(sns_settings settings, int max_connections)
    : settings_(std::move(settings)), http_(settings_.http, max_connections) {
  if (!settings_.now_ms) settings_.now_ms = wall_now_ms;
  url_ = settings_.endpoint;
  auto parts = split_url(url_);
  // "https://host" and "https://host/" are the same request: path "/".
  if (parts && url_.find('/', url_.find("://") + 3) == std::string::npos) url_ += "/";
}

std::optional<http_request> sns_provider::signed_publish(const push& p) const {
  sigv4_request req;
  req.method = "POST";
  req.url = url_;
  req.headers = {{"Content-Type", "application/x-www-form-urlencoded; charset=utf-8"}};
  req.body = sns_publish_body(p.token, sns_message(p));
  sigv4_signature sig = sigv4_sign(req, settings_.credentials, settings_.region, "sns",
                                   amz_date(settings_.now_ms()));
  if (sig.authorization.empty()) return std::nullopt;
  std::vector<http_header> headers = req.headers;
  headers.insert(headers.end(), sig.headers.begin(), sig.headers.end());
  headers.push_back({"Accept", "text/xml"});  // not signed: added after signing, as botocore's own
  return http_request{"POST", url_, std::move(headers), std::move(req.body)};
}

push_result sns_provider::send(const push& p) { return send_all({p}).front(); }

std::vector<push_result> sns_provider::send_all(const std::vector<push>& pushes) {
  std::vector<push_result> out(pushes.size());
  std::vector<http_request> requests;
  std::vector<size_t> sent;  // requests[k] is the Publish of pushes[sent[k]]
  for (size_t i = 0; i < pushes.size(); ++i) {
    auto req = signed_publish(pushes[i]);
    if (!req) {
      out[i] = push_result::fail(push_result::status::permanent,
                                 "[notifications] sns_endpoint: cannot parse \"" + settings_.endpoint + "\"");
      continue;
    }
    requests.push_back(std::move(*req));
    sent.push_back(i);
  }
  std::vector<http_response> answers = http_.perform(requests);
  for (size_t k = 0; k < answers.size(); ++k) {
    count_downstream("sns", outcome_label(answers[k]));
    out[sent[k]] = classify_sns(answers[k]);
  }
  return out;
}

// ---- factory ----

std::variant<provider_factory, provider_error> make_sns_provider(const protocol::config& cfg,
                                                                 std::shared_ptr<http_loop> loop) {
  auto env = [&](const char* name) -> std::string {
    auto it = cfg.env.find(name);
    return it == cfg.env.end() ? "" : it->second;
  };
  const std::string prefix = "[notifications] service = \"sns\": ";
  sns_settings s;
  s.credentials.access_key_id = env("AWS_ACCESS_KEY_ID");
  s.credentials.secret_access_key = env("AWS_SECRET_ACCESS_KEY");
  s.credentials.session_token = env("AWS_SESSION_TOKEN");
  s.region = env("AWS_REGION");
  for (const auto& [name, value] :
       {std::pair<const char*, const std::string*>{"AWS_ACCESS_KEY_ID", &s.credentials.access_key_id},
        {"AWS_SECRET_ACCESS_KEY", &s.credentials.secret_access_key},
        {"AWS_REGION", &s.region}})
    if (value->empty()) return provider_error{prefix + name + " is not set; SNS needs it to sign requests"};
  if (!std::all_of(s.region.begin(), s.region.end(),
                   [](unsigned char c) { return std::islower(c) || std::isdigit(c) || c == '-'; }))
    return provider_error{prefix + "AWS_REGION \"" + s.region +
                          "\" is not a region name (like eu-west-1)"};
  s.endpoint = cfg.notifications.sns_endpoint.empty()
                   ? "https://sns." + s.region + ".amazonaws.com"
                   : cfg.notifications.sns_endpoint;
  if (!split_url(s.endpoint))
    return provider_error{"[notifications] sns_endpoint: expected an http:// or https:// URL, got \"" +
                          s.endpoint + "\""};
  s.http.connect_timeout_ms = cfg.django.connect_timeout_ms > 0 ? cfg.django.connect_timeout_ms : 2000;
  s.http.timeout_ms = cfg.django.timeout_ms > 0 ? cfg.django.timeout_ms : 10000;
  s.http.ca_file = cfg.notifications.ca_file.empty() ? cfg.django.ca_file : cfg.notifications.ca_file;
  s.http.loop = std::move(loop);
  s.http.downstream = "sns";
  return provider_factory([s] { return std::make_unique<sns_provider>(s); });
}

}  // namespace klynaa::actors

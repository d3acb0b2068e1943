// The firebase push provider: service-account JWT, the shared access-token cache
// and FCM HTTP v1 sends (see firebase.hpp).
#include "actors/firebase.hpp"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

#include "nodes/suspend.hpp"
#include "protocol/log.hpp"

namespace klynaa::actors {
namespace {

constexpr const char* credentials_var = "GOOGLE_APPLICATION_CREDENTIALS";
constexpr int64_t assertion_lifetime_s = 3600;  // Google's maximum
constexpr size_t max_key_file_bytes = 1 << 20;

/// OpenSSL's last error reason (no key material in it), clearing the queue so
/// that it does not leak into the next, unrelated OpenSSL call on this thread.
std::string openssl_error() {
  unsigned long e = ERR_get_error();
  const char* reason = e != 0 ? ERR_reason_error_string(e) : nullptr;
  std::string out = reason != nullptr ? reason : "unknown error";
  ERR_clear_error();
  return out;
}

// Never prompt on a terminal for a passphrase: an encrypted key is an error.
int no_passphrase(char*, int, int, void*) { return 0; }

bool http_url(const std::string& url) {
  return url.rfind("http://", 0) == 0 || url.rfind("https://", 0) == 0;
}

std::string without_trailing_slash(std::string url) {
  while (!url.empty() && url.back() == '/') url.pop_back();
  return url;
}

std::string json_text(const nlohmann::json& j) {
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

push_result from_job_result(const nodes::job_result& c, std::string extra = "") {
  const bool later = c.kind == nodes::outcome::transient || c.kind == nodes::outcome::deferred;
  push_result r = push_result::fail(later ? push_result::status::transient : push_result::status::permanent,
                                    c.message + extra, c.http_status);
  r.retry_after_ms = c.retry_after_ms;
  r.circuit_open = c.kind == nodes::outcome::deferred;  // not sent (Retry-After pause): no attempt spent
  return r;
}

/// What an FCM v1 error body says.
struct fcm_error {
  bool google_json = false;  // the body is {"error": {...}}
  std::string status;        // "NOT_FOUND", "INVALID_ARGUMENT", ...
  std::string message;
  std::string error_code;    // FcmError details errorCode: "UNREGISTERED", ...
  bool about_token = false;  // a BadRequest field violation on message.token
};

fcm_error parse_fcm_error(const std::string& body) {
  fcm_error e;
  auto j = nlohmann::json::parse(body, nullptr, false);
  if (j.is_discarded() || !j.is_object() || !j.contains("error") || !j["error"].is_object()) return e;
  const auto& err = j["error"];
  e.google_json = true;
  if (err.contains("status") && err["status"].is_string()) e.status = err["status"];
  if (err.contains("message") && err["message"].is_string()) e.message = err["message"];
  if (err.contains("details") && err["details"].is_array()) {
    for (const auto& d : err["details"]) {
      if (!d.is_object()) continue;
      if (d.contains("errorCode") && d["errorCode"].is_string()) e.error_code = d["errorCode"];
      if (d.contains("fieldViolations") && d["fieldViolations"].is_array())
        for (const auto& v : d["fieldViolations"])
          if (v.is_object() && v.value("field", "") == "message.token") e.about_token = true;
    }
  }
  if (e.message.find("registration token") != std::string::npos) e.about_token = true;
  return e;
}

push_result classify_fcm(const http_response& r) {
  if (r.status >= 200 && r.status < 300) return push_result::delivered();
  fcm_error e = parse_fcm_error(r.body);
  std::string detail;
  if (e.google_json) {
    std::string code = !e.error_code.empty() ? e.error_code : e.status;
    detail = " (" + code + (e.message.empty() ? "" : ": " + e.message) + ")";
  }
  bool invalid_argument = e.error_code == "INVALID_ARGUMENT" || e.status == "INVALID_ARGUMENT";
  // Only UNREGISTERED (or a 400 about the token itself) invalidates a token, as
  // in Firebase's Admin SDKs: a plain NOT_FOUND (a wrong project) must not make
  // the notifier delete every token it tries.
  if (e.error_code == "UNREGISTERED" || (r.status == 400 && invalid_argument && e.about_token))
    return push_result::fail(push_result::status::invalid_token,
                             "FCM answered HTTP " + std::to_string(r.status) + detail +
                                 ": the token is no longer valid.",
                             r.status);
  std::string hint;
  if (r.status == 404)
    hint = e.google_json ? " Check [notifications] firebase_project."
                         : " FCM's error JSON is missing: check [notifications] firebase_url.";
  if (r.status == 403) hint = " Check that the service account may send for the project.";
  return from_job_result(classify(r, "FCM messages:send"), detail + hint);
}

}  // namespace

// ---- service account ----

std::variant<service_account, std::string> load_service_account(const std::string& path) {
  const std::string where = std::string(credentials_var) + "=" + path + ": ";
  std::ifstream in(path, std::ios::binary);
  if (!in) return where + "cannot read the service account key file: " + std::strerror(errno);
  std::string text;
  text.resize(max_key_file_bytes + 1);
  in.read(text.data(), static_cast<std::streamsize>(text.size()));
  if (in.bad()) return where + "cannot read the service account key file";
  text.resize(static_cast<size_t>(in.gcount()));
  if (text.size() > max_key_file_bytes) return where + "larger than 1 MiB; not a service account key file";
  auto j = nlohmann::json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object())
    return where + "not a JSON object; expected a Google service account key file";
  auto field = [&](const char* name) -> std::string {
    auto it = j.find(name);
    return it != j.end() && it->is_string() ? it->get<std::string>() : std::string();
  };
  if (j.contains("type") && field("type") != "service_account")
    return where + "\"type\" is \"" + field("type") +
           "\"; firebase needs a service account key file (type \"service_account\")";
  service_account a;
  a.client_email = field("client_email");
  a.private_key_pem = field("private_key");
  a.token_uri = field("token_uri");
  a.project_id = field("project_id");
  if (a.client_email.empty()) return where + "no \"client_email\" string in the key file";
  if (a.private_key_pem.empty()) return where + "no \"private_key\" string in the key file";
  std::string error;
  if (!rs256_key::from_pem(a.private_key_pem, error))
    return where + "\"private_key\" is not an unencrypted PEM RSA private key (" + error + ")";
  return a;
}

// ---- RS256 and the JWT ----

std::shared_ptr<const rs256_key> rs256_key::from_pem(const std::string& pem, std::string& error) {
  BIO* bio = BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size()));
  if (bio == nullptr) {
    error = openssl_error();
    return nullptr;
  }
  EVP_PKEY* key = PEM_read_bio_PrivateKey(bio, nullptr, no_passphrase, nullptr);
  BIO_free(bio);
  if (key == nullptr) {
    error = openssl_error();
    return nullptr;
  }
  if (EVP_PKEY_get_base_id(key) != EVP_PKEY_RSA) {
    EVP_PKEY_free(key);
    error = "not an RSA key";
    return nullptr;
  }
  return std::shared_ptr<const rs256_key>(new rs256_key(key));
}

rs256_key::~rs256_key() { EVP_PKEY_free(key_); }

std::optional<std::string> rs256_key::sign(std::string_view data) const {
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  if (ctx == nullptr) return std::nullopt;
  std::optional<std::string> out;
  size_t len = 0;
  if (EVP_DigestSignInit(ctx, nullptr, EVP_sha256(), nullptr, key_) == 1 &&
      EVP_DigestSign(ctx, nullptr, &len, reinterpret_cast<const unsigned char*>(data.data()),
                     data.size()) == 1) {
    std::string sig(len, '\0');
    if (EVP_DigestSign(ctx, reinterpret_cast<unsigned char*>(sig.data()), &len,
                       reinterpret_cast<const unsigned char*>(data.data()), data.size()) == 1) {
      sig.resize(len);
      out = std::move(sig);
    }
  }
  if (!out) ERR_clear_error();
  EVP_MD_CTX_free(ctx);
  return out;
}

std::string base64url(std::string_view data) {
  static const char* alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
  std::string out;
  out.reserve((data.size() + 2) / 3 * 4);
  size_t i = 0;
  auto byte = [&](size_t k) { return static_cast<unsigned char>(data[k]); };
  for (; i + 2 < data.size(); i += 3) {
    uint32_t n = (byte(i) << 16) | (byte(i + 1) << 8) | byte(i + 2);
    for (int s = 18; s >= 0; s -= 6) out.push_back(alphabet[(n >> s) & 63]);
  }
  if (i + 1 == data.size()) {
    uint32_t n = byte(i) << 16;
    out.push_back(alphabet[(n >> 18) & 63]);
    out.push_back(alphabet[(n >> 12) & 63]);
  } else if (i + 2 == data.size()) {
    uint32_t n = (byte(i) << 16) | (byte(i + 1) << 8);
    out.push_back(alphabet[(n >> 18) & 63]);
    out.push_back(alphabet[(n >> 12) & 63]);
    out.push_back(alphabet[(n >> 6) & 63]);
  }
  return out;
}

std::string google_jwt_assertion(const rs256_key& key, const std::string& client_email,
                                 const std::string& audience, int64_t iat_s) {
  nlohmann::ordered_json claims;
  claims["iss"] = client_email;
  claims["scope"] = firebase_scope;
  claims["aud"] = audience;
  claims["iat"] = iat_s;
  claims["exp"] = iat_s + assertion_lifetime_s;
  std::string signing_input = base64url(R"({"alg":"RS256","typ":"JWT"})") + "." +
                              base64url(claims.dump(-1, ' ', false,
                                                    nlohmann::ordered_json::error_handler_t::replace));
  auto sig = key.sign(signing_input);
  if (!sig) return "";
  return signing_input + "." + base64url(*sig);
}

// ---- FCM message ----

nlohmann::json fcm_data(const push& p) {
  nlohmann::json data = nlohmann::json::object();
  if (p.data.is_object()) {
    for (const auto& [k, v] : p.data.items()) {
      if (v.is_null()) continue;
      data[k] = v.is_string() ? v.get<std::string>() : json_text(v);
    }
  }
  data["job_id"] = p.job_id;
  data["notification_type"] = p.notification_type;
  for (const char* reserved : {"from", "notification", "message_type"}) data.erase(reserved);
  for (auto it = data.begin(); it != data.end();) {
    if (it.key().rfind("google", 0) == 0 || it.key().rfind("gcm", 0) == 0)
      it = data.erase(it);
    else
      ++it;
  }
  return data;
}

nlohmann::json fcm_request(const push& p) {
  return {{"message",
           {{"token", p.token},
            {"notification", {{"title", p.title}, {"body", p.body}}},
            {"data", fcm_data(p)}}}};
}

// ---- google_token_source ----

google_token_source::google_token_source(service_account account,
                                         std::shared_ptr<const rs256_key> key,
                                         std::string token_url, http_options opts,
                                         std::function<int64_t()> now_ms)
    : account_(std::move(account)),
      key_(std::move(key)),
      token_url_(std::move(token_url)),
      now_ms_(now_ms ? std::move(now_ms) : [] { return log::now_ms(); }),
      http_(std::move(opts)) {}

google_token_source::access google_token_source::get() {
  std::unique_lock<std::mutex> lock(mutex_);
  for (;;) {
    const int64_t now = now_ms_();
    if (!token_.empty() && now < refresh_at_ms_) return {token_, std::nullopt};
    if (!fetching_) break;
    // Another caller fetches: the old token serves until it expires.
    if (!token_.empty() && now < expires_at_ms_) return {token_, std::nullopt};
    if (!wait_for_fetch(lock))
      return {"", push_result::fail(push_result::status::transient,
                                    "The job was stopped while it waited for a Firebase access token.")};
  }
  fetching_ = true;
  ++fetches_;
  lock.unlock();
  // No lock held here: on a job fiber the request suspends (nodes/suspend.hpp).
  fetched f;
  try {
    f = fetch(now_ms_());
  } catch (...) {
    f.a = {"", push_result::fail(push_result::status::transient, "Fetching a Firebase access token failed.")};
  }
  lock.lock();
  fetching_ = false;
  ++generation_;
  if (!f.a.failure) {
    token_ = f.a.token;
    refresh_at_ms_ = f.refresh_at_ms;
    expires_at_ms_ = f.expires_at_ms;
  }
  std::vector<std::function<void()>> waiters;
  waiters.swap(waiters_);
  lock.unlock();
  fetched_.notify_all();
  for (auto& wake : waiters) wake();
  return f.a;
}

bool google_token_source::wait_for_fetch(std::unique_lock<std::mutex>& lock) {
  const uint64_t generation = generation_;
  if (nodes::current_job_fiber() == nullptr) {
    fetched_.wait(lock, [&] { return generation_ != generation; });
    return true;
  }
  // A job fiber: suspend (never with the lock held) until the fetch wakes it.
  lock.unlock();
  auto slot = std::make_shared<std::function<void()>>();
  const bool waited = nodes::suspend_job([&](std::function<void()> wake) -> std::function<void()> {
    std::lock_guard<std::mutex> guard(mutex_);
    if (generation_ != generation) {
      wake();  // it ended meanwhile
      return [] {};
    }
    *slot = wake;
    waiters_.push_back([slot] { if (*slot) (*slot)(); });
    return [slot] {  // the job was abandoned: wake it now; the fetch's call is then a no-op
      auto w = *slot;
      if (w) w();
    };
  });
  lock.lock();
  return waited && !(nodes::current_job_fiber() != nullptr && nodes::current_job_fiber()->abandoned);
}

void google_token_source::invalidate(const std::string& token) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (token_ == token) token_.clear();
}

uint64_t google_token_source::fetches() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return fetches_;
}

google_token_source::fetched google_token_source::fetch(int64_t now) {
  auto failed = [](push_result::status k, std::string msg, std::optional<int> status = {}) {
    return fetched{access{"", push_result::fail(k, std::move(msg), status)}};
  };
  std::string assertion = google_jwt_assertion(*key_, account_.client_email, token_url_, now / 1000);
  if (assertion.empty())
    return failed(push_result::status::permanent,
                  std::string("Signing the OAuth2 assertion with the key of ") + credentials_var +
                      " failed.");
  http_response r = http_.request(
      "POST", token_url_,
      {{"Content-Type", "application/x-www-form-urlencoded"}, {"Accept", "application/json"}},
      "grant_type=" + http_session::escape("urn:ietf:params:oauth:grant-type:jwt-bearer") +
          "&assertion=" + http_session::escape(assertion));
  count_downstream("google_oauth", outcome_label(r));
  auto body = nlohmann::json::parse(r.body, nullptr, false);
  if (r.status >= 200 && r.status < 300) {
    if (body.is_discarded() || !body.is_object() || !body.contains("access_token") ||
        !body["access_token"].is_string() || body["access_token"].get<std::string>().empty())
      return {{"", from_job_result(bad_response(r.status, "google_oauth", "The OAuth2 token endpoint",
                                                "no access_token"))}};
    int64_t expires_in = 3600;
    if (body.contains("expires_in") && body["expires_in"].is_number_integer())
      expires_in = std::max<int64_t>(1, body["expires_in"].get<int64_t>());
    // Refresh a little early, so a token never expires in flight.
    int64_t margin = std::min<int64_t>(300, expires_in / 2);
    log::debug("notifier", "fetched a firebase access token", {{"expires_in", expires_in}});
    return {{body["access_token"].get<std::string>(), std::nullopt},
            now + (expires_in - margin) * 1000,
            now + expires_in * 1000};
  }
  nodes::job_result c = classify(r, "POST to the OAuth2 token endpoint");
  if (c.kind != nodes::outcome::permanent) return {{"", from_job_result(c)}};  // transient or deferred
  // A refusal: name OAuth's error code and description, never echo the body whole.
  std::string why;
  if (!body.is_discarded() && body.is_object()) {
    if (body.contains("error") && body["error"].is_string()) why = body["error"].get<std::string>();
    if (body.contains("error_description") && body["error_description"].is_string())
      why += ": " + body["error_description"].get<std::string>();
  }
  return failed(push_result::status::permanent,
                "The OAuth2 token endpoint refused the service account of " +
                    std::string(credentials_var) + " (HTTP " + std::to_string(r.status) +
                    (why.empty() ? "" : ", " + why) +
                    "); check the key file, that the account is enabled, and the clock.",
                r.status);
}

// ---- firebase_provider ----

firebase_provider::firebase_provider(std::shared_ptr<google_token_source> tokens,
                                     std::string send_url, http_options opts, int max_connections)
    : tokens_(std::move(tokens)),
      send_url_(std::move(send_url)),
      http_(std::move(opts), max_connections) {}

std::vector<http_response> firebase_provider::post(const std::string& access_token,
                                                   const std::vector<std::string>& bodies,
                                                   const std::vector<size_t>& which) {
  std::vector<http_request> requests;
  requests.reserve(which.size());
  for (size_t i : which)
    requests.push_back({"POST", send_url_,
                        {{"Authorization", "Bearer " + access_token},
                         {"Content-Type", "application/json; charset=utf-8"},
                         {"Accept", "application/json"}},
                        bodies[i]});
  std::vector<http_response> answers = http_.perform(requests);
  for (const auto& r : answers) count_downstream("firebase", outcome_label(r));
  return answers;
}

push_result firebase_provider::send(const push& p) { return send_all({p}).front(); }

std::vector<push_result> firebase_provider::send_all(const std::vector<push>& pushes) {
  if (pushes.empty()) return {};
  std::vector<std::string> bodies;
  bodies.reserve(pushes.size());
  for (const auto& p : pushes) bodies.push_back(json_text(fcm_request(p)));

  // One access token for the whole batch, before any send.
  auto a = tokens_->get();
  if (a.failure) return std::vector<push_result>(pushes.size(), *a.failure);
  std::vector<size_t> all(pushes.size());
  for (size_t i = 0; i < all.size(); ++i) all[i] = i;
  std::vector<http_response> answers = post(a.token, bodies, all);

  std::vector<std::optional<push_result>> decided(pushes.size());
  std::vector<size_t> refused;  // the pushes FCM answered 401
  for (size_t i = 0; i < answers.size(); ++i)
    if (answers[i].status == 401) refused.push_back(i);
  if (!refused.empty()) {
    // The token was revoked or expired early: one fresh token for the batch,
    // one more try for each push that was refused.
    tokens_->invalidate(a.token);
    auto fresh = tokens_->get();
    if (fresh.failure) {
      for (size_t i : refused) decided[i] = *fresh.failure;
    } else {
      std::vector<http_response> again = post(fresh.token, bodies, refused);
      for (size_t k = 0; k < refused.size(); ++k) {
        size_t i = refused[k];
        if (again[k].status == 401)
          decided[i] = push_result::fail(push_result::status::transient,
                                         "FCM answered HTTP 401 to a freshly fetched access token; "
                                         "it will be retried.",
                                         401);
        else
          answers[i] = std::move(again[k]);
      }
    }
  }

  std::vector<push_result> out;
  out.reserve(pushes.size());
  for (size_t i = 0; i < pushes.size(); ++i)
    out.push_back(decided[i] ? std::move(*decided[i]) : classify_fcm(answers[i]));
  return out;
}

// ---- factory ----

std::variant<provider_factory, provider_error> make_firebase_provider(const protocol::config& cfg,
                                                                      std::shared_ptr<http_loop> loop) {
  const std::string prefix = "[notifications] service = \"firebase\": ";
  auto it = cfg.env.find(credentials_var);
  if (it == cfg.env.end() || it->second.empty())
    return provider_error{prefix + credentials_var +
                          " is not set; it must name the service account's JSON key file"};
  auto loaded = load_service_account(it->second);
  if (auto* err = std::get_if<std::string>(&loaded)) return provider_error{prefix + *err};
  service_account account = std::get<service_account>(std::move(loaded));

  const auto& n = cfg.notifications;
  std::string project = !n.firebase_project.empty() ? n.firebase_project : account.project_id;
  if (project.empty())
    return provider_error{prefix + "no project: set [notifications] firebase_project, or use a key "
                          "file with \"project_id\" (" + credentials_var + ")"};
  std::string token_url = !n.firebase_token_url.empty() ? n.firebase_token_url : account.token_uri;
  if (!http_url(token_url))
    return provider_error{"[notifications] firebase_token_url: expected an http:// or https:// URL "
                          "(or \"\" with \"token_uri\" in the key file), got \"" + token_url + "\""};
  if (!http_url(n.firebase_url))
    return provider_error{"[notifications] firebase_url: expected an http:// or https:// URL, got \"" +
                          n.firebase_url + "\""};

  http_options opts;
  opts.connect_timeout_ms = cfg.django.connect_timeout_ms > 0 ? cfg.django.connect_timeout_ms : 2000;
  opts.timeout_ms = cfg.django.timeout_ms > 0 ? cfg.django.timeout_ms : 10000;
  opts.ca_file = cfg.notifications.ca_file.empty() ? cfg.django.ca_file : cfg.notifications.ca_file;
  std::string error;
  auto key = rs256_key::from_pem(account.private_key_pem, error);  // checked by load_service_account
  if (!key) return provider_error{prefix + credentials_var + ": " + error};
  // Created before opts gets the loop: it fetches under its lock, which must
  // never be held across a fiber's suspension (nodes/suspend.hpp).
  auto tokens = std::make_shared<google_token_source>(std::move(account), std::move(key), token_url, opts);
  opts.loop = std::move(loop);
  opts.downstream = "firebase";
  std::string send_url = without_trailing_slash(n.firebase_url) + "/v1/projects/" +
                         http_session::escape(project) + "/messages:send";
  return provider_factory([tokens, send_url, opts] {
    return std::make_unique<firebase_provider>(tokens, send_url, opts);
  });
}

}  // namespace klynaa::actors

// The `firebase` push provider (docs/events-and-functions.md, "Push providers"):
// Firebase Cloud Messaging HTTP v1,
// authorised by an OAuth2 access token from a Google service account.
//
// Access token (OAuth2 JWT bearer grant, RFC 7523, as Google's client libraries
// do it): the JSON key file named by GOOGLE_APPLICATION_CREDENTIALS gives
// client_email, private_key (PEM), token_uri and project_id. We sign a JWT with
// RS256 (OpenSSL, SHA-256):
//   header {"alg":"RS256","typ":"JWT"}
//   claims {"iss": client_email, "scope": "https://www.googleapis.com/auth/firebase.messaging",
//           "aud": token URL, "iat": now, "exp": now + 3600}
// and POST `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer&assertion=JWT`
// (form-encoded) to the token URL: notifications.firebase_token_url (default
// Google's https://oauth2.googleapis.com/token, which is also what key files
// carry), or the key file's token_uri when that key is empty. The JWT's aud is
// the same URL. The answer {"access_token", "expires_in"} is
// cached by one google_token_source per node, shared by all notifier workers,
// until min(300 s, expires_in / 2) before it expires.
//
// Send: POST {firebase_url}/v1/projects/{project}/messages:send with
// `Authorization: Bearer {access token}` and fcm_request(push):
//   {"message": {"token": …, "notification": {"title": …, "body": …}, "data": {…}}}
// `project` is notifications.firebase_project, or the key file's project_id.
//
// Answers (FCM v1 error: {"error": {"code", "message", "status", "details": [...]}}):
//  - 2xx → delivered;
//  - details errorCode UNREGISTERED, or 404 with FCM's error JSON (status
//    NOT_FOUND), or 400 INVALID_ARGUMENT about message.token → invalid_token.
//    A 404 without FCM's error JSON is permanent, not invalid_token: that is a
//    wrong firebase_url, and deleting every token for it would be a disaster;
//  - 401 → the access token is forgotten, a new one fetched and the push sent
//    once more; a second 401 is transient;
//  - 408, 429, 5xx, no answer → transient (Retry-After on 429/503 honoured);
//  - other 4xx (403 SENDER_ID_MISMATCH, other INVALID_ARGUMENT, ...) → permanent.
// The token endpoint: no answer, 408, 429, 5xx → transient; another refusal
// (invalid_grant: bad key, revoked account, clock skew) → permanent, naming
// GOOGLE_APPLICATION_CREDENTIALS.
//
// Batches (send_all, the pushes of one job): the access token is taken once, then
// every push is sent concurrently (http_multi, at most 8 at once, connections
// kept for the next batch). If FCM answers 401 to any of them, the token is
// forgotten and one new token fetched for the batch, and each push that got the
// 401 is sent once more with it, again concurrently.
//
// Threading: google_token_source and rs256_key are thread-safe; a
// firebase_provider is used by one worker thread at a time. Nothing here throws.
// The private key and access tokens never appear in messages or logs.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include <nlohmann/json.hpp>

#include "actors/http.hpp"
#include "actors/providers.hpp"

struct evp_pkey_st;  // OpenSSL's EVP_PKEY

namespace klynaa::actors {

/// The OAuth2 scope of FCM sends.
inline constexpr const char* firebase_scope = "https://www.googleapis.com/auth/firebase.messaging";

/// What we use of a Google service-account JSON key file.
struct service_account {
  std::string client_email;
  std::string private_key_pem;  ///< never logged
  std::string token_uri;        ///< may be "" (then notifications.firebase_token_url must be set)
  std::string project_id;       ///< may be "" (then notifications.firebase_project must be set)
};

/// Reads the key file at `path` (named by GOOGLE_APPLICATION_CREDENTIALS) and
/// checks it: readable, a JSON object, "type" (when present) "service_account",
/// non-empty string "client_email" and "private_key", and a private key that
/// OpenSSL reads as an unencrypted RSA PEM. Returns the account, or a sentence
/// naming GOOGLE_APPLICATION_CREDENTIALS, the path and what is wrong (never the
/// key itself).
std::variant<service_account, std::string> load_service_account(const std::string& path);

/// An RSA private key that signs RS256 (RSASSA-PKCS1-v1_5 with SHA-256).
/// Immutable; thread-safe.
class rs256_key {
 public:
  /// Parses an unencrypted PEM RSA private key (PKCS#8 or PKCS#1). Returns null
  /// and sets `error` (OpenSSL's reason, no key material) on failure.
  static std::shared_ptr<const rs256_key> from_pem(const std::string& pem, std::string& error);
  ~rs256_key();
  rs256_key(const rs256_key&) = delete;
  rs256_key& operator=(const rs256_key&) = delete;

  /// The raw signature of `data`, or nothing when OpenSSL fails.
  std::optional<std::string> sign(std::string_view data) const;

 private:
  explicit rs256_key(evp_pkey_st* key) : key_(key) {}
  evp_pkey_st* key_;
};

/// Base64url without padding (RFC 7515 §2).
std::string base64url(std::string_view data);

/// The signed JWT of the service-account flow (see the top of this file):
/// iss = client_email, scope = firebase_scope, aud = audience, iat = iat_s,
/// exp = iat_s + 3600. Returns "" when signing fails.
std::string google_jwt_assertion(const rs256_key& key, const std::string& client_email,
                                 const std::string& audience, int64_t iat_s);

/// The push's data as FCM wants it: every value a string (strings as they are,
/// other JSON values as their JSON text, nulls left out), plus "job_id" and
/// "notification_type" from the push. Keys FCM reserves ("from",
/// "notification", "message_type", and those starting with "google" or "gcm")
/// are left out.
nlohmann::json fcm_data(const push& p);

/// The body of messages:send for `p`.
nlohmann::json fcm_request(const push& p);

/// Access tokens for one service account, cached and shared by the node's
/// firebase providers. Thread-safe: one fetch at a time, under the lock, so
/// workers that need a token while one is being fetched wait for it (bounded by
/// the HTTP timeout) instead of fetching their own.
class google_token_source {
 public:
  /// `token_url` is where the JWT goes and its `aud`. `now_ms` is the wall clock
  /// (tests move it); default: the system clock.
  google_token_source(service_account account, std::shared_ptr<const rs256_key> key,
                      std::string token_url, http_options opts,
                      std::function<int64_t()> now_ms = nullptr);

  /// A token, or why there is none.
  struct access {
    std::string token;                   ///< "" when failed
    std::optional<push_result> failure;  ///< set when no token could be had
  };

  /// The cached token while it is fresh, else a new one from the token endpoint.
  /// One fetch at a time (it goes through the node's event loop when `opts`
  /// has one and the caller is a job fiber, else it blocks): meanwhile other
  /// callers get the old token while it has not expired, or wait for the fetch
  /// (a job fiber suspended, a thread blocked), never fetching themselves.
  access get();

  /// Forgets `token` if it is still the cached one (FCM answered 401 to it); a
  /// token fetched meanwhile by another worker is kept.
  void invalidate(const std::string& token);

  /// How many times the token endpoint was asked (tests, diagnostics).
  uint64_t fetches() const;

 private:
  /// A fetch's outcome; under the lock, store() keeps it for everyone.
  struct fetched {
    access a;
    int64_t refresh_at_ms = 0;
    int64_t expires_at_ms = 0;
  };
  fetched fetch(int64_t now);  // without the lock: it may suspend
  /// Waits, the lock held by `lock` (released meanwhile), until the fetch in
  /// flight ends. False when the caller's job was abandoned meanwhile.
  bool wait_for_fetch(std::unique_lock<std::mutex>& lock);

  const service_account account_;
  const std::shared_ptr<const rs256_key> key_;
  const std::string token_url_;
  std::function<int64_t()> now_ms_;
  mutable std::mutex mutex_;
  std::condition_variable fetched_;  // a fetch ended (threads wait on it)
  http_session http_;           // used by the one fetch in flight (fetching_)
  std::string token_;           // guarded by mutex_
  int64_t refresh_at_ms_ = 0;   // guarded by mutex_: fetch again from then on
  int64_t expires_at_ms_ = 0;   // guarded by mutex_: token_ is not used from then on
  bool fetching_ = false;       // guarded by mutex_: a fetch is in flight
  uint64_t generation_ = 0;     // guarded by mutex_: fetches ended
  std::vector<std::function<void()>> waiters_;  // guarded by mutex_: job fibers to wake
  uint64_t fetches_ = 0;        // guarded by mutex_
};

/// `firebase` provider: one FCM v1 send per push (see the top of this file).
class firebase_provider : public push_provider {
 public:
  /// `send_url` is the whole messages:send URL. At most `max_connections` sends
  /// of a batch are in flight at once.
  firebase_provider(std::shared_ptr<google_token_source> tokens, std::string send_url,
                    http_options opts, int max_connections = http_multi::default_max_connections);
  push_result send(const push& p) override;
  std::vector<push_result> send_all(const std::vector<push>& pushes) override;
  std::string_view name() const override { return "firebase"; }

 private:
  /// POSTs bodies[i] for every i of `which`, concurrently, with `access_token`;
  /// the answers in the order of `which`.
  std::vector<http_response> post(const std::string& access_token,
                                  const std::vector<std::string>& bodies,
                                  const std::vector<size_t>& which);

  std::shared_ptr<google_token_source> tokens_;
  std::string send_url_;
  http_multi http_;
};

/// The factory for notifications.service = "firebase": loads the key file of
/// cfg.env GOOGLE_APPLICATION_CREDENTIALS now (so a bad file stops `klynaa run`
/// at start), picks the project and the token URL, and makes providers that
/// share one google_token_source. Timeouts and CA file from [django]. Errors
/// name GOOGLE_APPLICATION_CREDENTIALS or the config key.
/// With `loop`, the sends and the OAuth2 token fetch made on a job fiber go
/// through it (downstream "firebase"); elsewhere they block.
std::variant<provider_factory, provider_error> make_firebase_provider(const protocol::config& cfg,
                                                                      std::shared_ptr<http_loop> loop = nullptr);

}  // namespace klynaa::actors

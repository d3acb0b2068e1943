// The Django API (docs/events-and-functions.md, "The Django API"), as the job
// system calls it: one method per endpoint, each returning the documented answer
// as a typed value or the job outcome of the failure (docs/events-and-functions.md,
// "Failures and retries", via classify() in http.hpp).
//
// Every request carries `Authorization: Api-Key {key}` and `Accept:
// application/json`, bodies are JSON with `Content-Type: application/json`, and
// the timeouts and CA file come from config [django]. The key is never logged;
// logs show at most log::redact(key) (4 characters).
//
// Failure rules, in one place:
//  - no answer, timeout, 408, 429, 5xx: transient (Retry-After honoured on 429/503);
//  - any other 4xx, and 1xx/3xx: permanent (see classify());
//  - a 2xx whose body is not the documented JSON (unparseable, or a required
//    field missing or of the wrong type): transient "bad_response", counted in
//    downstream_counts(). We chose transient because such answers come from
//    proxies and half-deployed backends far more often than from a Django that
//    really answers garbage; the retry limit still dead-letters a job whose
//    answer stays bad.
// Endpoint-specific exceptions are documented on each method.
//
// Threading: like http_session, one client per worker thread. Nothing throws.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "actors/http.hpp"
#include "nodes/job.hpp"
#include "protocol/config.hpp"

namespace klynaa::actors {

/// A value or the failure that prevented it. When `value` is empty, `error.kind`
/// is transient or permanent and `error` says why.
template <class T>
struct api_result {
  std::optional<T> value;
  nodes::job_result error;

  static api_result ok(T v) {
    api_result r;
    r.value = std::move(v);
    return r;
  }
  static api_result fail(nodes::job_result e) {
    api_result r;
    r.error = std::move(e);
    return r;
  }
  explicit operator bool() const { return value.has_value(); }
  const T& operator*() const { return *value; }
  const T* operator->() const { return &*value; }
};

/// GET /api/serverless/pickups/{id}/ (the fields the actors use; `raw` has all).
struct pickup_info {
  int64_t id = 0;
  std::string status;
  int64_t customer_id = 0;
  std::optional<int64_t> worker_id;  ///< null while unassigned
  nlohmann::json price;              ///< a number, or null when absent
  std::string currency;              ///< "" when absent
  nlohmann::json raw;                ///< the whole answer
};

/// One entry of GET /api/users/{id}/tokens/.
struct push_token {
  std::string token;
  std::string platform;  ///< e.g. "ios", "android"; "" when absent
};

/// One entry of GET /api/users/admins/.
struct admin_user {
  int64_t id = 0;
  std::string email;
};

/// A successful POST /api/serverless/escrow/{pickup_id}/release/.
struct escrow_release {
  bool already_released = false;  ///< 409 {"status": "already_released"}
  nlohmann::json amount;          ///< as Django sent it; null when absent
  nlohmann::json currency;        ///< as Django sent it; null when absent
};

/// One page of GET /api/analytics/pickups/.
struct analytics_page {
  nlohmann::json pickups = nlohmann::json::array();  ///< pickup objects, unvalidated
  std::optional<std::string> next;                   ///< cursor of the next page
};

class django_client {
 public:
  /// Uses cfg.url (trailing "/" ignored), cfg.api_key, the timeouts and ca_file.
  /// With an empty url every call fails transiently with error_code "connect"
  /// (the CLI refuses to start actors without one, docs/configuration.md, "Environment").
  /// With `loop`, calls made on a job fiber go through that event loop and
  /// suspend the fiber (http_options::loop; downstream "django").
  explicit django_client(const protocol::config::django_section& cfg,
                         std::shared_ptr<http_loop> loop = nullptr);

  /// Sends one request to `path` (starting with "/", query included, already
  /// URL-encoded) with the standard headers plus `extra`; `body` is sent as JSON.
  /// Counts the answer in downstream_counts() under service "django".
  http_response request(std::string_view method, const std::string& path,
                        const std::optional<nlohmann::json>& body = std::nullopt,
                        const std::vector<http_header>& extra = {});

  /// GET /api/serverless/pickups/{id}/. 404 is permanent ("http_404").
  api_result<pickup_info> get_pickup(int64_t id);

  /// GET /api/users/{user_id}/tokens/. 404 is permanent; the notifier treats
  /// it as "this user has no tokens" (see notifier.hpp).
  api_result<std::vector<push_token>> get_tokens(int64_t user_id);

  /// DELETE /api/users/{user_id}/tokens/{token}/ with the token URL-encoded.
  /// outcome::ok on 2xx and on 404 (already gone: the delete is idempotent).
  nodes::job_result delete_token(int64_t user_id, const std::string& token);

  /// GET /api/users/admins/.
  api_result<std::vector<admin_user>> get_admins();

  /// POST /api/serverless/escrow/{pickup_id}/release/ with {"reason": reason} and
  /// `Idempotency-Key: escrow-release-{pickup_id}`.
  ///  - 200 {"status": "released", ...} → value (already_released = false);
  ///  - 409 {"status": "already_released"} → value (already_released = true);
  ///  - 409 {"status": "disputed"} → permanent, error_code "disputed";
  ///  - any other 409 body, and 404 → permanent ("http_409", "http_404");
  ///  - a 200 without status "released" → transient "bad_response";
  ///  - the rest per classify().
  api_result<escrow_release> release_escrow(int64_t pickup_id, const std::string& reason);

  /// GET /api/workers/available/: the "workers" array, entries unvalidated.
  api_result<nlohmann::json> get_available_workers();

  /// GET /api/analytics/pickups/?from=…&to=…[&cursor=…] (values URL-encoded).
  api_result<analytics_page> get_analytics_pickups(const std::string& from, const std::string& to,
                                                   const std::optional<std::string>& cursor);

  /// POST /api/reports/ with `report`; the value is the new report's "id".
  api_result<nlohmann::json> post_report(const nlohmann::json& report);

  /// POST /api/cleanup/ with {"older_than_days": n}; the value is "deleted".
  api_result<int64_t> cleanup(int64_t older_than_days);

  /// What logs may show of the API key: log::redact(api_key).
  std::string key_hint() const;

 private:
  /// A 2xx answer with its body parsed (null when empty).
  struct json_answer {
    int status = 0;
    std::string what;  ///< "GET /api/..." for messages
    nlohmann::json body;
    /// The bad_response failure for this answer, as a result of any type.
    template <class T>
    api_result<T> bad(std::string_view detail) const {
      return api_result<T>::fail(bad_response(status, "django", what, detail));
    }
  };

  /// request() + classify(): on 2xx the parsed body (an unparseable body is a
  /// bad_response failure), else the classified failure.
  api_result<json_answer> call_json(std::string_view method, const std::string& path,
                                       const std::optional<nlohmann::json>& body = std::nullopt,
                                       const std::vector<http_header>& extra = {});

  std::string base_url_;
  std::string api_key_;
  http_session http_;
};

}  // namespace klynaa::actors

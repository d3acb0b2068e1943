// Push notification providers (docs/events-and-functions.md, "Push providers"):
// the interface the notifier sends
// through, and its implementations.
//
//  - log (default): one JSON line per push appended to {data_dir}/outbox.jsonl.
//  - webhook: POSTs the same JSON object to notifications.webhook_url.
//  - firebase: FCM HTTP v1 with a service account (firebase.hpp).
//  - sns: Amazon SNS Publish signed with SigV4 (sns.hpp).
//
// Batching: the notifier hands a provider all the pushes of one job at once
// (send_all). The HTTP providers send them concurrently on an http_multi
// (http.hpp): at most http_multi::default_max_connections (8) at a time, over
// connections that stay open for the next job.
//
// Threading: a push_provider is used by one worker thread at a time (one per
// job handler), like the HTTP clients inside it. The log provider's instances
// share one outbox_file, which serialises appends with a mutex.
// Nothing here throws.
#pragma once

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
#include "protocol/config.hpp"

namespace klynaa::actors {

/// One push to one device token.
struct push {
  std::string job_id;             ///< the sendPickupNotification job: pushes are at least once
  int64_t user_id = 0;
  std::string token;
  std::string platform;           ///< as Django listed it; may be ""
  std::string notification_type;  ///< docs/events-and-functions.md, "Functions"
  std::string title;
  std::string body;
  nlohmann::json data = nlohmann::json::object();  ///< {"pickup_id" or "report_id", ...}
};

/// How one push went.
struct push_result {
  enum class status {
    delivered,      ///< the provider took it
    invalid_token,  ///< the token is dead: the notifier deletes it in Django
    transient,      ///< may work later (timeout, 429, 5xx, disk full)
    permanent,      ///< will not work as sent (other 4xx)
  };
  status kind = status::delivered;
  std::string error;                      ///< a sentence, for logs and results
  std::optional<int> http_status;         ///< when a provider answered over HTTP
  std::optional<int64_t> retry_after_ms;  ///< Retry-After of a 429/503
  bool circuit_open = false;              ///< not sent: the provider's circuit breaker is open

  static push_result delivered() { return {}; }
  static push_result fail(status k, std::string error, std::optional<int> http_status = {}) {
    push_result r;
    r.kind = k;
    r.error = std::move(error);
    r.http_status = http_status;
    return r;
  }
};

std::string_view to_string(push_result::status s);

class push_provider {
 public:
  virtual ~push_provider() = default;
  /// Sends one push, blocking up to the provider's timeout. Never throws.
  virtual push_result send(const push& p) = 0;
  /// Sends `pushes` (typically those of one job) and returns one result per
  /// push, in the same order, each what send() would have returned for it.
  /// Blocks until every push has its result. This default sends them one by
  /// one; the HTTP providers override it to send them concurrently. Never throws.
  virtual std::vector<push_result> send_all(const std::vector<push>& pushes);
  /// "log", "webhook", ...: the `service` label of downstream metrics.
  virtual std::string_view name() const = 0;
};

/// The JSON object of the `log` and `webhook` providers (docs/events-and-functions.md,
/// "Push providers") for `p` at `now_ms`, keys in the docs' order: {"ts", "job_id",
/// "user_id", "token", "platform", "notification_type", "title", "body", "data"};
/// ts is ISO 8601 UTC with milliseconds.
nlohmann::ordered_json push_json(const push& p, int64_t now_ms);

/// An append-only JSON-lines file shared by the log providers of one process.
/// Opened with O_APPEND; each line goes out in one write() under the mutex, so
/// lines never interleave, neither between threads nor with another process
/// appending to the same file. No fsync: a line is in the kernel when append()
/// returns, which survives a crash of the process but not of the machine
/// (pushes are at least once anyway: the job runs again if its end was not
/// recorded). Thread-safe.
class outbox_file {
 public:
  /// Opens (creating) `path`; on failure returns nothing and sets `error`.
  static std::shared_ptr<outbox_file> open(const std::string& path, std::string& error);
  ~outbox_file();
  outbox_file(const outbox_file&) = delete;
  outbox_file& operator=(const outbox_file&) = delete;

  /// Appends `line` and a newline. Returns "" or the error (e.g. "No space left
  /// on device").
  std::string append(const std::string& line);
  const std::string& path() const { return path_; }

 private:
  outbox_file(int fd, std::string path) : fd_(fd), path_(std::move(path)) {}
  std::mutex mutex_;
  int fd_;
  std::string path_;
};

/// `log` provider: every push is delivered by appending its line to the outbox.
/// A failed write is transient.
class log_provider : public push_provider {
 public:
  explicit log_provider(std::shared_ptr<outbox_file> outbox) : outbox_(std::move(outbox)) {}
  push_result send(const push& p) override;
  std::string_view name() const override { return "log"; }

 private:
  std::shared_ptr<outbox_file> outbox_;
};

/// `webhook` provider: POSTs push_json() with `Content-Type: application/json`
/// to `url`. 2xx → delivered; 404, 410 → invalid_token; the rest per classify()
/// (http.hpp): no answer, 408, 429, 5xx transient, other 4xx permanent. Timeouts
/// come from `opts` (make_provider uses config [django]'s). send_all() posts the
/// pushes concurrently, at most `max_connections` at once.
class webhook_provider : public push_provider {
 public:
  webhook_provider(std::string url, http_options opts,
                   int max_connections = http_multi::default_max_connections);
  push_result send(const push& p) override;
  std::vector<push_result> send_all(const std::vector<push>& pushes) override;
  std::string_view name() const override { return "webhook"; }

 private:
  std::string url_;
  http_multi http_;
};

/// Makes one provider per worker.
using provider_factory = std::function<std::unique_ptr<push_provider>()>;

struct provider_error {
  std::string message;  ///< names the config key, e.g. "[notifications] webhook_url: ..."
};

/// The provider factory for config.notifications.service:
///  - "log": creates `data_dir` if needed and opens {data_dir}/outbox.jsonl now,
///    so a directory that cannot be written is reported at start;
///  - "webhook": needs a non-empty notifications.webhook_url (http or https);
///  - "firebase": make_firebase_provider (firebase.hpp): reads and checks the
///    GOOGLE_APPLICATION_CREDENTIALS key file now;
///  - "sns": make_sns_provider (sns.hpp): needs AWS_ACCESS_KEY_ID,
///    AWS_SECRET_ACCESS_KEY and AWS_REGION;
///  - anything else → provider_error.
/// With `loop`, the providers' calls made on a job fiber go through that event
/// loop (http_options::loop; downstreams "webhook", "firebase", "sns").
std::variant<provider_factory, provider_error> make_provider(const protocol::config& cfg,
                                                             const std::string& data_dir,
                                                             std::shared_ptr<http_loop> loop = nullptr);

}  // namespace klynaa::actors

// The log and webhook push providers and the factory that picks one from config.
#include "actors/providers.hpp"

#include <cerrno>
#include <cstring>
#include <filesystem>

#include <fcntl.h>
#include <unistd.h>

#include "actors/firebase.hpp"
#include "actors/sns.hpp"
#include "protocol/log.hpp"

namespace klynaa::actors {
namespace {

std::string dump_line(const nlohmann::ordered_json& j) {
  // replace: a token or title with invalid UTF-8 must not throw.
  return j.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace);
}

push_result from_job_result(const nodes::job_result& c) {
  const bool later = c.kind == nodes::outcome::transient || c.kind == nodes::outcome::deferred;
  push_result r = push_result::fail(later ? push_result::status::transient : push_result::status::permanent,
                                    c.message, c.http_status);
  r.retry_after_ms = c.retry_after_ms;
  r.circuit_open = c.kind == nodes::outcome::deferred;  // not sent (Retry-After pause): no attempt spent
  return r;
}

}  // namespace

std::vector<push_result> push_provider::send_all(const std::vector<push>& pushes) {
  std::vector<push_result> out;
  out.reserve(pushes.size());
  for (const auto& p : pushes) out.push_back(send(p));
  return out;
}

std::string_view to_string(push_result::status s) {
  switch (s) {
    case push_result::status::delivered: return "delivered";
    case push_result::status::invalid_token: return "invalid_token";
    case push_result::status::transient: return "transient";
    case push_result::status::permanent: return "permanent";
  }
  return "unknown";
}

nlohmann::ordered_json push_json(const push& p, int64_t now_ms) {
  nlohmann::ordered_json j;
  j["ts"] = log::iso8601_utc_ms(now_ms);
  j["job_id"] = p.job_id;
  j["user_id"] = p.user_id;
  j["token"] = p.token;
  j["platform"] = p.platform;
  j["notification_type"] = p.notification_type;
  j["title"] = p.title;
  j["body"] = p.body;
  j["data"] = p.data.is_object() ? nlohmann::ordered_json(p.data) : nlohmann::ordered_json::object();
  return j;
}

// ---- outbox_file ----

std::shared_ptr<outbox_file> outbox_file::open(const std::string& path, std::string& error) {
  int fd = ::open(path.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) {
    error = "cannot open " + path + " for appending: " + std::strerror(errno);
    return nullptr;
  }
  return std::shared_ptr<outbox_file>(new outbox_file(fd, path));
}

outbox_file::~outbox_file() {
  if (fd_ >= 0) ::close(fd_);
}

std::string outbox_file::append(const std::string& line) {
  std::string buf = line + "\n";
  std::lock_guard<std::mutex> lock(mutex_);
  // One write() per line: with O_APPEND the kernel places it at the end as a
  // whole. The loop only matters for a partial write (e.g. disk filling up).
  size_t done = 0;
  while (done < buf.size()) {
    ssize_t n = ::write(fd_, buf.data() + done, buf.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      return std::strerror(errno);
    }
    done += static_cast<size_t>(n);
  }
  return "";
}

// ---- log_provider ----

push_result log_provider::send(const push& p) {
  std::string err = outbox_->append(dump_line(push_json(p, log::now_ms())));
  if (!err.empty()) {
    count_downstream("log", "no_answer");
    return push_result::fail(push_result::status::transient,
                             "Could not append to " + outbox_->path() + ": " + err);
  }
  count_downstream("log", "2xx");
  return push_result::delivered();
}

// ---- webhook_provider ----

webhook_provider::webhook_provider(std::string url, http_options opts, int max_connections)
    : url_(std::move(url)), http_(std::move(opts), max_connections) {}

namespace {

push_result classify_webhook(const http_response& r) {
  if (r.status >= 200 && r.status < 300) return push_result::delivered();
  if (r.status == 404 || r.status == 410)
    return push_result::fail(push_result::status::invalid_token,
                             "The webhook answered HTTP " + std::to_string(r.status) +
                                 ": the token is no longer valid.",
                             r.status);
  nodes::job_result c = classify(r, "POST to the webhook");
  if (c.kind == nodes::outcome::ok) return push_result::delivered();  // unreachable: 2xx above
  return from_job_result(c);
}

}  // namespace

push_result webhook_provider::send(const push& p) { return send_all({p}).front(); }

std::vector<push_result> webhook_provider::send_all(const std::vector<push>& pushes) {
  std::vector<http_request> requests;
  requests.reserve(pushes.size());
  for (const auto& p : pushes)
    requests.push_back({"POST", url_,
                        {{"Content-Type", "application/json"}, {"Accept", "application/json"}},
                        dump_line(push_json(p, log::now_ms()))});
  std::vector<push_result> out;
  out.reserve(pushes.size());
  for (const auto& r : http_.perform(requests)) {
    count_downstream("webhook", outcome_label(r));  // one count per request, as ever
    out.push_back(classify_webhook(r));
  }
  return out;
}

// ---- factory ----

std::variant<provider_factory, provider_error> make_provider(const protocol::config& cfg,
                                                             const std::string& data_dir,
                                                             std::shared_ptr<http_loop> loop) {
  const std::string& service = cfg.notifications.service;
  if (service == "log") {
    std::error_code ec;
    std::filesystem::create_directories(data_dir, ec);
    if (ec)
      return provider_error{"--data-dir " + data_dir + ": cannot create it: " + ec.message()};
    std::string error;
    auto outbox = outbox_file::open((std::filesystem::path(data_dir) / "outbox.jsonl").string(), error);
    if (!outbox) return provider_error{"[notifications] service = \"log\": " + error};
    return provider_factory([outbox] { return std::make_unique<log_provider>(outbox); });
  }
  if (service == "webhook") {
    const std::string& url = cfg.notifications.webhook_url;
    if (url.rfind("http://", 0) != 0 && url.rfind("https://", 0) != 0)
      return provider_error{"[notifications] webhook_url: service \"webhook\" needs an http:// or "
                            "https:// URL, got \"" + url + "\""};
    http_options opts;
    opts.connect_timeout_ms = cfg.django.connect_timeout_ms > 0 ? cfg.django.connect_timeout_ms : 2000;
    opts.timeout_ms = cfg.django.timeout_ms > 0 ? cfg.django.timeout_ms : 10000;
    opts.ca_file = cfg.notifications.ca_file.empty() ? cfg.django.ca_file : cfg.notifications.ca_file;
    opts.loop = loop;
    opts.downstream = "webhook";
    return provider_factory([url, opts] { return std::make_unique<webhook_provider>(url, opts); });
  }
  if (service == "firebase") return make_firebase_provider(cfg, loop);
  if (service == "sns") return make_sns_provider(cfg, loop);
  return provider_error{"[notifications] service: unknown provider \"" + service +
                        "\"; expected log, webhook, firebase or sns"};
}

}  // namespace klynaa::actors

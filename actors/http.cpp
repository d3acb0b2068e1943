// libcurl behind http_session, and the HTTP → job outcome rules of contract §3.
//
// Each request starts with curl_easy_reset: it clears every option of the last
// request (so a POST body or custom method never leaks into the next one) but
// keeps the open connections, DNS and TLS session caches, which is what makes
// the reuse worth it.
#include "actors/http.hpp"

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstring>
#include <ctime>
#include <mutex>

#include <curl/curl.h>

namespace klynaa::actors {
namespace {

// curl_global_init is not thread-safe on every libcurl build: run it once,
// before the first handle, whichever worker thread gets there first.
void global_init_once() {
  static std::once_flag once;
  std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
}

struct transfer {
  http_response* response;
  size_t max_body;
  bool too_large = false;
};

size_t on_body(char* data, size_t size, size_t count, void* user) {
  auto* t = static_cast<transfer*>(user);
  size_t n = size * count;
  if (t->response->body.size() + n > t->max_body) {
    t->too_large = true;
    return 0;  // makes curl fail with CURLE_WRITE_ERROR
  }
  t->response->body.append(data, n);
  return n;
}

std::string trim(std::string_view s) {
  size_t b = 0, e = s.size();
  while (b < e && std::isspace(static_cast<unsigned char>(s[b]))) ++b;
  while (e > b && std::isspace(static_cast<unsigned char>(s[e - 1]))) --e;
  return std::string(s.substr(b, e - b));
}

size_t on_header(char* data, size_t size, size_t count, void* user) {
  auto* t = static_cast<transfer*>(user);
  size_t n = size * count;
  std::string_view line(data, n);
  if (line.rfind("HTTP/", 0) == 0) {
    t->response->headers.clear();  // a new response (e.g. after 100 Continue)
    return n;
  }
  auto colon = line.find(':');
  if (colon == std::string_view::npos) return n;
  std::string name(line.substr(0, colon));
  std::transform(name.begin(), name.end(), name.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  t->response->headers[trim(name)] = trim(line.substr(colon + 1));
  return n;
}

std::mutex counts_mutex;
std::map<std::pair<std::string, std::string>, uint64_t>& counts() {
  static std::map<std::pair<std::string, std::string>, uint64_t> c;
  return c;
}

int64_t wall_now_ms() {
  using namespace std::chrono;
  return duration_cast<milliseconds>(system_clock::now().time_since_epoch()).count();
}

std::optional<int64_t> parse_http_date(const std::string& v) {
  // RFC 9110 §5.6.7: IMF-fixdate, then the obsolete RFC 850 and asctime forms.
  static const char* const formats[] = {"%a, %d %b %Y %H:%M:%S GMT",
                                        "%A, %d-%b-%y %H:%M:%S GMT", "%a %b %e %H:%M:%S %Y"};
  for (const char* f : formats) {
    std::tm tm{};
    const char* end = strptime(v.c_str(), f, &tm);
    if (end == nullptr || *end != '\0') continue;
    time_t t = timegm(&tm);
    if (t == static_cast<time_t>(-1)) continue;
    return static_cast<int64_t>(t) * 1000;
  }
  return std::nullopt;
}

}  // namespace

std::optional<std::string> http_response::header(const std::string& lower_case_name) const {
  auto it = headers.find(lower_case_name);
  if (it == headers.end()) return std::nullopt;
  return it->second;
}

struct http_session::impl {
  CURL* curl = nullptr;
  char error[CURL_ERROR_SIZE] = {0};
  ~impl() {
    if (curl != nullptr) curl_easy_cleanup(curl);
  }
};

http_session::http_session(http_options opts) : opts_(std::move(opts)), impl_(new impl) {
  global_init_once();
  impl_->curl = curl_easy_init();
}

http_session::~http_session() = default;
http_session::http_session(http_session&&) noexcept = default;
http_session& http_session::operator=(http_session&&) noexcept = default;

http_response http_session::request(std::string_view method, const std::string& url,
                                    const std::vector<http_header>& headers,
                                    const std::optional<std::string>& body) {
  http_response r;
  if (!impl_ || impl_->curl == nullptr) {
    r.error = "libcurl could not create a handle (out of memory?)";
    return r;
  }
  CURL* c = impl_->curl;
  curl_easy_reset(c);
  impl_->error[0] = '\0';
  transfer t{&r, opts_.max_body_bytes};
  std::string method_str(method);

  curl_easy_setopt(c, CURLOPT_URL, url.c_str());
  curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);  // many threads: no SIGALRM for DNS timeouts
  curl_easy_setopt(c, CURLOPT_ERRORBUFFER, impl_->error);
  curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, static_cast<long>(opts_.connect_timeout_ms));
  curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, static_cast<long>(opts_.timeout_ms));
  curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 0L);
  curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
  curl_easy_setopt(c, CURLOPT_WRITEDATA, &t);
  curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
  curl_easy_setopt(c, CURLOPT_HEADERDATA, &t);
  if (!opts_.ca_file.empty()) curl_easy_setopt(c, CURLOPT_CAINFO, opts_.ca_file.c_str());

  if (method_str == "GET") {
    curl_easy_setopt(c, CURLOPT_HTTPGET, 1L);
  } else if (method_str == "HEAD") {
    curl_easy_setopt(c, CURLOPT_NOBODY, 1L);
  } else {
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method_str.c_str());
  }
  if (body) {
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, body->data());
    curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(body->size()));
  }

  curl_slist* list = nullptr;
  for (const auto& h : headers) {
    std::string line = h.name + ": " + h.value;
    list = curl_slist_append(list, line.c_str());
  }
  // curl asks for "100 Continue" before larger bodies, costing a round trip
  // (or a 1 s wait on servers that ignore it).
  list = curl_slist_append(list, "Expect:");
  curl_easy_setopt(c, CURLOPT_HTTPHEADER, list);

  CURLcode rc = curl_easy_perform(c);
  curl_slist_free_all(list);
  if (rc != CURLE_OK) {
    r.status = 0;
    r.timed_out = rc == CURLE_OPERATION_TIMEDOUT;
    if (t.too_large) {
      r.error = "the response body exceeded " + std::to_string(opts_.max_body_bytes) + " bytes";
    } else {
      r.error = impl_->error[0] != '\0' ? std::string(impl_->error) : curl_easy_strerror(rc);
    }
    r.body.clear();
    return r;
  }
  long status = 0;
  curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
  r.status = static_cast<int>(status);
  return r;
}

std::string http_session::escape(std::string_view text) {
  static const char* hex = "0123456789ABCDEF";
  std::string out;
  out.reserve(text.size());
  for (unsigned char ch : text) {
    if (std::isalnum(ch) || ch == '-' || ch == '.' || ch == '_' || ch == '~') {
      out.push_back(static_cast<char>(ch));
    } else {
      out.push_back('%');
      out.push_back(hex[ch >> 4]);
      out.push_back(hex[ch & 15]);
    }
  }
  return out;
}

std::optional<int64_t> parse_retry_after(std::string_view value, int64_t now_ms) {
  std::string v = trim(value);
  if (v.empty()) return std::nullopt;
  if (std::all_of(v.begin(), v.end(), [](unsigned char c) { return std::isdigit(c); })) {
    // Clamp absurd values (and avoid overflow): a year is far beyond any backoff.
    constexpr int64_t max_seconds = 365LL * 24 * 3600;
    if (v.size() > 9) return max_seconds * 1000;
    return std::min<int64_t>(std::stoll(v), max_seconds) * 1000;
  }
  auto when = parse_http_date(v);
  if (!when) return std::nullopt;
  return std::max<int64_t>(0, *when - now_ms);
}

nodes::job_result classify(const http_response& r, std::string_view what) {
  using nodes::job_result;
  using nodes::outcome;
  if (r.status >= 200 && r.status < 300) {
    job_result ok = job_result::success(nlohmann::json::object());
    ok.http_status = r.status;
    return ok;
  }
  if (r.status == 0) {
    std::string code = r.timed_out ? "timeout" : "connect";
    return job_result::failure(outcome::transient, code,
                               std::string(what) + " got no answer (" + r.error +
                                   "); it will be retried.");
  }
  std::string code = "http_" + std::to_string(r.status);
  std::string prefix = std::string(what) + " answered HTTP " + std::to_string(r.status);
  if (r.status == 408 || r.status == 429 || r.status >= 500) {
    job_result j = job_result::failure(outcome::transient, code,
                                       prefix + "; it will be retried.", r.status);
    if (r.status == 429 || r.status == 503) {
      if (auto ra = r.header("retry-after")) j.retry_after_ms = parse_retry_after(*ra, wall_now_ms());
    }
    return j;
  }
  if (r.status >= 400) {
    return job_result::failure(outcome::permanent, code,
                               prefix + "; retrying cannot help, so the job goes to the "
                                        "dead-letter queue.",
                               r.status);
  }
  std::string msg = prefix;
  if (auto loc = r.header("location")) msg += " redirecting to " + *loc;
  msg += "; redirects are not followed: check the configured base URL.";
  return job_result::failure(outcome::permanent, code, msg, r.status);
}

nodes::job_result bad_response(int status, std::string_view service, std::string_view what,
                               std::string_view detail) {
  count_downstream(service, "bad_response");
  return nodes::job_result::failure(
      nodes::outcome::transient, "bad_response",
      std::string(what) + " answered HTTP " + std::to_string(status) +
          " with a body that is not the documented JSON (" + std::string(detail) +
          "); it will be retried.",
      status);
}

std::map<std::pair<std::string, std::string>, uint64_t> downstream_counts() {
  std::lock_guard<std::mutex> lock(counts_mutex);
  return counts();
}

void count_downstream(std::string_view service, std::string_view outcome) {
  std::lock_guard<std::mutex> lock(counts_mutex);
  ++counts()[{std::string(service), std::string(outcome)}];
}

std::string_view outcome_label(const http_response& r) {
  if (r.status == 0) return "no_answer";
  if (r.status < 200) return "1xx";
  if (r.status < 300) return "2xx";
  if (r.status < 400) return "3xx";
  if (r.status < 500) return "4xx";
  return "5xx";
}

}  // namespace klynaa::actors

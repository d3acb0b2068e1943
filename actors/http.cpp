// libcurl behind http_session and http_multi, and the HTTP → job outcome rules
// (docs/events-and-functions.md, "Failures and retries").
//
// Each request starts with curl_easy_reset: it clears every option of the last
// request (so a POST body or custom method never leaks into the next one) but
// keeps the open connections, DNS and TLS session caches, which is what makes
// the reuse worth it. Both clients, and http_loop (http_loop.cpp), set a request
// up with prepare() and read its answer with finish() (http_curl.hpp), so a
// request means the same on each.
#include "actors/http.hpp"

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstring>
#include <ctime>
#include <atomic>
#include <memory>
#include <mutex>

#include <curl/curl.h>

#include "actors/http_curl.hpp"
#include "actors/http_loop.hpp"
#include "nodes/suspend.hpp"

namespace klynaa::actors {
namespace detail {

// curl_global_init is not thread-safe on every libcurl build: run it once,
// before the first handle, whichever worker thread gets there first.
void global_init_once() {
  static std::once_flag once;
  std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
}

}  // namespace detail

namespace {

using detail::global_init_once;
using detail::no_handle_error;
using detail::prepare;
using detail::finish;
using detail::transfer;

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

namespace detail {

const char* const no_handle_error = "libcurl could not create a handle (out of memory?)";

curl_slist* prepare(CURL* c, const http_options& opts, std::string_view method,
                    const std::string& url, const std::vector<http_header>& headers,
                    const std::optional<std::string>& body, transfer& t, char* error_buffer) {
  curl_easy_reset(c);
  error_buffer[0] = '\0';
  std::string method_str(method);

  curl_easy_setopt(c, CURLOPT_URL, url.c_str());
  curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);  // many threads: no SIGALRM for DNS timeouts
  curl_easy_setopt(c, CURLOPT_ERRORBUFFER, error_buffer);
  curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, static_cast<long>(opts.connect_timeout_ms));
  curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, static_cast<long>(opts.timeout_ms));
  curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 0L);
  curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
  curl_easy_setopt(c, CURLOPT_WRITEDATA, &t);
  curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
  curl_easy_setopt(c, CURLOPT_HEADERDATA, &t);
  if (!opts.ca_file.empty()) curl_easy_setopt(c, CURLOPT_CAINFO, opts.ca_file.c_str());

  if (method_str == "GET") {
    curl_easy_setopt(c, CURLOPT_HTTPGET, 1L);
  } else if (method_str == "HEAD") {
    curl_easy_setopt(c, CURLOPT_NOBODY, 1L);
  } else {
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method_str.c_str());  // libcurl copies it
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
  return list;
}

void finish(CURL* c, CURLcode rc, const http_options& opts, const transfer& t,
            const char* error_buffer, http_response& r) {
  if (rc != CURLE_OK) {
    r.status = 0;
    r.timed_out = rc == CURLE_OPERATION_TIMEDOUT;
    if (t.too_large) {
      r.error = "the response body exceeded " + std::to_string(opts.max_body_bytes) + " bytes";
    } else {
      r.error = error_buffer[0] != '\0' ? std::string(error_buffer) : curl_easy_strerror(rc);
    }
    r.body.clear();
    return;
  }
  long status = 0;
  curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
  r.status = static_cast<int>(status);
}

}  // namespace detail

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

// With an event loop, the handle is made on the first blocking call (most
// never make one: a node may hold thousands of clients, one per job in flight).
http_session::http_session(http_options opts) : opts_(std::move(opts)), impl_(new impl) {
  global_init_once();
  if (!opts_.loop) impl_->curl = curl_easy_init();
}

http_session::~http_session() = default;
http_session::http_session(http_session&&) noexcept = default;
http_session& http_session::operator=(http_session&&) noexcept = default;

// ---- on a job fiber: through the node's event loop ----

namespace {

/// On a job fiber with an event loop in `opts`: sends `requests` through the
/// loop and suspends the fiber until each is answered (nodes/suspend.hpp);
/// otherwise nullopt, and the caller blocks as before. A job abandoned (past its
/// time limit) or a node stopping cancels what it waits for: the answers are
/// then status 0, "cancelled".
std::optional<std::vector<http_response>> on_job_fiber(const http_options& opts,
                                                       const std::vector<http_request>& requests) {
  nodes::job_fiber_context* job = nodes::current_job_fiber();
  if (!opts.loop || job == nullptr) return std::nullopt;
  auto answers = std::make_shared<std::vector<http_response>>(requests.size());
  if (requests.empty()) return std::vector<http_response>{};
  auto left = std::make_shared<std::atomic<size_t>>(requests.size());
  const http_loop::limit_tag tag{opts.downstream, job->function};
  std::shared_ptr<http_loop> loop = opts.loop;
  bool waited = nodes::suspend_job([&](std::function<void()> wake) {
    auto ids = std::make_shared<std::vector<uint64_t>>();
    ids->reserve(requests.size());
    for (size_t i = 0; i < requests.size(); ++i)
      ids->push_back(loop->submit(
          requests[i],
          [answers, left, i, wake](http_response r) {
            (*answers)[i] = std::move(r);
            if (left->fetch_sub(1) == 1) wake();  // the last answer resumes the job
          },
          opts.timeout_ms, tag, &opts));
    return std::function<void()>([loop, ids] {
      for (auto id : *ids) loop->cancel(id);
    });
  });
  if (!waited)  // the job was abandoned before it could send
    for (auto& r : *answers) r.error = http_loop::cancelled_error;
  return std::move(*answers);
}

}  // namespace

http_response http_session::request(std::string_view method, const std::string& url,
                                    const std::vector<http_header>& headers,
                                    const std::optional<std::string>& body) {
  if (opts_.loop && nodes::current_job_fiber() != nullptr) {
    std::vector<http_request> one{{std::string(method), url, headers, body}};
    return std::move(on_job_fiber(opts_, one)->front());
  }
  http_response r;
  if (impl_ && impl_->curl == nullptr && opts_.loop) impl_->curl = curl_easy_init();
  if (!impl_ || impl_->curl == nullptr) {
    r.error = no_handle_error;
    return r;
  }
  transfer t{&r, opts_.max_body_bytes};
  curl_slist* list = prepare(impl_->curl, opts_, method, url, headers, body, t, impl_->error);
  CURLcode rc = curl_easy_perform(impl_->curl);
  curl_slist_free_all(list);
  finish(impl_->curl, rc, opts_, t, impl_->error, r);
  return r;
}

// ---- http_multi ----

struct http_multi::impl {
  CURLM* multi = nullptr;
  std::vector<CURL*> idle;  // easy handles between transfers, reused

  /// One request in flight: what its callbacks and finish() need.
  struct batch;  // one perform() call

  struct active {
    size_t index = 0;  // into the batch
    CURL* easy = nullptr;
    curl_slist* headers = nullptr;
    transfer t{nullptr, 0};
    char error[CURL_ERROR_SIZE] = {0};
  };

  ~impl() {
    for (CURL* e : idle) curl_easy_cleanup(e);
    if (multi != nullptr) curl_multi_cleanup(multi);  // closes the cached connections
  }

  CURL* take_easy() {
    if (idle.empty()) return curl_easy_init();
    CURL* e = idle.back();
    idle.pop_back();
    return e;
  }

  /// Ends `a`'s transfer: off the multi handle, its easy handle back to `idle`.
  void release(active& a) {
    curl_multi_remove_handle(multi, a.easy);  // its connection goes to the cache
    curl_slist_free_all(a.headers);
    a.headers = nullptr;
    idle.push_back(a.easy);
  }
};

http_multi::http_multi(http_options opts, int max_connections)
    : opts_(std::move(opts)), max_connections_(std::max(1, max_connections)), impl_(new impl) {
  global_init_once();
  if (!opts_.loop) init_multi();  // with a loop: on the first blocking perform()
}

void http_multi::init_multi() {
  impl_->multi = curl_multi_init();
  if (impl_->multi != nullptr) {
    // perform() never has more than max_connections_ requests in flight, so
    // these only bound what libcurl may do on its own: connections per host,
    // and idle connections kept for the next batch.
    curl_multi_setopt(impl_->multi, CURLMOPT_MAX_HOST_CONNECTIONS, static_cast<long>(max_connections_));
    curl_multi_setopt(impl_->multi, CURLMOPT_MAXCONNECTS, static_cast<long>(max_connections_));
  }
}

http_multi::~http_multi() = default;
http_multi::http_multi(http_multi&&) noexcept = default;
http_multi& http_multi::operator=(http_multi&&) noexcept = default;

http_response http_multi::request(std::string_view method, const std::string& url,
                                  const std::vector<http_header>& headers,
                                  const std::optional<std::string>& body) {
  std::vector<http_request> one{{std::string(method), url, headers, body}};
  return std::move(perform(one).front());
}

/// One perform() call on the multi handle: the requests, their answers and the
/// transfers in flight.
struct http_multi::impl::batch {
  impl& self;
  const http_options& opts;
  size_t max_connections;
  const std::vector<http_request>& requests;
  std::vector<http_response>& out;  // never resized: transfers point into it
  std::map<CURL*, std::unique_ptr<active>> running;
  size_t next = 0;

  /// Starts requests until max_connections are in flight. A request starts only
  /// now, so its timeout never includes time spent waiting for a free slot.
  void start_more() {
    while (next < requests.size() && running.size() < max_connections) {
      size_t i = next++;
      const http_request& req = requests[i];
      CURL* e = self.take_easy();
      if (e == nullptr) {
        out[i].error = no_handle_error;
        continue;
      }
      auto a = std::make_unique<active>();
      a->index = i;
      a->easy = e;
      a->t = transfer{&out[i], opts.max_body_bytes};
      a->headers = prepare(e, opts, req.method, req.url, req.headers, req.body, a->t, a->error);
      CURLMcode mc = curl_multi_add_handle(self.multi, e);
      if (mc != CURLM_OK) {
        out[i].error = std::string("libcurl could not start the request: ") + curl_multi_strerror(mc);
        curl_slist_free_all(a->headers);
        self.idle.push_back(e);
        continue;
      }
      running.emplace(e, std::move(a));
    }
  }

  /// A failing multi handle (out of memory, a libcurl bug): every request not
  /// answered yet gets the error, none is left attached.
  void abandon(CURLMcode mc) {
    std::string error = std::string("libcurl failed: ") + curl_multi_strerror(mc);
    for (auto& [easy, a] : running) {
      out[a->index] = http_response{};
      out[a->index].error = error;
      self.release(*a);
    }
    running.clear();
    for (; next < requests.size(); ++next) out[next].error = error;
  }

  /// Reads the finished transfers into `out` and frees their handles.
  void collect_done() {
    int left = 0;
    while (CURLMsg* msg = curl_multi_info_read(self.multi, &left)) {
      if (msg->msg != CURLMSG_DONE) continue;
      CURL* e = msg->easy_handle;
      CURLcode rc = msg->data.result;  // read before release: msg dies with the removal
      auto it = running.find(e);
      if (it == running.end()) continue;
      active& a = *it->second;
      finish(e, rc, opts, a.t, a.error, out[a.index]);
      self.release(a);
      running.erase(it);
    }
  }

  /// Drives the transfers until every request has its answer.
  void run() {
    start_more();
    while (!running.empty()) {
      int still_running = 0;
      CURLMcode mc = curl_multi_perform(self.multi, &still_running);
      if (mc != CURLM_OK) return abandon(mc);
      collect_done();
      start_more();
      if (running.empty()) break;
      // Wakes on socket activity or libcurl's next timeout (each request has its
      // own CURLOPT_TIMEOUT_MS, so the loop ends); at most 1 s per turn.
      mc = curl_multi_poll(self.multi, nullptr, 0, 1000, nullptr);
      if (mc != CURLM_OK) return abandon(mc);
    }
  }
};

std::vector<http_response> http_multi::perform(const std::vector<http_request>& requests) {
  if (auto answers = on_job_fiber(opts_, requests)) return std::move(*answers);
  std::vector<http_response> out(requests.size());  // never resized: transfers point into it
  if (impl_ && impl_->multi == nullptr && opts_.loop) init_multi();
  if (!impl_ || impl_->multi == nullptr) {
    for (auto& r : out) r.error = no_handle_error;
    return out;
  }
  impl::batch b{*impl_, opts_, static_cast<size_t>(max_connections_), requests, out, {}, 0};
  b.run();
  return out;
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
  if (r.circuit_open_ms >= 0) {
    return job_result::deferred(std::max<int64_t>(r.circuit_open_ms, 100),
                                std::string(what) + " was not called: its circuit breaker is open after "
                                                    "repeated failures; the job waits without using an attempt.");
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

bool not_an_answer(const http_response& r) {
  return r.status == 0 && (r.circuit_open_ms >= 0 || r.error == http_loop::cancelled_error);
}

}  // namespace klynaa::actors

// Internal to actors/: how one request is set up on a libcurl easy handle and how
// its answer is read back, shared by the blocking clients (http.cpp) and the
// event loop (http_loop.cpp), so that a request means the same on all of them:
// the timeouts, CA file and body limit of http_options, no redirects, response
// header names lower-cased, status 0 and `error` when there was no answer.
// Not part of the API: include it only from actors/*.cpp.
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <curl/curl.h>

#include "actors/http.hpp"

namespace klynaa::actors::detail {

/// curl_global_init, once per process, whichever thread gets there first.
void global_init_once();

/// Where a transfer's body and header callbacks write: `response` receives the
/// body and the lower-cased headers; `too_large` is set when the body went over
/// `max_body` bytes (the transfer then fails with CURLE_WRITE_ERROR).
struct transfer {
  http_response* response;
  size_t max_body;
  bool too_large = false;
};

/// The error text when curl_easy_init (or curl_multi_init) returns nothing.
extern const char* const no_handle_error;

/// Sets every option of one request on `c`, after a curl_easy_reset (which
/// clears the last request's options but keeps the handle's caches): `t`
/// receives the answer, `error_buffer` (CURL_ERROR_SIZE bytes) libcurl's error
/// text. `url`'s text is copied by libcurl; `body` is not and must outlive the
/// transfer, as must `t` and `error_buffer`. Returns the header list, to free
/// with curl_slist_free_all once the transfer is over. Options set afterwards
/// (e.g. a per-request timeout) override these.
curl_slist* prepare(CURL* c, const http_options& opts, std::string_view method,
                    const std::string& url, const std::vector<http_header>& headers,
                    const std::optional<std::string>& body, transfer& t, char* error_buffer);

/// Completes `r` (already holding the body and headers the callbacks wrote)
/// from the outcome `rc` of its transfer on `c`: the status on success; else
/// status 0, `timed_out`, `error` (the body limit's own text when `t` hit it)
/// and an empty body.
void finish(CURL* c, CURLcode rc, const http_options& opts, const transfer& t,
            const char* error_buffer, http_response& r);

}  // namespace klynaa::actors::detail

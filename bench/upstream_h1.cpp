// klynaa-upstream's HTTP/1.1 request parser (upstream_h1.hpp).
#include "bench/upstream_h1.hpp"

#include <cctype>
#include <cstdint>
#include <cstring>
#include <optional>

namespace klynaa::upstream {

namespace {

bool is_tchar(unsigned char ch) {
  return std::isalnum(ch) || (ch != 0 && std::strchr("!#$%&'*+-.^_`|~", ch) != nullptr);
}

bool iequals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i)
    if (lower(a[i]) != lower(b[i])) return false;
  return true;
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

/// Whether the comma-separated list `v` holds `token` (case-insensitive).
bool has_token(std::string_view v, std::string_view token) {
  while (!v.empty()) {
    size_t comma = v.find(',');
    if (iequals(trim(v.substr(0, comma)), token)) return true;
    if (comma == std::string_view::npos) break;
    v.remove_prefix(comma + 1);
  }
  return false;
}

h1_parse fail(int status, std::string why) {
  h1_parse r;
  r.st = h1_parse::state::error;
  r.status = status;
  r.why = std::move(why);
  return r;
}

/// Decodes a chunked body starting at `p`: 1 done (body, end set), 0 need more,
/// -1 malformed (status set).
int decode_chunked(std::string_view buf, size_t p, std::string& body, size_t& end, int& status) {
  body.clear();
  status = 400;
  for (;;) {
    size_t nl = buf.find('\n', p);
    if (nl == std::string_view::npos) return buf.size() - p > 1024 ? -1 : 0;
    std::string_view line = buf.substr(p, nl - p);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    uint64_t size = 0;
    size_t i = 0;
    for (; i < line.size() && std::isxdigit(static_cast<unsigned char>(line[i])); ++i) {
      if (i >= 8) return -1;
      char ch = lower(line[i]);
      size = size * 16 + static_cast<uint64_t>(ch <= '9' ? ch - '0' : ch - 'a' + 10);
    }
    std::string_view rest = trim(line.substr(i));
    if (i == 0 || (!rest.empty() && rest.front() != ';')) return -1;
    p = nl + 1;
    if (size == 0) {  // the last chunk; then trailers up to an empty line
      for (;;) {
        size_t nl2 = buf.find('\n', p);
        if (nl2 == std::string_view::npos) {
          if (buf.size() - p <= max_header_bytes) return 0;
          status = 431;
          return -1;
        }
        std::string_view t = buf.substr(p, nl2 - p);
        p = nl2 + 1;
        if (t.empty() || t == "\r") {
          end = p;
          return 1;
        }
      }
    }
    if (body.size() + size > max_body_bytes) {
      status = 413;
      return -1;
    }
    if (buf.size() < p + size + 1) return 0;
    body.append(buf.substr(p, size));
    p += size;
    if (buf[p] == '\r') {
      if (buf.size() < p + 2) return 0;
      if (buf[p + 1] != '\n') return -1;
      p += 2;
    } else if (buf[p] == '\n') {
      p += 1;
    } else {
      return -1;
    }
  }
}

/// Without a newline yet: refuse now what can never become a request line,
/// rather than wait for a newline that binary garbage may never send: a method
/// of tchars, a space, then visible characters and spaces (a CR only at the end).
h1_parse partial_request_line(std::string_view buf) {
  if (buf.size() > max_header_bytes) return fail(431, "request line too long");
  size_t i = 0;
  while (i < buf.size() && is_tchar(static_cast<unsigned char>(buf[i]))) ++i;
  if (i < buf.size() && buf[i] != ' ') return fail(400, "malformed request line");
  for (; i < buf.size(); ++i) {
    auto ch = static_cast<unsigned char>(buf[i]);
    if ((ch < 0x20 && !(ch == '\r' && i + 1 == buf.size())) || ch == 0x7f)
      return fail(400, "malformed request line");
  }
  return h1_parse{};
}

/// request-line = method SP request-target SP HTTP-version
struct request_line {
  std::string_view method, target;
  bool http11 = true;
};

/// The parts of `line` (without its CRLF), or the failure.
std::optional<h1_parse> parse_request_line(std::string_view line, request_line& out) {
  size_t sp1 = line.find(' ');
  size_t sp2 = sp1 == std::string_view::npos ? sp1 : line.find(' ', sp1 + 1);
  if (sp2 == std::string_view::npos || line.find(' ', sp2 + 1) != std::string_view::npos)
    return fail(400, "malformed request line");
  std::string_view method = line.substr(0, sp1);
  std::string_view target = line.substr(sp1 + 1, sp2 - sp1 - 1);
  std::string_view version = line.substr(sp2 + 1);
  if (method.empty()) return fail(400, "empty method");
  for (char ch : method)
    if (!is_tchar(static_cast<unsigned char>(ch))) return fail(400, "malformed method");
  if (target.empty()) return fail(400, "empty request target");
  for (char ch : target)
    if (static_cast<unsigned char>(ch) <= 0x20 || ch == 0x7f) return fail(400, "malformed request target");
  if (version == "HTTP/1.1") {
    out.http11 = true;
  } else if (version == "HTTP/1.0") {
    out.http11 = false;
  } else if (version.size() == 8 && version.substr(0, 5) == "HTTP/" && std::isdigit(static_cast<unsigned char>(version[5])) &&
             version[6] == '.' && std::isdigit(static_cast<unsigned char>(version[7]))) {
    return fail(505, "HTTP version not supported");
  } else {
    return fail(400, "malformed HTTP version");
  }
  if (target.front() != '/') {
    // absolute-form (a proxy's request): keep the path; asterisk-form for OPTIONS.
    size_t scheme = target.find("://");
    if (scheme != std::string_view::npos && scheme > 0) {
      size_t slash = target.find('/', scheme + 3);
      target = slash == std::string_view::npos ? std::string_view("/") : target.substr(slash);
    } else if (!(target == "*" && method == "OPTIONS")) {
      return fail(400, "malformed request target");
    }
  }
  out.method = method;
  out.target = target;
  return std::nullopt;
}

/// What the header section says about the request.
struct header_fields {
  std::optional<uint64_t> content_length;
  bool chunked = false, te = false, host = false, expect = false;
  std::string_view connection;
  std::string authorization;
  size_t end = 0;  ///< where the body starts
};

/// One header field into `h`, or the failure.
std::optional<h1_parse> parse_header_line(std::string_view line, header_fields& h) {
  if (line.front() == ' ' || line.front() == '\t') return fail(400, "obsolete line folding");
  size_t colon = line.find(':');
  if (colon == std::string_view::npos || colon == 0) return fail(400, "malformed header line");
  std::string_view name = line.substr(0, colon);
  for (char ch : name)
    if (!is_tchar(static_cast<unsigned char>(ch))) return fail(400, "malformed header name");
  std::string_view value = trim(line.substr(colon + 1));
  for (char ch : value)
    if ((static_cast<unsigned char>(ch) < 0x20 && ch != '\t') || ch == 0x7f)
      return fail(400, "control character in a header value");
  if (iequals(name, "content-length")) {
    if (value.empty() || value.size() > 18) return fail(400, "malformed Content-Length");
    uint64_t v = 0;
    for (char ch : value) {
      if (ch < '0' || ch > '9') return fail(400, "malformed Content-Length");
      v = v * 10 + static_cast<uint64_t>(ch - '0');
    }
    if (h.content_length && *h.content_length != v) return fail(400, "conflicting Content-Length");
    h.content_length = v;
  } else if (iequals(name, "transfer-encoding")) {
    if (h.te) return fail(400, "repeated Transfer-Encoding");
    h.te = true;
    if (!iequals(value, "chunked")) return fail(501, "unsupported Transfer-Encoding");
    h.chunked = true;
  } else if (iequals(name, "host")) {
    if (h.host) return fail(400, "repeated Host");
    h.host = true;
  } else if (iequals(name, "connection")) {
    h.connection = value;
  } else if (iequals(name, "expect")) {
    h.expect = iequals(value, "100-continue");
  } else if (iequals(name, "authorization")) {
    h.authorization = std::string(value);
  }
  return std::nullopt;
}

/// The header section from `p` into `h`: nullopt once its empty line is read
/// (h.end set), else need_more or the failure.
std::optional<h1_parse> parse_headers(std::string_view buf, size_t p, header_fields& h) {
  for (;;) {
    size_t nl = buf.find('\n', p);
    if (nl == std::string_view::npos) {
      if (buf.size() > max_header_bytes) return fail(431, "header section too large");
      return h1_parse{};  // need more
    }
    if (nl + 1 > max_header_bytes) return fail(431, "header section too large");
    std::string_view line = buf.substr(p, nl - p);
    p = nl + 1;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.empty()) {
      h.end = p;
      return std::nullopt;
    }
    if (auto failed = parse_header_line(line, h)) return failed;
  }
}

/// The body after the headers of `r`: complete, need_more (with
/// expect_continue), or the failure.
h1_parse read_body(h1_parse r, std::string_view buf, const header_fields& h, bool http11) {
  if (h.chunked) {
    int status = 400;
    size_t end = 0;
    int rc = decode_chunked(buf, h.end, r.req.body, end, status);
    if (rc < 0) return fail(status, "malformed chunked body");
    if (rc == 0) {
      r.expect_continue = h.expect && http11;
      return r;
    }
    r.consumed = end;
  } else if (h.content_length) {
    if (*h.content_length > max_body_bytes) return fail(413, "body over 1 MiB");
    if (buf.size() - h.end < *h.content_length) {
      r.expect_continue = h.expect && http11;
      return r;
    }
    r.req.body = std::string(buf.substr(h.end, *h.content_length));
    r.consumed = h.end + *h.content_length;
  } else {
    r.consumed = h.end;
  }
  r.st = h1_parse::state::complete;
  return r;
}

}  // namespace

h1_parse parse_h1(std::string_view buf) {
  size_t nl = buf.find('\n');
  if (nl == std::string_view::npos) return partial_request_line(buf);
  std::string_view line = buf.substr(0, nl);
  if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
  request_line rl;
  if (auto failed = parse_request_line(line, rl)) return *failed;
  header_fields h;
  if (auto stop = parse_headers(buf, nl + 1, h)) return *stop;
  if (h.te && h.content_length) return fail(400, "both Transfer-Encoding and Content-Length");
  if (h.te && !rl.http11) return fail(400, "Transfer-Encoding in HTTP/1.0");

  h1_parse r;
  r.req.authorization = h.authorization;
  r.req.method = std::string(rl.method);
  r.req.target = std::string(rl.target);
  r.head = rl.method == "HEAD";
  r.keep_alive = rl.http11 ? !has_token(h.connection, "close") : has_token(h.connection, "keep-alive");
  return read_body(std::move(r), buf, h, rl.http11);
}

}  // namespace klynaa::upstream

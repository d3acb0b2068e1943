// klynaa-upstream's requests and answers (upstream_server.hpp): HTTP/2 through
// nghttp2's callbacks, HTTP/1.1 through parse_h1(), both dispatched to route()
// and answered after the current latency, or at once with 503 above capacity.
#include "bench/upstream_server.hpp"

#include <algorithm>
#include <cstring>

#include "bench/upstream_h1.hpp"

namespace klynaa::upstream {

namespace {

// ---- nghttp2 callbacks (never close a connection: they flag it, settle() closes)

conn& conn_of(void* user_data) { return *static_cast<conn*>(user_data); }

int on_begin_headers(nghttp2_session*, const nghttp2_frame* frame, void* user_data) {
  conn& c = conn_of(user_data);
  if (c.closing || frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST)
    return 0;
  c.streams[frame->hd.stream_id] = std::make_unique<h2_stream>();
  return 0;
}

int on_header(nghttp2_session*, const nghttp2_frame* frame, const uint8_t* name, size_t namelen,
              const uint8_t* value, size_t valuelen, uint8_t, void* user_data) {
  conn& c = conn_of(user_data);
  if (c.closing || frame->hd.type != NGHTTP2_HEADERS) return 0;
  h2_stream* s = stream_of(c, frame->hd.stream_id);
  if (!s) return 0;
  std::string_view n(reinterpret_cast<const char*>(name), namelen);
  std::string_view v(reinterpret_cast<const char*>(value), valuelen);
  if (n == ":method") s->req.method = std::string(v);
  else if (n == ":path") s->req.target = std::string(v);
  else if (n == "authorization") s->req.authorization = std::string(v);
  return 0;
}

int on_data_chunk(nghttp2_session*, uint8_t, int32_t stream_id, const uint8_t* data, size_t len,
                  void* user_data) {
  conn& c = conn_of(user_data);
  if (c.closing) return 0;
  h2_stream* s = stream_of(c, stream_id);
  if (!s || s->req.too_large) return 0;
  if (s->req.body.size() + len > max_body_bytes) {
    s->req.too_large = true;
    s->req.body.clear();
    s->req.body.shrink_to_fit();
    return 0;
  }
  s->req.body.append(reinterpret_cast<const char*>(data), len);
  return 0;
}

int on_frame_recv(nghttp2_session*, const nghttp2_frame* frame, void* user_data) {
  conn& c = conn_of(user_data);
  if (c.closing) return 0;
  if ((frame->hd.type != NGHTTP2_HEADERS && frame->hd.type != NGHTTP2_DATA) ||
      !(frame->hd.flags & NGHTTP2_FLAG_END_STREAM))
    return 0;
  h2_stream* s = stream_of(c, frame->hd.stream_id);
  if (!s || s->dispatched) return 0;
  s->dispatched = true;
  bool head = s->req.method == "HEAD";
  the_server->dispatch(c, frame->hd.stream_id, std::move(s->req), head);
  return 0;
}

int on_frame_send(nghttp2_session*, const nghttp2_frame* frame, void* user_data) {
  conn& c = conn_of(user_data);
  if (!c.closing && frame->hd.type == NGHTTP2_GOAWAY && frame->goaway.error_code != NGHTTP2_NO_ERROR)
    ++the_server->stats().h2_protocol_errors;  // nghttp2 ends a session that broke the protocol
  return 0;
}

int on_stream_close(nghttp2_session*, int32_t stream_id, uint32_t, void* user_data) {
  conn& c = conn_of(user_data);
  if (c.closing) return 0;
  the_server->stream_closed(c, stream_id);
  return 0;
}

ssize_t read_body(nghttp2_session*, int32_t, uint8_t* buf, size_t length, uint32_t* data_flags,
                  nghttp2_data_source* source, void*) {
  auto* s = static_cast<h2_stream*>(source->ptr);
  size_t n = std::min(length, s->out_body.size() - s->out_off);
  std::memcpy(buf, s->out_body.data() + s->out_off, n);
  s->out_off += n;
  if (s->out_off == s->out_body.size()) *data_flags |= NGHTTP2_DATA_FLAG_EOF;
  return static_cast<ssize_t>(n);
}

/// HTTP/1.1: the status line, the headers and the body (none for HEAD, 1xx,
/// 204, 304) appended to the connection's output; "Connection: close" when it
/// does not stay open.
void append_h1_response(conn& c, const response& r, bool head) {
  const bool no_body = r.status == 204 || r.status == 304 || r.status < 200;
  const bool close = !c.h1_keep_alive || c.read_closed;
  std::string& o = c.out;
  o += "HTTP/1.1 ";
  o += std::to_string(r.status);
  o += ' ';
  o += reason_phrase(r.status);
  o += "\r\n";
  if (!no_body) {
    o += "Content-Type: ";
    o += r.content_type;
    o += "\r\nContent-Length: ";
    o += std::to_string(r.body.size());
    o += "\r\n";
  }
  for (const auto& [name, value] : r.headers) {
    o += name;
    o += ": ";
    o += value;
    o += "\r\n";
  }
  if (close) o += "Connection: close\r\n";
  o += "\r\n";
  if (!no_body && !head) o += r.body;
  if (close) c.close_after_write = true;
}

/// HTTP/2: the response submitted on stream `stream_id` (RST_STREAM when
/// nghttp2 refuses it); false when the stream is gone.
bool submit_h2_response(conn& c, int32_t stream_id, response& r, bool head) {
  const bool no_body = r.status == 204 || r.status == 304 || r.status < 200;
  h2_stream* s = stream_of(c, stream_id);
  if (!s) return false;
  auto nv = [](const std::string& name, const std::string& value) {
    return nghttp2_nv{reinterpret_cast<uint8_t*>(const_cast<char*>(name.data())),
                      reinterpret_cast<uint8_t*>(const_cast<char*>(value.data())), name.size(),
                      value.size(), NGHTTP2_NV_FLAG_NONE};
  };
  std::vector<std::pair<std::string, std::string>> fields;
  fields.reserve(3 + r.headers.size());
  fields.push_back({":status", std::to_string(r.status)});
  if (!no_body) {
    fields.push_back({"content-type", r.content_type});
    fields.push_back({"content-length", std::to_string(r.body.size())});
  }
  for (const auto& [name, value] : r.headers) {
    std::string lower_name(name);
    for (char& ch : lower_name) ch = lower(ch);
    fields.push_back({std::move(lower_name), value});
  }
  std::vector<nghttp2_nv> nva;
  nva.reserve(fields.size());
  for (const auto& [name, value] : fields) nva.push_back(nv(name, value));
  nghttp2_data_provider body{};
  const bool with_body = !no_body && !head && !r.body.empty();
  if (with_body) {
    s->out_body = std::move(r.body);
    s->out_off = 0;
    body.source.ptr = s;
    body.read_callback = read_body;
  }
  if (nghttp2_submit_response(c.session, stream_id, nva.data(), nva.size(),
                              with_body ? &body : nullptr) != 0)
    nghttp2_submit_rst_stream(c.session, NGHTTP2_FLAG_NONE, stream_id, NGHTTP2_INTERNAL_ERROR);
  return true;
}

}  // namespace

h2_stream* stream_of(conn& c, int32_t id) {
  auto it = c.streams.find(id);
  return it == c.streams.end() ? nullptr : it->second.get();
}

void set_h2_callbacks(nghttp2_session_callbacks* callbacks) {
  nghttp2_session_callbacks_set_on_begin_headers_callback(callbacks, on_begin_headers);
  nghttp2_session_callbacks_set_on_header_callback(callbacks, on_header);
  nghttp2_session_callbacks_set_on_data_chunk_recv_callback(callbacks, on_data_chunk);
  nghttp2_session_callbacks_set_on_frame_recv_callback(callbacks, on_frame_recv);
  nghttp2_session_callbacks_set_on_stream_close_callback(callbacks, on_stream_close);
  nghttp2_session_callbacks_set_on_frame_send_callback(callbacks, on_frame_send);
}

void server::start_h2(conn& c) {
  c.p = proto::h2;
  ++n_.http2;
  if (nghttp2_session_server_new2(&c.session, h2_callbacks_, &c, h2_option_) != 0) {
    c.session = nullptr;
    c.dead = true;
    return;
  }
  nghttp2_settings_entry iv[] = {
      {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, static_cast<uint32_t>(o_.h2_max_streams)}};
  if (nghttp2_submit_settings(c.session, NGHTTP2_FLAG_NONE, iv, 1) != 0) c.dead = true;
}

void server::h1_process(conn& c) {
  while (!c.dead && !c.h1_pending && !c.close_after_write) {
    size_t skip = 0;  // empty lines before a request line are ignored (RFC 9112 2.2)
    while (skip < c.in.size() && (c.in[skip] == '\r' || c.in[skip] == '\n')) ++skip;
    if (skip) c.in.erase(0, skip);
    if (c.in.empty()) break;
    h1_parse r = parse_h1(c.in);
    if (r.st == h1_parse::state::need_more) {
      if (r.expect_continue && !c.continue_sent) {
        c.out += "HTTP/1.1 100 Continue\r\n\r\n";
        c.continue_sent = true;
        mark_dirty(c);
      }
      break;
    }
    if (r.st == h1_parse::state::error) {
      h1_error(c, r.status, r.why);
      break;
    }
    c.in.erase(0, r.consumed);
    c.continue_sent = false;
    c.h1_keep_alive = r.keep_alive;
    dispatch(c, 0, std::move(r.req), r.head);
  }
  if (c.in.empty() && c.in.capacity() > 64 * 1024) c.in.shrink_to_fit();
}

void server::h1_error(conn& c, int status, const std::string& why) {
  ++n_.total;
  ++n_.by_class[static_cast<size_t>(route_class::malformed)][status];
  ++n_.by_status[status];
  response r = error_answer(status, "bad_request", why);
  c.h1_keep_alive = false;
  c.in.clear();
  send_response(c, 0, r, false);
}

void server::dispatch(conn& c, int32_t stream_id, request&& req, bool head) {
  const int64_t now = mono_ns();
  if (req.too_large) {  // HTTP/2 (HTTP/1.1 refuses it while parsing)
    ++n_.h2_streams;
    ++n_.total;
    ++n_.by_class[static_cast<size_t>(route_class::malformed)][413];
    ++n_.by_status[413];
    response r = error_answer(413, "bad_request", "body over 1 MiB");
    send_response(c, stream_id, r, false);
    return;
  }
  if ((req.method == "GET" || req.method == "HEAD") && path_of(req.target) == "/_stats") {
    response r = answer(200, json_text(stats_json()));
    send_response(c, stream_id, r, head);
    return;
  }
  if (c.p == proto::h2) ++n_.h2_streams;
  routed rt = route(req, o_, sequence_);
  if (o_.capacity > 0 && n_.in_flight >= o_.capacity) {
    ++n_.refused;
    ++n_.total;
    ++n_.by_class[static_cast<size_t>(rt.cls)][503];
    ++n_.by_status[503];
    response r = error_answer(503, "unavailable", "The fake upstream is at capacity.");
    r.headers.push_back({"Retry-After", std::to_string(o_.retry_after_s)});
    send_response(c, stream_id, r, head);
    return;
  }
  n_.max_in_flight = std::max(n_.max_in_flight, ++n_.in_flight);
  pending_answer a{rt.cls, std::move(rt.resp), now, head};
  const int64_t delay = latency_ns(now);
  if (delay <= 0) {
    finish(c, stream_id, a);
    return;
  }
  int64_t tag = stream_id;
  if (c.p == proto::h1) {
    c.h1_pending = std::move(a);
    tag = static_cast<int64_t>(++c.h1_seq);
  } else {
    h2_stream* s = stream_of(c, stream_id);
    if (!s) {  // cannot happen: the stream is open while its request is dispatched
      --n_.in_flight;
      return;
    }
    s->pending = std::move(a);
  }
  timers_.push({now + delay, c.fd, c.gen, tag});
}

void server::finish(conn& c, int32_t stream_id, pending_answer& a) {
  --n_.in_flight;
  ++n_.total;
  ++n_.by_class[static_cast<size_t>(a.cls)][a.resp.status];
  ++n_.by_status[a.resp.status];
  n_.latency.record(static_cast<uint64_t>(std::max<int64_t>(0, mono_ns() - a.done_ns)));
  send_response(c, stream_id, a.resp, a.head);
}

void server::stream_closed(conn& c, int32_t stream_id) {
  auto it = c.streams.find(stream_id);
  if (it == c.streams.end()) return;
  if (it->second->pending) {  // reset before its answer
    --n_.in_flight;
    ++n_.abandoned;
  }
  c.streams.erase(it);
}

void server::send_response(conn& c, int32_t stream_id, response& r, bool head) {
  if (c.p == proto::h1)
    append_h1_response(c, r, head);
  else if (!submit_h2_response(c, stream_id, r, head))
    return;
  mark_dirty(c);
}

}  // namespace klynaa::upstream

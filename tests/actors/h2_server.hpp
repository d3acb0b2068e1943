// A one-thread HTTP/2 server on 127.0.0.1 (nghttp2's server session) for
// http_loop's multiplexing tests (http_loop_test.cpp): over TLS, negotiated by
// ALPN "h2", when given a certificate and key; else cleartext h2c with prior
// knowledge. It holds every request until gate_size of them wait at once (or
// 10 s passed), then answers them all: 200, the request's :path as the body. It
// counts the TCP connections that carried them and the most requests waiting at
// once; both counters are thread-safe.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <exception>
#include <list>
#include <map>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <nghttp2/nghttp2.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

namespace klynaa::test {

class h2_server {
 public:
  /// TLS with `cert_file` and `key_file` (PEM), or h2c when they are "".
  explicit h2_server(int gate_size, const std::string& cert_file = "", const std::string& key_file = "")
      : gate_size_(gate_size) {
    if (!cert_file.empty()) tls_ = make_context(cert_file, key_file);
    listen_fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof addr;
    if (listen_fd_ < 0 || ::bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
        ::listen(listen_fd_, 64) != 0 || ::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len) != 0 ||
        ::pipe2(stop_, O_CLOEXEC) != 0)
      throw std::runtime_error("h2_server: cannot listen on 127.0.0.1");
    port_ = ntohs(addr.sin_port);
    nghttp2_session_callbacks_new(&callbacks_);
    nghttp2_session_callbacks_set_on_header_callback(callbacks_, on_header);
    nghttp2_session_callbacks_set_on_frame_recv_callback(callbacks_, on_frame_recv);
    thread_ = std::thread([this] { run(); });
  }

  ~h2_server() {
    char byte = 0;
    if (::write(stop_[1], &byte, 1) != 1) std::terminate();
    thread_.join();
    for (auto& c : conns_) close_conn(c);
    nghttp2_session_callbacks_del(callbacks_);
    if (tls_ != nullptr) SSL_CTX_free(tls_);
    ::close(listen_fd_);
    ::close(stop_[0]);
    ::close(stop_[1]);
  }

  h2_server(const h2_server&) = delete;
  h2_server& operator=(const h2_server&) = delete;

  std::string url() const { return (tls_ ? "https" : "http") + std::string("://127.0.0.1:") + std::to_string(port_); }
  int connections() const { return connections_; }  ///< accepted so far
  int max_waiting() const { return max_waiting_; }  ///< most requests waiting at once, all connections

 private:
  struct answer {
    std::string body;
    size_t sent = 0;
  };
  struct conn {
    int fd = -1;
    SSL* ssl = nullptr;  // TLS only
    nghttp2_session* session = nullptr;
    std::string out;                       // bytes not written yet
    std::map<int32_t, std::string> paths;  // by stream
    std::vector<int32_t> waiting;          // complete requests, not answered
    std::map<int32_t, answer> answers;     // node-based: stable for the data provider
    bool closed = false;
  };

  static SSL_CTX* make_context(const std::string& cert_file, const std::string& key_file) {
    SSL_CTX* ctx = SSL_CTX_new(TLS_server_method());
    if (ctx == nullptr || SSL_CTX_use_certificate_chain_file(ctx, cert_file.c_str()) != 1 ||
        SSL_CTX_use_PrivateKey_file(ctx, key_file.c_str(), SSL_FILETYPE_PEM) != 1)
      throw std::runtime_error("h2_server: cannot load " + cert_file);
    SSL_CTX_set_alpn_select_cb(ctx, select_h2, nullptr);
    return ctx;
  }

  static int select_h2(SSL*, const unsigned char** out, unsigned char* outlen, const unsigned char* in,
                       unsigned int inlen, void*) {
    static const unsigned char h2[] = {2, 'h', '2'};
    unsigned char* chosen = nullptr;
    if (SSL_select_next_proto(&chosen, outlen, h2, sizeof h2, in, inlen) != OPENSSL_NPN_NEGOTIATED)
      return SSL_TLSEXT_ERR_ALERT_FATAL;  // this server speaks HTTP/2 only
    *out = chosen;
    return SSL_TLSEXT_ERR_OK;
  }

  void run() {
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (true) {
      std::vector<pollfd> fds{{stop_[0], POLLIN, 0}, {listen_fd_, POLLIN, 0}};
      for (auto& c : conns_) fds.push_back({c.fd, static_cast<short>(POLLIN | (c.out.empty() ? 0 : POLLOUT)), 0});
      ::poll(fds.data(), fds.size(), 20);
      if (fds[0].revents != 0) return;
      if (fds[1].revents != 0) accept_all();
      size_t i = 2;
      for (auto& c : conns_) {
        if (i < fds.size() && fds[i].fd == c.fd && (fds[i].revents & ~POLLOUT) != 0) read_from(c);
        ++i;
      }
      int waiting = 0;
      for (auto& c : conns_) waiting += static_cast<int>(c.waiting.size());
      max_waiting_ = std::max(max_waiting_.load(), waiting);
      bool open = waiting >= gate_size_ || std::chrono::steady_clock::now() > deadline;
      for (auto& c : conns_) {
        if (open) answer_all(c);
        flush(c);
      }
      conns_.remove_if([](conn& c) {
        if (c.closed) close_conn(c);
        return c.closed;
      });
    }
  }

  void accept_all() {
    while (true) {
      int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (fd < 0) return;
      ++connections_;
      conns_.emplace_back();
      conn& c = conns_.back();
      c.fd = fd;
      if (tls_ != nullptr) {
        c.ssl = SSL_new(tls_);
        SSL_set_fd(c.ssl, fd);
        SSL_set_accept_state(c.ssl);  // the handshake runs inside the first reads and writes
      }
      nghttp2_session_server_new(&c.session, callbacks_, &c);
      nghttp2_settings_entry streams{NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, 1000};
      nghttp2_submit_settings(c.session, NGHTTP2_FLAG_NONE, &streams, 1);
    }
  }

  static void close_conn(conn& c) {
    nghttp2_session_del(c.session);
    if (c.ssl != nullptr) SSL_free(c.ssl);
    ::close(c.fd);
  }

  // Reads until the socket (and OpenSSL's buffer) is empty.
  static void read_from(conn& c) {
    uint8_t buf[16384];
    while (!c.closed) {
      ssize_t n = 0;
      if (c.ssl != nullptr) {
        int got = SSL_read(c.ssl, buf, sizeof buf);
        int err = got > 0 ? SSL_ERROR_NONE : SSL_get_error(c.ssl, got);
        if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) return;
        n = err == SSL_ERROR_NONE ? got : -1;
      } else {
        n = ::recv(c.fd, buf, sizeof buf, 0);
        if (n < 0 && errno == EAGAIN) return;
      }
      if (n <= 0 || nghttp2_session_mem_recv(c.session, buf, static_cast<size_t>(n)) < 0) c.closed = true;
    }
  }

  static void flush(conn& c) {
    const uint8_t* data = nullptr;
    ssize_t n;
    while (!c.closed && (n = nghttp2_session_mem_send(c.session, &data)) > 0)
      c.out.append(reinterpret_cast<const char*>(data), static_cast<size_t>(n));
    while (!c.closed && !c.out.empty()) {
      ssize_t put = 0;
      if (c.ssl != nullptr) {
        int wrote = SSL_write(c.ssl, c.out.data(), static_cast<int>(c.out.size()));
        int err = wrote > 0 ? SSL_ERROR_NONE : SSL_get_error(c.ssl, wrote);
        if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) return;  // handshake, or full
        put = err == SSL_ERROR_NONE ? wrote : -1;
      } else {
        put = ::send(c.fd, c.out.data(), c.out.size(), MSG_NOSIGNAL);
        if (put < 0 && errno == EAGAIN) return;
      }
      if (put <= 0) c.closed = true;
      else c.out.erase(0, static_cast<size_t>(put));
    }
  }

  static void answer_all(conn& c) {
    for (int32_t stream : c.waiting) {
      answer& a = c.answers[stream];
      a.body = c.paths[stream];
      std::string length = std::to_string(a.body.size());
      nghttp2_nv headers[] = {nv(":status", "200"), nv("content-length", length)};
      nghttp2_data_provider body;
      body.source.ptr = &a;
      body.read_callback = read_body;
      nghttp2_submit_response(c.session, stream, headers, 2, &body);
    }
    c.waiting.clear();
  }

  // nghttp2_submit_response copies the names and values.
  static nghttp2_nv nv(std::string_view name, std::string_view value) {
    return {reinterpret_cast<uint8_t*>(const_cast<char*>(name.data())),
            reinterpret_cast<uint8_t*>(const_cast<char*>(value.data())), name.size(), value.size(),
            NGHTTP2_NV_FLAG_NONE};
  }

  static ssize_t read_body(nghttp2_session*, int32_t, uint8_t* buf, size_t length, uint32_t* flags,
                           nghttp2_data_source* source, void*) {
    auto* a = static_cast<answer*>(source->ptr);
    size_t n = std::min(length, a->body.size() - a->sent);
    std::copy_n(a->body.data() + a->sent, n, buf);
    a->sent += n;
    if (a->sent == a->body.size()) *flags |= NGHTTP2_DATA_FLAG_EOF;
    return static_cast<ssize_t>(n);
  }

  static int on_header(nghttp2_session*, const nghttp2_frame* frame, const uint8_t* name, size_t namelen,
                       const uint8_t* value, size_t valuelen, uint8_t, void* user) {
    if (frame->hd.type == NGHTTP2_HEADERS && std::string(reinterpret_cast<const char*>(name), namelen) == ":path")
      static_cast<conn*>(user)->paths[frame->hd.stream_id].assign(reinterpret_cast<const char*>(value), valuelen);
    return 0;
  }

  static int on_frame_recv(nghttp2_session*, const nghttp2_frame* frame, void* user) {
    bool request_done = (frame->hd.type == NGHTTP2_HEADERS || frame->hd.type == NGHTTP2_DATA) &&
                        (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) != 0;
    if (request_done) static_cast<conn*>(user)->waiting.push_back(frame->hd.stream_id);
    return 0;
  }

  const int gate_size_;
  SSL_CTX* tls_ = nullptr;
  int listen_fd_ = -1;
  int stop_[2] = {-1, -1};
  int port_ = 0;
  nghttp2_session_callbacks* callbacks_ = nullptr;
  std::list<conn> conns_;  // the server thread's; a list: sessions point to their conn
  std::atomic<int> connections_{0}, max_waiting_{0};
  std::thread thread_;
};

}  // namespace klynaa::test

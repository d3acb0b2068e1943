// See zap.hpp. The ZAP request is the REP socket's message (RFC 27):
//   version "1.0", request id, domain, address, identity, mechanism,
//   credentials... (CURVE: the client's 32-byte public key)
// and the reply
//   version "1.0", request id, status code, status text, user id, metadata.
#include "broker/zap.hpp"

#include <sys/stat.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>

#include <zmq_addon.hpp>

#include "protocol/curve_keys.hpp"
#include "protocol/log.hpp"

namespace klynaa::broker {

namespace {

constexpr const char* component = "broker";
constexpr const char* zap_endpoint = "inproc://zeromq.zap.01";
constexpr int64_t check_every_ms = 1000;
constexpr int64_t refusal_log_every_ms = 60000;  // per key: a refused client reconnects every ~100 ms

int64_t steady_ms() {
  using namespace std::chrono;
  return duration_cast<milliseconds>(steady_clock::now().time_since_epoch()).count();
}

/// What identifies a version of a file without reading it.
struct file_stamp {
  int64_t mtime_ns = -1;
  int64_t size = -1;
  uint64_t inode = 0;
  bool operator==(const file_stamp& o) const {
    return mtime_ns == o.mtime_ns && size == o.size && inode == o.inode;
  }
};

bool stamp_of(const std::string& path, file_stamp& out, std::string& err) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    err = std::strerror(errno);
    return false;
  }
  out.mtime_ns = static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec;
  out.size = static_cast<int64_t>(st.st_size);
  out.inode = static_cast<uint64_t>(st.st_ino);
  return true;
}

/// Reads and parses an allow list; false with `err` (without the key's name).
bool read_allow_list(const std::string& path, protocol::allow_list& out, std::string& err) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    err = "cannot read " + path + ": " + std::strerror(errno);
    return false;
  }
  std::stringstream ss;
  ss << in.rdbuf();
  auto parsed = protocol::parse_allow_list(ss.str());
  if (auto* e = std::get_if<std::string>(&parsed)) {
    err = path + ": " + *e;
    return false;
  }
  out = std::get<protocol::allow_list>(std::move(parsed));
  return true;
}

}  // namespace

void make_curve_server(zmq::socket_t& socket, const curve_server_options& o, const std::string& domain) {
  socket.set(zmq::sockopt::curve_server, true);
  socket.set(zmq::sockopt::curve_secretkey, o.secret_key);
  socket.set(zmq::sockopt::zap_domain, domain);
  // ZMQ_ZAP_ENFORCE_DOMAIN (93): without a ZAP handler, refuse rather than
  // admit everyone. zmq.h declares it only with the draft API, but Debian's
  // libzmq 4.3.4 accepts it; a library that does not is left to the order of
  // binding (handler first, closed last), so the error is ignored.
  int on = 1;
  (void)zmq_setsockopt(socket.handle(), 93, &on, sizeof(on));
}

struct zap_handler::state {
  struct list {
    domain d;
    protocol::allow_list keys;
    file_stamp stamp;
    bool unreadable = false;  ///< the error is logged once, not every second
  };
  zmq::context_t* ctx = nullptr;
  std::unique_ptr<zmq::socket_t> rep;
  std::map<std::string, list> lists;  ///< by domain name
  int64_t last_check = 0;
  std::map<std::string, std::pair<int64_t, int64_t>> refusals;  ///< key -> {last logged, suppressed since}

  void check_files(int64_t now) {
    last_check = now;
    for (auto& [name, l] : lists) {
      file_stamp s;
      std::string err;
      if (!stamp_of(l.d.allow_file, s, err)) {
        if (!l.unreadable)
          log::error(component, "CURVE allow list unreadable; keeping the keys loaded before",
                     {{"domain", name}, {"key", l.d.allow_key}, {"file", l.d.allow_file}, {"error", err},
                      {"keys", l.keys.size()}});
        l.unreadable = true;
        l.stamp = file_stamp{};  // read again whenever it is back
        continue;
      }
      l.unreadable = false;
      if (s == l.stamp) continue;
      protocol::allow_list fresh;
      if (!read_allow_list(l.d.allow_file, fresh, err)) {
        log::error(component, "CURVE allow list changed but is not valid; keeping the keys loaded before",
                   {{"domain", name}, {"key", l.d.allow_key}, {"error", err}, {"keys", l.keys.size()}});
        l.stamp = s;  // retried when it changes again
        continue;
      }
      log::info(component, "CURVE allow list reloaded",
                {{"domain", name}, {"file", l.d.allow_file}, {"keys", fresh.size()}, {"before", l.keys.size()}});
      l.keys = std::move(fresh);
      l.stamp = s;
    }
  }

  void log_refusal(const std::string& domain_name, const std::string& key, const std::string& address,
                   const std::string& why, int64_t now) {
    auto& [last, suppressed] = refusals[domain_name + "/" + key];
    if (last != 0 && now - last < refusal_log_every_ms) {
      ++suppressed;
      return;
    }
    nlohmann::json fields = {{"domain", domain_name}, {"client_key", protocol::key_prefix(key)},
                             {"address", address}, {"reason", why}};
    if (suppressed > 0) fields["refused_since_last_line"] = suppressed;
    log::warning(component, "CURVE client refused", fields);
    last = now;
    suppressed = 0;
    if (refusals.size() > 10000) refusals.clear();  // a flood of random keys must not grow memory
  }
};

bool zap_handler::start(zmq::context_t& ctx, std::vector<domain> domains, std::string& err) {
  if (domains.empty()) return true;
  auto s = std::make_unique<state>();
  s->ctx = &ctx;
  for (auto& d : domains) {
    state::list l;
    std::string why;
    std::string ignored;
    stamp_of(d.allow_file, l.stamp, ignored);  // before reading: a change while we read is seen later
    if (!read_allow_list(d.allow_file, l.keys, why)) {
      err = d.allow_key + ": " + why;
      return false;
    }
    log::info(component, "CURVE allow list loaded",
              {{"domain", d.name}, {"file", d.allow_file}, {"keys", l.keys.size()}});
    l.d = d;
    auto name = d.name;
    s->lists.emplace(name, std::move(l));
  }
  try {
    s->rep = std::make_unique<zmq::socket_t>(ctx, zmq::socket_type::rep);
    s->rep->set(zmq::sockopt::linger, 0);
    s->rep->bind(zap_endpoint);
  } catch (const zmq::error_t& e) {
    err = std::string("cannot bind the ZAP handler at ") + zap_endpoint + ": " + e.what();
    return false;
  }
  s->last_check = steady_ms();
  state_ = std::move(s);
  stopping_ = false;
  thread_ = std::thread([this] { run(); });  // the socket changes owner here
  return true;
}

void zap_handler::stop() {
  stopping_ = true;
  if (thread_.joinable()) thread_.join();
  state_.reset();
}

zap_handler::zap_handler() = default;

zap_handler::~zap_handler() { stop(); }

void zap_handler::run() {
  auto& s = *state_;
  while (!stopping_) {
    zmq::pollitem_t items[] = {{s.rep->handle(), 0, ZMQ_POLLIN, 0}};
    try {
      zmq::poll(items, 1, std::chrono::milliseconds(200));
    } catch (const zmq::error_t& e) {
      if (e.num() == ETERM) break;
      if (e.num() != EINTR) log::error(component, "ZAP handler poll failed", {{"error", e.what()}});
      continue;
    }
    int64_t now = steady_ms();
    if (now - s.last_check >= check_every_ms) s.check_files(now);
    if (!(items[0].revents & ZMQ_POLLIN)) continue;

    std::vector<zmq::message_t> req;
    try {
      if (!zmq::recv_multipart(*s.rep, std::back_inserter(req), zmq::recv_flags::dontwait)) continue;
    } catch (const zmq::error_t& e) {
      if (e.num() == ETERM) break;
      continue;
    }
    // A request we cannot read is still answered (REP must reply), with 400.
    auto frame = [&](size_t i) { return i < req.size() ? req[i].to_string() : std::string(); };
    const std::string version = frame(0), request_id = frame(1), domain_name = frame(2),
                      address = frame(3), mechanism = frame(5);
    std::string status = "400", text = "not allowed", user_id, client_key;
    if (version != "1.0") {
      text = "unsupported ZAP version";
    } else if (mechanism != "CURVE" || req.size() < 7 || req[6].size() != 32) {
      text = "CURVE required";
      s.log_refusal(domain_name, "(" + mechanism + ")", address, "mechanism " + mechanism + ", not CURVE", now);
    } else {
      protocol::curve_key key;
      std::memcpy(key.data(), req[6].data(), 32);
      client_key = protocol::z85_encode(key);
      auto it = s.lists.find(domain_name);
      if (it == s.lists.end()) {
        text = "unknown ZAP domain";
        s.log_refusal(domain_name, client_key, address, "unknown ZAP domain", now);
      } else if (it->second.keys.count(key)) {
        status = "200";
        text = "OK";
        user_id = client_key;
        KLYNAA_LOG(debug, component, "CURVE client admitted",
                   {{"domain", domain_name}, {"client_key", protocol::key_prefix(client_key)},
                    {"label", it->second.keys.at(key)}, {"address", address}});
      } else {
        s.log_refusal(domain_name, client_key, address,
                      "public key not in " + it->second.d.allow_key + " (" + it->second.d.allow_file + ")", now);
      }
    }
    (status == "200" ? admitted_ : refused_).fetch_add(1);
    try {
      std::vector<zmq::const_buffer> reply = {zmq::buffer(std::string_view("1.0")), zmq::buffer(request_id),
                                              zmq::buffer(status), zmq::buffer(text), zmq::buffer(user_id),
                                              zmq::const_buffer()};
      zmq::send_multipart(*s.rep, reply);
    } catch (const zmq::error_t& e) {
      if (e.num() == ETERM) break;
      log::error(component, "ZAP reply failed", {{"error", e.what()}});
    }
  }
  s.rep.reset();  // unbinds: no handler from here on (the CURVE sockets are closed first)
}

}  // namespace klynaa::broker

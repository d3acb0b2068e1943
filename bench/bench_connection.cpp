// One connection of klynaa-bench's load mode (bench_connection.hpp).
#include "bench/bench_connection.hpp"

#include <poll.h>
#include <time.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <deque>
#include <functional>
#include <utility>
#include <vector>

#include <msgpack.hpp>

#include "bench/bench_common.hpp"
#include "bench/bench_frames.hpp"
#include "protocol/message.hpp"

namespace klynaa::bench {

namespace {

/// The run of one connection: its share of the requests (`mine`), sent in
/// sequence numbers 0..mine-1, each answered once; rejected ones with
/// retry_after_ms are sent again when told.
class load_connection {
 public:
  load_connection(shared_state& S, int c, conn_result& res)
      : S_(S),
        o_(*S.o),
        c_(c),
        res_(res),
        n_conn_(static_cast<uint64_t>(o_.connections)),
        mine_(o_.count / n_conn_ + (static_cast<uint64_t>(c) < o_.count % n_conn_ ? 1 : 0)),
        interval_(o_.rate > 0 ? 1e9 * static_cast<double>(n_conn_) / o_.rate : 0),
        offset_(o_.rate > 0 ? 1e9 * c / o_.rate : 0),
        id_prefix_(S.prefix + "-" + std::to_string(c) + "-"),
        invoke_timeout_ms_(static_cast<int64_t>(o_.timeout_s * 1000)),
        seed_(std::hash<std::string>()(S.prefix)),
        sock_(*S.ctx, zmq::socket_type::dealer) {}

  void run() {
    connect_and_ping();
    wait_for_go();
    if (!res_.error.empty()) return;
    t0_ = S_.t0;
    deadline_ = S_.deadline;
    zfd_ = sock_.get(zmq::sockopt::fd);
    start_.assign(mine_, 0);  // scheduled (paced) or actual (flat out) send time
    answered_.assign(mine_, 0);
    while (done_ < mine_ && res_.error.empty()) {
      int64_t now = mono_ns();
      if (now > deadline_) {
        res_.error = "connection " + std::to_string(c_) + ": " + std::to_string(mine_ - done_) +
                     " requests unanswered after --timeout " + std::to_string(o_.timeout_s) + " s";
        break;
      }
      send_due(now);
      bool progressed = drain_replies();
      if (progressed || !res_.error.empty() || done_ == mine_) continue;
      block_until_due();
    }
  }

 private:
  /// Connects, and sends a ping, so the connection is up before the clock starts.
  void connect_and_ping() {
    sock_.set(zmq::sockopt::linger, 0);
    sock_.set(zmq::sockopt::sndhwm, 0);
    sock_.set(zmq::sockopt::rcvhwm, 0);
    sock_.connect(o_.ingress);
    klynaa::protocol::request ping;
    ping.operation = klynaa::protocol::op::ping;
    auto f = klynaa::protocol::encode_request(ping);
    sock_.send(zmq::buffer(f), zmq::send_flags::none);
    zmq::pollitem_t items[] = {{static_cast<void*>(sock_), 0, ZMQ_POLLIN, 0}};
    zmq::message_t m;
    if (zmq::poll(items, 1, std::chrono::milliseconds(5000)) <= 0 ||
        !sock_.recv(m, zmq::recv_flags::dontwait))
      res_.error = "no pong from " + o_.ingress + " within 5 s";
    while (m.more() && sock_.recv(m, zmq::recv_flags::dontwait)) {}
  }

  /// Reports ready and waits for the common start.
  void wait_for_go() {
    std::unique_lock<std::mutex> lk(S_.mu);
    ++S_.ready;
    S_.cv.notify_all();
    S_.cv.wait(lk, [&] { return S_.go; });
  }

  uint64_t global_seq(uint64_t seq) const { return seq * n_conn_ + static_cast<uint64_t>(c_); }

  bool is_invoke(uint64_t seq) const {
    return o_.wait && o_.e2e_every > 0 && global_seq(seq) % o_.e2e_every == 0;
  }

  /// When request `seq` is due, paced.
  int64_t scheduled(uint64_t seq) const {
    return t0_ + static_cast<int64_t>(offset_ + interval_ * static_cast<double>(seq));
  }

  void send_seq(uint64_t seq) {
    id_.assign(id_prefix_);
    id_ += std::to_string(seq);
    uint64_t g = global_seq(seq);
    build_request(buf_, is_invoke(seq), id_, o_.type, S_.function, splitmix64(g ^ seed_), o_.keys,
                  invoke_timeout_ms_);
    sock_.send(zmq::const_buffer(buf_.data(), buf_.size()), zmq::send_flags::none);
  }

  /// Sends the retries that are due, then new requests while the window has room
  /// (paced: those whose time has come).
  void send_due(int64_t now) {
    while (!retries_.empty() && retries_.front().first <= now) {
      send_seq(retries_.front().second);
      retries_.pop_front();
    }
    while (next_ < mine_ && inflight_ < static_cast<uint64_t>(o_.window)) {
      int64_t when = now;
      if (o_.rate > 0) {
        when = scheduled(next_);
        if (when > now) break;
      } else {
        now = mono_ns();
        when = now;
      }
      start_[next_] = when;
      send_seq(next_);
      ++next_;
      ++inflight_;
    }
  }

  /// Handles every reply that is there (ZMQ_EVENTS before blocking on the fd);
  /// true when there was one.
  bool drain_replies() {
    bool progressed = false;
    while (sock_.get(zmq::sockopt::events) & ZMQ_POLLIN) {
      if (!sock_.recv(msg_, zmq::recv_flags::dontwait)) break;
      while (msg_.more()) {  // a delimiter frame: the body is the last frame
        if (!sock_.recv(msg_, zmq::recv_flags::dontwait)) break;
      }
      int64_t t = mono_ns();
      progressed = true;
      if (!handle_reply(t)) break;
    }
    return progressed;
  }

  /// One reply received at `t`; false when the run failed.
  bool handle_reply(int64_t t) {
    msgpack::object_handle oh;
    reply_view r;
    try {
      oh = msgpack::unpack(static_cast<const char*>(msg_.data()), msg_.size());
    } catch (...) {
      res_.error = "a reply that is not msgpack";
      return false;
    }
    if (!read_reply(oh.get(), r)) {
      res_.error = "a reply that is not a reply map";
      return false;
    }
    if (r.status == "pong") return true;
    if (r.id.size() <= id_prefix_.size() || r.id.compare(0, id_prefix_.size(), id_prefix_) != 0)
      return true;  // not ours
    uint64_t seq = std::strtoull(std::string(r.id.substr(id_prefix_.size())).c_str(), nullptr, 10);
    if (seq >= next_ || answered_[seq]) return true;
    if ((r.status == "rejected") && r.retry_after_ms >= 0) {
      // overloaded / shutting_down: back off as told and send it again; the latency
      // keeps counting from the first (scheduled) send.
      ++res_.overloaded_retries;
      retries_.emplace_back(t + std::max<int64_t>(r.retry_after_ms, 1) * 1000000, seq);
      return true;
    }
    bool inv = is_invoke(seq);
    bool good = inv ? r.status == "ok" : r.status == "accepted";
    if (!good) {
      auto full = klynaa::protocol::decode_reply(msg_.data(), msg_.size());
      std::string detail = full ? klynaa::protocol::reply_to_json(*full).dump() : "?";
      res_.error = "request " + std::string(r.id) + " (" + (inv ? "invoke" : "publish") +
                   ") answered " + std::string(r.status) + ": " + detail;
      return false;
    }
    record(seq, inv, t);
    return true;
  }

  void record(uint64_t seq, bool inv, int64_t t) {
    answered_[seq] = 1;
    ++done_;
    --inflight_;
    uint64_t lat = static_cast<uint64_t>(std::max<int64_t>(0, t - start_[seq]));
    if (inv) {
      res_.e2e.record(lat);
      ++res_.invokes_ok;
    } else {
      res_.ack.record(lat);
      ++res_.publishes_acked;
      res_.last_publish_ack = t;
    }
  }

  /// Blocks until a reply may be there, the next scheduled send, a retry, or 100 ms.
  void block_until_due() {
    int64_t now = mono_ns();
    int64_t wake = now + 100000000;
    if (next_ < mine_ && inflight_ < static_cast<uint64_t>(o_.window)) {
      if (o_.rate <= 0) return;  // flat out with room in the window: send more now
      wake = std::min(wake, scheduled(next_));
    }
    if (!retries_.empty()) wake = std::min(wake, retries_.front().first);
    wake = std::min(wake, deadline_ + 1);
    int64_t wait = std::max<int64_t>(0, wake - now);
    if (wait == 0) return;
    pollfd pfd{zfd_, POLLIN, 0};
    timespec ts{static_cast<time_t>(wait / 1000000000), static_cast<long>(wait % 1000000000)};
    ::ppoll(&pfd, 1, &ts, nullptr);
  }

  shared_state& S_;
  const options& o_;
  const int c_;
  conn_result& res_;
  const uint64_t n_conn_;
  const uint64_t mine_;
  const double interval_;
  const double offset_;
  const std::string id_prefix_;
  const int64_t invoke_timeout_ms_;
  const uint64_t seed_;
  zmq::socket_t sock_;
  int64_t t0_ = 0, deadline_ = 0;
  int zfd_ = -1;
  std::vector<int64_t> start_;
  std::vector<uint8_t> answered_;
  std::deque<std::pair<int64_t, uint64_t>> retries_;  // (when, seq)
  msgpack::sbuffer buf_{512};
  std::string id_;
  zmq::message_t msg_;
  uint64_t next_ = 0, inflight_ = 0, done_ = 0;
};

}  // namespace

void connection(shared_state& S, int c, conn_result& res) {
  load_connection conn(S, c, res);
  conn.run();
}

}  // namespace klynaa::bench

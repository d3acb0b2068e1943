#include "broker/writer.hpp"

#include "broker/ack_timeline.hpp"

namespace klynaa::broker {

commit_writer::commit_writer(store& s, zmq::context_t& ctx, std::string notify_endpoint)
    : store_(s), ctx_(ctx), notify_endpoint_(std::move(notify_endpoint)) {}

commit_writer::~commit_writer() { stop(); }

void commit_writer::start() { thread_ = std::thread([this] { loop(); }); }

void commit_writer::stop() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void commit_writer::submit(const batch& b) {
  busy_ = true;
  {
    std::lock_guard<std::mutex> lk(mu_);
    in_ = &b;
  }
  cv_.notify_all();
}

std::optional<commit_writer::result> commit_writer::take() {
  std::lock_guard<std::mutex> lk(mu_);
  if (!out_) return std::nullopt;
  auto r = std::move(out_);
  out_.reset();
  busy_ = false;
  return r;
}

void commit_writer::loop() {
  zmq::socket_t notify(ctx_, zmq::socket_type::push);
  notify.set(zmq::sockopt::linger, 0);
  notify.connect(notify_endpoint_);
  for (;;) {
    const batch* b = nullptr;
    {
      std::unique_lock<std::mutex> lk(mu_);
      cv_.wait(lk, [&] { return in_ != nullptr || stopping_; });
      if (!in_) return;  // stopping with nothing in flight
      b = in_;
      in_ = nullptr;
    }
    result r;
    r.start_us = steady_us();
    r.outcome = store_.commit(*b, r.error);
    r.end_us = steady_us();
    r.commit_us = r.end_us - r.start_us;
    {
      std::lock_guard<std::mutex> lk(mu_);
      out_ = std::move(r);
    }
    notify.send(zmq::message_t(), zmq::send_flags::dontwait);
  }
}

}  // namespace klynaa::broker

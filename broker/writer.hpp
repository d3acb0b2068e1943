// Group commit: one writer thread applies batches to the store, one transaction
// (one fsync) per batch, while the broker loop gathers the next batch. When a
// commit ends the writer sends one empty frame on an inproc PUSH socket so that
// the loop's zmq poll wakes up; the loop then calls take().
#pragma once

#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include <zmq.hpp>

#include "broker/store.hpp"

namespace klynaa::broker {

class commit_writer {
 public:
  struct result {
    std::optional<commit_outcome> outcome;  ///< nullopt: the commit failed, see error
    store_error error;
    int64_t commit_us = 0;
    int64_t start_us = 0, end_us = 0;  ///< steady clock (ack_timeline.hpp)
  };

  /// `notify_endpoint`: an inproc endpoint the loop has bound a PULL socket to.
  commit_writer(store& s, zmq::context_t& ctx, std::string notify_endpoint);
  ~commit_writer();

  void start();
  /// Finishes the batch in flight, then joins the thread.
  void stop();

  /// Hands over a batch, by reference: it must stay alive and unchanged until
  /// take() returned its result (the loop keeps it for the replies anyway, so
  /// copying it would only cost an allocation per string). Only while !busy().
  void submit(const batch& b);
  bool busy() const { return busy_; }

  /// The result of the submitted batch; call after the notify frame arrived.
  std::optional<result> take();

 private:
  void loop();

  store& store_;
  zmq::context_t& ctx_;
  std::string notify_endpoint_;
  std::thread thread_;
  std::mutex mu_;
  std::condition_variable cv_;
  const batch* in_ = nullptr;
  std::optional<result> out_;
  bool stopping_ = false;
  bool busy_ = false;  ///< touched by the loop thread only
};

}  // namespace klynaa::broker

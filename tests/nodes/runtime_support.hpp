// What the node runtime's tests (tests/nodes/runtime_*_test.cpp) share: handlers
// made of function objects, kind specs, node options pointing at a fake broker
// (fake_broker.hpp), and waits with a deadline.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <catch2/catch.hpp>

#include "fake_broker.hpp"
#include "nodes/runtime.hpp"
#include "nodes/suspend.hpp"

namespace klynaa::node_test {

using namespace std::chrono_literals;
using testing::fake_broker;
namespace cl = protocol::cluster;

/// A handler running a function object.
class fn_handler : public nodes::job_handler {
 public:
  using fn = std::function<nodes::job_result(const nodes::job&)>;
  explicit fn_handler(fn f) : f_(std::move(f)) {}
  nodes::job_result run(const nodes::job& j) override { return f_(j); }

 private:
  fn f_;
};

inline nodes::actor_kind_spec kind_spec(std::string kind, std::vector<std::string> functions, int workers,
                                 std::function<std::unique_ptr<nodes::job_handler>()> make) {
  nodes::actor_kind_spec k;
  k.kind = std::move(kind);
  k.functions = std::move(functions);
  k.workers = workers;
  k.make_handler = std::move(make);
  return k;
}

inline nodes::actor_kind_spec kind_of(std::string kind, std::vector<std::string> functions, int workers, fn_handler::fn f) {
  return kind_spec(std::move(kind), std::move(functions), workers, [f] { return std::make_unique<fn_handler>(f); });
}

inline nodes::job_result ok_handler(const nodes::job&) {
  return nodes::job_result::success({{"ok", true}});
}

inline std::string unique_inproc() {
  static std::atomic<int> n{0};
  return "inproc://test-broker-" + std::to_string(++n);
}

inline nodes::node_options options_for(const fake_broker& b, std::vector<nodes::actor_kind_spec> kinds) {
  nodes::node_options o;
  o.broker_endpoint = b.endpoint();
  o.name = "node-t";
  o.kinds = std::move(kinds);
  o.shutdown_grace_ms = 5000;
  o.register_retry_ms = 100;
  return o;
}

inline cl::job job_of(std::string id, std::string function, int64_t lease, std::string data = "{}") {
  return {std::move(id), std::move(function), std::move(data), 1, lease, 1700000000000};
}

/// Registers the node with `b`: waits for READY (answered by WELCOME).
inline void await_registration(fake_broker& b) {
  REQUIRE(b.wait_until([&] { return b.count<cl::ready>() >= 1; }, 5s));
  b.pump_for(20ms);
}

inline std::optional<cl::done> done_of(const fake_broker& b, const std::string& job_id) {
  for (const auto& d : b.all<cl::done>())
    if (d.job_id == job_id)
      return d;
  return std::nullopt;
}

inline bool has_done(const fake_broker& b, const std::string& job_id) {
  return done_of(b, job_id).has_value();
}

/// A gate a handler can wait on; the test opens it.
struct gate {
  std::mutex m;
  std::condition_variable cv;
  bool open = false;
  std::atomic<bool> entered{false};
  std::atomic<bool> left{false};

  void wait(std::chrono::milliseconds max) {
    entered = true;
    std::unique_lock<std::mutex> lock{m};
    cv.wait_for(lock, max, [&] { return open; });
    left = true;
  }
  void release() {
    {
      std::lock_guard<std::mutex> lock{m};
      open = true;
    }
    cv.notify_all();
  }
};

template <class Pred>
inline bool eventually(Pred p, std::chrono::milliseconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!p()) {
    if (std::chrono::steady_clock::now() >= deadline)
      return false;
    std::this_thread::sleep_for(5ms);
  }
  return true;
}

/// Jobs of a fiber kind that suspend (nodes/suspend.hpp) until the test wakes
/// them: each wait registers its wake function here, and records whether it
/// was cancelled.
struct parked_jobs {
  std::mutex m;
  std::vector<std::function<void()>> wakes;
  std::atomic<int> cancelled{0};
  std::set<std::thread::id> threads;

  size_t waiting() {
    std::lock_guard<std::mutex> lock{m};
    return wakes.size();
  }
  void wake_all() {
    std::vector<std::function<void()>> all;
    {
      std::lock_guard<std::mutex> lock{m};
      all.swap(wakes);
    }
    for (auto& w : all) w();
  }
};

inline nodes::actor_kind_spec parking_kind(std::shared_ptr<parked_jobs> p, int workers) {
  auto kind = kind_of("k", {"f"}, workers, [p](const nodes::job& j) {
    {
      std::lock_guard<std::mutex> lock{p->m};
      p->threads.insert(std::this_thread::get_id());
    }
    bool waited = nodes::suspend_job([&](std::function<void()> wake) {
      std::lock_guard<std::mutex> lock{p->m};
      p->wakes.push_back(wake);
      return std::function<void()>([p, wake] {
        ++p->cancelled;
        wake();  // what a cancelled HTTP request does: its answer comes back at once
      });
    });
    if (!waited) return nodes::job_result::failure(nodes::outcome::transient, "not_on_fiber", "no fiber");
    return nodes::job_result::success({{"job", j.id}});
  });
  kind.fibers = true;
  kind.blocking = false;
  return kind;
}

}  // namespace klynaa::node_test

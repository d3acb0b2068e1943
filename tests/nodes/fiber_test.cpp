// The fiber (nodes/fiber.hpp): resume/yield, many fibers at once and their
// memory, resuming on alternating threads, exceptions inside fibers and out of
// them, deep recursion, the guard page, the stack pool, destruction while
// suspended, nesting. Every wait has a deadline.
#include "nodes/fiber.hpp"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <deque>
#include <fstream>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <catch2/catch.hpp>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#define KLYNAA_TEST_ASAN 1
#endif

using klynaa::nodes::fiber;
using namespace std::chrono_literals;

namespace {

/// Resident memory of this process (VmRSS), in bytes.
size_t rss_bytes() {
  std::ifstream statm("/proc/self/statm");
  size_t pages = 0, resident = 0;
  statm >> pages >> resident;
  return resident * static_cast<size_t>(sysconf(_SC_PAGESIZE));
}

/// Read after a yield through a call the compiler cannot see into: inline,
/// pthread_self() is const, so one function could keep the old thread's id.
[[gnu::noinline]] std::thread::id thread_now() { return std::this_thread::get_id(); }

/// A blocking queue of fibers, the hand-off between two threads.
class fiber_queue {
 public:
  void push(fiber* f) {
    std::lock_guard<std::mutex> lock(mutex_);
    items_.push_back(f);
    cv_.notify_one();
  }
  /// nullptr after 10 s without a fiber.
  fiber* pop() {
    std::unique_lock<std::mutex> lock(mutex_);
    if (!cv_.wait_for(lock, 10s, [&] { return !items_.empty(); })) return nullptr;
    fiber* f = items_.front();
    items_.pop_front();
    return f;
  }

 private:
  std::mutex mutex_;
  std::condition_variable cv_;
  std::deque<fiber*> items_;
};

/// Recurses until `target` bytes of stack below `top` are in use; returns the
/// depth. Each frame passes its array down, so no frame can be reused (no tail
/// call, no loop).
[[gnu::noinline]] int descend(const char* top, size_t target, volatile char* above) {
  volatile char pad[512];
  pad[0] = above != nullptr ? above[0] : 1;
  auto here = static_cast<const char*>(__builtin_frame_address(0));
  if (static_cast<size_t>(top - here) >= target) return 1;
  int depth = descend(top, target, pad);
  return depth + pad[0];
}

}  // namespace

TEST_CASE("resume and yield play ping-pong through captured state until the body returns",
          "[fiber]") {
  int ball = 0;
  std::vector<int> seen;
  fiber f([&] {
    for (int i = 0; i < 3; ++i) {
      seen.push_back(ball);  // what the resumer served
      ball = ball * 10 + 1;  // the return
      fiber::yield();
    }
  });
  CHECK_FALSE(f.done());
  for (int serve : {1, 2, 3}) {
    ball = serve;
    f.resume();
    CHECK(ball == serve * 10 + 1);
    CHECK_FALSE(f.done());
  }
  f.resume();  // the loop ends, the body returns
  CHECK(f.done());
  CHECK(seen == std::vector<int>{1, 2, 3});
  f.resume();  // a finished fiber: returns at once
  CHECK(f.done());
}

TEST_CASE("current is nullptr outside a fiber and the fiber inside, and yield outside does nothing",
          "[fiber]") {
  CHECK(fiber::current() == nullptr);
  fiber::yield();  // documented no-op
  fiber* inside_before = nullptr;
  fiber* inside_after = nullptr;
  fiber f([&] {
    inside_before = fiber::current();
    fiber::yield();
    inside_after = fiber::current();
  });
  f.resume();
  CHECK(inside_before == &f);
  CHECK(fiber::current() == nullptr);
  f.resume();
  CHECK(inside_after == &f);
  CHECK(fiber::current() == nullptr);
  CHECK(f.done());
}

TEST_CASE("10,000 fibers alive at once each yield 5 times and all complete", "[fiber]") {
  constexpr int n = 10000, yields = 5;
  std::vector<int> progress(n, 0);
  std::vector<std::unique_ptr<fiber>> fibers;
  fibers.reserve(n);
  size_t rss_before = rss_bytes();
  for (int i = 0; i < n; ++i) {
    fibers.push_back(std::make_unique<fiber>([&progress, i] {
      for (int y = 0; y < yields; ++y) {
        ++progress[i];
        fiber::yield();
      }
      ++progress[i];
    }));
  }
  for (auto& f : fibers) f->resume();  // all started and suspended
  size_t rss_all_suspended = rss_bytes();
  for (int round = 1; round <= yields; ++round) {
    for (auto& f : fibers) f->resume();
  }
  int done = 0, counted = 0;
  for (int i = 0; i < n; ++i) {
    done += fibers[i]->done() ? 1 : 0;
    counted += progress[i] == yields + 1 ? 1 : 0;
  }
  CHECK(done == n);
  CHECK(counted == n);
  double mib = static_cast<double>(rss_all_suspended - rss_before) / (1024.0 * 1024.0);
  std::printf("fiber: 10,000 suspended fibers (stacks of %zu KiB): RSS +%.1f MiB, %.1f KiB each\n",
              fiber::default_stack_bytes() / 1024, mib, mib * 1024.0 / n);
  CHECK(rss_all_suspended - rss_before < size_t{1} << 30);  // generous: < 1 GiB even under ASan
  fibers.clear();
  CHECK(fiber::stats().pooled <= 256);
}

TEST_CASE("a fiber resumed on two threads in turn sees consistent locals", "[fiber]") {
  constexpr int rounds = 200;
  fiber_queue to_a, to_b;
  std::vector<std::thread::id> ran_on;
  int errors = 0;
  fiber f([&] {
    std::string text;  // locals live on the fiber's stack, whichever thread runs it
    long sum = 0;
    for (int i = 0; i < rounds; ++i) {
      text += static_cast<char>('a' + i % 26);
      sum += i;
      ran_on.push_back(thread_now());
      fiber::yield();
      if (text.size() != static_cast<size_t>(i + 1) || sum != long{i} * (i + 1) / 2) ++errors;
      if (fiber::current() != &f) ++errors;
    }
  });
  // Each thread resumes the fiber and hands it to the other until it is done.
  auto play = [](fiber_queue& mine, fiber_queue& other, bool& finished) {
    for (;;) {
      fiber* g = mine.pop();
      if (g == nullptr) return;  // the other thread finished it, or timed out
      g->resume();
      if (g->done()) {
        finished = true;
        other.push(nullptr);
        return;
      }
      other.push(g);
    }
  };
  bool a_finished = false, b_finished = false;
  std::thread a(play, std::ref(to_a), std::ref(to_b), std::ref(a_finished));
  std::thread b(play, std::ref(to_b), std::ref(to_a), std::ref(b_finished));
  to_a.push(&f);
  a.join();
  b.join();
  REQUIRE(f.done());
  CHECK((a_finished || b_finished));
  CHECK(errors == 0);
  REQUIRE(ran_on.size() == static_cast<size_t>(rounds));
  int switched = 0;
  for (size_t i = 1; i < ran_on.size(); ++i) switched += ran_on[i] != ran_on[i - 1] ? 1 : 0;
  CHECK(switched == rounds - 1);  // every resume on the other thread
}

TEST_CASE("an exception thrown and caught inside a fiber stays inside it", "[fiber]") {
  std::string caught;
  fiber f([&] {
    try {
      fiber::yield();
      throw std::runtime_error("inside");
    } catch (const std::runtime_error& e) {
      caught = e.what();
    }
    fiber::yield();
  });
  f.resume();
  CHECK_NOTHROW(f.resume());
  CHECK(caught == "inside");
  CHECK_FALSE(f.done());
  f.resume();
  CHECK(f.done());
}

TEST_CASE("an exception escaping the body is rethrown by resume, once, and the fiber is done",
          "[fiber]") {
  bool unwound = false;
  struct sentinel {
    bool& flag;
    ~sentinel() { flag = true; }
  };
  fiber f([&] {
    sentinel s{unwound};
    fiber::yield();
    throw std::logic_error("escaped");
  });
  f.resume();
  CHECK_THROWS_WITH(f.resume(), "escaped");
  CHECK(unwound);  // the body's locals were destroyed on the way out
  CHECK(f.done());
  CHECK_NOTHROW(f.resume());
}

/// Throws out of a frame whose array's redzones ASan poisoned; `buf` tells where.
[[gnu::noinline]] void throw_from_frame(volatile char** buf) {
  volatile char local[64];
  local[0] = 1;
  *buf = local;
  throw std::runtime_error("from a frame");
}

TEST_CASE("an exception unwinding frames in a fiber leaves no stale sanitizer poison", "[fiber]") {
  // A throw tells ASan to unpoison the frames it skips; it does so only on the
  // stack it knows the thread is on. Left poisoned, their redzones would make
  // false reports when later frames reuse that memory.
  volatile char* skipped = nullptr;
  bool caught = false;
  bool clean = true;
  fiber f([&] {
    for (int i = 0; i < 2; ++i) {  // again after a switch
      try {
        throw_from_frame(&skipped);
      } catch (const std::runtime_error&) {
        caught = true;
      }
#ifdef KLYNAA_TEST_ASAN
      // (With ASAN_OPTIONS=detect_stack_use_after_return=1 the array is on a
      // heap-like fake stack instead, freed lazily: nothing to check there.)
      auto* at = const_cast<char*>(skipped);
      if (!__asan_addr_is_in_fake_stack(__asan_get_current_fake_stack(), at, nullptr, nullptr)) {
        clean = clean && __asan_region_is_poisoned(at - 64, 192) == nullptr;
      }
#endif
      fiber::yield();
    }
  });
  f.resume();
  f.resume();
  f.resume();
  CHECK(f.done());
  CHECK(caught);
  CHECK(clean);
}

TEST_CASE("a fiber suspended inside a catch block keeps its exception across threads and fibers",
          "[fiber]") {
  // Each fiber yields while handling its own exception, then rethrows it with
  // `throw;`: the exception being handled must be its own, though another fiber
  // and the resumer threw and caught in between, and it woke up on another thread.
  std::vector<std::string> rethrown;
  auto body = [&rethrown](std::string what) {
    return [&rethrown, what] {
      try {
        throw std::runtime_error(what);
      } catch (const std::exception&) {
        fiber::yield();
        try {
          throw;
        } catch (const std::runtime_error& again) {
          rethrown.emplace_back(again.what());
        }
      }
    };
  };
  fiber one(body("one")), two(body("two"));
  one.resume();
  two.resume();
  try {
    throw std::runtime_error("resumer");
  } catch (const std::exception&) {
    std::thread([&] { one.resume(); }).join();
  }
  std::thread([&] { two.resume(); }).join();
  CHECK(one.done());
  CHECK(two.done());
  CHECK(rethrown == std::vector<std::string>{"one", "two"});
}

TEST_CASE("a fiber resumed during stack unwinding has no uncaught exception of its own",
          "[fiber]") {
  int inside = -1;
  fiber f([&] { inside = std::uncaught_exceptions(); });
  struct resume_on_unwind {
    fiber& f;
    ~resume_on_unwind() { f.resume(); }
  };
  try {
    resume_on_unwind r{f};
    throw 1;
  } catch (int) {
  }
  CHECK(f.done());
  CHECK(inside == 0);
}

TEST_CASE("destroying a suspended fiber unwinds its stack", "[fiber]") {
  int destroyed = 0;
  struct sentinel {
    int& count;
    ~sentinel() { ++count; }
  };
  {
    fiber f([&] {
      sentinel outer{destroyed};
      try {
        sentinel inner{destroyed};
        fiber::yield();
      } catch (const std::exception&) {
        FAIL("forced_unwind is not an std::exception");
      }
    });
    f.resume();
    CHECK(destroyed == 0);
  }
  CHECK(destroyed == 2);

  // A body that swallows the unwind and yields again is thrown at again, not suspended.
  int swallowed = 0;
  {
    fiber f([&] {
      sentinel s{destroyed};
      for (;;) {
        try {
          fiber::yield();
        } catch (...) {
          if (++swallowed == 3) return;
        }
      }
    });
    f.resume();
  }
  CHECK(swallowed == 3);
  CHECK(destroyed == 3);

  // A fiber never resumed runs nothing.
  bool ran = false;
  { fiber f([&] { ran = true; }); }
  CHECK_FALSE(ran);
}

TEST_CASE("a fiber resumed inside another returns to it when it yields", "[fiber]") {
  std::vector<std::string> trace;
  fiber inner([&] {
    trace.push_back(fiber::current() == nullptr ? "inner: none" : "inner: in");
    fiber::yield();
    trace.push_back("inner: end");
  });
  fiber outer([&] {
    fiber* self = fiber::current();
    inner.resume();
    trace.push_back(fiber::current() == self ? "outer: back" : "outer: lost");
    fiber::yield();
    inner.resume();
    trace.push_back(inner.done() ? "outer: end" : "outer: inner not done");
  });
  outer.resume();
  CHECK(fiber::current() == nullptr);
  outer.resume();
  CHECK(outer.done());
  CHECK(trace == std::vector<std::string>{"inner: in", "outer: back", "inner: end", "outer: end"});
}

TEST_CASE("deep recursion within the default stack works", "[fiber]") {
  // 85% of the stack: frames of 512+ bytes, measured by address, whatever
  // their size in this build (ASan's are bigger).
  size_t target = fiber::default_stack_bytes() / 100 * 85;
  bool reached = false;
  fiber f([&] {
    auto top = static_cast<const char*>(__builtin_frame_address(0));
    reached = descend(top, target, nullptr) > 0;
    fiber::yield();
    reached = reached && descend(top, target, nullptr) > 0;  // again, after a switch
  });
  f.resume();
  f.resume();
  CHECK(f.done());
  CHECK(reached);
}

namespace overflow_probe {
// The child process's view of its overflow, for its SIGSEGV handler.
volatile uintptr_t stack_top = 0;  // the fiber body's frame
volatile uintptr_t deepest = 0;    // the frame address of overflow()'s deepest call
int report_fd = -1;

void on_segv(int, siginfo_t* info, void*) {
  uintptr_t words[3] = {reinterpret_cast<uintptr_t>(info->si_addr), stack_top, deepest};
  ssize_t n = write(report_fd, words, sizeof words);
  _exit(n == sizeof words ? 3 : 4);
}

[[gnu::noinline]] int overflow(int n) {
  volatile char pad[1024];
  pad[0] = static_cast<char>(n);
  deepest = reinterpret_cast<uintptr_t>(__builtin_frame_address(0));
  if (n < 0) return 0;  // never: keeps -Winfinite-recursion quiet
  int depth = overflow(n + 1);
  return depth + pad[0];  // not a tail call
}

/// In a forked child: overflows a fiber's stack, with a second stack mapped
/// below it (mmap places them top-down), so only a guard can stop the overflow
/// at its stack's end.
[[noreturn]] void run_child(int fd) {
  report_fd = fd;
  static char alt[64 * 1024];
  stack_t ss{};
  ss.ss_sp = alt;
  ss.ss_size = sizeof alt;
  sigaltstack(&ss, nullptr);
  struct sigaction sa {};
  sa.sa_sigaction = on_segv;
  sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
  sigaction(SIGSEGV, &sa, nullptr);
  fiber victim([] {
    stack_top = reinterpret_cast<uintptr_t>(__builtin_frame_address(0));
    overflow(0);
  });
  fiber neighbour([] {});
  victim.resume();
  _exit(0);  // not reached
}
}  // namespace overflow_probe

TEST_CASE("a stack overflow in a fiber faults at its guard, right below its stack", "[fiber]") {
  int out[2];
  REQUIRE(pipe(out) == 0);
  pid_t pid = fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    close(out[0]);
    overflow_probe::run_child(out[1]);
  }
  close(out[1]);
  uintptr_t words[3] = {0, 0, 0};
  ssize_t got = read(out[0], words, sizeof words);
  close(out[0]);
  int status = 0;
  REQUIRE(waitpid(pid, &status, 0) == pid);
  REQUIRE(WIFEXITED(status));
  REQUIRE(WEXITSTATUS(status) == 3);  // died in its SIGSEGV handler
  REQUIRE(got == static_cast<ssize_t>(sizeof words));
  uintptr_t fault = words[0], top = words[1], deepest = words[2];
  INFO("fault " << fault << ", stack top " << top << ", deepest frame " << deepest);
  CHECK(fault < deepest);
  CHECK(deepest - fault < 16 * 1024);  // the first access past the end faulted
  // The whole stack was usable, and the fault is within one frame below its end.
  size_t used = top - fault;
  CHECK(used > fiber::default_stack_bytes() - 16 * 1024);
  CHECK(used < fiber::default_stack_bytes() + 16 * 1024);
}

TEST_CASE("100,000 fibers one after another reuse pooled stacks", "[fiber]") {
  constexpr int n = 100000;
  { fiber warm([] {}); }  // at least one stack of the default size in the pool
  fiber::stack_stats before = fiber::stats();
  size_t rss_before = rss_bytes();
  int finished = 0;
  for (int i = 0; i < n; ++i) {
    fiber f([] { fiber::yield(); });
    f.resume();
    f.resume();
    finished += f.done() ? 1 : 0;
  }
  fiber::stack_stats after = fiber::stats();
  CHECK(finished == n);
  CHECK(after.mapped == before.mapped);  // not one new mmap
  CHECK(after.unmapped == before.unmapped);
  CHECK(after.reused - before.reused == n);
  std::printf("fiber: 100,000 fibers in turn: %llu stacks mapped, RSS %+.1f MiB\n",
              static_cast<unsigned long long>(after.mapped - before.mapped),
              (static_cast<double>(rss_bytes()) - static_cast<double>(rss_before)) / 1048576.0);
}

TEST_CASE("a million resume and yield round trips (cost printed)", "[fiber]") {
  constexpr long n = 1000000;
  long count = 0;
  fiber f([&] {
    for (;;) {
      ++count;
      fiber::yield();
    }
  });
  auto start = std::chrono::steady_clock::now();
  for (long i = 0; i < n; ++i) f.resume();
  auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() -
                                                                 start);
  CHECK(count == n);
  std::printf("fiber: %.1f ns a resume+yield round trip\n", static_cast<double>(ns.count()) / n);
  // No bound asserted: the machine is shared and sanitizers slow everything.
}

// A fiber: a stackful coroutine with a stack of its own. The node runtime will run
// each job's handler (nodes/job.hpp) on one, so that an HTTP call suspends the
// fiber instead of blocking a thread, and thousands of jobs can wait on the
// network on a few threads, where today each worker of a kind that calls Django
// has a thread of its own (docs/reliability.md, "Supervision in the nodes").
// Plain C++, no CAF and no HTTP: the owner decides which thread resumes which
// fiber, and when.
//
// Threads. A fiber runs only inside resume(), on the thread that called it,
// until its body calls yield() or returns. resume() may be called from any
// thread, a different one each time (CAF moves actors between its scheduler
// threads), but never concurrently for one fiber: the owner hands a fiber from
// thread to thread with a happens-before (a mutex, a queue, a CAF message).
// Different fibers are independent. resume() may also be called inside another
// fiber (nesting): the inner fiber's yield() returns to the outer one.
//
// Code inside a fiber may wake up on another thread after each yield(), so it
// must not hold across a yield():
//  - a mutex or any lock (it would be unlocked by another thread, or deadlock
//    the thread that resumes something else);
//  - a reference or pointer to a thread_local, nor rely on a thread_local's
//    value; the compiler may even cache a thread_local's address, or
//    pthread_self() (declared const), in one function across the call: read
//    such things in a separate non-inline function after a yield.
// fiber::current() and the C++ exception state (std::current_exception, a
// `throw;` inside a catch block, std::uncaught_exceptions) are per fiber and
// follow it across threads: a fiber may yield inside a catch block.
//
// Stacks are mmap'd with a PROT_NONE guard below them, so an overflow crashes
// (SIGSEGV; AddressSanitizer reports a stack-overflow) instead of overwriting
// another fiber's stack. Only touched pages cost memory. Freed stacks go to a
// small process-wide pool (at most 256 stacks of at most 1 MiB; a pooled stack
// keeps the pages it touched) and are reused by new fibers of the same size.
// Each live stack is two kernel mappings: Linux's vm.max_map_count (65530 by
// default) bounds a process to roughly 30,000 fibers at once.
//
// Under AddressSanitizer every switch is announced with the sanitizer fiber API,
// so ASan checks fiber stacks, exceptions and reports as on a thread's stack.
// The context switch is hand-written for x86-64 (no system call); elsewhere it
// uses glibc's swapcontext (a system call per switch, and ASan prints a
// one-time warning about it).
#pragma once

#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <utility>

namespace klynaa::nodes {

class fiber {
 public:
  struct options {
    /// Usable stack, in bytes, rounded up to whole pages and to at least 16 KiB.
    /// 0 = default_stack_bytes(). Only the pages a fiber touches use memory.
    size_t stack_bytes = 0;
  };

  /// Thrown by yield() inside a suspended fiber that its owner destroys, to
  /// unwind the fiber's stack (run its locals' destructors). Not an
  /// std::exception: a body's `catch (const std::exception&)` lets it pass. A
  /// `catch (...)` that swallows it must let the body return soon: any later
  /// yield() throws it again at once instead of suspending. So a destructor
  /// must not yield (its throw would end in std::terminate).
  struct forced_unwind {};

  /// A suspended fiber that will run `body` at its first resume(); the body
  /// and its captures are destroyed with the fiber (std::function: captures
  /// must be copyable; hold a move-only one in a shared_ptr). Allocates the stack (from
  /// the pool when one of this size is free). Throws std::system_error when no
  /// stack can be mapped (ENOMEM, or vm.max_map_count reached): a transient
  /// condition, the caller may retry later.
  fiber(std::function<void()> body, options o);
  explicit fiber(std::function<void()> body) : fiber(std::move(body), options{}) {}

  /// A finished or never-started fiber just frees its stack. A suspended one is
  /// first resumed once more, on the calling thread, with yield() throwing
  /// forced_unwind, so the destructors of its locals run; whatever then
  /// escapes the body is dropped. Destroying a running fiber (from inside
  /// itself, or concurrently with resume()) is a bug: it aborts with a message.
  ~fiber();

  /// Not copyable, not movable: current() and the owner hold its address.
  fiber(const fiber&) = delete;
  fiber& operator=(const fiber&) = delete;

  /// Runs the body until it calls yield() or ends, on the calling thread.
  /// Returns at once when done(). If an exception escapes the body, the fiber
  /// is done and resume() rethrows it (once). Resuming a fiber that is running
  /// (itself, an outer fiber that is resuming this one, or concurrently from
  /// another thread) is a bug: it aborts with a message.
  void resume();

  /// Whether the body has ended (returned or thrown). Thread-safe; once true it
  /// stays true, and the fiber may then be destroyed by any thread.
  bool done() const noexcept;

  /// Inside a fiber's body: suspends it, back to whoever called resume(); it
  /// returns when the fiber is next resumed, maybe on another thread. Outside
  /// any fiber: does nothing and returns. Throws forced_unwind (see there).
  static void yield();

  /// The fiber running on this thread (the innermost one when nested), or
  /// nullptr outside any fiber.
  static fiber* current() noexcept;

  /// The stack size used when options::stack_bytes is 0: 128 KiB; 512 KiB when
  /// built with AddressSanitizer, whose frames are several times bigger. An
  /// overflow kills the node and untouched pages cost nothing, hence not less.
  static size_t default_stack_bytes() noexcept;

  /// Process-wide counters of the stack pool, for tests and metrics.
  struct stack_stats {
    uint64_t mapped = 0;    ///< stacks mmap'd since the process started
    uint64_t unmapped = 0;  ///< stacks munmap'd (freed with the pool full, or over 1 MiB)
    uint64_t reused = 0;    ///< fibers that got a stack from the pool
    size_t pooled = 0;      ///< stacks in the pool right now
  };
  static stack_stats stats() noexcept;

  /// The owner's slot (e.g. the job's pending HTTP requests). The fiber never
  /// reads or frees it; its thread-safety is the owner's.
  void* local = nullptr;

 private:
  struct impl;
  /// Switches into the body and back; returns what escaped the body, if anything.
  std::exception_ptr run_once();
  std::unique_ptr<impl> impl_;
};

}  // namespace klynaa::nodes

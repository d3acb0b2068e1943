// The fiber (nodes/fiber.hpp): its stacks and their pool, the machine context
// switch, the sanitizer and C++ exception bookkeeping around each switch, and
// resume/yield.
//
// Who switches what: resume() runs on the resumer's stack and never changes
// thread, so it alone touches per-thread state (fiber::current(), the C++
// exception globals), before and after the switch. The fiber's side (yield,
// the entry function) reads current() once before switching away and nothing
// per-thread after, since it may wake up on another thread.
#include "nodes/fiber.hpp"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <cxxabi.h>
#include <exception>
#include <mutex>
#include <system_error>
#include <utility>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#define KLYNAA_FIBER_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define KLYNAA_FIBER_ASAN 1
#endif
#endif
#ifdef KLYNAA_FIBER_ASAN
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

// KLYNAA_FIBER_UCONTEXT forces the portable switch on x86-64 too (to test it).
#if !defined(__x86_64__) || defined(KLYNAA_FIBER_UCONTEXT)
#define KLYNAA_FIBER_USE_UCONTEXT 1
#include <ucontext.h>
#endif

#if defined(__GNUC__) && !defined(__clang__)
#define KLYNAA_FIBER_OPAQUE [[gnu::noinline, gnu::noipa]]
#else
#define KLYNAA_FIBER_OPAQUE [[gnu::noinline]]
#endif

namespace klynaa::nodes {
namespace {

[[noreturn]] void die(const char* what) {
  std::fprintf(stderr, "klynaa::nodes::fiber: %s\n", what);
  std::abort();
}

// ---- the machine context switch ----------------------------------------------

#ifndef KLYNAA_FIBER_USE_UCONTEXT

// x86-64 System V: pushes the callee-saved registers and the x87 and SSE
// control words on the current stack, stores the stack pointer to *save, loads
// `load` and pops the same from there. The other registers are caller-saved,
// so the C++ caller has already saved what it needs. No signal mask, no
// system call: a fiber sees the mask of the thread it runs on.
extern "C" void klynaa_fiber_switch(void** save, void* load);
asm(R"(
  .text
  .p2align 4
  .globl klynaa_fiber_switch
  .hidden klynaa_fiber_switch
  .type klynaa_fiber_switch, @function
klynaa_fiber_switch:
  .cfi_startproc
)"
#ifdef __CET__
    "  endbr64\n"
#endif
    R"(
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $16, %rsp
  stmxcsr 8(%rsp)
  fnstcw (%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  fldcw (%rsp)
  ldmxcsr 8(%rsp)
  addq $16, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .cfi_endproc
  .size klynaa_fiber_switch, .-klynaa_fiber_switch
)");

/// A suspended context: its stack pointer (the registers are on its stack).
struct machine_context {
  void* sp = nullptr;
};

/// Lays out a frame at the top of [lo, lo + size) that klynaa_fiber_switch
/// "returns" into `entry` from, with the stack aligned as after a call, zeroed
/// registers (rbp = 0 ends frame-pointer walks) and a null return address
/// above entry's frame (ends unwinding and backtraces there).
void make_context(machine_context& c, char* lo, size_t size, void (*entry)()) {
  auto top = reinterpret_cast<uintptr_t>(lo + size) & ~uintptr_t{15};
  auto* sp = reinterpret_cast<uint64_t*>(top);
  *--sp = 0;                                    // entry's return address
  *--sp = reinterpret_cast<uint64_t>(entry);    // where the first switch returns
  for (int i = 0; i < 6; ++i) *--sp = 0;        // rbp rbx r12 r13 r14 r15
  *--sp = 0x1F80;                               // MXCSR at 8(%rsp): the ABI default
  *--sp = 0x037F;                               // x87 control word at (%rsp): default
  c.sp = sp;
}

void switch_context(machine_context& from, machine_context& to) {
  klynaa_fiber_switch(&from.sp, to.sp);
}

#else  // KLYNAA_FIBER_USE_UCONTEXT

struct machine_context {
  ucontext_t uc;
};

void make_context(machine_context& c, char* lo, size_t size, void (*entry)()) {
  if (getcontext(&c.uc) != 0) die("getcontext failed");
  c.uc.uc_stack.ss_sp = lo;
  c.uc.uc_stack.ss_size = size;
  c.uc.uc_link = nullptr;  // entry never returns
  makecontext(&c.uc, entry, 0);
}

void switch_context(machine_context& from, machine_context& to) {
  if (swapcontext(&from.uc, &to.uc) != 0) die("swapcontext failed");
}

#endif  // KLYNAA_FIBER_USE_UCONTEXT

// ---- AddressSanitizer's fiber API ----------------------------------------------
// ASan keeps the bounds of the stack each thread runs on; a switch it was not
// told about makes it misreport (or ignore) stack addresses. Each switch is
// bracketed: start_switch(new stack) ... switch ... finish_switch, which tells
// the side that wakes up the bounds of the stack it came from.

#ifdef KLYNAA_FIBER_ASAN
void asan_start_switch(void** fake_stack_save, const void* bottom, size_t size) {
  __sanitizer_start_switch_fiber(fake_stack_save, bottom, size);
}
void asan_finish_switch(void* fake_stack_save, const void** bottom_old, size_t* size_old) {
  __sanitizer_finish_switch_fiber(fake_stack_save, bottom_old, size_old);
}
/// A stack about to be reused or unmapped may still hold the poisoned redzones
/// of frames that never returned (a finished fiber's entry frame).
void asan_unpoison(void* p, size_t n) { __asan_unpoison_memory_region(p, n); }
#else
void asan_start_switch(void**, const void*, size_t) {}
void asan_finish_switch(void*, const void**, size_t*) {}
void asan_unpoison(void*, size_t) {}
#endif

// ---- C++ exception state -----------------------------------------------------
// The Itanium C++ ABI keeps, per thread, the stack of exceptions being handled
// (what `throw;` rethrows) and the count of uncaught ones. A fiber that yields
// inside a catch block would leave its exception on that thread's stack, where
// another fiber's catch would pop it, and would not find it again on another
// thread. So each fiber keeps its own copy, swapped in and out by resume().

struct eh_state {  // layout of __cxa_eh_globals (Itanium C++ ABI, 2.2.2)
  void* caught_exceptions = nullptr;
  unsigned int uncaught_exceptions = 0;
#if defined(__arm__) && !defined(__aarch64__)
  void* propagating_exceptions = nullptr;  // ARM EHABI only
#endif
};

/// Installs `next` as this thread's exception state; returns the one it had.
eh_state swap_eh_state(const eh_state& next) {
  void* globals = abi::__cxa_get_globals();
  eh_state prev;
  std::memcpy(&prev, globals, sizeof prev);
  std::memcpy(globals, &next, sizeof next);
  return prev;
}

// ---- stacks and their pool -----------------------------------------------------

constexpr size_t min_stack_bytes = 16 * 1024;
constexpr size_t guard_bytes = 64 * 1024;  // catches frames of up to 64 KiB jumping over it
constexpr size_t max_pooled = 256;
constexpr size_t max_pooled_stack_bytes = 1024 * 1024;  // bigger ones are unmapped when freed
#ifdef KLYNAA_FIBER_ASAN
constexpr size_t default_stack = 512 * 1024;
#else
constexpr size_t default_stack = 128 * 1024;
#endif

size_t page_bytes() {
  static const size_t n = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  return n;
}

size_t round_up(size_t n, size_t to) { return (n + to - 1) / to * to; }

/// One mapping: a PROT_NONE guard, then the usable stack above it.
struct stack_region {
  char* map = nullptr;
  size_t map_bytes = 0;
  size_t guard = 0;
  char* lo() const { return map + guard; }
  size_t bytes() const { return map_bytes - guard; }
};

/// Freed stacks, reused by new fibers of the same stack size. A pooled stack
/// keeps the pages its last fibers touched, hence the bounds on their number and size.
class stack_pool {
 public:
  stack_pool() { free_.reserve(max_pooled); }
  stack_region take(size_t bytes);  // throws std::system_error
  void give(stack_region s) noexcept;
  fiber::stack_stats stats() const noexcept;

 private:
  static stack_region map_stack(size_t bytes);
  mutable std::mutex mutex_;
  std::vector<stack_region> free_;  // guarded by mutex_
  std::atomic<uint64_t> mapped_{0};
  std::atomic<uint64_t> unmapped_{0};
  std::atomic<uint64_t> reused_{0};
};

stack_region stack_pool::map_stack(size_t bytes) {
  size_t guard = round_up(guard_bytes, page_bytes());
  size_t total = guard + bytes;
  void* p = mmap(nullptr, total, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK, -1, 0);
  if (p == MAP_FAILED) throw std::system_error(errno, std::generic_category(), "fiber stack mmap");
  // The guard splits the mapping in two, which fails with ENOMEM at vm.max_map_count.
  if (mprotect(p, guard, PROT_NONE) != 0) {
    int e = errno;
    munmap(p, total);
    throw std::system_error(e, std::generic_category(), "fiber stack guard mprotect");
  }
  return {static_cast<char*>(p), total, guard};
}

stack_region stack_pool::take(size_t bytes) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    for (size_t i = free_.size(); i-- > 0;) {
      if (free_[i].bytes() != bytes) continue;
      stack_region s = free_[i];
      free_[i] = free_.back();
      free_.pop_back();
      reused_.fetch_add(1, std::memory_order_relaxed);
      return s;
    }
  }
  stack_region s = map_stack(bytes);
  mapped_.fetch_add(1, std::memory_order_relaxed);
  return s;
}

void stack_pool::give(stack_region s) noexcept {
  asan_unpoison(s.lo(), s.bytes());
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (free_.size() < max_pooled && s.bytes() <= max_pooled_stack_bytes) {
      free_.push_back(s);  // never reallocates: reserved
      return;
    }
  }
  munmap(s.map, s.map_bytes);
  unmapped_.fetch_add(1, std::memory_order_relaxed);
}

fiber::stack_stats stack_pool::stats() const noexcept {
  fiber::stack_stats st;
  st.mapped = mapped_.load(std::memory_order_relaxed);
  st.unmapped = unmapped_.load(std::memory_order_relaxed);
  st.reused = reused_.load(std::memory_order_relaxed);
  std::lock_guard<std::mutex> lock(mutex_);
  st.pooled = free_.size();
  return st;
}

/// Never destroyed: fibers may be freed during static destruction.
stack_pool& pool() {
  static auto* p = new stack_pool;
  return *p;
}

// ---- the running fiber of each thread --------------------------------------------

thread_local fiber* current_fiber = nullptr;

/// Neither inlined nor analysed across calls (GCC would find it const), so no
/// caller keeps this thread's slot across a switch.
KLYNAA_FIBER_OPAQUE fiber*& current_slot() noexcept { return current_fiber; }

enum class fiber_state : int { fresh, suspended, running, finished };

}  // namespace

// ---- fiber ------------------------------------------------------------------------

struct fiber::impl {
  std::function<void()> body;
  stack_region stack;
  machine_context context;         // the fiber's, while it is suspended
  machine_context caller_context;  // its resumer's, while it runs
  eh_state eh;                     // the fiber's exception state, while suspended
  std::exception_ptr error;        // escaped the body; rethrown by resume()
  std::atomic<fiber_state> state{fiber_state::fresh};
  bool ended = false;      // set by the fiber's side, read by resume() after the switch
  bool unwinding = false;  // set by ~fiber: yield() throws forced_unwind
  // AddressSanitizer's view (unused otherwise): the resumer's stack, and the
  // fake stacks (stack-use-after-return) of both sides.
  const void* caller_stack = nullptr;
  size_t caller_stack_bytes = 0;
  void* fake_stack = nullptr;
  void* caller_fake_stack = nullptr;

  [[noreturn]] static void entry();
  void switch_in();
  void switch_out();
  [[noreturn]] void switch_out_final();
};

/// The resumer's side: from its stack into the fiber's, back when it yields or ends.
void fiber::impl::switch_in() {
  asan_start_switch(&caller_fake_stack, stack.lo(), stack.bytes());
  switch_context(caller_context, context);
  asan_finish_switch(caller_fake_stack, nullptr, nullptr);
}

/// The fiber's side: back to the resumer; returns at the next resume(), whose
/// stack (maybe another thread's) ASan learns here.
void fiber::impl::switch_out() {
  asan_start_switch(&fake_stack, caller_stack, caller_stack_bytes);
  switch_context(context, caller_context);
  asan_finish_switch(fake_stack, &caller_stack, &caller_stack_bytes);
}

/// The fiber's last switch: a null fake-stack slot tells ASan to free its fake stack.
void fiber::impl::switch_out_final() {
  asan_start_switch(nullptr, caller_stack, caller_stack_bytes);
  switch_context(context, caller_context);
  die("a finished fiber was resumed");
}

/// The bottom frame of every fiber. Its first switch comes from run_once(),
/// on the thread that set current(), so reading it here is safe.
void fiber::impl::entry() {
  impl& self = *current_slot()->impl_;
  asan_finish_switch(nullptr, &self.caller_stack, &self.caller_stack_bytes);
  try {
    self.body();
  } catch (const forced_unwind&) {
    // the owner is destroying the fiber: unwound, as asked
  } catch (...) {
    self.error = std::current_exception();
  }
  self.ended = true;
  self.switch_out_final();
}

fiber::fiber(std::function<void()> body, options o) : impl_(std::make_unique<impl>()) {
  size_t bytes = o.stack_bytes == 0 ? default_stack : o.stack_bytes;
  bytes = round_up(std::max(bytes, min_stack_bytes), page_bytes());
  impl_->body = std::move(body);
  impl_->stack = pool().take(bytes);
  make_context(impl_->context, impl_->stack.lo(), impl_->stack.bytes(), &impl::entry);
}

fiber::~fiber() {
  impl& m = *impl_;
  fiber_state s = m.state.load(std::memory_order_acquire);
  if (s == fiber_state::running) die("a running fiber was destroyed");
  if (s == fiber_state::suspended) {
    m.unwinding = true;
    run_once();  // what escapes the body now is dropped, as documented
    if (!m.ended) die("a fiber's body went on after its forced unwind");
  }
  pool().give(m.stack);
}

std::exception_ptr fiber::run_once() {
  impl& m = *impl_;
  fiber_state s = m.state.load(std::memory_order_acquire);
  if (s == fiber_state::running ||
      !m.state.compare_exchange_strong(s, fiber_state::running, std::memory_order_acquire)) {
    die("resume() of a running fiber (itself, an outer fiber, or concurrently)");
  }
  fiber*& slot = current_slot();
  fiber* outer = std::exchange(slot, this);
  eh_state outer_eh = swap_eh_state(m.eh);
  m.switch_in();
  m.eh = swap_eh_state(outer_eh);
  slot = outer;
  std::exception_ptr error = std::exchange(m.error, nullptr);
  // Last: once published as finished, another thread may destroy this fiber.
  m.state.store(m.ended ? fiber_state::finished : fiber_state::suspended,
                std::memory_order_release);
  return error;
}

void fiber::resume() {
  if (done()) return;
  if (std::exception_ptr error = run_once()) std::rethrow_exception(error);
}

bool fiber::done() const noexcept {
  return impl_->state.load(std::memory_order_acquire) == fiber_state::finished;
}

void fiber::yield() {
  fiber* self = current_slot();
  if (self == nullptr) return;
  impl& m = *self->impl_;
  if (m.unwinding) throw forced_unwind{};
  m.switch_out();
  if (m.unwinding) throw forced_unwind{};
}

KLYNAA_FIBER_OPAQUE fiber* fiber::current() noexcept { return current_slot(); }

size_t fiber::default_stack_bytes() noexcept { return round_up(default_stack, page_bytes()); }

fiber::stack_stats fiber::stats() noexcept { return pool().stats(); }

}  // namespace klynaa::nodes

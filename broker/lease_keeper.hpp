// Keeps the active broker's lease on the PostgreSQL store (issue 10,
// docs/deployment.md "How failover works"), and notices when it is lost.
//
// Two threads. The renewer calls acquire_or_renew_lease(holder, lease_ms) on
// its own pg_store (a store is single-threaded; the broker's writer owns the
// other) every lease_ms / 3, and after a failed renewal every lease_ms / 10.
// The watchdog checks every 20 ms that the lease is still ours by the local
// clock: each successful renewal makes it valid until (the steady time just
// *before* the renewal was sent) + lease_ms - lease_ms / 3, i.e. a third of the
// lease before PostgreSQL's own expiry could let a standby in, whatever the
// network delay.
//
// `on_lost` is called once, from either thread, when
//   - a renewal finds another holder (or a new token): the lease was taken over, or
//   - the local deadline passes (renewals kept failing, or the process was
//     frozen — SIGSTOP, a VM pause — past it).
// The broker's on_lost fail-stops the process (exit 3): it must not answer
// `accepted` or dispatch once a standby may be active. Its commits are fenced
// anyway (pg_store::set_fence), so on_lost is about dispatching and replies.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "broker/pg_store.hpp"

namespace klynaa::broker {

class lease_keeper {
 public:
  using clock = std::chrono::steady_clock;

  /// Starts both threads. `renewer`: a second store on the same database.
  /// `token`: the token acquired at `acquired_at` (taken just before the
  /// acquiring call was sent). `on_lost(why)` must be thread-safe.
  lease_keeper(std::unique_ptr<pg_store> renewer, std::string holder, int64_t token, int64_t lease_ms,
               clock::time_point acquired_at, std::function<void(const std::string& why)> on_lost);
  ~lease_keeper();  ///< stops both threads (does not release the lease: it expires)
  lease_keeper(const lease_keeper&) = delete;
  lease_keeper& operator=(const lease_keeper&) = delete;

  /// Renewals that succeeded so far (any thread).
  int64_t renewals() const { return renewals_.load(); }

  /// A clean stop, once nothing more will be committed: stops both threads and
  /// ends the lease now (pg_store::release_lease), so a standby takes over at its
  /// next try. Logs and returns false when the database cannot be reached (the
  /// lease then expires by itself).
  bool release();

 private:
  void renew_loop();
  void watch_loop();
  void lose(const std::string& why);

  std::unique_ptr<pg_store> store_;
  const std::string holder_;
  const int64_t token_;
  const int64_t lease_ms_;
  std::function<void(const std::string&)> on_lost_;
  std::atomic<int64_t> valid_until_ns_;  ///< steady clock
  std::atomic<int64_t> renewals_{0};
  std::atomic<bool> stop_{false};
  std::atomic<bool> lost_{false};
  std::thread renewer_;
  std::thread watchdog_;
};

}  // namespace klynaa::broker

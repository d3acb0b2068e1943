// Lease renewal and loss detection for the active broker (lease_keeper.hpp).
#include "broker/lease_keeper.hpp"

#include "protocol/log.hpp"

namespace klynaa::broker {

namespace {
constexpr const char* component = "lease";

int64_t ns(lease_keeper::clock::time_point t) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count();
}
}  // namespace

lease_keeper::lease_keeper(std::unique_ptr<pg_store> renewer, std::string holder, int64_t token,
                           int64_t lease_ms, clock::time_point acquired_at,
                           std::function<void(const std::string&)> on_lost)
    : store_(std::move(renewer)), holder_(std::move(holder)), token_(token), lease_ms_(lease_ms),
      on_lost_(std::move(on_lost)),
      valid_until_ns_(ns(acquired_at + std::chrono::milliseconds(lease_ms - lease_ms / 3))) {
  renewer_ = std::thread([this] { renew_loop(); });
  watchdog_ = std::thread([this] { watch_loop(); });
}

lease_keeper::~lease_keeper() {
  stop_.store(true);
  if (renewer_.joinable()) renewer_.join();
  if (watchdog_.joinable()) watchdog_.join();
}

bool lease_keeper::release() {
  stop_.store(true);
  if (renewer_.joinable()) renewer_.join();
  if (watchdog_.joinable()) watchdog_.join();
  if (lost_.load()) return false;
  store_error err;
  if (!store_->release_lease(holder_, token_, &err)) {
    log::warning(component, "could not release the lease; it expires by itself", {{"error", err.message}});
    return false;
  }
  log::info(component, "released the lease", {{"token", token_}});
  return true;
}

void lease_keeper::lose(const std::string& why) {
  if (lost_.exchange(true)) return;
  on_lost_(why);
}

// Sleeps in short steps so that stop() is prompt; a renewal itself may block
// for as long as libpq's connect_timeout: the watchdog covers that.
void lease_keeper::renew_loop() {
  auto next = clock::now() + std::chrono::milliseconds(lease_ms_ / 3);
  while (!stop_.load()) {
    if (clock::now() < next) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
      continue;
    }
    const auto sent = clock::now();
    store_error err;
    auto t = store_->acquire_or_renew_lease(holder_, lease_ms_, &err);
    if (stop_.load()) return;
    if (t && *t == token_) {
      valid_until_ns_.store(ns(sent + std::chrono::milliseconds(lease_ms_ - lease_ms_ / 3)));
      ++renewals_;
      log::debug(component, "lease renewed", {{"token", token_}});
      next = sent + std::chrono::milliseconds(lease_ms_ / 3);
    } else if (t || err.message.empty()) {
      lose(t ? "the lease changed hands (token " + std::to_string(token_) + " -> " + std::to_string(*t) + ")"
             : "another broker holds the lease");
      return;
    } else {
      log::warning(component, "lease renewal failed; retrying",
                   {{"error", err.message}, {"retry_in_ms", lease_ms_ / 10}});
      next = clock::now() + std::chrono::milliseconds(lease_ms_ / 10);
    }
  }
}

void lease_keeper::watch_loop() {
  while (!stop_.load() && !lost_.load()) {
    if (ns(clock::now()) > valid_until_ns_.load()) {
      lose("no successful renewal within lease_ms - lease_ms/3 (" + std::to_string(lease_ms_ - lease_ms_ / 3) +
           " ms): renewals failed, or the process was frozen");
      return;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

}  // namespace klynaa::broker

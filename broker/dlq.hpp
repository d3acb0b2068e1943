// The dead-letter queue as the admin endpoint shows it (GET /dlq, /dlq/job):
// reads go to a read-only store of their own (WAL readers never block the
// writer); replay and purge go through the broker loop (broker_core::dlq_command).
#pragma once

#include <functional>
#include <memory>
#include <mutex>
#include <string>

#include <nlohmann/json.hpp>

#include "broker/store.hpp"

namespace klynaa::broker {

/// One dead job as JSON: job_id, function, data, ordering_key, attempts,
/// last_error, created_ms, died_ms; with `history` its attempts when asked.
nlohmann::json dead_job_json(const job_record& j);

class dlq_reader {
 public:
  /// `open`: opens a read-only store (called on first use and after a failure).
  explicit dlq_reader(std::function<std::unique_ptr<store>()> open) : open_(std::move(open)) {}

  /// {"jobs": [most recently dead first, at most limit], "total": n}
  nlohmann::json list(size_t limit);
  /// The dead job with "history" (array of attempts), or null when `id` is not a dead job.
  nlohmann::json show(const std::string& id);

 private:
  store* get();

  std::function<std::unique_ptr<store>()> open_;
  std::mutex mu_;
  std::unique_ptr<store> st_;
};

}  // namespace klynaa::broker

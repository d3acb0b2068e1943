// The escrow actor's job logic: `processEscrowRelease` (docs/events-and-functions.md,
// "processEscrowRelease").
//
// Data: pickup_id (positive int), release_reason ("customer_confirmed" |
// "auto_release" | "admin"); anything else is a permanent "invalid_data" failure.
//
// One call: POST /api/serverless/escrow/{pickup_id}/release/ with
// {"reason": release_reason} and `Idempotency-Key: escrow-release-{pickup_id}`
// (django_client::release_escrow). The key is the same on every attempt and for
// every path that releases this pickup, so a retry after a lost answer cannot
// release twice: Django answers 409 already_released instead.
//
//  - 200 released              → ok {"status": "released", "amount", "currency"}
//  - 409 already_released      → ok {"status": "already_released", "amount",
//                                    "currency"} (null when Django leaves them out)
//  - 409 disputed              → permanent "disputed"
//  - 404                       → permanent "http_404"
//  - anything else             → per classify() (http.hpp)
//
// On both ok outcomes the result carries one child job,
//   id "#escrow-released-{pickup_id}", function sendPickupNotification,
//   data {"pickup_id", "notification_type": "escrow_released", "user_type": "worker"},
// which the broker stores with the job's success; since job ids are deduplicated,
// the worker hears of a pickup's release once, however often this job ran.
//
// Threading: one handler per worker thread (it owns a django_client).
#pragma once

#include <memory>

#include "actors/django_client.hpp"
#include "nodes/job.hpp"

namespace klynaa::actors {

/// The child job that tells the worker about a release (see above).
nodes::child_job escrow_released_notification(int64_t pickup_id);

class escrow_handler : public nodes::job_handler {
 public:
  explicit escrow_handler(std::unique_ptr<django_client> django);

  /// Runs one processEscrowRelease job as described above. Never throws.
  nodes::job_result run(const nodes::job& j) override;

 private:
  nodes::job_result run_checked(const nodes::job& j);

  std::unique_ptr<django_client> django_;
};

}  // namespace klynaa::actors

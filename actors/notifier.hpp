// The notifier's job logic: `sendPickupNotification` (docs/events-and-functions.md,
// "sendPickupNotification").
//
// Data (validated by the broker, checked again here; a bad field is a permanent
// failure "invalid_data" naming it):
//   notification_type  one of notification_types() (templates.hpp)
//   user_type          "customer" | "worker" | "admin"
//   pickup_id          positive int; required except for daily_report
//   report_id          required for daily_report (int or string)
//   user_id            positive int or null/absent
//   reason             optional string, for {reason} (pickup_disputed)
//
// Steps:
//  1. Unless daily_report: GET the pickup. 404 → permanent (the pickup is gone).
//     The pickup also gives {amount} (price) and {currency}.
//  2. Recipients, in this order of precedence:
//     - user_id given → exactly [user_id];
//     - daily_report → every admin (GET /api/users/admins/);
//     - customer → [pickup.customer_id];
//     - worker → [pickup.worker_id]; when worker_id is null there is nobody to
//       tell here: for pickup_requested that is the normal case, because geo's
//       notifyNearbyWorkers creates one job per nearby worker with user_id set;
//       for other types it is logged. Either way the job succeeds with no
//       recipients;
//     - admin → every admin.
//     Duplicates are dropped, first occurrence kept.
//  3. For each recipient: GET its tokens (404 = the user is gone: no tokens); one
//     push per token. Once every recipient's tokens are known, all the pushes of
//     the job go to the provider in one send_all() batch, which the HTTP
//     providers send concurrently (providers.hpp); so a Django failure while
//     listing tokens fails the job before any push of this attempt went out.
//     A push the provider calls invalid_token is removed with DELETE, in the
//     order of the batch; a failed DELETE is logged and not retried (the next
//     push to that token finds it invalid again).
//
// Result (outcome ok): {"sent": n, "failed": m, "invalid_tokens": k,
// "recipients": [user ids]}.
//
// Failures:
//  - any Django call failing transiently (incl. a 2xx with a bad body) →
//    transient, at once: pushes already sent go out again on the retry (pushes are
//    at least once, docs/cluster-protocol.md, "Known weaknesses"), under the same job_id;
//  - a Django 4xx other than the 404s above → permanent;
//  - pushes were attempted, none was delivered and at least one failed
//    transiently → transient (a retry can deliver it), with the largest
//    Retry-After the provider asked for;
//  - pushes were attempted, none was delivered, none invalid, all failed
//    permanently → permanent "push_rejected": the notification reached nobody, so
//    it goes to the dead-letter queue for an operator instead of vanishing;
//  - otherwise ok, partial failures counted in "failed".
//
// Threading: one handler per worker thread (it owns a django_client and a
// provider); the templates are shared and immutable.
#pragma once

#include <memory>
#include <vector>

#include "actors/django_client.hpp"
#include "actors/providers.hpp"
#include "actors/templates.hpp"
#include "nodes/job.hpp"

namespace klynaa::actors {

class notifier_handler : public nodes::job_handler {
 public:
  notifier_handler(std::unique_ptr<django_client> django, std::unique_ptr<push_provider> provider,
                   std::shared_ptr<const templates> texts);

  /// Runs one sendPickupNotification job as described above. Never throws.
  nodes::job_result run(const nodes::job& j) override;

 private:
  struct request;
  struct tally;

  /// Fills `out` from the job's data, or returns the permanent failure naming
  /// the bad field.
  static std::optional<nodes::job_result> parse(const nlohmann::json& data, request& out);
  nodes::job_result run_checked(const nodes::job& j);
  /// The recipients, or the failure of the Django call that lists them.
  api_result<std::vector<int64_t>> recipients(const request& r,
                                              const std::optional<pickup_info>& pickup);
  /// Appends one push per token of `user_id` to `pushes`; a failed GET of its
  /// tokens comes back.
  std::optional<nodes::job_result> collect_pushes(const nodes::job& j, const request& r,
                                                  int64_t user_id, const message_template& text,
                                                  const nlohmann::json& data,
                                                  std::vector<push>& pushes);
  /// Counts `res`, the outcome of `p`, in `t`; deletes an invalid token in Django.
  void record(const nodes::job& j, const push& p, const push_result& res, tally& t);
  /// The template values and push data of `r` (pickup_id or report_id, amount, reason).
  static void fill_values(const request& r, const std::optional<pickup_info>& pickup,
                          template_values& values, nlohmann::json& data);
  /// Sends `pushes` in one batch through the provider's circuit breaker (none for
  /// "log"): all answered "not sent" while it is open; one result per push.
  std::vector<push_result> send_guarded(const std::vector<push>& pushes);
  /// The job's result from its pushes' tally: deferred when only the breaker
  /// held them back, transient or permanent when none was delivered, else ok.
  nodes::job_result result_of(const tally& t, const std::vector<int64_t>& users) const;

  std::unique_ptr<django_client> django_;
  std::unique_ptr<push_provider> provider_;
  std::shared_ptr<const templates> texts_;
};

}  // namespace klynaa::actors

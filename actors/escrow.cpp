// processEscrowRelease: check the data, call Django once, add the notification.
// The rules are documented once, in escrow.hpp.
#include "actors/escrow.hpp"

#include <exception>

#include "actors/handler_support.hpp"
#include "protocol/jobs.hpp"
#include "protocol/log.hpp"

namespace klynaa::actors {
namespace {

using nlohmann::json;
using nodes::job_result;
using nodes::outcome;

}  // namespace

nodes::child_job escrow_released_notification(int64_t pickup_id) {
  nodes::child_job c;
  c.id = protocol::pickup_job_id("escrow-released", pickup_id);
  c.function = "sendPickupNotification";
  c.data = {{"pickup_id", pickup_id},
            {"notification_type", "escrow_released"},
            {"user_type", "worker"}};
  return c;
}

escrow_handler::escrow_handler(std::unique_ptr<django_client> django)
    : django_(std::move(django)) {}

job_result escrow_handler::run(const nodes::job& j) {
  return guarded_run("escrow", j, [this](const nodes::job& job) { return run_checked(job); });
}

job_result escrow_handler::run_checked(const nodes::job& j) {
  const json& d = j.data;
  if (!d.is_object()) return invalid_data("", "must be a map");
  auto pid = d.find("pickup_id");
  if (pid == d.end() || !pid->is_number_integer() ||
      (!pid->is_number_unsigned() && pid->get<int64_t>() <= 0) ||
      (pid->is_number_unsigned() && (pid->get<uint64_t>() == 0 ||
                                     pid->get<uint64_t>() > static_cast<uint64_t>(INT64_MAX))))
    return invalid_data("pickup_id", "must be a positive integer");
  int64_t pickup_id = pid->get<int64_t>();
  auto reason = d.find("release_reason");
  if (reason == d.end() || !reason->is_string())
    return invalid_data("release_reason", "is required");
  std::string why = reason->get<std::string>();
  if (why != "customer_confirmed" && why != "auto_release" && why != "admin")
    return invalid_data("release_reason", "must be customer_confirmed, auto_release or admin");

  auto released = django_->release_escrow(pickup_id, why);
  if (!released) {
    log::warning("escrow", "release failed",
                 {{"job_id", j.id}, {"pickup_id", pickup_id}, {"error", released.error.error_code},
                  {"message", released.error.message}});
    return released.error;
  }
  job_result ok = job_result::success(
      {{"status", released->already_released ? "already_released" : "released"},
       {"amount", released->amount},
       {"currency", released->currency}});
  ok.children.push_back(escrow_released_notification(pickup_id));
  log::info("escrow", released->already_released ? "escrow was already released" : "escrow released",
            {{"job_id", j.id}, {"pickup_id", pickup_id}, {"reason", why}});
  return ok;
}

}  // namespace klynaa::actors

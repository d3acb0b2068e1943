// What every job handler of actors/ shares: the permanent failure for invalid
// job data, and the guard that turns an exception escaping a handler (our bug,
// not the input's) into a logged transient failure, so the job retries.
#pragma once

#include <exception>
#include <string>
#include <string_view>

#include "nodes/job.hpp"
#include "protocol/log.hpp"

namespace klynaa::actors {

/// A permanent failure naming the field: "data.{field} {why}."
inline nodes::job_result invalid_data(const std::string& field, const std::string& why) {
  return nodes::job_result::failure(nodes::outcome::permanent, "invalid_data",
                                    "data." + field + " " + why + ".");
}

/// Runs `body(j)`; an exception it lets escape becomes a transient failure
/// ("internal"), logged under `component` with the job id.
template <class Body>
nodes::job_result guarded_run(std::string_view component, const nodes::job& j, Body&& body) {
  try {
    return body(j);
  } catch (const std::exception& e) {
    log::error(component, "unexpected exception", {{"job_id", j.id}, {"error", e.what()}});
    return nodes::job_result::failure(nodes::outcome::transient, "internal",
                                      "The " + std::string(component) +
                                          " actor failed unexpectedly: " + e.what());
  } catch (...) {
    log::error(component, "unexpected exception", {{"job_id", j.id}});
    return nodes::job_result::failure(nodes::outcome::transient, "internal",
                                      "The " + std::string(component) + " actor failed unexpectedly.");
  }
}

}  // namespace klynaa::actors

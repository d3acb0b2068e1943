// See wire.hpp.
#include "nodes/wire.hpp"

namespace klynaa::nodes {

namespace cl = protocol::cluster;

std::optional<job> to_job(const cl::job& wire, const std::string& node, std::string* error) {
  job j;
  j.id = wire.job_id;
  j.function = wire.function;
  j.attempt = static_cast<int>(wire.attempt);
  j.ts_ms = wire.ts_ms;
  j.node = node;
  j.data = nlohmann::json::parse(wire.data_json, nullptr, /*allow_exceptions=*/false);
  if (!j.data.is_object()) {
    if (error != nullptr)
      *error = "data_json is not a JSON object";
    return std::nullopt;
  }
  return j;
}

const char* log_outcome(outcome o) {
  switch (o) {
    case outcome::ok:
      return "ok";
    case outcome::transient:
    case outcome::deferred:  // waits for its next attempt, as a retry does
      return "retry";
    case outcome::permanent:
      return "dead";
  }
  return "retry";
}

namespace {

// Handlers build their JSON from outside data: never let an invalid UTF-8
// string throw here.
std::string dump(const nlohmann::json& j) {
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

}  // namespace

std::optional<outcome> outcome_of_code(int64_t code) {
  switch (code) {
    case 0: return outcome::ok;
    case 1: return outcome::transient;
    case 2: return outcome::permanent;
    case 3: return outcome::deferred;
    default: return std::nullopt;
  }
}

cl::done to_done(const cl::job& wire, const job_result& r, int64_t duration_ms) {
  cl::done d;
  d.job_id = wire.job_id;
  d.lease = wire.lease;
  d.result_json = r.kind == outcome::ok ? dump(r.result) : std::string{};
  d.error_code = r.error_code;
  cl::set_outcome(d, r.kind);  // after error_code: deferred sets its own
  d.error_message = r.message;
  d.http_status = r.http_status.value_or(0);
  d.retry_after_ms = r.retry_after_ms.value_or(-1);
  d.duration_ms = duration_ms;
  d.credit = 1;  // the slot it frees (the gateway clears it when the slot is not granted again)
  if (r.kind == outcome::ok) {
    d.children.reserve(r.children.size());
    for (const auto& c : r.children)
      d.children.push_back({c.id, c.function, dump(c.data), c.due_ms});
  }
  return d;
}

cl::done failure_done(const cl::job& wire, outcome kind, std::string code, std::string message,
                      int64_t duration_ms) {
  return to_done(wire, job_result::failure(kind, std::move(code), std::move(message)), duration_ms);
}

}  // namespace klynaa::nodes

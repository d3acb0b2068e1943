#include "broker/dlq.hpp"

namespace klynaa::broker {

nlohmann::json dead_job_json(const job_record& j) {
  auto parse = [](const std::string& text) {
    auto v = nlohmann::json::parse(text, nullptr, false);
    return v.is_discarded() ? nlohmann::json(text) : v;
  };
  return {{"job_id", j.id},
          {"request_id", j.request_id},
          {"function", j.function},
          {"data", parse(j.data_json)},
          {"ordering_key", j.ordering_key},
          {"attempts", j.attempts},
          {"replays_attempts_before", j.attempt_base},
          {"last_error", j.last_error_json.empty() ? nlohmann::json() : parse(j.last_error_json)},
          {"created_ms", j.created_ms},
          {"died_ms", j.updated_ms}};
}

store* dlq_reader::get() {
  if (!st_) st_ = open_();
  return st_.get();
}

nlohmann::json dlq_reader::list(size_t limit) {
  std::lock_guard<std::mutex> lk(mu_);
  nlohmann::json jobs = nlohmann::json::array();
  int64_t total = 0;
  try {
    auto* s = get();
    if (!s) return {{"jobs", jobs}, {"total", 0}, {"error", "the store cannot be read"}};
    for (auto& j : s->list_jobs(job_state::dead, limit)) jobs.push_back(dead_job_json(j));
    for (auto& [fn, state, n] : s->count_by_function())
      if (state == job_state::dead) total += n;
  } catch (const std::exception& e) {
    st_.reset();
    return {{"jobs", jobs}, {"total", 0}, {"error", std::string("the store cannot be read: ") + e.what()}};
  }
  return {{"jobs", jobs}, {"total", total}};
}

nlohmann::json dlq_reader::show(const std::string& id) {
  std::lock_guard<std::mutex> lk(mu_);
  try {
    auto* s = get();
    if (!s) return nullptr;
    auto j = s->find_job(id);
    if (!j || j->state != job_state::dead) return nullptr;
    auto out = dead_job_json(*j);
    out["history"] = nlohmann::json::parse(s->history_json(id), nullptr, false);
    return out;
  } catch (const std::exception&) {
    st_.reset();
    return nullptr;
  }
}

}  // namespace klynaa::broker

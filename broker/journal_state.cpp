// The journal store's state in memory and its indexes (journal_state.hpp).
#include "broker/journal_state.hpp"

#include <algorithm>
#include <stdexcept>

namespace klynaa::broker::journal {

namespace {

/// "<request>#<n>", as protocol::child_job_id writes it.
std::string child_id(const std::string& request, size_t n) { return request + "#" + std::to_string(n); }

/// id == child_id(request, n), without building it.
bool is_child_id(const std::string& id, const std::string& request, size_t n) {
  if (id.size() <= request.size() + 1 || id.compare(0, request.size(), request) != 0 || id[request.size()] != '#')
    return false;
  size_t v = 0;
  for (size_t i = request.size() + 1; i < id.size(); ++i) {
    if (id[i] < '0' || id[i] > '9' || (i == request.size() + 1 && id[i] == '0')) return false;
    v = v * 10 + static_cast<size_t>(id[i] - '0');
    if (v > n) return false;
  }
  return v == n;
}

}  // namespace

int64_t state::pickup_of(const std::string& okey) {
  constexpr const char prefix[] = "pickup:";
  constexpr size_t len = sizeof(prefix) - 1;
  if (okey.size() <= len || okey.compare(0, len, prefix) != 0 || okey.size() > len + 18) return -1;
  int64_t v = 0;
  for (size_t i = len; i < okey.size(); ++i) {
    if (okey[i] < '0' || okey[i] > '9') return -1;
    v = v * 10 + (okey[i] - '0');
  }
  return v;
}

job_entry* state::job(const std::string& id) {
  auto it = jobs_.find(id);
  return it == jobs_.end() ? nullptr : &it->second;
}

request_entry* state::request(const std::string& id) {
  auto it = requests_.find(id);
  return it == requests_.end() ? nullptr : &it->second;
}

std::vector<std::string> state::job_ids(const request_entry& r) const {
  if (r.job_ids) return *r.job_ids;
  std::vector<std::string> ids;
  ids.reserve(r.jobs);
  for (uint32_t i = 1; i <= r.jobs; ++i) ids.push_back(child_id(*r.id, i));
  return ids;
}

job_record state::to_record(const job_entry& j) const {
  job_record r;
  r.id = *j.id;
  r.function = functions_[j.function];
  r.seq = j.seq;
  r.state = j.state;
  r.attempts = j.attempts;
  r.updated_ms = j.updated_ms;
  if (j.owner) r.request_id = *j.owner->id;
  if (j.result) r.result_json = *j.result;
  if (!j.detail) return r;
  auto& d = *j.detail;
  if (!d.request_id.empty()) r.request_id = d.request_id;
  r.data_json = d.data_json;
  r.ordering_key = d.ordering_key;
  r.due_ms = d.due_ms;
  r.ts_ms = d.ts_ms;
  r.created_ms = d.created_ms;
  r.auto_release = d.auto_release;
  r.attempt_base = d.attempt_base;
  r.last_error_json = d.last_error_json;
  r.result_json = d.result_json;
  return r;
}

std::vector<job_entry*> state::pending_auto_release(int64_t pickup) const {
  std::vector<job_entry*> out;
  auto [b, e] = auto_release_.equal_range(pickup);
  for (auto it = b; it != e; ++it)
    if (it->second->state != job_state::running) out.push_back(it->second);
  std::sort(out.begin(), out.end(), [](job_entry* a, job_entry* c) { return a->seq < c->seq; });
  return out;
}

std::vector<std::tuple<std::string, job_state, int64_t>> state::counts() const {
  std::vector<std::tuple<std::string, job_state, int64_t>> out;
  for (size_t f = 0; f < counts_.size(); ++f)
    for (int s = 0; s < 6; ++s)
      if (counts_[f][static_cast<size_t>(s)] > 0)
        out.emplace_back(functions_[f], static_cast<job_state>(s), counts_[f][static_cast<size_t>(s)]);
  return out;
}

uint16_t state::function_id(const std::string& name) {
  if (last_function_ < functions_.size() && functions_[last_function_] == name) return last_function_;
  auto it = function_ids_.find(name);
  if (it != function_ids_.end()) last_function_ = it->second;
  if (it != function_ids_.end()) return it->second;
  if (functions_.size() >= 65535) throw std::runtime_error("more than 65535 function names in the journal");
  const auto id = static_cast<uint16_t>(functions_.size());
  functions_.push_back(name);
  counts_.push_back({});
  function_ids_.emplace(name, id);
  return id;
}

request_entry* state::add_request(const std::string& id, int op, int64_t accepted_ms, uint32_t jobs) {
  auto [it, fresh] = requests_.try_emplace(id);
  if (!fresh) return nullptr;
  auto& r = it->second;
  r.id = &it->first;
  r.op = static_cast<uint8_t>(op);
  r.accepted_ms = accepted_ms;
  r.jobs = jobs;
  return &r;
}

request_entry* state::add_request(const std::string& id, int op, int64_t accepted_ms,
                                  const std::vector<const job_record*>& jobs) {
  auto* r = add_request(id, op, accepted_ms, static_cast<uint32_t>(jobs.size()));
  if (!r) return nullptr;
  bool pattern = true;
  for (size_t i = 0; pattern && i < jobs.size(); ++i) pattern = is_child_id(jobs[i]->id, id, i + 1);
  if (pattern) return r;
  r->job_ids = std::make_unique<std::vector<std::string>>();
  r->job_ids->reserve(jobs.size());
  for (auto* j : jobs) r->job_ids->push_back(j->id);
  return r;
}

void state::settle(request_entry& r) {
  if (r.jobs_left == 0) orphans_.emplace(r.accepted_ms, &r);
}

void state::unorphan(request_entry& r) {
  auto [b, e] = orphans_.equal_range(r.accepted_ms);
  for (auto it = b; it != e; ++it)
    if (it->second == &r) {
      orphans_.erase(it);
      return;
    }
}

job_entry* state::insert_job(std::string&& id, request_entry* owner) {
  auto [it, fresh] = jobs_.try_emplace(std::move(id));
  if (!fresh) return nullptr;
  auto& j = it->second;
  j.id = &it->first;
  j.owner = owner;
  if (owner && owner->jobs_left++ == 0) unorphan(*owner);
  return &j;
}

void state::attach_job(job_entry& j) {
  set_max_seq(j.seq);
  if (finished(j.state) && j.state != job_state::dead) compact(j);
  attach(j);
}

void state::settle_all() {
  for (auto& [id, r] : requests_) settle(r);
}

job_entry* state::add_job(const job_record& r, request_entry* owner, bool keep_result, int64_t now) {
  auto* j = insert_job(std::string(r.id), owner);
  if (!j) return nullptr;
  j->function = function_id(r.function);
  j->seq = r.seq;
  j->attempts = r.attempts;
  j->updated_ms = now;
  j->state = r.state;
  j->keep_result = keep_result;
  auto d = std::make_unique<job_detail>();
  if (!owner || r.request_id != *owner->id) d->request_id = r.request_id;
  d->data_json = r.data_json;
  d->ordering_key = r.ordering_key;
  d->last_error_json = r.last_error_json;
  d->result_json = r.result_json;
  d->due_ms = r.due_ms;
  d->ts_ms = r.ts_ms;
  d->created_ms = r.created_ms ? r.created_ms : now;
  d->attempt_base = r.attempt_base;
  d->auto_release = r.auto_release;
  j->detail = std::move(d);
  attach_job(*j);
  return j;
}

void state::compact(job_entry& j) {
  if (!j.detail) return;
  if (j.keep_result && !j.detail->result_json.empty())
    j.result = std::make_unique<std::string>(std::move(j.detail->result_json));
  j.detail.reset();
}

void state::erase_job(job_entry& j) {
  detach(j);
  if (auto* o = j.owner; o && --o->jobs_left == 0) orphans_.emplace(o->accepted_ms, o);
  const std::string id = *j.id;
  jobs_.erase(id);
}

void state::erase_request(request_entry& r) {
  if (r.jobs_left == 0) unorphan(r);
  // Jobs it still owns (never when pruned: it has none) forget it.
  if (r.jobs_left > 0)
    for (auto& [id, j] : jobs_)
      if (j.owner == &r) j.owner = nullptr;
  const std::string id = *r.id;
  requests_.erase(id);
}

void state::attach(job_entry& j) {
  ++counts_[j.function][static_cast<size_t>(j.state)];
  if (j.state == job_state::dead) dead_.insert(&j);
  if (finished(j.state) && j.state != job_state::dead) link_ended(j);
  if (j.detail && j.detail->auto_release && !finished(j.state)) {
    const int64_t p = pickup_of(j.detail->ordering_key);
    if (p >= 0) auto_release_.emplace(p, &j);
  }
}

void state::detach(job_entry& j) {
  --counts_[j.function][static_cast<size_t>(j.state)];
  if (j.state == job_state::dead) dead_.erase(&j);
  if (j.linked) unlink_ended(j);
  if (j.detail && j.detail->auto_release && !finished(j.state)) {
    auto [b, e] = auto_release_.equal_range(pickup_of(j.detail->ordering_key));
    for (auto it = b; it != e; ++it)
      if (it->second == &j) {
        auto_release_.erase(it);
        break;
      }
  }
}

// Ended jobs join at the end: they end in commit order, and `now` never goes
// back (journal_store.cpp). One that ended earlier (a checkpoint's, loaded in
// order, or a clock that went back before a restart) finds its place from the end.
void state::link_ended(job_entry& j) {
  job_entry* after = tail_;
  while (after && after->updated_ms > j.updated_ms) after = after->prev;
  j.prev = after;
  j.next = after ? after->next : head_;
  (j.next ? j.next->prev : tail_) = &j;
  (after ? after->next : head_) = &j;
  j.linked = true;
}

void state::unlink_ended(job_entry& j) {
  (j.prev ? j.prev->next : head_) = j.next;
  (j.next ? j.next->prev : tail_) = j.prev;
  j.prev = j.next = nullptr;
  j.linked = false;
}

}  // namespace klynaa::broker::journal

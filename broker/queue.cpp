// The live queue (queue.hpp). Invariants:
// - a job id is in runnable_ at most once, and only while its state is ready;
// - a keyed job is in its key's `pending` from the moment it joins until it ends;
// - a key's `active` job is the only one of that key in runnable_ or running.
#include "broker/queue.hpp"

#include <unordered_set>

#include <climits>

namespace klynaa::broker {

void job_queue::set_state(live_job& j, job_state s) {
  auto& per = counts_[j.function];
  if (jobs_.count(j.id) && per.count(j.state) && per[j.state] > 0) --per[j.state];
  if (j.state == job_state::running) running_.erase(j.id);
  if (s == job_state::running) running_.insert(j.id);
  j.state = s;
  ++per[s];
}

void job_queue::add(live_job j, int64_t now) {
  auto id = j.id;
  auto state = j.state == job_state::running ? job_state::ready : j.state;  // a lost lease
  auto [it, inserted] = jobs_.emplace(id, std::move(j));
  if (!inserted) return;
  auto& job = it->second;
  ++counts_[job.function][state];
  job.state = state;
  // A retry_wait job always gets a timer, even when its due time passed while the
  // broker was down: only fire_timers makes it ready again (and reports the change).
  if (job.due_ms > now || job.state == job_state::retry_wait) {
    timers_.emplace(job.due_ms, id);
    if (job.state == job_state::ready) {
      job.delayed = true;  // joins its key when due
      return;
    }
  }
  join_key(job);
}

live_job* job_queue::find(const std::string& id) {
  auto it = jobs_.find(id);
  return it == jobs_.end() ? nullptr : &it->second;
}

void job_queue::make_runnable(live_job& j) {
  if (j.state == job_state::retry_wait) set_state(j, job_state::ready);
  runnable_[j.kind].push_back(j.id);
}

void job_queue::join_key(live_job& j) {
  if (j.okey.empty()) {
    if (j.state == job_state::ready) make_runnable(j);
    return;
  }
  keys_[j.okey].pending.emplace(j.seq, &j);
  promote(j.okey);
}

void job_queue::promote(const std::string& okey) {
  auto kit = keys_.find(okey);
  if (kit == keys_.end()) return;
  auto& fifo = kit->second;
  if (!fifo.active.empty()) return;
  if (fifo.pending.empty()) {
    keys_.erase(kit);
    return;
  }
  auto& head = *fifo.pending.begin()->second;
  fifo.active = head.id;
  if (head.state == job_state::ready) make_runnable(head);
  // retry_wait: blocks the key until its timer makes it runnable
}

live_job* job_queue::next_runnable(const std::set<std::string>& kinds) {
  if (kinds.empty()) return nullptr;
  ++rotate_;
  for (size_t i = 0; i < kinds.size(); ++i) {
    auto kit = kinds.begin();
    std::advance(kit, (rotate_ + i) % kinds.size());
    auto rit = runnable_.find(*kit);
    if (rit == runnable_.end()) continue;
    auto& dq = rit->second;
    while (!dq.empty()) {
      auto id = std::move(dq.front());
      dq.pop_front();
      auto* j = find(id);
      if (j && j->state == job_state::ready) return j;
    }
  }
  return nullptr;
}

bool job_queue::has_runnable(const std::string& kind) const {
  auto it = runnable_.find(kind);
  return it != runnable_.end() && !it->second.empty();
}

void job_queue::set_running(live_job& j, std::string node, std::string node_name, int64_t lease,
                            int64_t deadline, int64_t now) {
  set_state(j, job_state::running);
  j.run().node = std::move(node);
  j.run().node_name = std::move(node_name);
  j.lease = lease;
  j.lease_deadline = deadline;
  j.started_ms = now;
  ++j.attempts;
}

void job_queue::finish(const std::string& id_ref, job_state final_state) {
  const std::string id = id_ref;  // id_ref may be the erased job's own id
  auto it = jobs_.find(id);
  if (it == jobs_.end()) return;
  auto& j = it->second;
  auto& per = counts_[j.function];
  if (per[j.state] > 0) --per[j.state];
  running_.erase(id);
  if (j.due_ms && (j.delayed || j.state == job_state::retry_wait)) {
    auto range = timers_.equal_range(j.due_ms);
    for (auto t = range.first; t != range.second; ++t)
      if (t->second == id) {
        timers_.erase(t);
        break;
      }
  }
  std::string okey = j.delayed ? std::string() : j.okey;
  int64_t seq = j.seq;
  jobs_.erase(it);
  (void)final_state;
  if (okey.empty()) return;
  auto kit = keys_.find(okey);
  if (kit == keys_.end()) return;
  kit->second.pending.erase(seq);
  if (kit->second.active == id) kit->second.active.clear();
  promote(okey);
}

void job_queue::retry_later(const std::string& id, int64_t due) {
  auto* j = find(id);
  if (!j) return;
  set_state(*j, job_state::retry_wait);
  j->due_ms = due;
  j->lease = 0;
  if (!j->node().empty()) j->run().node.clear();
  timers_.emplace(due, id);
}

void job_queue::retry_now(const std::string& id) {
  auto* j = find(id);
  if (!j) return;
  set_state(*j, job_state::ready);
  j->lease = 0;
  if (!j->node().empty()) j->run().node.clear();
  make_runnable(*j);
}

std::vector<std::string> job_queue::fire_timers(int64_t now,
                                                const std::function<int64_t()>& next_seq) {
  std::vector<std::string> changed;
  while (!timers_.empty() && timers_.begin()->first <= now) {
    auto id = timers_.begin()->second;
    timers_.erase(timers_.begin());
    auto* j = find(id);
    if (!j) continue;
    if (j->delayed) {
      j->delayed = false;
      j->seq = next_seq();
      changed.push_back(id);
      join_key(*j);
      continue;
    }
    if (j->state != job_state::retry_wait) continue;
    set_state(*j, job_state::ready);
    changed.push_back(id);
    if (j->okey.empty()) {
      make_runnable(*j);
      continue;
    }
    auto& fifo = keys_[j->okey];
    if (fifo.active == id)
      make_runnable(*j);
    else
      promote(j->okey);
  }
  return changed;
}

std::vector<const live_job*> job_queue::soonest_retries(size_t n) const {
  std::vector<const live_job*> out;
  for (auto it = timers_.begin(); it != timers_.end() && out.size() < n; ++it) {
    auto j = jobs_.find(it->second);
    if (j != jobs_.end() && j->second.state == job_state::retry_wait) out.push_back(&j->second);
  }
  return out;
}

int64_t job_queue::next_due() const {
  return timers_.empty() ? INT64_MAX : timers_.begin()->first;
}

std::vector<std::string> job_queue::expired_leases(int64_t now) const {
  std::vector<std::string> out;
  for (auto& id : running_) {  // only the running jobs, not the whole queue
    auto it = jobs_.find(id);
    if (it != jobs_.end() && it->second.lease_deadline <= now) out.push_back(id);
  }
  return out;
}

size_t job_queue::renew_leases(const std::string& node, const std::vector<int64_t>& leases,
                               int64_t deadline) {
  if (leases.empty()) return 0;
  const std::unordered_set<int64_t> held(leases.begin(), leases.end());
  size_t renewed = 0;
  for (auto& id : running_) {
    auto it = jobs_.find(id);
    if (it == jobs_.end()) continue;
    auto& j = it->second;
    if (j.node() != node || !held.count(j.lease)) continue;
    j.lease_deadline = std::max(j.lease_deadline, deadline);
    ++renewed;
  }
  return renewed;
}

}  // namespace klynaa::broker

// The journal's entries, written and applied (journal_codec.hpp).
#include "broker/journal_codec.hpp"

#include <algorithm>

#include "protocol/message.hpp"

namespace klynaa::broker::journal {

namespace {

enum kind : uint8_t {
  k_request = 1, k_job = 2, k_update = 3, k_cancel = 4, k_close = 5, k_prune_job = 6, k_prune_request = 7,
  k_replay = 8, k_purge = 9, k_meta = 20, k_ck_request = 21, k_ck_job = 22
};

constexpr int invoke_op = static_cast<int>(protocol::op::invoke);

bool valid_state(uint64_t s) { return s <= static_cast<uint64_t>(job_state::cancelled); }

// --- the job body, shared by request and job entries ---

/// `now`: the created time of a job that has none (the store's).
void write_job(writer& w, const job_record& j, const std::string* request_id, int64_t now) {
  const size_t at = w.out().size();
  w.out().append(2, '\0');
  w.str(j.id);
  w.str(request_id && j.request_id == *request_id ? std::string_view() : std::string_view(j.request_id));
  w.str(j.function);
  w.str(j.data_json);
  w.str(j.ordering_key);
  w.svar(j.seq);
  w.u8(static_cast<uint8_t>(j.state));
  w.svar(j.due_ms);
  w.svar(j.attempts);
  w.svar(j.ts_ms);
  w.svar(j.created_ms ? j.created_ms : now);
  w.u8(j.auto_release ? 1 : 0);
  w.svar(j.attempt_base);
  w.str(j.last_error_json);
  w.str(j.result_json);
  // The body's length, as a two-byte varint when it fits (it almost always does).
  std::string& out = w.out();
  const size_t len = out.size() - at - 2;
  if (len < (1u << 14)) {
    out[at] = static_cast<char>(0x80 | (len & 0x7f));
    out[at + 1] = static_cast<char>(len >> 7);
    return;
  }
  std::string prefix;
  writer(prefix).uvar(len);
  out.replace(at, 2, prefix);
}

job_record read_job(reader& outer, const std::string* request_id) {
  reader r = outer.sub(outer.uvar());
  job_record j;
  j.id = r.str();
  j.request_id = r.str();
  if (j.request_id.empty() && request_id) j.request_id = *request_id;
  j.function = r.str();
  j.data_json = r.str();
  j.ordering_key = r.str();
  j.seq = r.svar();
  const uint8_t st = r.u8();
  if (!valid_state(st)) throw decode_error("a job state " + std::to_string(st) + " this version does not know");
  j.state = static_cast<job_state>(st);
  j.due_ms = r.svar();
  j.attempts = r.svar();
  j.ts_ms = r.svar();
  j.created_ms = r.svar();
  j.auto_release = r.u8() != 0;
  j.attempt_base = r.svar();
  j.last_error_json = r.str();
  j.result_json = r.str();
  return j;
}

// --- the changes, shared by record_builder (live) and apply_record (recovery) ---

std::optional<std::string> do_request(state& s, const std::string& id, int op, int64_t accepted,
                                      const std::vector<const job_record*>& jobs, int64_t now) {
  auto* r = s.add_request(id, op, accepted, jobs);
  if (!r) return "request " + id + " is stored twice";
  for (auto* j : jobs)
    if (!s.add_job(*j, r, op == invoke_op, now)) return "job " + j->id + " is stored twice";
  s.settle(*r);
  return std::nullopt;
}

struct update_fields {
  job_state state = job_state::ready;
  int64_t attempts = 0, due_ms = 0, seq = 0;
  std::string_view last_error, result;
  bool has_attempt = false;
  std::string_view node, outcome;
  int64_t duration_ms = 0;
};

void do_update(state& s, job_entry& j, const update_fields& u, int64_t now) {
  s.change(j, [&](job_entry& x) {
    x.state = u.state;
    x.attempts = u.attempts;
    x.seq = u.seq;
    x.updated_ms = now;
    if (!x.detail) {  // done or cancelled already: what it keeps
      if (x.keep_result) x.result = u.result.empty() ? nullptr : std::make_unique<std::string>(u.result);
      return;
    }
    auto& d = *x.detail;
    d.due_ms = u.due_ms;
    d.last_error_json = u.last_error;
    d.result_json = u.result;
    if (!u.has_attempt) return;
    attempt_entry e{u.attempts, std::string(u.node), std::string(u.outcome),
                    u.outcome == "ok" ? std::string() : std::string(u.last_error), u.duration_ms, now};
    auto it = std::lower_bound(d.history.begin(), d.history.end(), e.attempt,
                               [](const attempt_entry& a, int64_t n) { return a.attempt < n; });
    if (it != d.history.end() && it->attempt == e.attempt)
      *it = std::move(e);  // one entry per attempt, the last word kept
    else
      d.history.insert(it, std::move(e));
  });
  s.set_max_seq(u.seq);
}

void do_cancel(state& s, job_entry& j, int64_t now) {
  s.change(j, [&](job_entry& x) {
    x.state = job_state::cancelled;
    x.updated_ms = now;
  });
}

void do_replay(state& s, job_entry& j, int64_t seq, int64_t now) {
  s.change(j, [&](job_entry& x) {
    x.state = job_state::ready;
    x.seq = seq;
    x.updated_ms = now;
    if (x.detail) {
      x.detail->due_ms = now;
      x.detail->attempt_base = x.attempts;
    }
  });
  s.set_max_seq(seq);
}

job_entry& must_job(state& s, std::string_view id) {
  auto* j = s.job(std::string(id));
  if (!j) throw decode_error("an entry for job " + std::string(id) + ", which is not stored");
  return *j;
}

void apply_entry(state& s, uint8_t k, reader& r, int64_t now) {
  switch (k) {
    case k_request: {
      const std::string id(r.str());
      const int op = static_cast<int>(r.uvar());
      const int64_t accepted = r.svar();
      std::vector<job_record> jobs(r.uvar());
      std::vector<const job_record*> created;
      for (auto& j : jobs) {
        j = read_job(r, &id);
        created.push_back(&j);
      }
      if (auto e = do_request(s, id, op, accepted, created, now)) throw decode_error(*e);
      return;
    }
    case k_job: {
      auto j = read_job(r, nullptr);
      const std::string id = j.id;
      auto* owner = j.request_id.empty() ? nullptr : s.request(j.request_id);
      if (!s.add_job(j, owner, false, now)) throw decode_error("job " + id + " is stored twice");
      return;
    }
    case k_update: {
      auto& j = must_job(s, r.str());
      update_fields u;
      const uint8_t st = r.u8();
      if (!valid_state(st)) throw decode_error("a job state " + std::to_string(st) + " this version does not know");
      u.state = static_cast<job_state>(st);
      u.attempts = r.svar();
      u.due_ms = r.svar();
      u.seq = r.svar();
      u.last_error = r.str();
      u.result = r.str();
      u.has_attempt = r.u8() != 0;
      if (u.has_attempt) {
        u.node = r.str();
        u.outcome = r.str();
        u.duration_ms = r.svar();
      }
      do_update(s, j, u, now);
      return;
    }
    case k_cancel: do_cancel(s, must_job(s, r.str()), now); return;
    case k_close: s.close_pickup(r.svar()); return;
    case k_prune_job:
    case k_purge: s.erase_job(must_job(s, r.str())); return;
    case k_prune_request: {
      auto* q = s.request(std::string(r.str()));
      if (!q) throw decode_error("a prune of a request that is not stored");
      s.erase_request(*q);
      return;
    }
    case k_replay: {
      auto& j = must_job(s, r.str());
      do_replay(s, j, r.svar(), now);
      return;
    }
    default:
      throw decode_error("an entry of kind " + std::to_string(k) + " this version does not know (a newer klynaa?)");
  }
}

}  // namespace

// --- record_builder ---

record_builder::record_builder(state& s, std::string& buf, int64_t now) : s_(s), buf_(buf), w_(buf), now_(now) {
  w_.svar(now);
  s_.set_now(now);
}

size_t record_builder::open_entry(uint8_t kind) {
  w_.u8(kind);
  buf_.append(2, '\0');
  return buf_.size();
}

void record_builder::close_entry(size_t at) {
  const size_t len = buf_.size() - at;
  if (len < (1u << 14)) {
    buf_[at - 2] = static_cast<char>(0x80 | (len & 0x7f));
    buf_[at - 1] = static_cast<char>(len >> 7);
    return;
  }
  std::string prefix;
  writer(prefix).uvar(len);
  buf_.replace(at - 2, 2, prefix);
}

request_entry* record_builder::request(const new_request& r, const std::vector<uint32_t>& created) {
  const size_t at = open_entry(k_request);
  w_.str(r.id);
  w_.uvar(static_cast<uint64_t>(r.op));
  w_.svar(r.accepted_ms);
  w_.uvar(created.size());
  jobs_.clear();
  for (auto k : created) {
    jobs_.push_back(&r.jobs[k]);
    write_job(w_, r.jobs[k], &r.id, now_);
  }
  close_entry(at);
  do_request(s_, r.id, r.op, r.accepted_ms, jobs_, now_);
  return s_.request(r.id);
}

job_entry* record_builder::child(const job_record& j) {
  const size_t at = open_entry(k_job);
  write_job(w_, j, nullptr, now_);
  close_entry(at);
  // Its request keeps its dedup key while it is stored (journal_state.hpp).
  auto* owner = j.request_id.empty() ? nullptr : s_.request(j.request_id);
  return s_.add_job(j, owner, false, now_);
}

void record_builder::update(job_entry& j, const job_update& u) {
  // A job that ends done or cancelled keeps no history, no error and only an
  // invoke job's result: nothing else of the update need be written.
  const bool compact = finished(u.state) && u.state != job_state::dead;
  update_fields f;
  f.state = u.state;
  f.attempts = u.attempts;
  f.due_ms = u.due_ms;
  f.seq = u.seq;
  f.last_error = compact ? std::string_view() : std::string_view(u.last_error_json);
  f.result = compact && !j.keep_result ? std::string_view() : std::string_view(u.result_json);
  f.has_attempt = !u.outcome.empty() && !compact;
  f.node = u.node;
  f.outcome = u.outcome;
  f.duration_ms = u.duration_ms;
  const size_t at = open_entry(k_update);
  w_.str(*j.id);
  w_.u8(static_cast<uint8_t>(f.state));
  w_.svar(f.attempts);
  w_.svar(f.due_ms);
  w_.svar(f.seq);
  w_.str(f.last_error);
  w_.str(f.result);
  w_.u8(f.has_attempt ? 1 : 0);
  if (f.has_attempt) {
    w_.str(f.node);
    w_.str(f.outcome);
    w_.svar(f.duration_ms);
  }
  close_entry(at);
  do_update(s_, j, f, now_);
}

void record_builder::cancel(job_entry& j) {
  const size_t at = open_entry(k_cancel);
  w_.str(*j.id);
  close_entry(at);
  do_cancel(s_, j, now_);
}

void record_builder::close(int64_t pickup) {
  const size_t at = open_entry(k_close);
  w_.svar(pickup);
  close_entry(at);
  s_.close_pickup(pickup);
}

void record_builder::prune_job(job_entry& j) {
  const size_t at = open_entry(k_prune_job);
  w_.str(*j.id);
  close_entry(at);
  s_.erase_job(j);
}

void record_builder::prune_request(request_entry& r) {
  const size_t at = open_entry(k_prune_request);
  w_.str(*r.id);
  close_entry(at);
  s_.erase_request(r);
}

void record_builder::replay(job_entry& j, int64_t seq) {
  const size_t at = open_entry(k_replay);
  w_.str(*j.id);
  w_.svar(seq);
  close_entry(at);
  do_replay(s_, j, seq, now_);
}

void record_builder::purge(job_entry& j) {
  const size_t at = open_entry(k_purge);
  w_.str(*j.id);
  close_entry(at);
  s_.erase_job(j);
}

std::optional<std::string> apply_record(state& s, std::string_view payload) {
  try {
    reader r(payload);
    const int64_t now = r.svar();
    s.set_now(now);
    while (!r.done()) {
      const uint8_t k = r.u8();
      reader body = r.sub(r.uvar());
      apply_entry(s, k, body, now);
    }
    return std::nullopt;
  } catch (const std::exception& e) {
    return std::string("a commit record that cannot be applied: ") + e.what();
  }
}

std::optional<std::string> attempts_of(std::string_view payload,
                                       const std::function<void(const std::string&, const attempt_entry&)>& sink) {
  try {
    reader r(payload);
    const int64_t now = r.svar();
    while (!r.done()) {
      const uint8_t k = r.u8();
      reader body = r.sub(r.uvar());
      if (k != k_update) continue;
      const std::string id(body.str());
      body.u8();  // state
      attempt_entry a;
      a.attempt = body.svar();
      body.svar();  // due_ms
      body.svar();  // seq
      const std::string error(body.str());
      body.str();  // result
      if (!body.u8()) continue;
      a.node = body.str();
      a.outcome = body.str();
      a.duration_ms = body.svar();
      a.error = a.outcome == "ok" ? std::string() : error;
      a.at_ms = now;
      sink(id, a);
    }
    return std::nullopt;
  } catch (const std::exception& e) {
    return std::string("a commit record that cannot be read: ") + e.what();
  }
}

}  // namespace klynaa::broker::journal

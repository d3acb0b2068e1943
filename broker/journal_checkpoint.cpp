// The journal's checkpoint chunks (journal_codec.hpp): the whole state in
// memory written as entries, and read back.
#include "broker/journal_codec.hpp"

namespace klynaa::broker::journal {

namespace {

enum kind : uint8_t { k_close = 5, k_meta = 20, k_request = 21, k_job = 22 };

/// One entry: kind, a two-byte length (fixed once the body is written), body.
class entry {
 public:
  entry(std::string& buf, uint8_t kind) : buf_(buf), w_(buf) {
    w_.u8(kind);
    buf_.append(2, '\0');
    at_ = buf_.size();
  }
  ~entry() {
    const size_t len = buf_.size() - at_;
    if (len < (1u << 14)) {
      buf_[at_ - 2] = static_cast<char>(0x80 | (len & 0x7f));
      buf_[at_ - 1] = static_cast<char>(len >> 7);
      return;
    }
    std::string prefix;
    writer(prefix).uvar(len);
    buf_.replace(at_ - 2, 2, prefix);
  }
  writer& w() { return w_; }

 private:
  std::string& buf_;
  writer w_;
  size_t at_ = 0;
};

void write_request(std::string& buf, const request_entry& r) {
  entry e(buf, k_request);
  auto& w = e.w();
  w.str(*r.id);
  w.uvar(r.op);
  w.svar(r.accepted_ms);
  w.uvar(r.jobs);
  w.u8(r.job_ids ? 1 : 0);
  if (r.job_ids)
    for (auto& id : *r.job_ids) w.str(id);
}

void write_detail(writer& w, const job_detail& d) {
  w.str(d.request_id);
  w.str(d.data_json);
  w.str(d.ordering_key);
  w.str(d.last_error_json);
  w.str(d.result_json);
  w.svar(d.due_ms);
  w.svar(d.ts_ms);
  w.svar(d.created_ms);
  w.svar(d.attempt_base);
  w.u8(d.auto_release ? 1 : 0);
  w.uvar(d.history.size());
  for (auto& a : d.history) {
    w.svar(a.attempt);
    w.str(a.node);
    w.str(a.outcome);
    w.str(a.error);
    w.svar(a.duration_ms);
    w.svar(a.at_ms);
  }
}

void write_job(std::string& buf, const state& s, const job_entry& j) {
  entry e(buf, k_job);
  auto& w = e.w();
  w.str(*j.id);
  w.u8(j.owner ? 1 : 0);
  if (j.owner) w.str(*j.owner->id);
  w.u8(static_cast<uint8_t>(j.state));
  w.svar(j.seq);
  w.svar(j.attempts);
  w.svar(j.updated_ms);
  w.str(s.function_name(j.function));
  w.u8(j.keep_result ? 1 : 0);
  w.u8(j.result ? 1 : 0);
  if (j.result) w.str(*j.result);
  w.u8(j.detail ? 1 : 0);
  if (j.detail) write_detail(w, *j.detail);
}

void read_history(reader& r, job_detail& d, uint64_t n) {
  d.history.reserve(n);
  for (uint64_t i = 0; i < n; ++i) {
    attempt_entry a;
    a.attempt = r.svar();
    a.node = r.str();
    a.outcome = r.str();
    a.error = r.str();
    a.duration_ms = r.svar();
    a.at_ms = r.svar();
    d.history.push_back(std::move(a));
  }
}

void load_job(state& s, reader& r) {
  std::string id(r.str());
  request_entry* owner = nullptr;
  if (r.u8()) {
    const std::string owner_id(r.str());
    owner = s.request(owner_id);
    if (!owner) throw decode_error("job " + id + " belongs to request " + owner_id + ", which is not in the checkpoint");
  }
  const uint8_t st = r.u8();
  if (st > static_cast<uint8_t>(job_state::cancelled))
    throw decode_error("a job state " + std::to_string(st) + " this version does not know");
  const int64_t seq = r.svar();
  const int64_t attempts = r.svar();
  const int64_t updated = r.svar();
  const std::string function(r.str());
  const bool keep_result = r.u8() != 0;
  std::unique_ptr<std::string> result;
  if (r.u8()) result = std::make_unique<std::string>(r.str());
  std::unique_ptr<job_detail> detail;
  if (r.u8()) {
    detail = std::make_unique<job_detail>();
    detail->request_id = r.str();
    detail->data_json = r.str();
    detail->ordering_key = r.str();
    detail->last_error_json = r.str();
    detail->result_json = r.str();
    detail->due_ms = r.svar();
    detail->ts_ms = r.svar();
    detail->created_ms = r.svar();
    detail->attempt_base = r.svar();
    detail->auto_release = r.u8() != 0;
    read_history(r, *detail, r.uvar());
  }
  auto* j = s.insert_job(std::move(id), owner);
  if (!j) throw decode_error("a job is in the checkpoint twice");
  j->function = s.function_id(function);
  j->state = static_cast<job_state>(st);
  j->seq = seq;
  j->attempts = attempts;
  j->updated_ms = updated;
  j->keep_result = keep_result;
  j->result = std::move(result);
  j->detail = std::move(detail);
  s.attach_job(*j);
}

void load_entry(state& s, uint8_t k, reader& r) {
  switch (k) {
    case k_meta:
      s.set_max_seq(r.svar());
      s.set_now(r.svar());
      return;
    case k_close: s.close_pickup(r.svar()); return;
    case k_request: {
      const std::string id(r.str());
      const int op = static_cast<int>(r.uvar());
      const int64_t accepted = r.svar();
      const uint64_t jobs = r.uvar();
      if (jobs > UINT32_MAX) throw decode_error("a request with too many jobs");
      auto* q = s.add_request(id, op, accepted, static_cast<uint32_t>(jobs));
      if (!q) throw decode_error("request " + id + " is in the checkpoint twice");
      if (r.u8()) {
        q->job_ids = std::make_unique<std::vector<std::string>>();
        for (uint64_t i = 0; i < jobs; ++i) q->job_ids->emplace_back(r.str());
      }
      return;
    }
    case k_job: load_job(s, r); return;
    default:
      throw decode_error("a checkpoint entry of kind " + std::to_string(k) +
                         " this version does not know (a newer klynaa?)");
  }
}

}  // namespace

checkpoint_writer::checkpoint_writer(const state& s, size_t chunk_bytes)
    : s_(s), chunk_bytes_(chunk_bytes), closed_(s.closed_pickups().begin()), request_(s.requests().begin()),
      job_(s.jobs().begin()), ended_(s.oldest_ended()) {}

// Phases: 0 meta, 1 closed pickups, 2 requests, 3 unfinished and dead jobs,
// 4 done and cancelled jobs in the order they ended, 5 done.
bool checkpoint_writer::next(std::string& buf) {
  if (phase_ == 5) return false;
  const size_t start = buf.size();
  while (phase_ < 5 && buf.size() - start < chunk_bytes_) {
    switch (phase_) {
      case 0: {
        entry e(buf, k_meta);
        e.w().svar(s_.max_seq());
        e.w().svar(s_.last_now());
        phase_ = 1;
        break;
      }
      case 1:
        if (closed_ == s_.closed_pickups().end()) {
          phase_ = 2;
          break;
        }
        entry(buf, k_close).w().svar(*closed_++);
        break;
      case 2:
        if (request_ == s_.requests().end()) {
          phase_ = 3;
          break;
        }
        write_request(buf, (request_++)->second);
        break;
      case 3:
        if (job_ == s_.jobs().end()) {
          phase_ = 4;
          break;
        }
        if (!job_->second.linked) write_job(buf, s_, job_->second);
        ++job_;
        break;
      default:
        if (!ended_) {
          phase_ = 5;
          break;
        }
        write_job(buf, s_, *ended_);
        ended_ = ended_->next;
    }
  }
  return true;
}

std::optional<std::string> load_chunk(state& s, std::string_view payload) {
  try {
    reader r(payload);
    while (!r.done()) {
      const uint8_t k = r.u8();
      reader body = r.sub(r.uvar());
      load_entry(s, k, body);
    }
    return std::nullopt;
  } catch (const std::exception& e) {
    return std::string("a checkpoint chunk that cannot be loaded: ") + e.what();
  }
}

void finish_checkpoint(state& s) { s.settle_all(); }

}  // namespace klynaa::broker::journal

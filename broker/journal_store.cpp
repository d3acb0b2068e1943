// The journal store (journal_store.hpp): commit() decides what a batch does,
// exactly as sqlite_store.cpp does it, writes the effects as one record while
// applying them to the state in memory (journal_codec.hpp), and returns once
// the record is durable. Reads answer from memory.
//
// A commit that fails to write leaves the state ahead of the files: it is read
// back from the files (checkpoint and log) before anything else, so nothing of
// the failed batch stays. Failures are rare (a full disk, an I/O error); the
// reading back is O(state).
#include "broker/journal_store.hpp"

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <map>
#include <mutex>

#include <nlohmann/json.hpp>

#include "broker/journal_codec.hpp"
#include "broker/journal_state.hpp"
#include "protocol/log.hpp"

namespace klynaa::broker {

struct journal_store::core {
  journal_options opts;
  mutable std::mutex mu;  ///< the state and the log: the writer's commits, the views' reads
  std::unique_ptr<journal::state> st;
  std::unique_ptr<journal_log> log;
  std::optional<journal_cut> cut;
  bool stale = false;     ///< a failed commit left the state ahead of the files
  std::string buf;        ///< the record being built, reused
  int64_t checkpoints = 0;
  int64_t checkpoint_retry_at = 0;  ///< log bytes at which a failed checkpoint is tried again
};

namespace {

using journal::job_entry;
using journal::state;

constexpr const char* component = "broker";

int64_t wall_ms() {
  using namespace std::chrono;
  return duration_cast<milliseconds>(system_clock::now().time_since_epoch()).count();
}

// The journals written in this process, for read-only views (journal_store.hpp).
std::mutex registry_mu;
std::map<std::string, std::weak_ptr<journal_store::core>> registry;

std::string registry_key(const std::string& dir) {
  std::error_code ec;
  auto p = std::filesystem::weakly_canonical(dir, ec);
  return ec ? dir : p.string();
}

/// The state the journal's files hold, read through `log`.
bool read_state(journal_log& log, state& st, std::string& err) {
  bool settled = false;
  auto settle = [&] {
    if (!settled) journal::finish_checkpoint(st);
    settled = true;
  };
  auto chunk = [&](const journal::record_view& r) { return journal::load_chunk(st, r.payload); };
  auto record = [&](const journal::record_view& r) {
    settle();
    return journal::apply_record(st, r.payload);
  };
  try {
    if (!log.recover(chunk, record, err)) return false;
  } catch (const std::exception& e) {
    err = "cannot read the journal " + log.dir() + ": " + e.what();
    return false;
  }
  settle();
  return true;
}

/// Reads the state back from the files after a failed commit.
bool reload(journal_store::core& c, store_error& err) {
  journal_log_options lo;
  lo.dir = c.opts.dir;
  lo.fs = c.opts.fs;
  lo.read_only = true;  // the writing log keeps its files and lock
  journal_log files(lo);
  auto st = std::make_unique<state>();
  std::string e;
  if (!read_state(files, *st, e)) {
    err.message = "the journal could not be read back after a failed commit: " + e;
    return false;
  }
  c.st = std::move(st);
  c.stale = false;
  return true;
}

/// What one commit decides, on the state through a record_builder.
class committer {
 public:
  committer(state& st, journal::record_builder& rb) : st_(st), rb_(rb) {}

  request_outcome request(const new_request& r) {
    request_outcome o;
    if (auto* q = st_.request(r.id)) return duplicate(*q);
    if (r.closes_pickup) {
      for (auto* j : st_.pending_auto_release(*r.closes_pickup)) {
        o.cancelled.push_back(*j->id);
        rb_.cancel(*j);
      }
      if (!st_.pickup_closed(*r.closes_pickup)) rb_.close(*r.closes_pickup);
    }
    for (size_t i = 0; i < r.jobs.size(); ++i) {
      auto& j = r.jobs[i];
      if (j.auto_release && st_.pickup_closed(state::pickup_of(j.ordering_key))) continue;  // closed first
      if (st_.job(j.id)) continue;
      bool repeated = false;  // the same id earlier in this request: stored once, the first time
      for (auto k : o.created) repeated = repeated || r.jobs[k].id == j.id;
      if (repeated) continue;
      o.created.push_back(static_cast<uint32_t>(i));
      o.job_ids.push_back(j.id);
    }
    rb_.request(r, o.created);
    return o;
  }

  void update(const job_update& u) {
    auto* j = st_.job(u.id);
    if (!j) return;  // unknown: nothing, as in SQL
    if (!j->detail && (!finished(u.state) || u.state == job_state::dead)) return;  // an ended job stays ended
    rb_.update(*j, u);
  }

  bool child(const job_record& c) {
    if (st_.job(c.id)) return false;
    rb_.child(c);
    return true;
  }

  void prune(int64_t before, int64_t limit, commit_outcome& out) {
    int64_t jobs = 0;
    for (auto* j = st_.oldest_ended(); jobs < limit && j && j->updated_ms < before; j = st_.oldest_ended()) {
      rb_.prune_job(*j);
      ++jobs;
    }
    int64_t requests = 0;
    auto& orphans = st_.orphans();
    while (requests < limit && !orphans.empty() && orphans.begin()->first < before) {
      rb_.prune_request(*orphans.begin()->second);
      ++requests;
    }
    out.pruned += jobs + requests;
    out.prune_more = jobs >= limit || requests >= limit;
  }

  void replay(const batch& b, commit_outcome& out) {
    std::vector<job_entry*> dead;
    if (b.replay_all) {
      dead.assign(st_.dead().begin(), st_.dead().end());
      std::sort(dead.begin(), dead.end(), by_seq);
      out.replay_more = static_cast<int64_t>(dead.size()) > b.replay_limit;
      if (out.replay_more) dead.resize(static_cast<size_t>(std::max<int64_t>(b.replay_limit, 0)));
    } else {
      for (auto& id : b.replay_ids)
        if (auto* j = st_.job(id); j && j->state == job_state::dead) dead.push_back(j);
      std::stable_sort(dead.begin(), dead.end(), by_seq);
    }
    int64_t seq = b.replay_seq_base;
    for (auto* j : dead) {
      const int64_t s = seq++;  // a job named twice uses a seq each time, as in SQL
      if (j->state != job_state::dead) continue;
      rb_.replay(*j, s);
      out.replayed.push_back(st_.to_record(*j));
    }
  }

  void purge(const batch& b, commit_outcome& out) {
    std::vector<std::string> ids;
    if (b.purge_all) {
      std::vector<job_entry*> dead(st_.dead().begin(), st_.dead().end());
      std::sort(dead.begin(), dead.end(), by_seq);
      for (auto* j : dead) ids.push_back(*j->id);
    } else {
      for (auto& id : b.purge_ids)
        if (auto* j = st_.job(id); j && j->state == job_state::dead) ids.push_back(id);
    }
    for (auto& id : ids)
      if (auto* j = st_.job(id); j && j->state == job_state::dead) {
        rb_.purge(*j);
        out.purged.push_back(id);
      }
  }

 private:
  static bool by_seq(const job_entry* a, const job_entry* b) { return a->seq < b->seq; }

  request_outcome duplicate(const journal::request_entry& q) {
    request_outcome o;
    o.duplicate = true;
    o.original_op = q.op;
    o.job_ids = st_.job_ids(q);
    for (auto& id : o.job_ids)
      if (auto* j = st_.job(id)) o.existing.push_back(st_.to_record(*j));
    return o;
  }

  state& st_;
  journal::record_builder& rb_;
};

commit_outcome decide(state& st, journal::record_builder& rb, const batch& b) {
  committer c(st, rb);
  commit_outcome out;
  out.requests.reserve(b.requests.size());
  for (auto& r : b.requests) out.requests.push_back(c.request(r));
  for (auto& u : b.updates) c.update(u);
  out.children_inserted.reserve(b.children.size());
  for (auto& ch : b.children) out.children_inserted.push_back(c.child(ch));
  if (b.prune_before_ms) c.prune(*b.prune_before_ms, b.prune_limit, out);
  if (!b.replay_ids.empty() || b.replay_all) c.replay(b, out);
  if (!b.purge_ids.empty() || b.purge_all) c.purge(b, out);
  // b.probe: the record itself, written and synced, is the proof.
  return out;
}

bool write_checkpoint(journal_store::core& c, std::string& err) {
  journal::checkpoint_writer w(*c.st);
  if (!c.log->checkpoint([&](std::string& buf) { return w.next(buf); }, err)) return false;
  ++c.checkpoints;
  return true;
}

// Checkpoints keep the log's cost linear: one is written when the log since
// the last exceeds max(checkpoint_min_bytes, twice that checkpoint's size).
void maybe_checkpoint(journal_store::core& c) {
  auto& log = *c.log;
  const int64_t due = std::max(c.opts.checkpoint_min_bytes, 2 * log.checkpoint_bytes());
  if (log.bytes_since_checkpoint() <= std::max(due, c.checkpoint_retry_at)) return;
  std::string err;
  if (write_checkpoint(c, err)) {
    c.checkpoint_retry_at = 0;
    return;
  }
  c.checkpoint_retry_at = log.bytes_since_checkpoint() + due / 8;  // not again at every commit
  log::warning(component, "journal: a checkpoint failed; the log grows until one succeeds",
               {{"error", err}, {"log_bytes", log.bytes_since_checkpoint()}});
}

}  // namespace

journal_store::journal_store(std::shared_ptr<core> c, bool read_only) : core_(std::move(c)), read_only_(read_only) {}

journal_store::~journal_store() {
  if (read_only_) return;
  // The writer goes: its files and lock with it. Views opened on it keep the
  // state as it was; new read-only opens read the files.
  {
    std::lock_guard<std::mutex> lk(registry_mu);
    auto it = registry.find(registry_key(core_->opts.dir));
    if (it != registry.end() && it->second.lock() == core_) registry.erase(it);
  }
  std::lock_guard<std::mutex> lk(core_->mu);
  core_->log.reset();
}

std::unique_ptr<journal_store> open_journal_store(const journal_options& opts, store_error& err) {
  const std::string key = registry_key(opts.dir);
  if (opts.read_only) {
    std::lock_guard<std::mutex> lk(registry_mu);
    auto it = registry.find(key);
    if (it != registry.end())
      if (auto live = it->second.lock()) return std::make_unique<journal_store>(std::move(live), true);
  }
  auto c = std::make_shared<journal_store::core>();
  c->opts = opts;
  journal_log_options lo;
  lo.dir = opts.dir;
  lo.fs = opts.fs;
  lo.sync = opts.synchronous_full;
  lo.read_only = opts.read_only;
  lo.segment_bytes = opts.segment_bytes;
  c->log = std::make_unique<journal_log>(lo);
  c->st = std::make_unique<state>();
  if (!read_state(*c->log, *c->st, err.message)) return nullptr;
  c->cut = c->log->cut();
  if (!opts.read_only) {
    std::lock_guard<std::mutex> lk(registry_mu);
    for (auto it = registry.begin(); it != registry.end();) it = it->second.expired() ? registry.erase(it) : ++it;
    registry[key] = c;
  }
  return std::make_unique<journal_store>(std::move(c), opts.read_only);
}

std::optional<commit_outcome> journal_store::commit(const batch& b, store_error& err) {
  if (read_only_) {
    err.message = "the journal " + core_->opts.dir + " is open read-only";
    return std::nullopt;
  }
  auto& c = *core_;
  std::lock_guard<std::mutex> lk(c.mu);
  std::string e;
  if (c.stale && (!c.log->settle(err.message) || !reload(c, err))) return std::nullopt;
  try {
    journal::start_record(c.buf);
    journal::record_builder rb(*c.st, c.buf, std::max(wall_ms(), c.st->last_now()));
    auto out = decide(*c.st, rb, b);
    if (!c.log->append(c.buf, e)) {
      err.message = e;
      c.stale = true;
      store_error ignored;
      if (!c.log->pending_repair()) reload(c, ignored);  // else (or when it fails) the next commit does it first
      return std::nullopt;
    }
    if (c.buf.capacity() > (16u << 20)) std::string().swap(c.buf);  // one huge batch: give it back
    maybe_checkpoint(c);
    return out;
  } catch (const std::exception& x) {  // out of memory, most likely: the state is not to be trusted
    err.message = std::string("the journal commit failed: ") + x.what();
    c.stale = true;
    return std::nullopt;
  }
}

bool journal_store::load_unfinished(const std::function<void(job_record&&)>& sink, store_error& err) {
  std::vector<job_record> out;
  {
    std::lock_guard<std::mutex> lk(core_->mu);
    std::vector<const job_entry*> live;
    for (auto& [id, j] : core_->st->jobs())
      if (!finished(j.state)) live.push_back(&j);
    std::sort(live.begin(), live.end(), [](auto* a, auto* b) { return a->seq < b->seq; });
    out.reserve(live.size());
    for (auto* j : live) out.push_back(core_->st->to_record(*j));
  }
  (void)err;
  for (auto& j : out) sink(std::move(j));
  return true;
}

int64_t journal_store::max_seq() {
  std::lock_guard<std::mutex> lk(core_->mu);
  return core_->st->max_seq();
}

std::optional<job_record> journal_store::find_job(const std::string& id) {
  std::lock_guard<std::mutex> lk(core_->mu);
  auto* j = core_->st->job(id);
  if (!j) return std::nullopt;
  return core_->st->to_record(*j);
}

std::vector<job_record> journal_store::list_jobs(job_state s, size_t limit) {
  std::lock_guard<std::mutex> lk(core_->mu);
  auto& st = *core_->st;
  std::vector<const job_entry*> found;
  if (s == job_state::dead) {
    found.assign(st.dead().begin(), st.dead().end());
  } else {
    for (auto& [id, j] : st.jobs())
      if (j.state == s) found.push_back(&j);
  }
  auto newest_first = [](auto* a, auto* b) {
    return a->updated_ms != b->updated_ms ? a->updated_ms > b->updated_ms : a->seq > b->seq;
  };
  const size_t n = std::min(limit, found.size());
  std::partial_sort(found.begin(), found.begin() + static_cast<std::ptrdiff_t>(n), found.end(), newest_first);
  std::vector<job_record> out;
  for (size_t i = 0; i < n; ++i) out.push_back(st.to_record(*found[i]));
  return out;
}

std::string journal_store::history_json(const std::string& id) {
  std::lock_guard<std::mutex> lk(core_->mu);
  auto arr = nlohmann::json::array();
  auto* j = core_->st->job(id);
  if (!j || !j->detail) return arr.dump();
  for (auto& a : j->detail->history) {
    nlohmann::json e = {{"attempt", a.attempt}, {"node", a.node}, {"outcome", a.outcome},
                        {"duration_ms", a.duration_ms}, {"at_ms", a.at_ms}};
    e["error"] = a.error.empty() ? nlohmann::json() : nlohmann::json::parse(a.error, nullptr, false);
    arr.push_back(std::move(e));
  }
  return arr.dump();
}

std::vector<std::tuple<std::string, job_state, int64_t>> journal_store::count_by_function() {
  std::lock_guard<std::mutex> lk(core_->mu);
  return core_->st->counts();
}

std::optional<journal_cut> journal_store::recovery_cut() const {
  std::lock_guard<std::mutex> lk(core_->mu);
  return core_->cut;
}

bool journal_store::checkpoint(store_error& err) {
  if (read_only_) {
    err.message = "the journal " + core_->opts.dir + " is open read-only";
    return false;
  }
  std::lock_guard<std::mutex> lk(core_->mu);
  if (core_->stale && (!core_->log->settle(err.message) || !reload(*core_, err))) return false;
  return write_checkpoint(*core_, err.message);
}

journal_stats journal_store::stats() const {
  std::lock_guard<std::mutex> lk(core_->mu);
  journal_stats s;
  s.jobs = core_->st->jobs().size();
  s.requests = core_->st->requests().size();
  if (core_->log) {
    s.log_bytes = core_->log->bytes_since_checkpoint();
    s.checkpoint_bytes = core_->log->checkpoint_bytes();
  }
  s.checkpoints = core_->checkpoints;
  return s;
}

}  // namespace klynaa::broker

// What the journal's records say (docs/design.md, "The journal store"): the
// entries of a commit record and of a checkpoint, written and applied to the
// state (journal_state.hpp) by the same functions, live and in recovery, so
// that a state rebuilt from the files is the state that wrote them.
//
// A commit record's payload: svar now_ms (the commit's time; every entry's
// "now"), then entries. An entry: u8 kind, uvar length, body. A body's fields
// are read in order; bytes after the last known field are skipped, so a later
// version may add fields at the end of an entry. An unknown kind is refused
// (a newer klynaa wrote it).
//
//   1 request   id, op, accepted_ms, n, n x job       a request and the jobs it created
//   2 job       job                                   a job's child (batch::children)
//   3 update    id, state, attempts, due_ms, seq, last_error, result, has_attempt
//               [, node, outcome, duration_ms]        job_update (history entry at now)
//   4 cancel    id                                    an auto-release cancelled by closing its pickup
//   5 close     pickup                                a pickup confirmed or disputed
//   6 prune_job id        7 prune_request id          retention (batch::prune_before_ms)
//   8 replay    id, seq                               a dead job made ready again (due now)
//   9 purge     id                                    a dead job deleted
//   job = uvar length, then: id, request_id ("" = the request's), function,
//         data, ordering_key, seq, state, due_ms, attempts, ts_ms, created_ms,
//         auto_release, attempt_base, last_error, result
//
// A checkpoint's chunks hold entries 20 meta (max_seq, last now), 5 close,
// 21 request (id, op, accepted_ms, jobs, explicit ids or none), and 22 job (the
// whole in-memory image: owner, state, seq, attempts, updated_ms, function,
// result, detail with its history), requests before jobs, and done/cancelled
// jobs in the order they ended.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>

#include "broker/journal_format.hpp"
#include "broker/journal_state.hpp"
#include "broker/store.hpp"

namespace klynaa::broker::journal {

/// Writes one commit record's entries into `buf` (after start_record()) and
/// applies each to the state as it goes.
class record_builder {
 public:
  record_builder(state& s, std::string& buf, int64_t now);

  int64_t now() const { return now_; }
  /// The request with the candidate jobs `created` indexes (those to store).
  request_entry* request(const new_request& r, const std::vector<uint32_t>& created);
  job_entry* child(const job_record& j);
  /// Applies the update: its history entry only while the job keeps a history.
  void update(job_entry& j, const job_update& u);
  void cancel(job_entry& j);
  void close(int64_t pickup);
  void prune_job(job_entry& j);
  void prune_request(request_entry& r);
  void replay(job_entry& j, int64_t seq);
  void purge(job_entry& j);
  /// Bytes written so far.
  size_t size() const { return buf_.size(); }

 private:
  size_t open_entry(uint8_t kind);
  void close_entry(size_t at);

  state& s_;
  std::string& buf_;
  writer w_;
  int64_t now_;
  std::vector<const job_record*> jobs_;  ///< request()'s, reused
};

/// Applies one commit record (recovery): the problem, or nothing.
std::optional<std::string> apply_record(state& s, std::string_view payload);

/// The attempt history entries one commit record writes (its updates of jobs
/// that keep a history: every attempt but a job's last, successful one), with
/// their job ids, for tools that read what happened from a journal's segments
/// (tests/integration/faults_support.hpp). The problem, or nothing.
std::optional<std::string> attempts_of(std::string_view payload,
                                       const std::function<void(const std::string&, const attempt_entry&)>& sink);

/// Writes the state as checkpoint chunks of about `chunk_bytes` each. The state
/// must not change while it is used.
class checkpoint_writer {
 public:
  explicit checkpoint_writer(const state& s, size_t chunk_bytes = 1 << 20);
  /// Appends the next chunk's payload to `buf`; false when everything was written.
  bool next(std::string& buf);

 private:
  const state& s_;
  size_t chunk_bytes_;
  int phase_ = 0;
  std::unordered_set<int64_t>::const_iterator closed_;
  std::unordered_map<std::string, request_entry>::const_iterator request_;
  std::unordered_map<std::string, job_entry>::const_iterator job_;
  const job_entry* ended_ = nullptr;
};

/// Applies one checkpoint chunk; finish_checkpoint once all were.
std::optional<std::string> load_chunk(state& s, std::string_view payload);
void finish_checkpoint(state& s);

}  // namespace klynaa::broker::journal

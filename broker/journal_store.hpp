// The journal store (store.backend = "journal"; docs/design.md, "The journal
// store"): the same `store` interface and guarantees as SQLite's (store.hpp),
// kept as a log instead of B-trees. The state lives in memory
// (journal_state.hpp); each commit() appends one record holding the batch's
// effects to the current segment and syncs it before returning
// (journal_log.hpp); a checkpoint of the state, written when the log since the
// last one exceeds max(checkpoint_min_bytes, twice that checkpoint's size), lets
// the older segments be deleted. At open the state is rebuilt from the newest
// checkpoint and the records after it.
//
// Where it differs from the SQL stores (all of it documented in store.hpp's
// terms):
// - a done or cancelled job is kept compactly until pruned: find_job gives its
//   id, request, function, state, seq, attempts and end (updated_ms), and its
//   result only when it belongs to an invoke request; history_json gives "[]".
//   An update cannot bring such a job back to ready, running, retry_wait or
//   dead (it changes nothing, as for an unknown job).
// - max_seq() is the highest seq ever stored, pruned jobs included.
// - a request's dedup key goes once every job it created is gone (pruned after
//   it ended before the cut, or purged) and it was accepted before the cut.
//
// Thread-safety: as every store, one object per thread. But a read-only open of
// a journal that a store in this process is writing returns a view onto that
// store's state (its reads take the writer's mutex), since the files alone lag
// behind it; a read-only open of a journal nobody here writes reads the files
// once, changing nothing.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "broker/journal_fs.hpp"
#include "broker/journal_log.hpp"
#include "broker/store.hpp"

namespace klynaa::broker {

struct journal_options {
  std::string dir;               ///< DATA_DIR/journal
  bool synchronous_full = true;  ///< fdatasync every commit; false = store.synchronous "normal"
  bool read_only = false;
  std::shared_ptr<journal_fs> fs;  ///< nullptr: the real file system (tests inject faults)
  int64_t segment_bytes = 64LL << 20;
  int64_t checkpoint_min_bytes = 64LL << 20;
};

/// What the journal holds and has written, for tests and the benchmark.
struct journal_stats {
  size_t jobs = 0;                 ///< in memory, every state
  size_t requests = 0;             ///< dedup keys in memory
  int64_t log_bytes = 0;           ///< since the newest checkpoint
  int64_t checkpoint_bytes = 0;    ///< the newest checkpoint's size
  int64_t checkpoints = 0;         ///< written by this store
};

class journal_store;

/// Opens (creating when needed) the journal in opts.dir. nullptr and `err`
/// (naming the file and the offset of any damage) on failure.
std::unique_ptr<journal_store> open_journal_store(const journal_options& opts, store_error& err);

class journal_store final : public store {
 public:
  struct core;
  journal_store(std::shared_ptr<core> c, bool read_only);
  ~journal_store() override;

  std::optional<commit_outcome> commit(const batch& b, store_error& err) override;
  bool load_unfinished(const std::function<void(job_record&&)>& sink, store_error& err) override;
  int64_t max_seq() override;
  std::optional<job_record> find_job(const std::string& id) override;
  std::vector<job_record> list_jobs(job_state state, size_t limit) override;
  std::string history_json(const std::string& id) override;
  std::vector<std::tuple<std::string, job_state, int64_t>> count_by_function() override;

  /// The torn tail recovery cut (or, read-only, left out) at open, if any.
  std::optional<journal_cut> recovery_cut() const;
  /// Writes a checkpoint now (the store also does on its own, see above).
  bool checkpoint(store_error& err);
  journal_stats stats() const;

 private:
  std::shared_ptr<core> core_;
  bool read_only_;
};

}  // namespace klynaa::broker

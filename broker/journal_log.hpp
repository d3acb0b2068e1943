// The journal's files (docs/design.md, "The journal store"): segments of
// records appended one per commit, checkpoints that let older segments go, and
// the recovery that reads them back at start. It knows frames, not what the
// records mean: journal_store.cpp encodes and applies them.
//
// In DIR (DATA_DIR/journal):
//   segment-<first seq, 16 hex>.log     records, each made durable before append() returns
//   checkpoint-<last seq, 16 hex>.ckpt  the state after that record, in chunk records
//   LOCK                                held by the one writing journal
//
// Recovery rules: the newest checkpoint must be whole (else the journal is
// refused: it replaced segments that are gone). The segments after it must be
// consecutive and whole, except that the last one may end in a torn write — an
// incomplete or bad record, or zeros, with no valid record after it — which is
// cut (and reported: cut()). A bad record followed by a valid one is damage in
// the middle: refused, naming the file and the offset, since cutting there would
// lose acknowledged records.
//
// Thread-safety: one thread at a time.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "broker/journal_format.hpp"
#include "broker/journal_fs.hpp"

namespace klynaa::broker {

struct journal_log_options {
  std::string dir;                  ///< DATA_DIR/journal
  std::shared_ptr<journal_fs> fs;   ///< nullptr: posix_journal_fs()
  bool sync = true;                 ///< fdatasync each record (store.synchronous = "full")
  bool read_only = false;           ///< change no file: no lock, no cut, no new segment
  int64_t segment_bytes = 64LL << 20;  ///< a segment is closed once it holds this much
};

/// A torn tail cut by recovery (or, read-only, left out).
struct journal_cut {
  std::string file;    ///< path of the segment
  int64_t offset = 0;  ///< where the cut began: the segment's new length
  int64_t bytes = 0;   ///< bytes cut
  std::string why;     ///< what was there ("an incomplete record", ...)
};

class journal_log {
 public:
  /// Handles one checkpoint chunk or one commit record; returns a problem or nothing.
  using sink = std::function<std::optional<std::string>(const journal::record_view&)>;

  explicit journal_log(journal_log_options opts);
  ~journal_log();
  journal_log(const journal_log&) = delete;
  journal_log& operator=(const journal_log&) = delete;

  /// Reads the newest checkpoint's chunks into `chunk`, then every commit record
  /// after it into `record`, applying the recovery rules above. Read-write, it
  /// then opens the last segment for appending (or starts one). False and `err`
  /// (naming the file and the offset) when the journal is refused.
  bool recover(const sink& chunk, const sink& record, std::string& err);

  /// The torn tail recovery cut, if any.
  const std::optional<journal_cut>& cut() const { return cut_; }

  /// Appends one commit record: `buf` is start_record() followed by the payload;
  /// it is framed here. Returns once it is durable (options.sync). On failure
  /// the segment is cut back to where it was, so the journal holds the records
  /// before it only; when even that fails, every later append fails until it
  /// succeeds.
  bool append(std::string& buf, std::string& err);

  /// A failed append whose bytes could not be cut back yet (append retries it).
  bool pending_repair() const { return repair_to_.has_value(); }
  /// Cuts back what a failed append left, when that is pending: true once the
  /// files hold exactly the records appended.
  bool settle(std::string& err) { return !repair_to_ || repair(err); }

  /// The seq of the last record appended or recovered (0: none).
  uint64_t last_seq() const { return next_seq_ - 1; }

  /// Log bytes written since the newest checkpoint, and that checkpoint's size.
  int64_t bytes_since_checkpoint() const { return since_checkpoint_; }
  int64_t checkpoint_bytes() const { return checkpoint_bytes_; }

  /// Writes a checkpoint of the state after the last record: closes the current
  /// segment (the next record starts a new one), then writes the chunks
  /// `next_chunk` fills (start_record() and a payload; false when there are no
  /// more) to a temporary file, syncs it, renames it into place, syncs the
  /// directory, and deletes the segments and checkpoints it replaces.
  bool checkpoint(const std::function<bool(std::string&)>& next_chunk, std::string& err);

  const std::string& dir() const { return opts_.dir; }

 private:
  struct segment {
    uint64_t first = 0;
    std::string name;
  };
  bool recover_checkpoint(const std::vector<std::string>& names, const sink& chunk, std::string& err);
  bool recover_segments(std::vector<segment> segs, const sink& record, std::string& err);
  bool read_segment(const segment& s, bool last, const sink& record, std::string& err);
  bool cut_tail(const std::string& path, int64_t good_end, int64_t size, const std::string& why,
                std::string& err);
  bool open_for_append(std::string& err);
  bool roll(std::string& err);
  bool repair(std::string& err);
  std::string path(const std::string& name) const { return opts_.dir + "/" + name; }

  journal_log_options opts_;
  std::shared_ptr<void> lock_;
  std::vector<segment> segments_;       ///< on disk, oldest first
  std::unique_ptr<journal_file> file_;  ///< the last segment, open for appending
  uint64_t next_seq_ = 1;
  uint64_t last_end_ = 0;               ///< the seq after the last segment's last record
  uint64_t checkpoint_seq_ = 0;         ///< the newest checkpoint's last record (0: none)
  std::string checkpoint_name_;
  int64_t since_checkpoint_ = 0;
  int64_t checkpoint_bytes_ = 0;
  std::optional<int64_t> repair_to_;    ///< a failed append left bytes after this offset
  bool roll_due_ = false;
  std::optional<journal_cut> cut_;
};

/// "segment-000000000000002a.log" for 42; checkpoint_name likewise (.ckpt).
std::string journal_segment_name(uint64_t first_seq);
std::string journal_checkpoint_name(uint64_t last_seq);

}  // namespace klynaa::broker

// The journal's files: recovery, appends and checkpoints (journal_log.hpp).
#include "broker/journal_log.hpp"

#include <algorithm>
#include <cinttypes>
#include <cstdio>

#include "protocol/log.hpp"

namespace klynaa::broker {

namespace {

constexpr const char* component = "broker";

std::string hex_name(const char* prefix, uint64_t seq, const char* suffix) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%s%016" PRIx64 "%s", prefix, seq, suffix);
  return buf;
}

/// `name` is prefix + 16 hex digits + suffix: its number in `seq`.
bool parse_name(const std::string& name, const std::string& prefix, const std::string& suffix, uint64_t& seq) {
  if (name.size() != prefix.size() + 16 + suffix.size() || name.compare(0, prefix.size(), prefix) != 0 ||
      name.compare(name.size() - suffix.size(), suffix.size(), suffix) != 0)
    return false;
  seq = 0;
  for (size_t i = prefix.size(); i < prefix.size() + 16; ++i) {
    const char c = name[i];
    const int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
    if (d < 0) return false;
    seq = seq * 16 + static_cast<uint64_t>(d);
  }
  return true;
}

/// A segment file that is only the start of a header (a crash while the
/// segment was being created): shorter than a header, or zeros in its place.
bool torn_header(const std::string& data) {
  if (data.size() < journal::file_header_size) return true;
  return std::all_of(data.begin(), data.begin() + journal::file_header_size, [](char c) { return c == 0; }) &&
         std::all_of(data.begin(), data.end(), [](char c) { return c == 0; });
}

const std::string damaged_advice =
    "; the journal is damaged before its end, so cutting it there could lose acknowledged requests. "
    "Restore the data dir from a backup (docs/operations.md, \"The journal store\")";

}  // namespace

std::string journal_segment_name(uint64_t first_seq) { return hex_name("segment-", first_seq, ".log"); }
std::string journal_checkpoint_name(uint64_t last_seq) { return hex_name("checkpoint-", last_seq, ".ckpt"); }

journal_log::journal_log(journal_log_options opts) : opts_(std::move(opts)) {
  if (!opts_.fs) opts_.fs = posix_journal_fs();
}

journal_log::~journal_log() = default;

bool journal_log::recover(const sink& chunk, const sink& record, std::string& err) {
  auto& fs = *opts_.fs;
  if (!fs.exists(opts_.dir)) {
    if (opts_.read_only) return true;  // nothing stored yet: an empty journal
    if (!fs.make_dir(opts_.dir, err)) return false;
  }
  if (!opts_.read_only && !(lock_ = fs.lock(path("LOCK"), err))) return false;
  std::vector<std::string> names;
  if (!fs.list(opts_.dir, names, err)) return false;
  std::vector<segment> segs;
  for (auto& n : names) {
    uint64_t seq = 0;
    std::string ignored;
    if (parse_name(n, "segment-", ".log", seq))
      segs.push_back({seq, n});
    else if (!opts_.read_only && n.size() > 4 && n.compare(n.size() - 4, 4, ".tmp") == 0)
      fs.remove(path(n), ignored);  // a checkpoint that was never renamed into place
  }
  std::sort(segs.begin(), segs.end(), [](const segment& a, const segment& b) { return a.first < b.first; });
  if (!recover_checkpoint(names, chunk, err) || !recover_segments(std::move(segs), record, err)) return false;
  return opts_.read_only || open_for_append(err);
}

bool journal_log::recover_checkpoint(const std::vector<std::string>& names, const sink& chunk, std::string& err) {
  std::vector<std::pair<uint64_t, std::string>> found;
  for (auto& n : names) {
    uint64_t seq = 0;
    if (parse_name(n, "checkpoint-", ".ckpt", seq)) found.emplace_back(seq, n);
  }
  if (found.empty()) return true;
  std::sort(found.begin(), found.end());
  const auto& [seq, name] = found.back();
  const std::string p = path(name);
  const std::string whole = "; a checkpoint must be whole, since the segments it replaced are gone. "
                            "Restore the data dir from a backup (docs/operations.md, \"The journal store\")";
  std::string data;
  if (!opts_.fs->read(p, data, err)) return false;
  journal::file_header h;
  if (auto why = journal::parse_file_header(data, h)) {
    err = p + ": " + *why + (why->find("schema version") == std::string::npos ? whole : "");
    return false;
  }
  if (h.kind != journal::file_kind::checkpoint || h.seq != seq) {
    err = p + ": its header does not match its name (a checkpoint of record " + std::to_string(h.seq) + ")" + whole;
    return false;
  }
  auto scan = journal::scan_records(data, 1);
  if (scan.bad) {
    err = p + " at offset " + std::to_string(scan.good_end) + ": " + scan.why + whole;
    return false;
  }
  if (scan.records.empty() || scan.records.back().kind != journal::record_kind::checkpoint_end) {
    err = p + " at offset " + std::to_string(scan.good_end) + ": the checkpoint ends before its end record" + whole;
    return false;
  }
  for (size_t i = 0; i + 1 < scan.records.size(); ++i) {
    auto& r = scan.records[i];
    std::optional<std::string> problem;
    if (r.kind != journal::record_kind::checkpoint_chunk)
      problem = "a record that does not belong in a checkpoint";
    else
      problem = chunk(r);
    if (problem) {
      err = p + " at offset " + std::to_string(r.offset) + ": " + *problem + whole;
      return false;
    }
  }
  checkpoint_seq_ = seq;
  checkpoint_name_ = name;
  checkpoint_bytes_ = static_cast<int64_t>(data.size());
  next_seq_ = seq + 1;
  if (!opts_.read_only) {
    std::string ignored;
    for (size_t i = 0; i + 1 < found.size(); ++i) opts_.fs->remove(path(found[i].second), ignored);  // replaced
  }
  return true;
}

bool journal_log::recover_segments(std::vector<segment> segs, const sink& record, std::string& err) {
  std::vector<segment> needed;
  std::string ignored;
  for (size_t i = 0; i < segs.size(); ++i) {
    // Every record of a segment that the next one starts right after the
    // checkpoint is in the checkpoint: a segment left over from deleting them.
    if (i + 1 < segs.size() && segs[i + 1].first <= checkpoint_seq_ + 1) {
      if (!opts_.read_only) opts_.fs->remove(path(segs[i].name), ignored);
      continue;
    }
    needed.push_back(segs[i]);
  }
  if (!needed.empty() && needed[0].first > checkpoint_seq_ + 1) {
    err = path(needed[0].name) + ": records " + std::to_string(checkpoint_seq_ + 1) + " to " +
          std::to_string(needed[0].first - 1) + " are missing (" +
          (checkpoint_seq_ ? "the checkpoint ends at record " + std::to_string(checkpoint_seq_)
                           : std::string("there is no checkpoint")) +
          "): a segment was deleted" + damaged_advice;
    return false;
  }
  for (size_t i = 0; i < needed.size(); ++i) {
    if (i > 0 && needed[i].first != next_seq_) {
      err = path(needed[i].name) + ": starts at record " + std::to_string(needed[i].first) + " but the segment " +
            "before it ends at record " + std::to_string(next_seq_ - 1) + damaged_advice;
      return false;
    }
    if (!read_segment(needed[i], i + 1 == needed.size(), record, err)) return false;
  }
  next_seq_ = std::max(next_seq_, checkpoint_seq_ + 1);
  return true;
}

bool journal_log::read_segment(const segment& s, bool last, const sink& record, std::string& err) {
  const std::string p = path(s.name);
  std::string data;
  if (!opts_.fs->read(p, data, err)) return false;
  journal::file_header h;
  if (auto why = journal::parse_file_header(data, h)) {
    if (last && torn_header(data)) {  // created, then the crash: it never held a record
      if (!cut_tail(p, 0, static_cast<int64_t>(data.size()), "a segment whose header was never written", err))
        return false;
      if (!opts_.read_only && (!opts_.fs->remove(p, err) || !opts_.fs->sync_dir(opts_.dir, err))) return false;
      return true;
    }
    err = p + ": " + *why + (why->find("schema version") == std::string::npos ? damaged_advice : "");
    return false;
  }
  if (h.kind != journal::file_kind::segment || h.seq != s.first) {
    err = p + ": its header does not match its name (a segment from record " + std::to_string(h.seq) + ")" +
          damaged_advice;
    return false;
  }
  auto scan = journal::scan_records(data, h.seq);
  for (auto& r : scan.records) {
    if (r.seq <= checkpoint_seq_) continue;  // already in the checkpoint
    auto problem = r.kind == journal::record_kind::commit ? record(r)
                                                          : std::optional<std::string>("a checkpoint record in a segment");
    if (problem) {
      err = p + " at offset " + std::to_string(r.offset) + ": " + *problem;
      return false;
    }
  }
  next_seq_ = last_end_ = h.seq + scan.records.size();
  since_checkpoint_ += scan.good_end;
  segments_.push_back(s);
  if (!scan.bad) return true;
  if (!last || scan.valid_after) {
    err = p + " at offset " + std::to_string(scan.good_end) + ": " + scan.why +
          (scan.valid_after ? ", followed by a valid record at offset " + std::to_string(scan.valid_after_offset)
                            : ", in a segment that is not the last") +
          damaged_advice;
    return false;
  }
  return cut_tail(p, scan.good_end, static_cast<int64_t>(data.size()), scan.why, err);
}

bool journal_log::cut_tail(const std::string& p, int64_t good_end, int64_t size, const std::string& why,
                           std::string& err) {
  cut_ = journal_cut{p, good_end, size - good_end, why};
  log::warning(component,
               opts_.read_only ? "journal: a torn write at the end of the last segment is left out (read-only)"
                               : "journal: cut a torn write at the end of the last segment",
               {{"file", p}, {"offset", good_end}, {"bytes", size - good_end}, {"found", why}});
  if (opts_.read_only || good_end == 0) return true;
  auto f = opts_.fs->open_append(p, err);
  return f && f->truncate(good_end, err) && f->sync(err);
}

bool journal_log::open_for_append(std::string& err) {
  // No segment yet, or the last one ends before the checkpoint (a cut could do
  // that): new records start a segment of their own, numbered after it.
  if (segments_.empty() || last_end_ != next_seq_) return roll(err);
  auto f = opts_.fs->open_append(path(segments_.back().name), err);
  if (!f) return false;
  file_ = std::move(f);
  if (const int64_t pad = journal::aligned(file_->size()) - file_->size(); pad > 0) {
    const std::string zeros(static_cast<size_t>(pad), '\0');  // a record torn inside its padding
    if (!file_->append(zeros.data(), zeros.size(), err) || !file_->sync(err)) return false;
  }
  roll_due_ = file_->size() >= opts_.segment_bytes;
  return true;
}

bool journal_log::roll(std::string& err) {
  auto& fs = *opts_.fs;
  const std::string name = journal_segment_name(next_seq_);
  std::string ignored;
  fs.remove(path(name), ignored);  // what a roll that failed half-way left
  auto f = fs.create(path(name), err);
  if (!f) return false;
  const std::string header = journal::encode_file_header(journal::file_kind::segment, next_seq_);
  if (!f->append(header.data(), header.size(), err) || !f->sync(err) || !fs.sync_dir(opts_.dir, err)) {
    f.reset();
    fs.remove(path(name), ignored);
    return false;
  }
  file_ = std::move(f);
  segments_.push_back({next_seq_, name});
  roll_due_ = false;
  return true;
}

bool journal_log::repair(std::string& err) {
  if (!file_->truncate(*repair_to_, err) || !file_->sync(err)) {
    err = "the journal could not cut back a record that failed: " + err;
    return false;
  }
  repair_to_.reset();
  return true;
}

bool journal_log::append(std::string& buf, std::string& err) {
  if (!file_) {
    err = "the journal " + opts_.dir + " is open read-only";
    return false;
  }
  if (repair_to_ && !repair(err)) return false;
  if (roll_due_ && !roll(err)) return false;  // nothing written: the journal is as it was
  journal::frame_record(buf, journal::record_kind::commit, next_seq_);
  const int64_t before = file_->size();
  if (!file_->append(buf.data(), buf.size(), err) || (opts_.sync && !file_->sync(err))) {
    repair_to_ = before;
    std::string rerr;
    if (!repair(rerr)) err += "; " + rerr;
    return false;
  }
  ++next_seq_;
  since_checkpoint_ += static_cast<int64_t>(buf.size());
  if (file_->size() >= opts_.segment_bytes) roll_due_ = true;  // the next record starts a new segment
  return true;
}

bool journal_log::checkpoint(const std::function<bool(std::string&)>& next_chunk, std::string& err) {
  if (!file_) {
    err = "the journal " + opts_.dir + " is open read-only";
    return false;
  }
  if (repair_to_ && !repair(err)) return false;
  // Close the segment: every record so far is in the checkpoint, the next goes after it.
  if (segments_.back().first != next_seq_ && !roll(err)) return false;
  auto& fs = *opts_.fs;
  const uint64_t covered = next_seq_ - 1;
  const std::string name = journal_checkpoint_name(covered);
  const std::string tmp = path(name + ".tmp");
  std::string ignored;
  fs.remove(tmp, ignored);
  auto f = fs.create(tmp, err);
  if (!f) return false;
  auto fail = [&] {
    f.reset();
    fs.remove(tmp, ignored);
    return false;
  };
  const std::string header = journal::encode_file_header(journal::file_kind::checkpoint, covered);
  if (!f->append(header.data(), header.size(), err)) return fail();
  std::string buf;
  uint64_t n = 0;
  for (journal::start_record(buf); next_chunk(buf); journal::start_record(buf)) {
    journal::frame_record(buf, journal::record_kind::checkpoint_chunk, ++n);
    if (!f->append(buf.data(), buf.size(), err)) return fail();
  }
  journal::start_record(buf);
  journal::writer(buf).uvar(n);
  journal::frame_record(buf, journal::record_kind::checkpoint_end, n + 1);
  if (!f->append(buf.data(), buf.size(), err) || !f->sync(err)) return fail();
  const int64_t size = f->size();
  f.reset();
  if (!fs.rename(tmp, path(name), err) || !fs.sync_dir(opts_.dir, err)) return fail();
  const std::string previous = checkpoint_name_;
  checkpoint_seq_ = covered;
  checkpoint_name_ = name;
  checkpoint_bytes_ = size;
  since_checkpoint_ = file_->size();
  if (!previous.empty() && previous != name) fs.remove(path(previous), ignored);
  // The segments before the current one are all in the checkpoint now.
  std::string derr;
  for (auto& s : segments_)
    if (s.first <= covered && !fs.remove(path(s.name), derr))
      log::warning(component, "journal: cannot delete a segment the checkpoint replaced; it is retried at start",
                   {{"error", derr}});
  segments_.erase(std::remove_if(segments_.begin(), segments_.end(), [&](const segment& s) { return s.first <= covered; }),
                  segments_.end());
  if (!fs.sync_dir(opts_.dir, derr))
    log::warning(component, "journal: cannot sync the directory after deleting segments", {{"error", derr}});
  return true;
}

}  // namespace klynaa::broker

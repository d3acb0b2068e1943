// The journal's bytes on disk (docs/design.md, "The journal store"): the header
// every journal file starts with, the frame around each record, and the
// primitive encodings (varints, strings) the records' bodies are made of.
// Pure functions over memory: no I/O here (journal_log.cpp does that).
//
// A file: a 32-byte header, then records, each 8-byte aligned.
//
//   header   0  char[8]  "KLYJRNL\0"
//            8  u32      format version (journal::format_version)
//           12  u32      kind: 1 segment, 2 checkpoint
//           16  u64      segment: the seq of its first record; checkpoint: the
//                        last commit record it holds
//           24  u32      crc32 (zlib) of bytes 0..24
//           28  u32      0
//   record   0  u32      magic 0x4B4C4A52
//            4  u32      crc32 of bytes 8 .. 24+len (length, kind, seq, payload)
//            8  u32      len: payload bytes
//           12  u32      kind: 1 commit, 2 checkpoint chunk, 3 checkpoint end
//           16  u64      seq: consecutive within a file (a segment's first is its header's)
//           24  payload, then zero bytes up to the next multiple of 8
//
// Integers are little-endian. A reader refuses a file whose format version is
// newer than its own, naming both.
#pragma once

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace klynaa::broker::journal {

/// 1: the first layout. Bump it when a record's meaning changes; a field added at
/// the end of an entry (journal_codec.hpp) needs no bump.
constexpr uint32_t format_version = 1;
constexpr size_t file_header_size = 32;
constexpr size_t record_header_size = 24;
constexpr uint32_t record_magic = 0x4B4C4A52;

enum class file_kind : uint32_t { segment = 1, checkpoint = 2 };
enum class record_kind : uint32_t { commit = 1, checkpoint_chunk = 2, checkpoint_end = 3 };

struct file_header {
  uint32_t version = 0;
  file_kind kind = file_kind::segment;
  uint64_t seq = 0;
};

std::string encode_file_header(file_kind kind, uint64_t seq, uint32_t version = format_version);
/// The header of `data`, or the problem ("not a journal file", "bad header
/// checksum", "schema version 7, newer than this klynaa understands (1)...").
std::optional<std::string> parse_file_header(std::string_view data, file_header& out);

/// Frames a record in place: `buf` starts with record_header_size bytes reserved
/// for the header and holds the payload after them; pads it to a multiple of 8.
void frame_record(std::string& buf, record_kind kind, uint64_t seq);
/// A buffer with the header's room reserved, ready for a payload.
inline void start_record(std::string& buf) { buf.assign(record_header_size, '\0'); }

inline int64_t aligned(int64_t n) { return (n + 7) & ~int64_t(7); }

struct record_view {
  uint64_t seq = 0;
  record_kind kind = record_kind::commit;
  std::string_view payload;
  int64_t offset = 0;  ///< of its header in the file
};

/// The records of one file, read until the first one that is not whole and valid.
struct scan_result {
  std::vector<record_view> records;
  int64_t good_end = 0;  ///< just after the last good record (its padding included when present)
  bool bad = false;      ///< something other than the file's end is at good_end
  std::string why;       ///< what is wrong there
  /// The bad spot cannot be a torn write: a whole, valid record (of a kind this
  /// version knows, in sequence or not) follows it, or the bad record is whole
  /// with a valid checksum but out of sequence or of an unknown kind.
  bool valid_after = false;
  int64_t valid_after_offset = 0;
};

/// Scans `file` (header included) for records numbered from `first_seq`.
scan_result scan_records(std::string_view file, uint64_t first_seq);

/// Thrown by `reader` on a body shorter than its fields; caught at the edge of
/// each decode (journal_codec.cpp) and turned into a message with the offset.
struct decode_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

/// Appends the primitive encodings: LEB128 varints, zigzag for signed values,
/// strings as a varint length and the bytes.
class writer {
 public:
  explicit writer(std::string& out) : out_(out) {}
  void u8(uint8_t v) { out_.push_back(static_cast<char>(v)); }
  void uvar(uint64_t v) {
    while (v >= 0x80) {
      out_.push_back(static_cast<char>(v | 0x80));
      v >>= 7;
    }
    out_.push_back(static_cast<char>(v));
  }
  void svar(int64_t v) { uvar((static_cast<uint64_t>(v) << 1) ^ static_cast<uint64_t>(v >> 63)); }
  void str(std::string_view s) {
    uvar(s.size());
    out_.append(s.data(), s.size());
  }
  std::string& out() { return out_; }

 private:
  std::string& out_;
};

/// Reads what `writer` wrote; throws decode_error past the end.
class reader {
 public:
  explicit reader(std::string_view in) : p_(in.data()), end_(in.data() + in.size()) {}
  uint8_t u8() {
    need(1);
    return static_cast<uint8_t>(*p_++);
  }
  uint64_t uvar() {
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      uint8_t b = u8();
      v |= static_cast<uint64_t>(b & 0x7f) << shift;
      if (!(b & 0x80)) return v;
    }
    throw decode_error("a varint longer than 10 bytes");
  }
  int64_t svar() {
    uint64_t v = uvar();
    return static_cast<int64_t>((v >> 1) ^ (~(v & 1) + 1));
  }
  std::string_view str() {
    uint64_t n = uvar();
    need(n);
    std::string_view s(p_, static_cast<size_t>(n));
    p_ += n;
    return s;
  }
  /// The next `n` bytes as a reader of their own (an entry's body), skipped here.
  reader sub(uint64_t n) {
    need(n);
    reader r(std::string_view(p_, static_cast<size_t>(n)));
    p_ += n;
    return r;
  }
  bool done() const { return p_ == end_; }
  size_t left() const { return static_cast<size_t>(end_ - p_); }

 private:
  void need(uint64_t n) const {
    if (n > static_cast<uint64_t>(end_ - p_)) throw decode_error("a field runs past the end of its entry");
  }
  const char* p_;
  const char* end_;
};

}  // namespace klynaa::broker::journal

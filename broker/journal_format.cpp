// The journal's framing (journal_format.hpp): file headers, record frames and
// the scan that finds where the good records of a file end.
#include "broker/journal_format.hpp"

#include <zlib.h>

#include <cstring>

namespace klynaa::broker::journal {

namespace {

constexpr char file_magic[8] = {'K', 'L', 'Y', 'J', 'R', 'N', 'L', '\0'};

uint32_t crc(const char* p, size_t n) {
  uLong c = crc32(0L, Z_NULL, 0);
  // zlib takes a uInt length: feed large buffers in pieces.
  while (n > 0) {
    const size_t piece = n > (1u << 30) ? (1u << 30) : n;
    c = crc32(c, reinterpret_cast<const Bytef*>(p), static_cast<uInt>(piece));
    p += piece;
    n -= piece;
  }
  return static_cast<uint32_t>(c);
}

template <class T>
void put(char* at, T v) {
  std::memcpy(at, &v, sizeof v);
}
template <class T>
T get(const char* at) {
  T v;
  std::memcpy(&v, at, sizeof v);
  return v;
}

/// The record at `pos` if it is whole and its checksum holds; its payload
/// length in `len`.
bool valid_at(std::string_view f, int64_t pos, uint32_t& len) {
  const auto size = static_cast<int64_t>(f.size());
  if (size - pos < static_cast<int64_t>(record_header_size)) return false;
  const char* h = f.data() + pos;
  if (get<uint32_t>(h) != record_magic) return false;
  len = get<uint32_t>(h + 8);
  if (static_cast<int64_t>(len) > size - pos - static_cast<int64_t>(record_header_size)) return false;
  return get<uint32_t>(h + 4) == crc(h + 8, record_header_size - 8 + len);
}

bool known_kind(uint32_t k) { return k >= 1 && k <= 3; }

}  // namespace

std::string encode_file_header(file_kind kind, uint64_t seq, uint32_t version) {
  std::string h(file_header_size, '\0');
  std::memcpy(h.data(), file_magic, sizeof file_magic);
  put<uint32_t>(h.data() + 8, version);
  put<uint32_t>(h.data() + 12, static_cast<uint32_t>(kind));
  put<uint64_t>(h.data() + 16, seq);
  put<uint32_t>(h.data() + 24, crc(h.data(), 24));
  return h;
}

std::optional<std::string> parse_file_header(std::string_view data, file_header& out) {
  if (data.size() < file_header_size)
    return "the file is shorter than its header (" + std::to_string(data.size()) + " of " +
           std::to_string(file_header_size) + " bytes)";
  if (std::memcmp(data.data(), file_magic, sizeof file_magic) != 0) return "not a klynaa journal file";
  if (get<uint32_t>(data.data() + 24) != crc(data.data(), 24)) return "its header's checksum does not match";
  out.version = get<uint32_t>(data.data() + 8);
  const uint32_t kind = get<uint32_t>(data.data() + 12);
  out.seq = get<uint64_t>(data.data() + 16);
  if (out.version > format_version)
    return "schema version " + std::to_string(out.version) + ", newer than this klynaa understands (" +
           std::to_string(format_version) + "); upgrade klynaa";
  if (out.version == 0) return "schema version 0 is not a valid journal version";
  if (kind != 1 && kind != 2) return "unknown file kind " + std::to_string(kind);
  out.kind = static_cast<file_kind>(kind);
  return std::nullopt;
}

void frame_record(std::string& buf, record_kind kind, uint64_t seq) {
  const size_t len = buf.size() - record_header_size;
  char* h = buf.data();
  put<uint32_t>(h, record_magic);
  put<uint32_t>(h + 8, static_cast<uint32_t>(len));
  put<uint32_t>(h + 12, static_cast<uint32_t>(kind));
  put<uint64_t>(h + 16, seq);
  put<uint32_t>(h + 4, crc(h + 8, record_header_size - 8 + len));
  buf.resize(static_cast<size_t>(aligned(static_cast<int64_t>(buf.size()))), '\0');
}

scan_result scan_records(std::string_view f, uint64_t first_seq) {
  scan_result r;
  const auto size = static_cast<int64_t>(f.size());
  int64_t pos = static_cast<int64_t>(file_header_size);
  uint64_t want = first_seq;
  r.good_end = pos;
  while (pos < size) {
    uint32_t len = 0;
    if (!valid_at(f, pos, len)) {
      r.bad = true;
      if (size - pos < static_cast<int64_t>(record_header_size))
        r.why = "an incomplete record header";
      else if (get<uint32_t>(f.data() + pos) != record_magic)
        r.why = "no record header (zeros or other bytes)";
      else if (static_cast<int64_t>(get<uint32_t>(f.data() + pos + 8)) >
               size - pos - static_cast<int64_t>(record_header_size))
        r.why = "an incomplete record";
      else
        r.why = "a record whose checksum does not match";
      break;
    }
    const char* h = f.data() + pos;
    const uint32_t kind = get<uint32_t>(h + 12);
    const uint64_t seq = get<uint64_t>(h + 16);
    if (!known_kind(kind) || seq != want) {
      r.bad = true;
      r.why = !known_kind(kind) ? "a record of unknown kind " + std::to_string(kind) + " (a newer klynaa?)"
                                : "record " + std::to_string(seq) + " where " + std::to_string(want) +
                                      " was expected";
      r.valid_after = true;  // whole and checksummed: not a torn write
      r.valid_after_offset = pos;
      return r;
    }
    record_view v;
    v.seq = seq;
    v.kind = static_cast<record_kind>(kind);
    v.payload = f.substr(static_cast<size_t>(pos) + record_header_size, len);
    v.offset = pos;
    r.records.push_back(v);
    ++want;
    pos = aligned(pos + static_cast<int64_t>(record_header_size) + len);
    r.good_end = pos < size ? pos : size;
  }
  if (!r.bad) return r;
  // A torn write leaves garbage or zeros up to the file's end; a whole, valid
  // record beyond the bad spot means the damage is in the middle.
  for (int64_t at = aligned(pos + 1); at < size; at += 8) {
    uint32_t len = 0;
    if (valid_at(f, at, len)) {
      r.valid_after = true;
      r.valid_after_offset = at;
      break;
    }
  }
  return r;
}

}  // namespace klynaa::broker::journal

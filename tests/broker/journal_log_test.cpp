// Tests of the journal's files (broker/journal_log.hpp; docs/design.md, "The
// journal store", recovery rules): records read back in order across segments
// and checkpoints, and every kind of damage — short writes, a crash between the
// write and its sync, torn tails, zeros, bit flips in the middle or in a
// checkpoint, missing segments, a newer version — either cut at the torn tail
// and reported, or refused with the file and the offset.
#include "broker/journal_log.hpp"

#include <catch2/catch.hpp>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "journal_fault_fs.hpp"
#include "tests/support/temp_dir.hpp"

using namespace klynaa::broker;
using klynaa::test::fault_fs;
using klynaa::test::temp_dir;

namespace {

struct opened {
  std::unique_ptr<journal_log> log;
  std::vector<std::string> records;  ///< payloads after the checkpoint, in order
  std::vector<std::string> chunks;   ///< the checkpoint's
  std::string error;
};

opened open_log(const std::string& dir, std::shared_ptr<journal_fs> fs = nullptr, bool sync = true,
                bool read_only = false, int64_t segment_bytes = 64 << 20) {
  journal_log_options o;
  o.dir = dir;
  o.fs = std::move(fs);
  o.sync = sync;
  o.read_only = read_only;
  o.segment_bytes = segment_bytes;
  opened out;
  out.log = std::make_unique<journal_log>(o);
  auto chunk = [&](const journal::record_view& r) -> std::optional<std::string> {
    out.chunks.emplace_back(r.payload);
    return std::nullopt;
  };
  auto record = [&](const journal::record_view& r) -> std::optional<std::string> {
    out.records.emplace_back(r.payload);
    return std::nullopt;
  };
  if (!out.log->recover(chunk, record, out.error)) out.log.reset();
  return out;
}

void append(journal_log& log, const std::string& payload) {
  std::string buf;
  journal::start_record(buf);
  buf += payload;
  std::string err;
  INFO("append: " << err);
  REQUIRE(log.append(buf, err));
}

bool try_append(journal_log& log, const std::string& payload, std::string& err) {
  std::string buf;
  journal::start_record(buf);
  buf += payload;
  return log.append(buf, err);
}

std::string seg(const temp_dir& d, uint64_t first) { return d / ("journal/" + journal_segment_name(first)); }

int64_t file_size(const std::string& p) { return static_cast<int64_t>(std::filesystem::file_size(p)); }

void flip_bit(const std::string& path, int64_t offset) {
  std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
  f.seekg(offset);
  char c = 0;
  f.read(&c, 1);
  c ^= 0x10;
  f.seekp(offset);
  f.write(&c, 1);
}

void append_raw(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::app | std::ios::binary) << bytes;
}

/// A payload of `n` bytes that names its number.
std::string payload(int i, size_t n = 40) {
  std::string p = "record-" + std::to_string(i) + "-";
  p.resize(n, 'x');
  return p;
}

}  // namespace

TEST_CASE("journal: records appended are read back in order after reopening", "[journal]") {
  temp_dir d;
  {
    auto o = open_log(d / "journal");
    REQUIRE(o.log);
    CHECK(o.records.empty());
    for (int i = 1; i <= 5; ++i) append(*o.log, payload(i, static_cast<size_t>(i * 7)));
    CHECK(o.log->last_seq() == 5);
  }
  auto o = open_log(d / "journal");
  REQUIRE(o.log);
  REQUIRE(o.records.size() == 5);
  for (int i = 1; i <= 5; ++i) CHECK(o.records[static_cast<size_t>(i - 1)] == payload(i, static_cast<size_t>(i * 7)));
  CHECK(!o.log->cut());
  append(*o.log, payload(6));
  o = {};
  CHECK(open_log(d / "journal").records.size() == 6);
}

TEST_CASE("journal: a second writer on the same directory is refused", "[journal]") {
  temp_dir d;
  auto a = open_log(d / "journal");
  REQUIRE(a.log);
  auto b = open_log(d / "journal");
  CHECK(!b.log);
  CHECK(b.error.find("in use") != std::string::npos);
  CHECK(open_log(d / "journal", nullptr, true, /*read_only=*/true).log);  // readers take no lock
}

TEST_CASE("journal: a crash between the write and its sync drops the record and nothing else", "[journal][faults]") {
  temp_dir d;
  auto fs = std::make_shared<fault_fs>();
  {
    auto o = open_log(d / "journal", fs, /*sync=*/true);
    REQUIRE(o.log);
    append(*o.log, payload(1));
    append(*o.log, payload(2));
  }
  {
    auto o = open_log(d / "journal", fs, /*sync=*/false);  // synchronous = "normal": no fdatasync
    REQUIRE(o.log);
    append(*o.log, payload(3));
  }
  fs->crash();  // the third record was never synced
  auto o = open_log(d / "journal", fs);
  REQUIRE(o.log);
  CHECK(o.records == std::vector<std::string>{payload(1), payload(2)});
  CHECK(!o.log->cut());  // the file simply ends after record 2
  append(*o.log, payload(4));
  o = {};
  fs->crash();  // synced: survives
  CHECK(open_log(d / "journal", fs).records.size() == 3);
}

TEST_CASE("journal: a torn write at the end is cut, and the cut is reported with file, offset and bytes",
          "[journal][faults]") {
  temp_dir d;
  auto fs = std::make_shared<fault_fs>();
  int64_t good_end = 0;
  {
    auto o = open_log(d / "journal", fs);
    REQUIRE(o.log);
    append(*o.log, payload(1));
    append(*o.log, payload(2));
    good_end = file_size(seg(d, 1));
  }
  {
    auto o = open_log(d / "journal", fs, /*sync=*/false);
    REQUIRE(o.log);
    append(*o.log, payload(3, 200));
  }
  fs->crash(/*keep=*/50);  // part of record 3 reached the disk before the crash
  REQUIRE(file_size(seg(d, 1)) == good_end + 50);
  auto o = open_log(d / "journal", fs);
  REQUIRE(o.log);
  CHECK(o.records == std::vector<std::string>{payload(1), payload(2)});
  REQUIRE(o.log->cut());
  CHECK(o.log->cut()->file == seg(d, 1));
  CHECK(o.log->cut()->offset == good_end);
  CHECK(o.log->cut()->bytes == 50);
  CHECK(o.log->cut()->why == "an incomplete record");
  CHECK(file_size(seg(d, 1)) == good_end);  // cut on disk
  append(*o.log, payload(4));
  o = {};
  auto again = open_log(d / "journal", fs);
  CHECK(again.records == std::vector<std::string>{payload(1), payload(2), payload(4)});
  CHECK(!again.log->cut());
}

TEST_CASE("journal: a short write fails the append and leaves the journal as it was", "[journal][faults]") {
  temp_dir d;
  auto fs = std::make_shared<fault_fs>();
  auto o = open_log(d / "journal", fs);
  REQUIRE(o.log);
  append(*o.log, payload(1));
  const int64_t size = file_size(seg(d, 1));
  fs->short_write_next(30);
  std::string err;
  CHECK(!try_append(*o.log, payload(2, 100), err));
  CHECK(err.find("No space left on device") != std::string::npos);
  CHECK(file_size(seg(d, 1)) == size);  // the partial record was cut back
  append(*o.log, payload(3));
  CHECK(o.log->last_seq() == 2);
  o = {};
  fs->crash();
  auto again = open_log(d / "journal", fs);
  CHECK(again.records == std::vector<std::string>{payload(1), payload(3)});
  CHECK(!again.log->cut());
}

TEST_CASE("journal: a failed sync fails the append, and the record is not read back", "[journal][faults]") {
  temp_dir d;
  auto fs = std::make_shared<fault_fs>();
  auto o = open_log(d / "journal", fs);
  REQUIRE(o.log);
  append(*o.log, payload(1));
  fs->fail_next_sync();
  std::string err;
  CHECK(!try_append(*o.log, payload(2), err));
  CHECK(err.find("Input/output error") != std::string::npos);
  append(*o.log, payload(3));
  o = {};
  fs->crash();
  CHECK(open_log(d / "journal", fs).records == std::vector<std::string>{payload(1), payload(3)});
}

TEST_CASE("journal: zeros after the last record (preallocated space) are cut", "[journal][faults]") {
  temp_dir d;
  {
    auto o = open_log(d / "journal");
    append(*o.log, payload(1));
  }
  const int64_t end = file_size(seg(d, 1));
  append_raw(seg(d, 1), std::string(4096, '\0'));
  auto o = open_log(d / "journal");
  REQUIRE(o.log);
  CHECK(o.records.size() == 1);
  REQUIRE(o.log->cut());
  CHECK(o.log->cut()->offset == end);
  CHECK(o.log->cut()->bytes == 4096);
  CHECK(o.log->cut()->why == "no record header (zeros or other bytes)");
}

TEST_CASE("journal: a bit flip in the last record is a torn tail; in an earlier one it is refused",
          "[journal][faults]") {
  temp_dir d;
  std::vector<int64_t> offsets;
  {
    auto o = open_log(d / "journal");
    for (int i = 1; i <= 3; ++i) {
      offsets.push_back(file_size(seg(d, 1)));
      append(*o.log, payload(i));
    }
  }
  SECTION("the last record") {
    flip_bit(seg(d, 1), offsets[2] + 30);
    auto o = open_log(d / "journal");
    REQUIRE(o.log);
    CHECK(o.records.size() == 2);
    REQUIRE(o.log->cut());
    CHECK(o.log->cut()->offset == offsets[2]);
    CHECK(o.log->cut()->why == "a record whose checksum does not match");
  }
  SECTION("a record followed by valid ones") {
    flip_bit(seg(d, 1), offsets[1] + 30);
    const auto before = klynaa::test::read_file(seg(d, 1));
    for (bool read_only : {false, true}) {
      auto o = open_log(d / "journal", nullptr, true, read_only);
      CHECK(!o.log);
      INFO(o.error);
      CHECK(o.error.find(seg(d, 1) + " at offset " + std::to_string(offsets[1])) != std::string::npos);
      CHECK(o.error.find("followed by a valid record at offset " + std::to_string(offsets[2])) != std::string::npos);
    }
    CHECK(klynaa::test::read_file(seg(d, 1)) == before);  // refused: nothing cut
  }
  SECTION("a record's length field") {
    flip_bit(seg(d, 1), offsets[0] + 8 + 2);  // the length now runs past the file's end
    auto o = open_log(d / "journal");
    CHECK(!o.log);
    CHECK(o.error.find("at offset " + std::to_string(offsets[0])) != std::string::npos);
  }
}

TEST_CASE("journal: segments roll at their size and are read back in order", "[journal]") {
  temp_dir d;
  {
    auto o = open_log(d / "journal", nullptr, true, false, /*segment_bytes=*/300);
    for (int i = 1; i <= 20; ++i) append(*o.log, payload(i));
  }
  std::vector<std::string> names;
  for (auto& e : std::filesystem::directory_iterator(d / "journal")) names.push_back(e.path().filename());
  CHECK(std::count_if(names.begin(), names.end(), [](auto& n) { return n.rfind("segment-", 0) == 0; }) > 3);
  auto o = open_log(d / "journal", nullptr, true, false, 300);
  REQUIRE(o.records.size() == 20);
  for (int i = 1; i <= 20; ++i) CHECK(o.records[static_cast<size_t>(i - 1)] == payload(i));

  SECTION("a bad record in a segment before the last is refused, even at its end") {
    o = {};
    auto first = seg(d, 1);
    flip_bit(first, file_size(first) - 10);
    auto r = open_log(d / "journal", nullptr, true, false, 300);
    CHECK(!r.log);
    CHECK(r.error.find(first + " at offset") != std::string::npos);
  }
  SECTION("a missing segment is refused") {
    o = {};
    std::vector<std::string> segs;
    for (auto& n : names)
      if (n.rfind("segment-", 0) == 0) segs.push_back(n);
    std::sort(segs.begin(), segs.end());
    std::filesystem::remove(d / ("journal/" + segs[1]));
    auto r = open_log(d / "journal", nullptr, true, false, 300);
    CHECK(!r.log);
    CHECK(r.error.find("starts at record") != std::string::npos);
  }
}

TEST_CASE("journal: a checkpoint replaces the segments before it and is read back first", "[journal]") {
  temp_dir d;
  auto fs = std::make_shared<fault_fs>();
  {
    auto o = open_log(d / "journal", fs, true, false, 300);
    for (int i = 1; i <= 10; ++i) append(*o.log, payload(i));
    int n = 0;
    std::string err;
    REQUIRE(o.log->checkpoint([&](std::string& buf) {
      if (n == 2) return false;
      buf += "chunk-" + std::to_string(++n);
      return true;
    }, err));
    CHECK(o.log->bytes_since_checkpoint() == journal::file_header_size);
    CHECK(o.log->checkpoint_bytes() > 0);
    append(*o.log, payload(11));
  }
  std::vector<std::string> names;
  for (auto& e : std::filesystem::directory_iterator(d / "journal")) names.push_back(e.path().filename());
  std::sort(names.begin(), names.end());
  CHECK(names == std::vector<std::string>{"LOCK", journal_checkpoint_name(10), journal_segment_name(11)});
  fs->crash();  // all of it was synced
  auto o = open_log(d / "journal", fs, true, false, 300);
  REQUIRE(o.log);
  CHECK(o.chunks == std::vector<std::string>{"chunk-1", "chunk-2"});
  CHECK(o.records == std::vector<std::string>{payload(11)});
  CHECK(o.log->last_seq() == 11);

  SECTION("a bad checkpoint is refused, naming the file and the offset") {
    o = {};
    const auto ck = d / ("journal/" + journal_checkpoint_name(10));
    flip_bit(ck, file_size(ck) - 20);
    auto r = open_log(d / "journal", fs);
    CHECK(!r.log);
    CHECK(r.error.find(ck + " at offset ") != std::string::npos);
    CHECK(r.error.find("checkpoint must be whole") != std::string::npos);
  }
  SECTION("a truncated checkpoint is refused") {
    o = {};
    const auto ck = d / ("journal/" + journal_checkpoint_name(10));
    std::filesystem::resize_file(ck, file_size(ck) - 24);
    auto r = open_log(d / "journal", fs);
    CHECK(!r.log);
    CHECK(r.error.find(ck) != std::string::npos);
  }
}

TEST_CASE("journal: a crash before the checkpoint's rename is synced keeps the old segments", "[journal][faults]") {
  temp_dir d;
  // The directory sync after the rename fails: the rename is not durable.
  struct dir_sync_fails : fault_fs {
    int allow = -1;  ///< directory syncs that still succeed; -1: all
    bool sync_dir(const std::string& dir, std::string& err) override {
      if (allow == 0) {
        err = "injected";
        return false;
      }
      if (allow > 0) --allow;
      return fault_fs::sync_dir(dir, err);
    }
  };
  auto fs = std::make_shared<dir_sync_fails>();
  {
    auto o = open_log(d / "journal", fs);
    for (int i = 1; i <= 4; ++i) append(*o.log, payload(i));
    fs->allow = 1;  // the roll to a new segment syncs the directory; the rename's sync fails
    std::string err;
    CHECK(!o.log->checkpoint([](std::string&) { return false; }, err));
    CHECK(err == "injected");
    fs->allow = -1;
  }
  fs->crash();
  auto o = open_log(d / "journal", fs);
  REQUIRE(o.log);
  CHECK(o.records.size() == 4);
  CHECK(o.chunks.empty());
}

TEST_CASE("journal: a newer format version is refused with both versions named", "[journal]") {
  temp_dir d;
  { auto o = open_log(d / "journal"); append(*o.log, payload(1)); }
  auto header = journal::encode_file_header(journal::file_kind::segment, 1, 7);
  std::fstream f(seg(d, 1), std::ios::in | std::ios::out | std::ios::binary);
  f.write(header.data(), static_cast<std::streamsize>(header.size()));
  f.close();
  auto o = open_log(d / "journal");
  CHECK(!o.log);
  CHECK(o.error.find("schema version 7, newer than this klynaa understands (1)") != std::string::npos);
}

TEST_CASE("journal: a read-only open reads past a torn tail without cutting it", "[journal]") {
  temp_dir d;
  {
    auto o = open_log(d / "journal");
    append(*o.log, payload(1));
  }
  append_raw(seg(d, 1), "torn");
  const auto size = file_size(seg(d, 1));
  auto o = open_log(d / "journal", nullptr, true, /*read_only=*/true);
  REQUIRE(o.log);
  CHECK(o.records.size() == 1);
  REQUIRE(o.log->cut());
  CHECK(file_size(seg(d, 1)) == size);
  std::string err;
  CHECK(!try_append(*o.log, payload(2), err));
  CHECK(err.find("read-only") != std::string::npos);
  CHECK(open_log(d / "nothing-here", nullptr, true, true).log);  // no journal yet: empty
}

TEST_CASE("journal: a segment whose creation was torn is removed", "[journal][faults]") {
  temp_dir d;
  {
    auto o = open_log(d / "journal");
    for (int i = 1; i <= 3; ++i) append(*o.log, payload(i));
  }
  // The next segment was created, then the crash came before its header was written.
  std::ofstream(seg(d, 4), std::ios::binary) << std::string(10, '\0');
  auto o = open_log(d / "journal");
  REQUIRE(o.log);
  CHECK(o.records.size() == 3);
  REQUIRE(o.log->cut());
  CHECK(o.log->cut()->file == seg(d, 4));
  CHECK(o.log->cut()->bytes == 10);
  CHECK(!std::filesystem::exists(seg(d, 4)));
  append(*o.log, payload(4));
  o = {};
  CHECK(open_log(d / "journal").records.size() == 4);
}

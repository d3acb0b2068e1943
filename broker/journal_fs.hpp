// The journal store's file I/O (docs/design.md, "The journal store"): a small
// interface, so that tests can put a fault-injecting implementation under the
// journal (short writes, a crash that drops what was not synced, failed syncs:
// tests/broker/journal_fault_fs.hpp) and the real one is a thin layer over POSIX.
//
// Every call returns false (or nullptr) on failure and fills `err` with a
// sentence naming the file and the system's reason. Nothing throws.
//
// Thread-safety: a journal_file is used by one thread at a time; a journal_fs
// may be shared (the POSIX one has no state).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace klynaa::broker {

/// A file open for appending: the journal's segments and its checkpoint files.
class journal_file {
 public:
  virtual ~journal_file() = default;
  /// Appends all of `p[0..n)` at the end of the file (looping over short writes).
  /// On failure part of it may have been written: size() says how much.
  virtual bool append(const char* p, size_t n, std::string& err) = 0;
  /// Makes what was appended durable (fdatasync): the data and the file's size.
  virtual bool sync(std::string& err) = 0;
  /// Cuts the file to `size` bytes (a record that failed half-way).
  virtual bool truncate(int64_t size, std::string& err) = 0;
  /// The bytes in the file, as this object appended them.
  virtual int64_t size() const = 0;
  virtual const std::string& path() const = 0;
};

class journal_fs {
 public:
  virtual ~journal_fs() = default;
  /// Creates a new, empty file (refusing one that exists).
  virtual std::unique_ptr<journal_file> create(const std::string& path, std::string& err) = 0;
  /// Opens an existing file to append at its end.
  virtual std::unique_ptr<journal_file> open_append(const std::string& path, std::string& err) = 0;
  /// Reads the whole file into `out`.
  virtual bool read(const std::string& path, std::string& out, std::string& err) = 0;
  /// The names (not paths) of the files in `dir`.
  virtual bool list(const std::string& dir, std::vector<std::string>& names, std::string& err) = 0;
  virtual bool rename(const std::string& from, const std::string& to, std::string& err) = 0;
  virtual bool remove(const std::string& path, std::string& err) = 0;
  /// Makes the directory's entries durable (files created, renamed, removed in it).
  virtual bool sync_dir(const std::string& dir, std::string& err) = 0;
  /// Creates `dir` (and its parents) when missing.
  virtual bool make_dir(const std::string& dir, std::string& err) = 0;
  virtual bool exists(const std::string& path) = 0;
  /// Takes an exclusive advisory lock on `path` (created when missing) for as
  /// long as the returned object lives: one writing journal per directory.
  virtual std::shared_ptr<void> lock(const std::string& path, std::string& err) = 0;
};

/// The real file system (POSIX calls; fdatasync for sync).
std::shared_ptr<journal_fs> posix_journal_fs();

}  // namespace klynaa::broker

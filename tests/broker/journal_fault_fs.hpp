// A fault-injecting journal_fs for the journal's tests (broker/journal_fs.hpp):
// real files underneath (the POSIX layer), with failures on request and a
// simulated crash.
//
// - short_write_next(k): the next append writes its first k bytes, then fails
//   with "No space left on device" (as a full disk does half-way).
// - fail_writes_containing(m): an append whose bytes contain `m` fails before
//   writing anything (a request the disk refuses, for the tests that refuse
//   "boom" requests on every backend).
// - fail_next_sync(): the next file sync fails (an I/O error).
// - crash(keep): what a power loss does: every file loses what was appended
//   since its last sync (but the first `keep` bytes of that, as if the kernel had
//   written part of it back on its own: a torn write); files created or renamed
//   since their directory's last sync are gone (renames undone).
#pragma once

#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "broker/journal_fs.hpp"

namespace klynaa::test {

class fault_fs : public broker::journal_fs {
 public:
  explicit fault_fs(std::shared_ptr<broker::journal_fs> base = broker::posix_journal_fs())
      : base_(std::move(base)), st_(std::make_shared<state>()) {}

  void short_write_next(size_t keep) {
    std::lock_guard<std::mutex> lk(st_->mu);
    st_->short_keep = static_cast<int64_t>(keep);
  }
  /// `message`: the error's text (default: a full disk's).
  void fail_writes_containing(std::string marker, std::string message = "") {
    std::lock_guard<std::mutex> lk(st_->mu);
    st_->marker = std::move(marker);
    st_->marker_message = std::move(message);
  }
  void fail_next_sync() {
    std::lock_guard<std::mutex> lk(st_->mu);
    st_->fail_sync = true;
  }
  /// File syncs that succeeded so far.
  int64_t syncs() const {
    std::lock_guard<std::mutex> lk(st_->mu);
    return st_->syncs;
  }

  void crash(int64_t keep = 0) {
    std::lock_guard<std::mutex> lk(st_->mu);
    std::string err;
    for (auto it = st_->renames.rbegin(); it != st_->renames.rend(); ++it) base_->rename(it->second, it->first, err);
    st_->renames.clear();
    for (auto& [path, t] : st_->files) {
      if (!t.durable_entry) {
        base_->remove(path, err);
        continue;
      }
      if (!base_->exists(path)) continue;
      auto f = base_->open_append(path, err);
      if (f && f->size() > t.durable_size + keep) f->truncate(t.durable_size + keep, err);
    }
    st_->files.clear();
  }

  std::unique_ptr<broker::journal_file> create(const std::string& path, std::string& err) override {
    auto f = base_->create(path, err);
    if (!f) return nullptr;
    std::lock_guard<std::mutex> lk(st_->mu);
    st_->files[path] = tracked{0, false};
    return std::make_unique<file>(std::move(f), st_);
  }
  std::unique_ptr<broker::journal_file> open_append(const std::string& path, std::string& err) override {
    auto f = base_->open_append(path, err);
    if (!f) return nullptr;
    std::lock_guard<std::mutex> lk(st_->mu);
    if (!st_->files.count(path)) st_->files[path] = tracked{f->size(), true};
    return std::make_unique<file>(std::move(f), st_);
  }
  bool read(const std::string& path, std::string& out, std::string& err) override { return base_->read(path, out, err); }
  bool list(const std::string& dir, std::vector<std::string>& names, std::string& err) override {
    return base_->list(dir, names, err);
  }
  bool rename(const std::string& from, const std::string& to, std::string& err) override {
    if (!base_->rename(from, to, err)) return false;
    std::lock_guard<std::mutex> lk(st_->mu);
    auto it = st_->files.find(from);
    tracked t = it != st_->files.end() ? it->second : tracked{0, true};
    if (it != st_->files.end()) st_->files.erase(it);
    st_->files[to] = t;
    st_->renames.emplace_back(from, to);
    return true;
  }
  bool remove(const std::string& path, std::string& err) override {
    std::lock_guard<std::mutex> lk(st_->mu);
    st_->files.erase(path);
    return base_->remove(path, err);
  }
  bool sync_dir(const std::string& dir, std::string& err) override {
    if (!base_->sync_dir(dir, err)) return false;
    std::lock_guard<std::mutex> lk(st_->mu);
    for (auto& [path, t] : st_->files)
      if (path.compare(0, dir.size() + 1, dir + "/") == 0) t.durable_entry = true;
    st_->renames.clear();
    return true;
  }
  bool make_dir(const std::string& dir, std::string& err) override { return base_->make_dir(dir, err); }
  bool exists(const std::string& path) override { return base_->exists(path); }
  std::shared_ptr<void> lock(const std::string& path, std::string& err) override { return base_->lock(path, err); }

 private:
  struct tracked {
    int64_t durable_size = 0;
    bool durable_entry = false;
  };
  struct state {
    mutable std::mutex mu;
    std::map<std::string, tracked> files;
    std::vector<std::pair<std::string, std::string>> renames;
    int64_t short_keep = -1;
    std::string marker;
    std::string marker_message;
    bool fail_sync = false;
    int64_t syncs = 0;
  };

  class file : public broker::journal_file {
   public:
    file(std::unique_ptr<broker::journal_file> f, std::shared_ptr<state> st) : f_(std::move(f)), st_(std::move(st)) {}
    bool append(const char* p, size_t n, std::string& err) override {
      int64_t keep = -1;
      {
        std::lock_guard<std::mutex> lk(st_->mu);
        if (!st_->marker.empty() && std::string_view(p, n).find(st_->marker) != std::string_view::npos) {
          err = "cannot write " + f_->path() + ": " +
                (st_->marker_message.empty() ? "No space left on device (injected)" : st_->marker_message);
          return false;
        }
        std::swap(keep, st_->short_keep);
      }
      if (keep < 0) return f_->append(p, n, err);
      if (!f_->append(p, std::min(n, static_cast<size_t>(keep)), err)) return false;
      err = "cannot write " + f_->path() + ": No space left on device (injected short write)";
      return false;
    }
    bool sync(std::string& err) override {
      {
        std::lock_guard<std::mutex> lk(st_->mu);
        if (st_->fail_sync) {
          st_->fail_sync = false;
          err = "cannot sync (fdatasync) " + f_->path() + ": Input/output error (injected)";
          return false;
        }
      }
      if (!f_->sync(err)) return false;
      std::lock_guard<std::mutex> lk(st_->mu);
      ++st_->syncs;
      if (auto it = st_->files.find(f_->path()); it != st_->files.end()) it->second.durable_size = f_->size();
      return true;
    }
    bool truncate(int64_t size, std::string& err) override { return f_->truncate(size, err); }
    int64_t size() const override { return f_->size(); }
    const std::string& path() const override { return f_->path(); }

   private:
    std::unique_ptr<broker::journal_file> f_;
    std::shared_ptr<state> st_;
  };

  std::shared_ptr<broker::journal_fs> base_;
  std::shared_ptr<state> st_;
};

}  // namespace klynaa::test

// The POSIX implementation of journal_fs.hpp.
#include "broker/journal_fs.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

namespace klynaa::broker {

namespace {

std::string failed(const std::string& what, const std::string& path) {
  return what + " " + path + ": " + std::strerror(errno);
}

class posix_file final : public journal_file {
 public:
  posix_file(int fd, std::string path, int64_t size) : fd_(fd), path_(std::move(path)), size_(size) {}
  ~posix_file() override { ::close(fd_); }

  bool append(const char* p, size_t n, std::string& err) override {
    while (n > 0) {
      ssize_t w = ::pwrite(fd_, p, n, size_);
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) {
        if (w == 0) errno = ENOSPC;
        err = failed("cannot write", path_);
        return false;
      }
      p += w;
      n -= static_cast<size_t>(w);
      size_ += w;
    }
    return true;
  }
  bool sync(std::string& err) override {
    if (::fdatasync(fd_) == 0) return true;
    err = failed("cannot sync (fdatasync)", path_);
    return false;
  }
  bool truncate(int64_t size, std::string& err) override {
    if (::ftruncate(fd_, size) != 0) {
      err = failed("cannot truncate", path_);
      return false;
    }
    size_ = size;
    return true;
  }
  int64_t size() const override { return size_; }
  const std::string& path() const override { return path_; }

 private:
  int fd_;
  std::string path_;
  int64_t size_;
};

struct held_lock {
  int fd = -1;
  ~held_lock() {
    if (fd >= 0) ::close(fd);  // closing the descriptor releases the lock
  }
};

class posix_fs final : public journal_fs {
 public:
  std::unique_ptr<journal_file> create(const std::string& path, std::string& err) override {
    int fd = ::open(path.c_str(), O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0644);
    if (fd < 0) {
      err = failed("cannot create", path);
      return nullptr;
    }
    return std::make_unique<posix_file>(fd, path, 0);
  }
  std::unique_ptr<journal_file> open_append(const std::string& path, std::string& err) override {
    int fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
    struct stat st {};
    if (fd < 0 || ::fstat(fd, &st) != 0) {
      err = failed("cannot open", path);
      if (fd >= 0) ::close(fd);
      return nullptr;
    }
    return std::make_unique<posix_file>(fd, path, static_cast<int64_t>(st.st_size));
  }
  bool read(const std::string& path, std::string& out, std::string& err) override {
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    struct stat st {};
    if (fd < 0 || ::fstat(fd, &st) != 0) {
      err = failed("cannot read", path);
      if (fd >= 0) ::close(fd);
      return false;
    }
    out.resize(static_cast<size_t>(st.st_size));
    size_t got = 0;
    while (got < out.size()) {
      ssize_t r = ::pread(fd, out.data() + got, out.size() - got, static_cast<off_t>(got));
      if (r < 0 && errno == EINTR) continue;
      if (r < 0) {
        err = failed("cannot read", path);
        ::close(fd);
        return false;
      }
      if (r == 0) break;  // shrank meanwhile (a reader beside a writer): what is there
      got += static_cast<size_t>(r);
    }
    out.resize(got);
    ::close(fd);
    return true;
  }
  bool list(const std::string& dir, std::vector<std::string>& names, std::string& err) override {
    DIR* d = ::opendir(dir.c_str());
    if (!d) {
      err = failed("cannot list", dir);
      return false;
    }
    while (auto* e = ::readdir(d)) {
      std::string n = e->d_name;
      if (n != "." && n != "..") names.push_back(std::move(n));
    }
    ::closedir(d);
    return true;
  }
  bool rename(const std::string& from, const std::string& to, std::string& err) override {
    if (::rename(from.c_str(), to.c_str()) == 0) return true;
    err = failed("cannot rename " + from + " to", to);
    return false;
  }
  bool remove(const std::string& path, std::string& err) override {
    if (::unlink(path.c_str()) == 0 || errno == ENOENT) return true;
    err = failed("cannot remove", path);
    return false;
  }
  bool sync_dir(const std::string& dir, std::string& err) override {
    int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0 || ::fsync(fd) != 0) {
      err = failed("cannot sync the directory", dir);
      if (fd >= 0) ::close(fd);
      return false;
    }
    ::close(fd);
    return true;
  }
  bool make_dir(const std::string& dir, std::string& err) override {
    std::error_code ec;
    std::filesystem::create_directories(dir, ec);
    if (ec) {
      err = "cannot create the directory " + dir + ": " + ec.message();
      return false;
    }
    return true;
  }
  bool exists(const std::string& path) override { return ::access(path.c_str(), F_OK) == 0; }
  std::shared_ptr<void> lock(const std::string& path, std::string& err) override {
    int fd = ::open(path.c_str(), O_CREAT | O_RDWR | O_CLOEXEC, 0644);
    if (fd < 0) {
      err = failed("cannot open", path);
      return nullptr;
    }
    if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
      ::close(fd);
      err = "the journal " + path + " is in use by another store (another broker, or this one opened twice)";
      return nullptr;
    }
    auto held = std::make_shared<held_lock>();
    held->fd = fd;
    return held;
  }
};

}  // namespace

std::shared_ptr<journal_fs> posix_journal_fs() {
  static auto fs = std::make_shared<posix_fs>();
  return fs;
}

}  // namespace klynaa::broker

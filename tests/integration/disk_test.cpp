// Disk faults (issue 7): the broker's data dir on a small tmpfs this test mounts
// (CI runs as root) and removes. A full disk makes the ingress answer
// `overloaded` with a clear error, nothing is acknowledged that is not stored,
// and it accepts again when space returns.
#include <sys/mount.h>
#include <sys/statvfs.h>

#include <fstream>

#include "support.hpp"

using namespace klynaa::test;
using klynaa::protocol::reply_status;

namespace {

/// A tmpfs of `mb` megabytes mounted on a fresh directory; unmounted at the end.
class small_disk {
 public:
  explicit small_disk(int mb) {
    path = dir_.path + "/mnt";
    std::filesystem::create_directories(path);
    std::string opts = "size=" + std::to_string(mb) + "m";
    int rc = ::mount("tmpfs", path.c_str(), "tmpfs", 0, opts.c_str());
    INFO("mount tmpfs on " << path << ": " << std::strerror(errno) << " (this test needs root)");
    REQUIRE(rc == 0);
  }
  ~small_disk() { ::umount2(path.c_str(), MNT_DETACH); }

  int64_t free_bytes() const {
    struct statvfs fs {};
    ::statvfs(path.c_str(), &fs);
    return static_cast<int64_t>(fs.f_bavail) * static_cast<int64_t>(fs.f_frsize);
  }
  /// Fills the disk up to `leave` free bytes with a file.
  void fill(int64_t leave) {
    std::ofstream f(path + "/filler", std::ios::binary);
    std::string chunk(1 << 16, 'x');
    while (free_bytes() > leave + static_cast<int64_t>(chunk.size()) && f.write(chunk.data(), chunk.size())) f.flush();
  }
  void empty() { std::filesystem::remove(path + "/filler"); }

  std::string path;

 private:
  temp_dir dir_;
};

/// Publishes `ids` one by one; returns the replies (nullopt: no answer).
std::vector<std::optional<klynaa::protocol::reply>> publish_all(const std::string& ingress, const std::vector<std::string>& ids) {
  zmq::context_t ctx;
  raw_client cl(ctx, ingress);
  std::vector<std::optional<klynaa::protocol::reply>> out;
  for (auto& id : ids) out.push_back(cl.call(publish_frame(id, "worker.location", location(7))));
  return out;
}

std::vector<std::string> ids(const std::string& prefix, int n) {
  std::vector<std::string> v;
  for (int i = 0; i < n; ++i) v.push_back(prefix + std::to_string(i));
  return v;
}

}  // namespace

TEST_CASE("a full disk: the ingress rejects naming the disk, keeps every acknowledged request, and recovers",
          "[faults][disk]") {
  small_disk disk(24);
  // No free-space threshold: the store itself hits ENOSPC (SQLITE_FULL).
  klynaa_server srv("broker", {{"KLYNAA_INGRESS_MIN_FREE_DISK_MB", "0"}}, {}, disk.path + "/data");
  disk.fill(64 * 1024);
  std::vector<std::string> accepted;
  std::string rejection;
  auto first = ids("full-", 3000);
  auto replies = publish_all(srv.ingress(), first);
  for (size_t i = 0; i < replies.size(); ++i) {
    REQUIRE(replies[i]);  // always an answer
    if (replies[i]->status == reply_status::accepted) accepted.push_back(first[i]);
    else if (rejection.empty()) {
      CHECK(replies[i]->status == reply_status::rejected);
      REQUIRE(replies[i]->error);
      CHECK(replies[i]->error->code == "overloaded");
      CHECK(replies[i]->retry_after_ms.value_or(0) > 0);
      rejection = replies[i]->error->message;
    }
  }
  INFO(rejection);
  CHECK(rejection.find("full") != std::string::npos);  // SQLite: "database or disk is full"
  CHECK(rejection.find("nothing was stored") != std::string::npos);
  CHECK(srv.log().find("store commit failed") != std::string::npos);
  CHECK(srv.proc().running());

  // Space returns: requests are accepted again (after the commit backoff).
  disk.empty();
  bool back = wait_for([&] {
    auto r = publish_all(srv.ingress(), {"after-" + std::to_string(std::rand())});
    return r[0] && r[0]->status == reply_status::accepted;
  }, 20000ms);
  CHECK(back);
  CHECK(srv.log().find("the store commits again") != std::string::npos);

  // Every acknowledged request survives a crash: sent again, each is a duplicate.
  srv.kill9_and_restart();
  auto again = publish_all(srv.ingress(), accepted);
  for (size_t i = 0; i < again.size(); ++i) {
    INFO(accepted[i]);
    REQUIRE(again[i]);
    CHECK(again[i]->status == reply_status::duplicate);
  }
}

TEST_CASE("free space under ingress.min_free_disk_mb: overloaded before the disk is full, accepted when it returns",
          "[faults][disk]") {
  small_disk disk(32);
  klynaa_server srv("broker", {{"KLYNAA_INGRESS_MIN_FREE_DISK_MB", "16"}}, {}, disk.path + "/data");
  CHECK(publish_all(srv.ingress(), {"before"})[0]->status == reply_status::accepted);
  disk.fill(8 << 20);
  std::optional<klynaa::protocol::reply> r;
  CHECK(wait_for([&] {
    r = publish_all(srv.ingress(), {"low-" + std::to_string(std::rand())})[0];
    return r && r->status == reply_status::rejected;
  }, 10000ms));
  REQUIRE(r);
  REQUIRE(r->error);
  CHECK(r->error->code == "overloaded");
  CHECK(r->error->message.find("ingress.min_free_disk_mb") != std::string::npos);
  CHECK(srv.log().find("disk nearly full") != std::string::npos);
  disk.empty();
  CHECK(wait_for([&] {
    auto x = publish_all(srv.ingress(), {"ok-" + std::to_string(std::rand())})[0];
    return x && x->status == reply_status::accepted;
  }, 10000ms));
  CHECK(srv.log().find("disk space is back") != std::string::npos);
}

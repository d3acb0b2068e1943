// klynaa-bench --start (bench_spawn.hpp).
#include "bench/bench_spawn.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <vector>

#include <nlohmann/json.hpp>

#include "bench/bench_common.hpp"

namespace klynaa::bench {

namespace {

spawned g_child;  // stopped by the signal handler too

void stop_child() {
  if (g_child.pid <= 0) return;
  ::kill(g_child.pid, SIGTERM);
  for (int i = 0; i < 300; ++i) {  // 15 s
    int st = 0;
    if (::waitpid(g_child.pid, &st, WNOHANG) == g_child.pid) {
      g_child.pid = -1;
      return;
    }
    ::usleep(50000);
  }
  ::kill(g_child.pid, SIGKILL);
  ::waitpid(g_child.pid, nullptr, 0);
  g_child.pid = -1;
}

void on_signal(int sig) {
  if (g_child.pid > 0) ::kill(g_child.pid, SIGKILL);
  ::_exit(128 + sig);
}

std::string self_dir() {
  std::error_code ec;
  auto p = std::filesystem::read_symlink("/proc/self/exe", ec);
  return ec ? std::string(".") : p.parent_path().string();
}

bool g_keep = false;

}  // namespace

const spawned& spawned_child() { return g_child; }

void set_keep_on_exit(bool keep) { g_keep = keep; }

std::string tail_of(const std::string& path, size_t n) {
  auto t = read_text(path);
  return t.size() > n ? t.substr(t.size() - n) : t;
}

void start_klynaa(options& o) {
  std::string bin = o.klynaa.empty() ? self_dir() + "/klynaa" : o.klynaa;
  if (::access(bin.c_str(), X_OK) != 0) fail(1, "cannot execute " + bin + " (--klynaa)");
  std::string tmpl = o.tmp_dir + "/klynaa-bench-XXXXXX";
  std::vector<char> t(tmpl.begin(), tmpl.end());
  t.push_back('\0');
  if (!::mkdtemp(t.data())) fail(1, "cannot create a temporary dir in " + o.tmp_dir);
  g_child.dir = t.data();
  g_child.data_dir = g_child.dir + "/data";
  g_child.log = g_child.dir + "/klynaa.log";
  std::vector<std::string> args = {bin, o.broker_only ? "broker" : "run", "--data-dir", g_child.data_dir,
                                   "--ingress", "tcp://127.0.0.1:*"};
  if (o.broker_only) {  // no node will connect: any free port
    args.push_back("--cluster");
    args.push_back("tcp://127.0.0.1:*");
  }
  if (!o.config.empty()) {
    args.push_back("--config");
    args.push_back(o.config);
  }
  ::signal(SIGINT, on_signal);
  ::signal(SIGTERM, on_signal);
  pid_t pid = ::fork();
  if (pid < 0) fail(1, "fork failed");
  if (pid == 0) {
    int fd = ::open(g_child.log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    ::dup2(fd, 1);
    ::dup2(fd, 2);
    int devnull = ::open("/dev/null", O_RDONLY);
    ::dup2(devnull, 0);
    ::setenv("KLYNAA_ADMIN_BIND", "127.0.0.1:0", 1);
    // geo/scheduler-only workloads never call Django; any URL satisfies the check.
    ::setenv("DJANGO_API_URL", "http://127.0.0.1:9", 0);
    if (!o.store.empty()) ::setenv("KLYNAA_STORE_BACKEND", o.store.c_str(), 1);  // --store
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    ::execv(argv[0], argv.data());
    ::_exit(127);
  }
  g_child.pid = pid;
  int64_t end = mono_ns() + int64_t{30} * 1000000000;
  while (mono_ns() < end) {
    int st = 0;
    if (::waitpid(pid, &st, WNOHANG) == pid) {
      g_child.pid = -1;
      fail(1, "klynaa run exited at start; its log:\n" + tail_of(g_child.log));
    }
    auto j = json::parse(read_text(g_child.data_dir + "/broker.json"), nullptr, false);
    if (j.is_object() && j.value("pid", 0) == pid) {
      o.ingress = j.value("ingress", "");
      o.admin = j.value("admin", "");
      o.pid = pid;
      o.data_dir = g_child.data_dir;
      return;
    }
    ::usleep(20000);
  }
  stop_child();
  fail(1, "klynaa run did not write broker.json within 30 s; its log:\n" + tail_of(g_child.log));
}

void cleanup_child(const options& o) {
  stop_child();
  if (!g_child.dir.empty() && !o.keep) {
    std::error_code ec;
    std::filesystem::remove_all(g_child.dir, ec);
  }
  g_child.dir.clear();
}

void cleanup_at_exit() {
  options o;
  o.keep = g_keep;
  cleanup_child(o);
}

}  // namespace klynaa::bench

// The small helpers every part of klynaa-bench uses (bench_common.hpp).
#include "bench/bench_common.hpp"

#include <sys/utsname.h>
#include <time.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <sstream>
#include <thread>

#include "bench/bench_spawn.hpp"

namespace klynaa::bench {

int64_t mono_ns() {
  timespec ts;
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t{ts.tv_sec} * 1000000000 + ts.tv_nsec;
}

int64_t wall_ms() {
  using namespace std::chrono;
  return duration_cast<milliseconds>(system_clock::now().time_since_epoch()).count();
}

double round3(double v) { return std::round(v * 1000.0) / 1000.0; }
double ns_to_ms(uint64_t ns) { return round3(static_cast<double>(ns) / 1e6); }

uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

void fail(int code, const std::string& msg) {
  std::cerr << "klynaa-bench: " << msg << "\n";
  cleanup_at_exit();
  std::exit(code);
}

std::string read_text(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

json loadavg() {
  double l[3] = {0, 0, 0};
  if (::getloadavg(l, 3) != 3) return nullptr;
  return json::array({round3(l[0]), round3(l[1]), round3(l[2])});
}

json machine() {
  json m;
  m["cores"] = std::thread::hardware_concurrency();
  std::ifstream cpu("/proc/cpuinfo");
  std::string line;
  while (std::getline(cpu, line))
    if (line.rfind("model name", 0) == 0) {
      auto c = line.find(':');
      if (c != std::string::npos) m["cpu"] = line.substr(c + 2);
      break;
    }
  utsname u{};
  if (::uname(&u) == 0) m["kernel"] = std::string(u.release);
  m["loadavg"] = loadavg();
  return m;
}

/// {VmRSS, VmHWM} of a process in MiB, from /proc/{pid}/status.
std::optional<std::pair<double, double>> rss_mb(int pid) {
  if (pid <= 0) return std::nullopt;
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  if (!in) return std::nullopt;
  std::string line;
  double rss = -1, hwm = -1;
  while (std::getline(in, line)) {
    long kb = 0;
    if (std::sscanf(line.c_str(), "VmRSS: %ld kB", &kb) == 1) rss = kb / 1024.0;
    if (std::sscanf(line.c_str(), "VmHWM: %ld kB", &kb) == 1) hwm = kb / 1024.0;
  }
  if (rss < 0) return std::nullopt;
  return std::make_pair(rss, hwm);
}

}  // namespace klynaa::bench

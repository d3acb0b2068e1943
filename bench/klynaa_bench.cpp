// klynaa-bench: the load generator of issue 8 (see docs/performance.md).
//
//   klynaa-bench [--start | --ingress E --admin A | --data-dir D] [--connections N]
//                [--window W] [--count C] [--rate R] [--type T] [--wait-function F] ...
//   klynaa-bench --ceilings [--data-dir D]
//
// Load mode drives the ingress (docs/ingress-protocol.md) with N DEALER connections, one thread
// each, every one keeping up to W requests in flight; flat out (--rate 0) or paced
// open-loop at R requests/s in total. Ack latency is measured from the request's
// *scheduled* send time when paced (so a slow broker cannot hide behind a client that
// waits for it: no coordinated omission), from the actual send time when flat out.
// Every K-th request (--e2e-every K) is sent as op=invoke of the waited function; its
// reply comes when the job has finished, which gives the end-to-end latency samples.
// Then it polls the admin endpoint's /stats until the waited function has no ready,
// running or retry_wait job and its `ok` count has grown by the expected number, and
// prints ONE JSON line. A run that cannot reach the broker, gets a rejection, or does
// not complete within --timeout prints the reason on stderr and exits 1 without a
// figure.
//
// Ceilings mode measures the machine: fsync latency, SQLite WAL synchronous=FULL
// commits (one row and 256 rows per commit) and ZeroMQ DEALER/ROUTER pipelined
// request+reply messages/s over 127.0.0.1, and prints ONE JSON line.

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <mutex>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <httplib.h>
#include <msgpack.hpp>
#include <nlohmann/json.hpp>
#include <sqlite3.h>
#include <zmq.hpp>

#include "bench/histogram.hpp"
#include "broker/store.hpp"
#include "protocol/message.hpp"

namespace {

using json = nlohmann::json;
using klynaa::bench::histogram;

// ---------------------------------------------------------------- small helpers

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

void cleanup_at_exit();  // stops a --start broker; defined below

[[noreturn]] void fail(int code, const std::string& msg) {
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

// ---------------------------------------------------------------- options

struct options {
  bool ceilings = false;
  bool start = false;
  bool broker_only = false;  ///< --start spawns `klynaa broker` (no node)
  bool keep = false;
  bool wait = true;
  std::string ingress, admin, data_dir, klynaa, config, tmp_dir;
  int pid = 0;
  int connections = 4;
  int window = 256;
  uint64_t count = 100000;
  double rate = 0;
  std::string type = "worker.location";
  std::string wait_function;
  uint64_t keys = 100000;
  uint64_t e2e_every = 100;
  uint64_t expect = 0;  // 0 = count
  double timeout_s = 300;
  int fsync_samples = 500;
  uint64_t zmq_messages = 1000000;
};

void usage(int code) {
  (code ? std::cerr : std::cout) << R"(usage:
  klynaa-bench [--start | --ingress E [--admin HOST:PORT] [--pid P] | --data-dir D] [load options]
  klynaa-bench --ceilings [--data-dir D]

where the broker is:
  --start              spawn `klynaa run` (next to this executable, or --klynaa PATH) on a
                       temporary data dir with ephemeral ports, and stop it afterwards
  --klynaa PATH        the klynaa executable for --start
  --broker-only        with --start: spawn `klynaa broker` (no node) instead of `klynaa run`:
                       the ingress alone, nothing runs the jobs; implies --no-wait
  --config F           passed to `klynaa run --config F` with --start
  --tmp-dir DIR        where --start makes its data dir (default $TMPDIR or /tmp)
  --keep               keep the --start data dir (its klynaa.log) afterwards
  --data-dir D         an already running broker's data dir: reads D/broker.json
  --ingress E          the ingress endpoint (tcp://HOST:PORT)
  --admin HOST:PORT    the admin endpoint (needed to wait for completion)
  --pid P              the broker's pid, for rss_mb (read from broker.json otherwise)

load options:
  --connections N      DEALER connections, one thread each (default 4)
  --window W           requests in flight per connection (default 256)
  --count C            requests in all (default 100000)
  --rate R             requests/s in total, paced open-loop; 0 = flat out (default 0)
  --type T             event type or function name to publish (default worker.location)
  --wait-function F    the function whose jobs to wait for (default: the one T creates)
  --keys K             distinct ordering keys (worker_id / pickup_id) (default 100000)
  --e2e-every K        every K-th request is an op=invoke of F: e2e latency samples
                       (default 100; 1 = every request; 0 = none)
  --expect J           jobs of F the run must complete (default: --count)
  --no-wait            measure ingress acks only; do not wait for the jobs
  --timeout S          bound on the whole run in seconds (default 300)
  --fsync-samples N    fsync samples (default 500; the load mode probes the data dir too)

ceilings options:
  --zmq-messages N     request+reply pairs for the ZeroMQ ceiling (default 1000000)
)";
  std::exit(code);
}

options parse(int argc, char** argv) {
  options o;
  auto need = [&](int& i) -> std::string {
    if (i + 1 >= argc) fail(2, std::string(argv[i]) + " needs a value");
    return argv[++i];
  };
  auto num = [&](int& i) -> double {
    std::string flag = argv[i], v = need(i);
    try {
      size_t pos = 0;
      double d = std::stod(v, &pos);
      if (pos != v.size() || !std::isfinite(d) || d < 0) throw std::invalid_argument(v);
      return d;
    } catch (...) {
      fail(2, flag + " takes a non-negative number, got '" + v + "'");
    }
  };
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--help" || a == "-h") usage(0);
    else if (a == "--ceilings") o.ceilings = true;
    else if (a == "--start") o.start = true;
    else if (a == "--broker-only") o.broker_only = true;
    else if (a == "--keep") o.keep = true;
    else if (a == "--no-wait") o.wait = false;
    else if (a == "--ingress") o.ingress = need(i);
    else if (a == "--admin") o.admin = need(i);
    else if (a == "--data-dir") o.data_dir = need(i);
    else if (a == "--klynaa") o.klynaa = need(i);
    else if (a == "--config") o.config = need(i);
    else if (a == "--tmp-dir") o.tmp_dir = need(i);
    else if (a == "--pid") o.pid = static_cast<int>(num(i));
    else if (a == "--connections") o.connections = static_cast<int>(num(i));
    else if (a == "--window") o.window = static_cast<int>(num(i));
    else if (a == "--count") o.count = static_cast<uint64_t>(num(i));
    else if (a == "--rate") o.rate = num(i);
    else if (a == "--type") o.type = need(i);
    else if (a == "--wait-function") o.wait_function = need(i);
    else if (a == "--keys") o.keys = static_cast<uint64_t>(num(i));
    else if (a == "--e2e-every") o.e2e_every = static_cast<uint64_t>(num(i));
    else if (a == "--expect") o.expect = static_cast<uint64_t>(num(i));
    else if (a == "--timeout") o.timeout_s = num(i);
    else if (a == "--fsync-samples") o.fsync_samples = static_cast<int>(num(i));
    else if (a == "--zmq-messages") o.zmq_messages = static_cast<uint64_t>(num(i));
    else {
      std::cerr << "klynaa-bench: unknown option " << a << "\n";
      usage(2);
    }
  }
  if (o.connections < 1 || o.connections > 256) fail(2, "--connections must be 1..256");
  if (o.window < 1) fail(2, "--window must be at least 1");
  if (o.count < 1) fail(2, "--count must be at least 1");
  if (o.keys < 1) fail(2, "--keys must be at least 1");
  if (o.timeout_s <= 0) fail(2, "--timeout must be positive");
  if (o.fsync_samples < 0) fail(2, "--fsync-samples must be >= 0");
  if (o.tmp_dir.empty()) {
    const char* t = std::getenv("TMPDIR");
    o.tmp_dir = t && *t ? t : "/tmp";
  }
  return o;
}

// ---------------------------------------------------------------- payloads

/// The function whose jobs an event type creates (docs/events-and-functions.md,
/// "Events"); a function name maps
/// to itself. Empty when unknown.
std::string default_function(const std::string& type) {
  static const std::map<std::string, std::string> m = {
      {"worker.location", "updateWorkerLocation"},
      {"pickup.created", "notifyNearbyWorkers"},
      {"pickup.accepted", "sendPickupNotification"},
      {"pickup.delivered", "sendPickupNotification"},
      {"pickup.confirmed", "processEscrowRelease"},
      {"pickup.disputed", "sendPickupNotification"},
      {"updateWorkerLocation", "updateWorkerLocation"},
      {"notifyNearbyWorkers", "notifyNearbyWorkers"},
      {"sendPickupNotification", "sendPickupNotification"},
      {"processEscrowRelease", "processEscrowRelease"},
      {"generateDailyReport", "generateDailyReport"},
      {"generateWeeklyAnalytics", "generateWeeklyAnalytics"},
      {"cleanupData", "cleanupData"},
  };
  auto it = m.find(type);
  return it == m.end() ? std::string() : it->second;
}

using packer = msgpack::packer<msgpack::sbuffer>;

void pack_str(packer& p, std::string_view s) {
  p.pack_str(static_cast<uint32_t>(s.size()));
  p.pack_str_body(s.data(), static_cast<uint32_t>(s.size()));
}

/// Valid, pseudo-random `data` for `type`, derived from `h` (a hash of the request's
/// sequence number, so a resent request carries the same data). Ids are in [1, keys].
/// False when the type is unknown.
bool pack_data(packer& p, const std::string& type, uint64_t h, uint64_t keys) {
  uint64_t key = 1 + (h % keys);
  uint64_t h2 = splitmix64(h);
  double lat = -90.0 + static_cast<double>(h2 % 18000001) / 100000.0;
  double lng = -180.0 + static_cast<double>((h2 >> 25) % 36000001) / 100000.0;
  auto kv_int = [&](std::string_view k, uint64_t v) { pack_str(p, k); p.pack_uint64(v); };
  auto kv_dbl = [&](std::string_view k, double v) { pack_str(p, k); p.pack_double(v); };
  auto kv_str = [&](std::string_view k, std::string_view v) { pack_str(p, k); pack_str(p, v); };
  if (type == "worker.location" || type == "updateWorkerLocation") {
    p.pack_map(4);
    kv_int("worker_id", key);
    kv_dbl("lat", lat);
    kv_dbl("lng", lng);
    pack_str(p, "available");
    if (h2 & 1) p.pack_true(); else p.pack_false();
  } else if (type == "pickup.created") {
    p.pack_map(6);
    kv_int("pickup_id", key);
    kv_int("customer_id", 1 + (h2 % 1000));
    kv_dbl("lat", lat);
    kv_dbl("lng", lng);
    kv_str("waste_type", "plastic");
    kv_dbl("radius_km", 5.0);
  } else if (type == "notifyNearbyWorkers") {
    p.pack_map(4);
    kv_int("pickup_id", key);
    kv_dbl("lat", lat);
    kv_dbl("lng", lng);
    kv_dbl("radius_km", 5.0);
  } else if (type == "pickup.accepted" || type == "pickup.delivered") {
    p.pack_map(3);
    kv_int("pickup_id", key);
    kv_int("customer_id", 1 + (h2 % 1000));
    kv_int("worker_id", 1 + ((h2 >> 20) % 1000));
  } else if (type == "pickup.confirmed") {
    p.pack_map(2);
    kv_int("pickup_id", key);
    kv_int("customer_id", 1 + (h2 % 1000));
  } else if (type == "pickup.disputed") {
    p.pack_map(2);
    kv_int("pickup_id", key);
    kv_str("reason", "benchmark");
  } else if (type == "sendPickupNotification") {
    p.pack_map(4);
    kv_int("pickup_id", key);
    kv_str("notification_type", "pickup_accepted");
    kv_str("user_type", "customer");
    kv_int("user_id", 1 + (h2 % 1000));
  } else if (type == "processEscrowRelease") {
    p.pack_map(2);
    kv_int("pickup_id", key);
    kv_str("release_reason", "admin");
  } else if (type == "generateDailyReport" || type == "generateWeeklyAnalytics") {
    p.pack_map(0);
  } else if (type == "cleanupData") {
    p.pack_map(1);
    kv_int("older_than_days", 90);
  } else {
    return false;
  }
  return true;
}

/// One request frame (docs/ingress-protocol.md, "Request"): publish of `type`, or
/// invoke of `function`.
void build_request(msgpack::sbuffer& buf, bool invoke, const std::string& id,
                   const std::string& type, const std::string& function, uint64_t h,
                   uint64_t keys, int64_t timeout_ms) {
  buf.clear();
  packer p(buf);
  p.pack_map(invoke ? 7 : 6);
  pack_str(p, "v");
  p.pack_int(1);
  pack_str(p, "op");
  pack_str(p, invoke ? "invoke" : "publish");
  pack_str(p, "id");
  pack_str(p, id);
  pack_str(p, "type");
  pack_str(p, invoke ? function : type);
  pack_str(p, "ts");
  p.pack_int64(wall_ms());
  pack_str(p, "data");
  pack_data(p, invoke ? function : type, h, keys);
  if (invoke) {
    pack_str(p, "timeout_ms");
    p.pack_int64(timeout_ms);
  }
}

/// The fields of a reply the hot path needs, read without building a protocol::reply.
struct reply_view {
  std::string_view id;
  std::string_view status;
  int64_t retry_after_ms = -1;
};

bool read_reply(const msgpack::object& o, reply_view& r) {
  if (o.type != msgpack::type::MAP) return false;
  for (uint32_t i = 0; i < o.via.map.size; ++i) {
    const auto& kv = o.via.map.ptr[i];
    if (kv.key.type != msgpack::type::STR) continue;
    std::string_view k(kv.key.via.str.ptr, kv.key.via.str.size);
    if (k == "id" && kv.val.type == msgpack::type::STR)
      r.id = std::string_view(kv.val.via.str.ptr, kv.val.via.str.size);
    else if (k == "status" && kv.val.type == msgpack::type::STR)
      r.status = std::string_view(kv.val.via.str.ptr, kv.val.via.str.size);
    else if (k == "retry_after_ms" && kv.val.type == msgpack::type::POSITIVE_INTEGER)
      r.retry_after_ms = static_cast<int64_t>(kv.val.via.u64);
  }
  return !r.status.empty();
}

// ---------------------------------------------------------------- admin endpoint

struct admin_client {
  std::unique_ptr<httplib::Client> cli;
  explicit admin_client(std::string addr) {
    if (addr.rfind("http://", 0) == 0) addr = addr.substr(7);
    while (!addr.empty() && addr.back() == '/') addr.pop_back();
    auto c = addr.rfind(':');
    if (c == std::string::npos) fail(2, "--admin must be HOST:PORT, got '" + addr + "'");
    int port = std::atoi(addr.substr(c + 1).c_str());
    cli = std::make_unique<httplib::Client>(addr.substr(0, c), port);
    cli->set_connection_timeout(2, 0);
    cli->set_read_timeout(10, 0);
    cli->set_keep_alive(true);
  }
  std::optional<json> stats() {
    auto r = cli->Get("/stats");
    if (!r || r->status != 200) return std::nullopt;
    auto j = json::parse(r->body, nullptr, false);
    if (!j.is_object()) return std::nullopt;
    return j;
  }
};

struct fn_counts {
  int64_t ready = 0, running = 0, retry_wait = 0, ok = 0, retry = 0, dead = 0;
};

fn_counts counts_of(const json& stats, const std::string& fn) {
  fn_counts c;
  auto fns = stats.find("functions");
  if (fns == stats.end() || !fns->is_object()) return c;
  auto f = fns->find(fn);
  if (f == fns->end() || !f->is_object()) return c;
  auto get = [](const json& o, const char* k) -> int64_t {
    auto it = o.find(k);
    return it != o.end() && it->is_number() ? it->get<int64_t>() : 0;
  };
  c.ready = get(*f, "ready");
  c.running = get(*f, "running");
  c.retry_wait = get(*f, "retry_wait");
  auto oc = f->find("outcomes");
  if (oc != f->end() && oc->is_object()) {
    c.ok = get(*oc, "ok");
    c.retry = get(*oc, "retry");
    c.dead = get(*oc, "dead");
  }
  return c;
}

// ---------------------------------------------------------------- --start

struct spawned {
  pid_t pid = -1;
  std::string dir, data_dir, log;
};
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

std::string tail_of(const std::string& path, size_t n = 3000) {
  auto t = read_text(path);
  return t.size() > n ? t.substr(t.size() - n) : t;
}

/// Starts `klynaa run`; fills `o.ingress`, `o.admin`, `o.pid`, `o.data_dir`.
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

bool g_keep = false;

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

// ---------------------------------------------------------------- ceilings

/// write(4 KiB) + fdatasync latencies, in ns, on a file in `dir`.
histogram measure_fsync(const std::string& dir, int samples) {
  histogram h;
  if (samples <= 0) return h;
  std::string path = dir + "/klynaa-bench-fsync.probe";
  int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) fail(1, "cannot create " + path + ": " + std::strerror(errno));
  std::vector<char> block(4096, 'k');
  // Preallocate 1 MiB and sync it, so the samples measure overwrites plus the
  // journal-free fdatasync a reused WAL sees, not file growth.
  for (int i = 0; i < 256; ++i)
    if (::pwrite(fd, block.data(), block.size(), off_t{i} * 4096) != 4096) fail(1, "write failed");
  ::fsync(fd);
  for (int i = 0; i < samples; ++i) {
    block[0] = static_cast<char>(i);
    int64_t t0 = mono_ns();
    if (::pwrite(fd, block.data(), block.size(), off_t{i % 256} * 4096) != 4096 ||
        ::fdatasync(fd) != 0)
      fail(1, "write/fdatasync failed on " + path);
    h.record(static_cast<uint64_t>(mono_ns() - t0));
  }
  ::close(fd);
  ::unlink(path.c_str());
  return h;
}

json fsync_json(const histogram& h) {
  return {{"samples", h.count()},
          {"p50", ns_to_ms(h.quantile(0.5))},
          {"p99", ns_to_ms(h.quantile(0.99))},
          {"max", ns_to_ms(h.max())}};
}

void sql(sqlite3* db, const char* s) {
  char* err = nullptr;
  if (sqlite3_exec(db, s, nullptr, nullptr, &err) != SQLITE_OK) {
    std::string m = err ? err : "?";
    sqlite3_free(err);
    fail(1, std::string("sqlite: ") + s + ": " + m);
  }
}

json measure_sqlite(const std::string& dir) {
  std::string path = dir + "/klynaa-bench-ceiling.db";
  for (auto suffix : {"", "-wal", "-shm"}) ::unlink((path + suffix).c_str());
  sqlite3* db = nullptr;
  if (sqlite3_open(path.c_str(), &db) != SQLITE_OK) fail(1, "cannot open " + path);
  sql(db, "PRAGMA journal_mode=WAL");
  sql(db, "PRAGMA synchronous=FULL");
  sql(db, "CREATE TABLE jobs(seq INTEGER PRIMARY KEY, id TEXT NOT NULL, payload BLOB NOT NULL)");
  sqlite3_stmt* ins = nullptr;
  if (sqlite3_prepare_v2(db, "INSERT INTO jobs(id, payload) VALUES(?1, ?2)", -1, &ins, nullptr) !=
      SQLITE_OK)
    fail(1, "sqlite prepare failed");
  std::string payload(120, 'x');  // about one worker.location job
  uint64_t seq = 0;
  auto insert = [&] {
    std::string id = "bench-" + std::to_string(seq++) + "#1";
    sqlite3_bind_text(ins, 1, id.data(), static_cast<int>(id.size()), SQLITE_TRANSIENT);
    sqlite3_bind_blob(ins, 2, payload.data(), static_cast<int>(payload.size()), SQLITE_STATIC);
    if (sqlite3_step(ins) != SQLITE_DONE) fail(1, "sqlite insert failed");
    sqlite3_reset(ins);
  };
  json out;
  // one row per commit: at most 3000 commits or 3 s
  {
    int64_t t0 = mono_ns(), n = 0;
    while (n < 3000 && mono_ns() - t0 < 3000000000LL) {
      insert();  // autocommit: one transaction, one fsync of the WAL
      ++n;
    }
    double s = static_cast<double>(mono_ns() - t0) / 1e9;
    out["single_commits_per_s"] = std::round(static_cast<double>(n) / s);
  }
  // 256 rows per commit: at most 400 commits or 5 s
  {
    int64_t t0 = mono_ns(), commits = 0;
    while (commits < 400 && mono_ns() - t0 < 5000000000LL) {
      sql(db, "BEGIN");
      for (int i = 0; i < 256; ++i) insert();
      sql(db, "COMMIT");
      ++commits;
    }
    double s = static_cast<double>(mono_ns() - t0) / 1e9;
    out["batch256_commits_per_s"] = std::round(static_cast<double>(commits) / s);
    out["batch256_rows_per_s"] = std::round(static_cast<double>(commits * 256) / s);
  }
  sqlite3_finalize(ins);
  sqlite3_close(db);
  for (auto suffix : {"", "-wal", "-shm"}) ::unlink((path + suffix).c_str());
  return out;
}

/// Klynaa's own store (broker/sqlite_store.cpp, durable): what its one writer
/// thread can do with nothing else running. `n` worker.location requests (one
/// job each, ids from 4 interleaved clients) accepted in batches of 256, then
/// each job's end recorded in batches of 256: the writer's work for one job.
json measure_store(const std::string& dir, int n) {
  const std::string path = dir + "/klynaa-bench-store.db";
  for (auto suffix : {"", "-wal", "-shm"}) ::unlink((path + suffix).c_str());
  klynaa::broker::sqlite_options so;
  so.path = path;
  klynaa::broker::store_error err;
  auto st = klynaa::broker::open_sqlite_store(so, err);
  if (!st) return {{"error", err.message}};
  const std::string prefix = "kbstore" + std::to_string(wall_ms()) + "-";
  auto id_of = [&](int i) { return prefix + std::to_string(i % 4) + "-" + std::to_string(i); };
  const int64_t now = wall_ms();
  auto timed = [&](auto fill) -> double {
    const int64_t t0 = mono_ns();
    for (int i = 0; i < n; i += 256) {
      klynaa::broker::batch b;
      for (int k = i; k < std::min(n, i + 256); ++k) fill(b, k);
      if (!st->commit(b, err)) return -1;
    }
    return static_cast<double>(mono_ns() - t0) / 1e9;
  };
  const double accept_s = timed([&](klynaa::broker::batch& b, int k) {
    klynaa::broker::new_request r;
    r.id = id_of(k);
    r.type = "worker.location";
    r.ts_ms = r.accepted_ms = now;
    klynaa::broker::job_record j;
    j.id = r.id + "#1";
    j.request_id = r.id;
    j.function = "updateWorkerLocation";
    j.data_json = R"({"available":true,"lat":4.0511,"lng":9.7679,"worker_id":)" + std::to_string(k % 100000) + "}";
    j.ordering_key = "worker:" + std::to_string(k % 100000);
    j.seq = k + 1;
    j.due_ms = j.ts_ms = j.created_ms = now;
    r.jobs.push_back(std::move(j));
    b.requests.push_back(std::move(r));
  });
  const double done_s = timed([&](klynaa::broker::batch& b, int k) {
    klynaa::broker::job_update u;
    u.id = id_of(k) + "#1";
    u.state = klynaa::broker::job_state::done;
    u.attempts = 1;
    u.seq = k + 1;
    u.result_json = "{}";
    u.node = "bench";
    u.outcome = "ok";
    b.updates.push_back(std::move(u));
  });
  st.reset();
  for (auto suffix : {"", "-wal", "-shm"}) ::unlink((path + suffix).c_str());
  if (accept_s < 0 || done_s < 0) return {{"error", err.message}};
  return {{"requests", n},
          {"accepts_per_s", std::round(n / accept_s)},
          {"ends_per_s", std::round(n / done_s)},
          {"jobs_per_s", std::round(n / (accept_s + done_s))}};
}

/// DEALER -> ROUTER (echo) over tcp://127.0.0.1, `window` requests in flight.
json measure_zmq(uint64_t messages, int window) {
  zmq::context_t ctx(1);
  zmq::socket_t router(ctx, zmq::socket_type::router);
  router.set(zmq::sockopt::linger, 0);
  router.set(zmq::sockopt::sndhwm, 0);
  router.set(zmq::sockopt::rcvhwm, 0);
  router.bind("tcp://127.0.0.1:*");
  std::string ep = router.get(zmq::sockopt::last_endpoint);
  std::atomic<bool> stop{false};
  std::thread echo([&] {
    zmq::message_t ident, body;
    zmq::pollitem_t items[] = {{static_cast<void*>(router), 0, ZMQ_POLLIN, 0}};
    while (!stop.load()) {
      if (zmq::poll(items, 1, std::chrono::milliseconds(100)) <= 0) continue;
      while (router.recv(ident, zmq::recv_flags::dontwait)) {
        if (!router.recv(body)) break;
        router.send(ident, zmq::send_flags::sndmore);
        router.send(body, zmq::send_flags::none);
      }
    }
  });
  zmq::socket_t dealer(ctx, zmq::socket_type::dealer);
  dealer.set(zmq::sockopt::linger, 0);
  dealer.set(zmq::sockopt::sndhwm, 0);
  dealer.set(zmq::sockopt::rcvhwm, 0);
  dealer.connect(ep);
  std::string payload(100, 'z');  // about one publish request
  // warm up the connection
  dealer.send(zmq::buffer(payload), zmq::send_flags::none);
  zmq::message_t m;
  (void)dealer.recv(m);
  uint64_t sent = 0, got = 0;
  int64_t t0 = mono_ns(), limit = t0 + 20000000000LL;
  while (got < messages && mono_ns() < limit) {
    while (sent < messages && sent - got < static_cast<uint64_t>(window)) {
      dealer.send(zmq::buffer(payload), zmq::send_flags::none);
      ++sent;
    }
    zmq::pollitem_t items[] = {{static_cast<void*>(dealer), 0, ZMQ_POLLIN, 0}};
    if (zmq::poll(items, 1, std::chrono::milliseconds(1000)) <= 0) continue;
    while (dealer.recv(m, zmq::recv_flags::dontwait)) ++got;
  }
  double s = static_cast<double>(mono_ns() - t0) / 1e9;
  stop = true;
  echo.join();
  return {{"req_rep_per_s", std::round(static_cast<double>(got) / s)},
          {"messages", got},
          {"window", window},
          {"bytes", payload.size()}};
}

int run_ceilings(options& o) {
  std::string dir = o.data_dir.empty() ? o.tmp_dir : o.data_dir;
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  json out;
  out["mode"] = "ceilings";
  out["dir"] = dir;
  out["machine"] = machine();
  out["fsync_ms"] = fsync_json(measure_fsync(dir, o.fsync_samples ? o.fsync_samples : 500));
  out["sqlite_wal_full"] = measure_sqlite(dir);
  out["klynaa_store"] = measure_store(dir, 50000);
  out["zmq_dealer_router"] = measure_zmq(o.zmq_messages, 1000);
  out["machine"]["loadavg_after"] = loadavg();
  std::cout << out.dump() << std::endl;
  return 0;
}

// ---------------------------------------------------------------- load

struct shared_state {
  const options* o = nullptr;
  std::string prefix;  // run-unique id prefix
  std::string function;
  zmq::context_t* ctx = nullptr;
  std::mutex mu;
  std::condition_variable cv;
  int ready = 0;
  bool go = false;
  int64_t t0 = 0;
  int64_t deadline = 0;
};

struct conn_result {
  histogram ack, e2e;
  uint64_t publishes_acked = 0, invokes_ok = 0, overloaded_retries = 0;
  int64_t last_publish_ack = 0;  // mono ns
  std::string error;             // non-empty: the run failed
};

void connection(shared_state& S, int c, conn_result& res) {
  const options& o = *S.o;
  const uint64_t n_conn = static_cast<uint64_t>(o.connections);
  const uint64_t mine = o.count / n_conn + (static_cast<uint64_t>(c) < o.count % n_conn ? 1 : 0);
  const double interval = o.rate > 0 ? 1e9 * static_cast<double>(n_conn) / o.rate : 0;
  const double offset = o.rate > 0 ? 1e9 * c / o.rate : 0;
  const std::string id_prefix = S.prefix + "-" + std::to_string(c) + "-";
  const int64_t invoke_timeout_ms = static_cast<int64_t>(o.timeout_s * 1000);
  const uint64_t seed = std::hash<std::string>()(S.prefix);

  zmq::socket_t s(*S.ctx, zmq::socket_type::dealer);
  s.set(zmq::sockopt::linger, 0);
  s.set(zmq::sockopt::sndhwm, 0);
  s.set(zmq::sockopt::rcvhwm, 0);
  s.connect(o.ingress);
  // A ping, so the connection is up before the clock starts.
  {
    klynaa::protocol::request ping;
    ping.operation = klynaa::protocol::op::ping;
    auto f = klynaa::protocol::encode_request(ping);
    s.send(zmq::buffer(f), zmq::send_flags::none);
    zmq::pollitem_t items[] = {{static_cast<void*>(s), 0, ZMQ_POLLIN, 0}};
    zmq::message_t m;
    if (zmq::poll(items, 1, std::chrono::milliseconds(5000)) <= 0 ||
        !s.recv(m, zmq::recv_flags::dontwait))
      res.error = "no pong from " + o.ingress + " within 5 s";
    while (m.more() && s.recv(m, zmq::recv_flags::dontwait)) {}
  }
  {
    std::unique_lock<std::mutex> lk(S.mu);
    ++S.ready;
    S.cv.notify_all();
    S.cv.wait(lk, [&] { return S.go; });
  }
  if (!res.error.empty()) return;
  const int64_t t0 = S.t0, deadline = S.deadline;
  int zfd = s.get(zmq::sockopt::fd);

  std::vector<int64_t> start(mine, 0);  // scheduled (paced) or actual (flat out) send time
  std::vector<uint8_t> answered(mine, 0);
  std::deque<std::pair<int64_t, uint64_t>> retries;  // (when, seq)
  msgpack::sbuffer buf(512);
  std::string id;
  uint64_t next = 0, inflight = 0, done = 0;

  auto global_seq = [&](uint64_t seq) { return seq * n_conn + static_cast<uint64_t>(c); };
  auto is_invoke = [&](uint64_t seq) {
    return o.wait && o.e2e_every > 0 && global_seq(seq) % o.e2e_every == 0;
  };
  auto send_seq = [&](uint64_t seq) {
    id.assign(id_prefix);
    id += std::to_string(seq);
    uint64_t g = global_seq(seq);
    build_request(buf, is_invoke(seq), id, o.type, S.function,
                  splitmix64(g ^ seed), o.keys, invoke_timeout_ms);
    s.send(zmq::const_buffer(buf.data(), buf.size()), zmq::send_flags::none);
  };

  zmq::message_t m;
  while (done < mine && res.error.empty()) {
    int64_t now = mono_ns();
    if (now > deadline) {
      res.error = "connection " + std::to_string(c) + ": " + std::to_string(mine - done) +
                  " requests unanswered after --timeout " + std::to_string(o.timeout_s) + " s";
      break;
    }
    while (!retries.empty() && retries.front().first <= now) {
      send_seq(retries.front().second);
      retries.pop_front();
    }
    while (next < mine && inflight < static_cast<uint64_t>(o.window)) {
      int64_t when = now;
      if (o.rate > 0) {
        when = t0 + static_cast<int64_t>(offset + interval * static_cast<double>(next));
        if (when > now) break;
      } else {
        now = mono_ns();
        when = now;
      }
      start[next] = when;
      send_seq(next);
      ++next;
      ++inflight;
    }
    // Drain every reply that is there (ZMQ_EVENTS before blocking on the fd).
    bool progressed = false;
    while (s.get(zmq::sockopt::events) & ZMQ_POLLIN) {
      if (!s.recv(m, zmq::recv_flags::dontwait)) break;
      while (m.more()) {  // a delimiter frame: the body is the last frame
        if (!s.recv(m, zmq::recv_flags::dontwait)) break;
      }
      int64_t t = mono_ns();
      progressed = true;
      msgpack::object_handle oh;
      reply_view r;
      try {
        oh = msgpack::unpack(static_cast<const char*>(m.data()), m.size());
      } catch (...) {
        res.error = "a reply that is not msgpack";
        break;
      }
      if (!read_reply(oh.get(), r)) {
        res.error = "a reply that is not a reply map";
        break;
      }
      if (r.status == "pong") continue;
      if (r.id.size() <= id_prefix.size() || r.id.compare(0, id_prefix.size(), id_prefix) != 0)
        continue;  // not ours
      uint64_t seq = std::strtoull(std::string(r.id.substr(id_prefix.size())).c_str(), nullptr, 10);
      if (seq >= next || answered[seq]) continue;
      if ((r.status == "rejected") && r.retry_after_ms >= 0) {
        // overloaded / shutting_down: back off as told and send it again; the latency
        // keeps counting from the first (scheduled) send.
        ++res.overloaded_retries;
        retries.emplace_back(t + std::max<int64_t>(r.retry_after_ms, 1) * 1000000, seq);
        continue;
      }
      bool inv = is_invoke(seq);
      bool good = inv ? r.status == "ok" : r.status == "accepted";
      if (!good) {
        auto full = klynaa::protocol::decode_reply(m.data(), m.size());
        std::string detail = full ? klynaa::protocol::reply_to_json(*full).dump() : "?";
        res.error = "request " + std::string(r.id) + " (" + (inv ? "invoke" : "publish") +
                    ") answered " + std::string(r.status) + ": " + detail;
        break;
      }
      answered[seq] = 1;
      ++done;
      --inflight;
      uint64_t lat = static_cast<uint64_t>(std::max<int64_t>(0, t - start[seq]));
      if (inv) {
        res.e2e.record(lat);
        ++res.invokes_ok;
      } else {
        res.ack.record(lat);
        ++res.publishes_acked;
        res.last_publish_ack = t;
      }
    }
    if (progressed || !res.error.empty() || done == mine) continue;
    // Block until a reply may be there, the next scheduled send, a retry, or 100 ms.
    now = mono_ns();
    int64_t wake = now + 100000000;
    if (next < mine && inflight < static_cast<uint64_t>(o.window)) {
      if (o.rate <= 0) continue;  // flat out with room in the window: send more now
      wake = std::min(wake, t0 + static_cast<int64_t>(offset + interval * static_cast<double>(next)));
    }
    if (!retries.empty()) wake = std::min(wake, retries.front().first);
    wake = std::min(wake, deadline + 1);
    int64_t wait = std::max<int64_t>(0, wake - now);
    if (wait == 0) continue;
    pollfd pfd{zfd, POLLIN, 0};
    timespec ts{static_cast<time_t>(wait / 1000000000), static_cast<long>(wait % 1000000000)};
    ::ppoll(&pfd, 1, &ts, nullptr);
  }
}

int run_load(options& o) {
  g_keep = o.keep;
  if (!o.start && o.ingress.empty() && o.data_dir.empty())
    fail(2, "say where the broker is: --start, --ingress E or --data-dir D");
  if (o.broker_only && !o.start)
    fail(2, "--broker-only goes with --start (it chooses what --start spawns)");
  if (o.broker_only)
    o.wait = false;  // nothing runs the jobs (and no invoke is sent: it would wait for nothing)
  if ((o.wait_function.empty() ? default_function(o.type) : o.wait_function).empty())
    fail(2, "unknown --type " + o.type + "; give --wait-function too, or --no-wait");
  std::string function = o.wait_function.empty() ? default_function(o.type) : o.wait_function;
  // The id prefix makes ids unique per run (the broker keeps ids for 7 days).
  std::string prefix;
  {
    char b[64];
    std::snprintf(b, sizeof b, "kb%llx%04x", static_cast<unsigned long long>(wall_ms()),
                  static_cast<unsigned>(::getpid() & 0xffff));
    prefix = b;
  }
  // Self-check: our hand-rolled frames pass the broker's own decoder.
  for (bool inv : {false, true}) {
    if (inv && !(o.wait && o.e2e_every > 0)) continue;
    msgpack::sbuffer buf;
    build_request(buf, inv, prefix + "-check", o.type, function, 12345, o.keys, 1000);
    auto d = klynaa::protocol::decode_request(buf.data(), buf.size(), wall_ms(), {});
    if (!d.req)
      fail(2, std::string("cannot build a valid ") + (inv ? "invoke of " + function : o.type) +
                           " request: " + (d.error ? d.error->code + ": " + d.error->message : "?"));
  }

  if (o.start) start_klynaa(o);
  if (!o.start && !o.data_dir.empty()) {  // fill what was not given from broker.json
    auto j = json::parse(read_text(o.data_dir + "/broker.json"), nullptr, false);
    if (!j.is_object() && o.ingress.empty())
      fail(1, "no readable " + o.data_dir + "/broker.json (--data-dir)");
    if (!j.is_object()) j = json::object();
    if (o.ingress.empty()) o.ingress = j.value("ingress", "");
    if (o.admin.empty()) o.admin = j.value("admin", "");
    if (o.pid == 0) o.pid = j.value("pid", 0);
  }
  if (o.ingress.empty()) fail(2, "no ingress endpoint in broker.json (--data-dir)");
  if (o.wait && o.admin.empty()) fail(2, "waiting for the jobs needs --admin HOST:PORT (or --no-wait)");

  auto finish = [&](int code, const std::string& msg) -> int {
    if (!msg.empty()) std::cerr << "klynaa-bench: " << msg << "\n";
    if (code != 0 && g_child.pid > 0) std::cerr << "klynaa log tail:\n" << tail_of(g_child.log, 2000) << "\n";
    cleanup_child(o);
    return code;
  };

  // fsync probe of the data dir's filesystem, before the load.
  json fsync = nullptr;
  if (!o.data_dir.empty() && o.fsync_samples > 0)
    fsync = fsync_json(measure_fsync(o.data_dir, std::min(o.fsync_samples, 200)));

  std::optional<admin_client> admin;
  fn_counts base;
  json base_store = json::object(), last_store = json::object();  // /stats "store": group commits
  json base_link = json::object(), last_link = json::object();    // /stats "cluster_link": frames
  if (o.wait) {
    admin.emplace(o.admin);
    auto st = admin->stats();
    if (!st) return finish(1, "cannot GET http://" + o.admin + "/stats (--admin)");
    base = counts_of(*st, function);
    base_store = st->value("store", json::object());
    base_link = st->value("cluster_link", json::object());
  }
  const uint64_t expect = o.expect ? o.expect : o.count;

  zmq::context_t ctx(std::min(o.connections, 2));
  shared_state S;
  S.o = &o;
  S.prefix = prefix;
  S.function = function;
  S.ctx = &ctx;
  std::vector<conn_result> results(static_cast<size_t>(o.connections));
  std::vector<std::thread> threads;
  for (int c = 0; c < o.connections; ++c)
    threads.emplace_back([&, c] { connection(S, c, results[static_cast<size_t>(c)]); });
  {
    std::unique_lock<std::mutex> lk(S.mu);
    S.cv.wait(lk, [&] { return S.ready == o.connections; });
    S.t0 = mono_ns() + 5000000;  // 5 ms: every thread is waiting on the cv by then
    S.deadline = S.t0 + static_cast<int64_t>(o.timeout_s * 1e9);
    S.go = true;
    S.cv.notify_all();
  }
  // Sample the broker's RSS while the load runs.
  double rss_peak_seen = 0;
  std::atomic<bool> sending{true};
  std::thread sampler([&] {
    while (sending.load()) {
      if (auto r = rss_mb(o.pid)) rss_peak_seen = std::max(rss_peak_seen, r->first);
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  });
  for (auto& t : threads) t.join();
  int64_t t_sent = mono_ns();

  histogram ack, e2e;
  uint64_t publishes = 0, invokes = 0, overloaded = 0;
  int64_t last_ack = S.t0;
  std::string err;
  for (auto& r : results) {
    ack += r.ack;
    e2e += r.e2e;
    publishes += r.publishes_acked;
    invokes += r.invokes_ok;
    overloaded += r.overloaded_retries;
    last_ack = std::max(last_ack, r.last_publish_ack);
    if (err.empty() && !r.error.empty()) err = r.error;
  }
  if (!err.empty()) {
    sending = false;
    sampler.join();
    return finish(1, err + " — no figures from an incomplete run");
  }

  // Wait for the jobs through /stats.
  int64_t t_done = 0;
  fn_counts last;
  if (o.wait) {
    while (true) {
      auto st = admin->stats();
      int64_t now = mono_ns();
      if (st) {
        last = counts_of(*st, function);
        last_store = st->value("store", json::object());
        last_link = st->value("cluster_link", json::object());
        if (last.dead > base.dead) {
          sending = false;
          sampler.join();
          return finish(1, std::to_string(last.dead - base.dead) + " " + function +
                               " jobs went dead — no figures from an incomplete run");
        }
        if (last.ok - base.ok >= static_cast<int64_t>(expect) && last.ready == 0 &&
            last.running == 0 && last.retry_wait == 0) {
          t_done = now;
          break;
        }
      }
      if (now > S.deadline) {
        sending = false;
        sampler.join();
        json j = {{"ok", last.ok - base.ok}, {"expected", expect}, {"ready", last.ready},
                  {"running", last.running}, {"retry_wait", last.retry_wait},
                  {"retry", last.retry - base.retry}};
        return finish(1, function + " jobs did not complete within --timeout: " + j.dump() +
                             " — no figures from an incomplete run");
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
  }
  sending = false;
  sampler.join();
  auto rss = rss_mb(o.pid);

  json out;
  out["system"] = "klynaa";
  out["type"] = o.type;
  out["wait_function"] = o.wait ? json(function) : json(nullptr);
  out["count"] = o.count;
  out["connections"] = o.connections;
  out["window"] = o.window;
  out["rate"] = o.rate;
  out["keys"] = o.keys;
  out["e2e_every"] = o.wait ? o.e2e_every : 0;
  double send_s = static_cast<double>(last_ack - S.t0) / 1e9;
  out["ingress_acks_per_s"] = publishes && send_s > 0 ? json(std::round(publishes / send_s)) : json(nullptr);
  if (ack.count())
    out["ack_latency_ms"] = {{"p50", ns_to_ms(ack.quantile(0.5))},
                             {"p99", ns_to_ms(ack.quantile(0.99))},
                             {"p999", ns_to_ms(ack.quantile(0.999))},
                             {"max", ns_to_ms(ack.max())},
                             {"samples", ack.count()}};
  else  // --e2e-every 1: every request was an invoke
    out["ack_latency_ms"] = {{"p50", nullptr}, {"p99", nullptr}, {"p999", nullptr}, {"samples", 0}};
  if (o.wait) {
    double e2e_s = static_cast<double>(t_done - S.t0) / 1e9;
    out["e2e_jobs_per_s"] = std::round(static_cast<double>(expect) / e2e_s);
    out["e2e_seconds"] = round3(e2e_s);
    out["jobs_done"] = last.ok - base.ok;
  } else {
    out["e2e_jobs_per_s"] = nullptr;
  }
  if (e2e.count())
    out["e2e_latency_ms"] = {{"p50", ns_to_ms(e2e.quantile(0.5))},
                             {"p99", ns_to_ms(e2e.quantile(0.99))},
                             {"max", ns_to_ms(e2e.max())},
                             {"samples", e2e.count()}};
  else
    out["e2e_latency_ms"] = {{"p50", nullptr}, {"p99", nullptr}, {"samples", 0}};
  out["rss_mb"] = rss ? json(round3(rss->first)) : json(nullptr);
  out["rss_peak_mb"] = rss ? json(round3(std::max(rss->second, rss_peak_seen))) : json(nullptr);
  out["fsync_ms"] = fsync;
  out["fsync_p99_ms"] = fsync.is_object() ? fsync["p99"] : json(nullptr);
  out["overloaded_retries"] = overloaded;
  // The broker's group commits during the run: how many, and what each carried.
  auto delta = [&](const char* k) {
    return last_store.value(k, 0.0) - base_store.value(k, 0.0);
  };
  if (o.wait && delta("commits") > 0) {
    const double commits = delta("commits");
    out["store_commits"] = {{"commits", commits},
                            {"requests_per_commit", round3(delta("requests") / commits)},
                            {"updates_per_commit", round3(delta("updates") / commits)},
                            {"commit_ms_avg", round3(delta("commit_seconds") * 1000 / commits)}};
  }
  // The cluster link during the run: messages per frame each way (BATCH frames).
  auto link = [&](const char* k) { return last_link.value(k, 0.0) - base_link.value(k, 0.0); };
  if (o.wait && link("frames_sent") > 0 && link("frames_received") > 0)
    out["cluster_link"] = {{"messages_per_frame_sent", round3(link("messages_sent") / link("frames_sent"))},
                           {"messages_per_frame_received",
                            round3(link("messages_received") / link("frames_received"))}};
  out["send_seconds"] = round3(static_cast<double>(t_sent - S.t0) / 1e9);
  out["loadavg"] = loadavg();
  out["cores"] = std::thread::hardware_concurrency();
  std::cout << out.dump() << std::endl;
  return finish(0, "");
}

}  // namespace

int main(int argc, char** argv) {
  options o = parse(argc, argv);
  if (o.ceilings) return run_ceilings(o);
  return run_load(o);
}

// Integration-test support: start `klynaa` as a real process on 127.0.0.1 with
// ephemeral ports, read back what it bound, talk to it over real sockets, wait on
// conditions with deadlines, and clean up (kill what was started, remove temp dirs).
#pragma once

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>
#include <zmq.hpp>

#include "protocol/message.hpp"
#include "tests/support/temp_dir.hpp"
#include "tests/support/wait.hpp"

namespace klynaa::test {

using json = nlohmann::json;
using namespace std::chrono_literals;

inline int64_t now_ms() {
  using namespace std::chrono;
  return duration_cast<milliseconds>(system_clock::now().time_since_epoch()).count();
}

/// A child process with stdout+stderr in a log file. Killed (SIGKILL) on destruction.
class process {
 public:
  process(std::vector<std::string> args, std::map<std::string, std::string> env,
          std::string log_path)
      : log_path_(std::move(log_path)) {
    pid_ = ::fork();
    if (pid_ == 0) {
      int fd = ::open(log_path_.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
      ::dup2(fd, 1);
      ::dup2(fd, 2);
      int devnull = ::open("/dev/null", O_RDONLY);
      ::dup2(devnull, 0);
      for (auto& [k, v] : env) ::setenv(k.c_str(), v.c_str(), 1);
      std::vector<char*> argv;
      for (auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
      argv.push_back(nullptr);
      ::execv(argv[0], argv.data());
      ::_exit(127);
    }
  }
  ~process() {
    if (running()) {
      kill(SIGKILL);
      wait(5000ms);
    }
  }
  process(const process&) = delete;
  process& operator=(const process&) = delete;

  pid_t pid() const { return pid_; }
  void kill(int sig) { ::kill(pid_, sig); }
  bool running() {
    if (exited_) return false;
    int status = 0;
    pid_t r = ::waitpid(pid_, &status, WNOHANG);
    if (r == pid_) {
      exited_ = true;
      code_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      return false;
    }
    return true;
  }
  /// The exit code (128+signal when killed), or nullopt when still running after `timeout`.
  std::optional<int> wait(std::chrono::milliseconds timeout) {
    wait_for([&] { return !running(); }, timeout);
    if (running()) return std::nullopt;
    return code_;
  }
  std::string log() const { return read_file(log_path_); }

 private:
  pid_t pid_ = -1;
  std::string log_path_;
  bool exited_ = false;
  int code_ = -1;
};

/// Fails the test when a process log shows a sanitizer report.
inline void check_no_sanitizer_report(const std::string& log) {
  INFO(log.substr(log.size() > 4000 ? log.size() - 4000 : 0));
  CHECK(log.find("AddressSanitizer") == std::string::npos);
  CHECK(log.find("runtime error:") == std::string::npos);
  CHECK(log.find("LeakSanitizer") == std::string::npos);
}

/// Runs `klynaa ARGS...` to completion; returns {exit code, output}.
inline std::pair<int, std::string> run_cli(std::vector<std::string> args,
                                           std::map<std::string, std::string> env = {},
                                           std::chrono::milliseconds timeout = 60000ms) {
  temp_dir d;
  args.insert(args.begin(), KLYNAA_BINARY);
  process p(args, env, d / "out.log");
  auto code = p.wait(timeout);
  if (!code) p.kill(SIGKILL);
  return {code.value_or(-1), p.log()};
}

/// A `klynaa run` or `klynaa broker` on ephemeral ports with its own data dir.
class klynaa_server {
 public:
  /// `mode` is "run" or "broker". `env` adds variables (e.g. KLYNAA_INGRESS_MAX_BYTES).
  explicit klynaa_server(std::string mode = "run", std::map<std::string, std::string> env = {},
                         std::vector<std::string> extra = {}, std::string data_dir = {})
      : mode_(std::move(mode)), env_(std::move(env)), extra_(std::move(extra)) {
    data_dir_ = data_dir.empty() ? dir_.path + "/data" : data_dir;
    env_.emplace("DJANGO_API_URL", "http://127.0.0.1:9");  // nothing listens: jobs just retry
    env_.emplace("KLYNAA_ADMIN_BIND", "127.0.0.1:0");
    env_.emplace("KLYNAA_SHUTDOWN_GRACE_SECONDS", "5");
    // No catch-up of the default schedules (03:00 cleanupData, 06:00 daily
    // report, ...): a test started in the hour after one must not get its job.
    env_.emplace("KLYNAA_SCHEDULER_MISFIRE_GRACE_SECONDS", "0");
    start();
  }

  void start() {
    std::filesystem::remove(data_dir_ + "/broker.json");
    std::vector<std::string> args = {KLYNAA_BINARY, mode_, "--data-dir", data_dir_, "--ingress",
                                     "tcp://127.0.0.1:*"};
    if (mode_ == "broker") {
      args.push_back("--cluster");
      args.push_back("tcp://127.0.0.1:*");
    }
    args.insert(args.end(), extra_.begin(), extra_.end());
    proc_ = std::make_unique<process>(args, env_, dir_.path + "/server.log");
    bool up = wait_for([&] {
      auto text = read_file(data_dir_ + "/broker.json");
      auto j = json::parse(text, nullptr, false);
      if (!j.is_object() || j.value("pid", 0) != proc_->pid()) return false;
      endpoints_ = j;
      return true;
    }, 30000ms);
    INFO(proc_->log());
    REQUIRE(up);
  }

  /// SIGTERM and wait for the exit (the data dir stays).
  void stop() {
    proc_->kill(SIGTERM);
    if (!proc_->wait(15000ms)) proc_->kill(SIGKILL);
  }

  /// SIGKILL, then start again on the same data dir (new ports).
  void kill9_and_restart() {
    proc_->kill(SIGKILL);
    proc_->wait(5000ms);
    start();
  }

  std::string ingress() const { return endpoints_["ingress"].get<std::string>(); }
  std::string cluster() const { return endpoints_["cluster"][0].get<std::string>(); }
  json endpoints() const { return endpoints_; }
  process& proc() { return *proc_; }
  const std::string& data_dir() const { return data_dir_; }
  std::string log() const { return proc_->log(); }

  ~klynaa_server() {
    if (proc_ && proc_->running()) {
      proc_->kill(SIGTERM);
      if (!proc_->wait(10000ms)) proc_->kill(SIGKILL);
    }
    if (proc_) check_no_sanitizer_report(proc_->log());
  }

 private:
  temp_dir dir_;
  std::string mode_;
  std::map<std::string, std::string> env_;
  std::vector<std::string> extra_;
  std::string data_dir_;
  std::unique_ptr<process> proc_;
  json endpoints_;
};

/// A raw ZeroMQ client of the ingress.
class raw_client {
 public:
  raw_client(zmq::context_t& ctx, const std::string& endpoint,
             zmq::socket_type type = zmq::socket_type::dealer)
      : sock_(ctx, type) {
    sock_.set(zmq::sockopt::linger, 0);
    sock_.set(zmq::sockopt::sndhwm, 0);
    sock_.set(zmq::sockopt::rcvhwm, 0);
    sock_.connect(endpoint);
  }
  void send_frames(const std::vector<std::string>& frames) {
    for (size_t i = 0; i < frames.size(); ++i)
      sock_.send(zmq::buffer(frames[i]),
                 i + 1 < frames.size() ? zmq::send_flags::sndmore : zmq::send_flags::none);
  }
  /// All frames of the next message, or empty after `timeout`.
  std::vector<std::string> recv_frames(std::chrono::milliseconds timeout = 10000ms) {
    zmq::pollitem_t items[] = {{static_cast<void*>(sock_), 0, ZMQ_POLLIN, 0}};
    if (zmq::poll(items, 1, timeout) <= 0) return {};
    std::vector<std::string> out;
    zmq::message_t m;
    while (sock_.recv(m, zmq::recv_flags::dontwait)) {
      out.push_back(m.to_string());
      if (!m.more()) break;
    }
    return out;
  }
  /// Sends one request (DEALER: with or without the delimiter; REQ always has it)
  /// and decodes the reply.
  std::optional<protocol::reply> call(const std::string& frame, bool delimiter = true,
                                      std::chrono::milliseconds timeout = 10000ms) {
    if (delimiter && sock_.get(zmq::sockopt::type) == ZMQ_DEALER)
      send_frames({"", frame});
    else
      send_frames({frame});
    auto r = recv_frames(timeout);
    if (r.empty()) return std::nullopt;
    return protocol::decode_reply(r.back().data(), r.back().size());
  }
  zmq::socket_t& socket() { return sock_; }

 private:
  zmq::socket_t sock_;
};

inline std::string publish_frame(const std::string& id, const std::string& type, const json& data) {
  protocol::request r;
  r.operation = protocol::op::publish;
  r.id = id;
  r.type = type;
  r.ts_ms = now_ms();
  r.data = data;
  return protocol::encode_request(r);
}

inline std::string ping_frame() {
  protocol::request r;
  r.operation = protocol::op::ping;
  return protocol::encode_request(r);
}

inline json location(int worker) {
  return {{"worker_id", worker}, {"lat", 6.5}, {"lng", 3.4}, {"available", true}};
}

}  // namespace klynaa::test

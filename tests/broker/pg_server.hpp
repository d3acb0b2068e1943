// A real PostgreSQL 15 server for the tests of one test process (the PostgreSQL
// store, broker/pg_store.hpp): started lazily on first use, stopped and removed
// at exit. Never the cluster Debian's postgresql package starts on port 5432.
//
// - initdb + postgres from /usr/lib/postgresql/15/bin (KLYNAA_PG_BIN overrides)
//   in a temp dir /tmp/klynaa-pg-XXXXXX, listening on 127.0.0.1 on a free port
//   and on a unix socket in that dir.
// - As root (CI), initdb and postgres run as `nobody` (postgres refuses root):
//   the forked child drops to it before exec; no runuser, no PAM.
// - Roles: the superuser `klynaa_admin` (trust, unix socket only: the tests'
//   own setup); `klynaa` and `klynaa_plain` with passwords (scram-sha-256 over
//   TCP, so a wrong password is really refused). fresh_database() creates a
//   database t_N owned by `klynaa`; `klynaa_plain` may connect but not CREATE.
// - Cleanup: a static destructor stops it (SIGQUIT = `pg_ctl stop -m immediate`)
//   and removes the dir. If the test process dies (kill -9, a ctest timeout),
//   the postmaster's parent-death signal (SIGQUIT) stops it, and the next test
//   process removes the dir of any owner that is gone.
// - Bounded: initdb has 120 s, accepting connections 30 s; either failure throws
//   with the tail of the server log.
#pragma once

#include <libpq-fe.h>

#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "tests/support/ports.hpp"

namespace klynaa::test {

class pg_server {
 public:
  static constexpr const char* password = "pw-7f3a9c2e";        ///< of role klynaa
  static constexpr const char* plain_password = "pw-plain-41b8";  ///< of role klynaa_plain

  /// The server of this process, started on first call; throws when it cannot start.
  static pg_server& get() {
    static pg_server server;
    return server;
  }

  int port() const { return port_; }
  const std::string& dir() const { return dir_; }

  /// A TCP URL with a password, as an operator writes store.url.
  std::string url(const std::string& db, const std::string& user = "klynaa",
                  const std::string& pw = password) const {
    return "postgresql://" + user + ":" + pw + "@127.0.0.1:" + std::to_string(port_) + "/" + db;
  }

  /// A new empty database owned by role klynaa; returns its name.
  std::string fresh_database() {
    std::string name = "t_" + std::to_string(++databases_);
    sql("postgres", "CREATE DATABASE " + name + " OWNER klynaa");
    return name;
  }

  /// Runs `text` as the superuser in database `db`; throws on error. Returns the
  /// first column of the first row ("" when none).
  std::string sql(const std::string& db, const std::string& text) const {
    PGconn* c = PQconnectdb(admin_conninfo(db).c_str());
    if (PQstatus(c) != CONNECTION_OK) {
      std::string m = PQerrorMessage(c);
      PQfinish(c);
      throw std::runtime_error("pg_server: connect " + db + ": " + m);
    }
    PGresult* r = PQexec(c, text.c_str());
    auto st = PQresultStatus(r);
    std::string out;
    if (st == PGRES_TUPLES_OK && PQntuples(r) > 0 && PQnfields(r) > 0) out = PQgetvalue(r, 0, 0);
    std::string m = PQresultErrorMessage(r);
    PQclear(r);
    PQfinish(c);
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK)
      throw std::runtime_error("pg_server: " + text + ": " + m);
    return out;
  }

  /// An immediate stop (as a crash) and a start on the same port and data.
  void restart() {
    stop();
    start_postmaster();
  }

  /// The database gone for a while (a crash, a network cut): an immediate stop
  /// now, and a start on the same port and data with resume().
  void pause() { stop(); }
  void resume() { start_postmaster(); }

  ~pg_server() {
    stop();
    std::error_code ec;
    if (!dir_.empty()) std::filesystem::remove_all(dir_, ec);
  }

  pg_server(const pg_server&) = delete;
  pg_server& operator=(const pg_server&) = delete;

 private:
  pg_server() {
    const char* bin = std::getenv("KLYNAA_PG_BIN");
    bin_ = bin && *bin ? bin : "/usr/lib/postgresql/15/bin";
    remove_stale_dirs();
    char tmpl[] = "/tmp/klynaa-pg-XXXXXX";
    if (!::mkdtemp(tmpl)) throw std::runtime_error("pg_server: mkdtemp failed");
    dir_ = tmpl;
    try {
      std::ofstream(dir_ + "/owner") << ::getpid() << "\n";
      if (::geteuid() == 0) {
        const passwd* pw = ::getpwnam("nobody");
        if (!pw) throw std::runtime_error("pg_server: no user nobody to run postgres as");
        uid_ = pw->pw_uid;
        gid_ = pw->pw_gid;
        if (::chown(dir_.c_str(), uid_, gid_) != 0) throw std::runtime_error("pg_server: chown failed");
      }
      log_ = dir_ + "/postgres.log";
      run_initdb();
      port_ = free_tcp_port();  // below the ephemeral range: the server binds it later, and again on resume()
      start_postmaster();
      sql("postgres", std::string("CREATE ROLE klynaa LOGIN PASSWORD '") + password + "'");
      sql("postgres", std::string("CREATE ROLE klynaa_plain LOGIN PASSWORD '") + plain_password + "'");
    } catch (...) {
      stop();
      std::error_code ec;
      std::filesystem::remove_all(dir_, ec);
      throw;
    }
  }

  std::string admin_conninfo(const std::string& db) const {
    return "host=" + dir_ + " port=" + std::to_string(port_) + " user=klynaa_admin dbname=" + db +
           " connect_timeout=10";
  }

  /// Dirs left by a test process that died (its postgres died with it).
  static void remove_stale_dirs() {
    std::error_code ec;
    for (auto& e : std::filesystem::directory_iterator("/tmp", ec)) {
      if (e.path().filename().string().rfind("klynaa-pg-", 0) != 0) continue;
      std::ifstream in(e.path() / "owner");
      long pid = 0;
      if (!(in >> pid) || pid <= 0) continue;
      if (::kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH) std::filesystem::remove_all(e.path(), ec);
    }
  }

  std::string log_tail() const {
    std::ifstream in(log_);
    std::string all((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    return all.size() > 3000 ? all.substr(all.size() - 3000) : all;
  }

  /// Forks and execs `args` as the unprivileged user, output to the log.
  /// `pdeath`: the child gets SIGQUIT when this process dies.
  pid_t spawn(const std::vector<std::string>& args, bool pdeath) const {
    int log = ::open(log_.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (log < 0) throw std::runtime_error("pg_server: cannot open " + log_);
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    char env0[] = "LC_ALL=C", env1[] = "PATH=/usr/bin:/bin", env2[] = "TZ=UTC";
    char* envp[] = {env0, env1, env2, nullptr};
    const pid_t parent = ::getpid();
    const bool drop = ::geteuid() == 0;
    pid_t pid = ::fork();
    if (pid < 0) {
      ::close(log);
      throw std::runtime_error("pg_server: fork failed");
    }
    if (pid == 0) {  // only async-signal-safe calls from here
      ::dup2(log, 1);
      ::dup2(log, 2);
      int null = ::open("/dev/null", O_RDONLY);
      if (null >= 0) ::dup2(null, 0);
      if (::chdir(dir_.c_str()) != 0) _exit(126);
      if (drop && (::setgroups(0, nullptr) != 0 || ::setgid(gid_) != 0 || ::setuid(uid_) != 0)) _exit(126);
      // After the uid change: changing credentials clears the parent-death signal.
      if (pdeath && (::prctl(PR_SET_PDEATHSIG, SIGQUIT) != 0 || ::getppid() != parent)) _exit(126);
      ::execve(argv[0], argv.data(), envp);
      _exit(127);
    }
    ::close(log);
    return pid;
  }

  void run_initdb() {
    pid_t pid = spawn({bin_ + "/initdb", "-D", dir_ + "/data", "-U", "klynaa_admin", "--auth-local=trust",
                       "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C", "--no-sync",
                       "--no-instructions"},
                      true);
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
    int status = 0;
    while (::waitpid(pid, &status, WNOHANG) == 0) {
      if (std::chrono::steady_clock::now() > deadline) {
        ::kill(pid, SIGKILL);
        ::waitpid(pid, &status, 0);
        throw std::runtime_error("pg_server: initdb did not finish in 120 s: " + log_tail());
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
      throw std::runtime_error("pg_server: initdb failed (status " + std::to_string(status) + "): " + log_tail());
  }

  void start_postmaster() {
    // fsync off: the tests check behaviour, not power loss; restart() is a crash
    // of the server, not of the machine, so committed data survives it.
    pid_ = spawn({bin_ + "/postgres", "-D", dir_ + "/data", "-k", dir_, "-h", "127.0.0.1", "-p",
                  std::to_string(port_), "-c", "fsync=off", "-c", "full_page_writes=off", "-c",
                  "max_connections=40", "-c", "shared_buffers=16MB", "-c", "logging_collector=off"},
                 true);
    const std::string ping = admin_conninfo("postgres");
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    for (;;) {
      if (PQping(ping.c_str()) == PQPING_OK) return;
      int status = 0;
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        throw std::runtime_error("pg_server: postgres exited (status " + std::to_string(status) + "): " + log_tail());
      }
      if (std::chrono::steady_clock::now() > deadline)
        throw std::runtime_error("pg_server: postgres did not accept connections within 30 s on port " +
                                 std::to_string(port_) + ": " + log_tail());
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  }

  /// SIGQUIT is postgres's immediate shutdown (pg_ctl stop -m immediate).
  void stop() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGQUIT);
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    int status = 0;
    while (::waitpid(pid_, &status, WNOHANG) == 0) {
      if (std::chrono::steady_clock::now() > deadline) {
        ::kill(pid_, SIGKILL);
        ::waitpid(pid_, &status, 0);
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    pid_ = -1;
  }

  std::string bin_;
  std::string dir_;
  std::string log_;
  int port_ = 0;
  pid_t pid_ = -1;
  uid_t uid_ = 0;
  gid_t gid_ = 0;
  int databases_ = 0;
};

}  // namespace klynaa::test

// Tests of broker/store, its files and failures: schema versions (a newer one
// refused, older ones upgraded in place), a store that cannot be opened, a failed
// commit that applies nothing, a read-only store, and, for SQLite and the
// journal, durability across a kill -9 (docs/reliability.md, "What is
// guaranteed": accepted means stored).
#include "broker/store.hpp"
#include "broker/journal_format.hpp"
#include "broker/journal_store.hpp"
#include "broker/pg_store.hpp"
#include "pg_server.hpp"
#include "store_fixture.hpp"
#include "tests/support/temp_dir.hpp"

#include <catch2/catch.hpp>
#include <sqlite3.h>

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include <nlohmann/json.hpp>

using namespace klynaa::broker;
using namespace store_fixture;
using klynaa::test::temp_dir;

namespace {

/// Rewrites the format version in the header of every file of the journal.
void set_journal_version(const std::string& dir, uint32_t version) {
  for (auto& e : std::filesystem::directory_iterator(dir)) {
    auto name = e.path().filename().string();
    if (name.rfind("segment-", 0) != 0 && name.rfind("checkpoint-", 0) != 0) continue;
    std::fstream f(e.path(), std::ios::in | std::ios::out | std::ios::binary);
    char h[journal::file_header_size];
    f.read(h, sizeof h);
    uint32_t kind = 0;
    uint64_t seq = 0;
    std::memcpy(&kind, h + 12, sizeof kind);
    std::memcpy(&seq, h + 16, sizeof seq);
    auto header = journal::encode_file_header(static_cast<journal::file_kind>(kind), seq, version);
    f.seekp(0);
    f.write(header.data(), static_cast<std::streamsize>(header.size()));
  }
}

}  // namespace

TEST_CASE("a store with a newer schema version refuses to open and names the version",
          "[store]") {
  store_at at(KLYNAA_EACH_BACKEND);
  INFO("backend: " << at.backend);
  { auto s = at.open(); }
  at.sql("UPDATE meta SET value = '7' WHERE key = 'schema_version'",
         "UPDATE klynaa.meta SET value = '7' WHERE key = 'schema_version'",
         [](store_at& a) { set_journal_version(a.journal_dir(), 7); });
  for (bool read_only : {false, true}) {
    INFO("read_only " << read_only);
    store_error err;
    auto s = at.try_open(read_only, err);
    CHECK(s == nullptr);
    CHECK(err.message.find("schema version 7") != std::string::npos);
    if (at.backend == "postgres") {
      CHECK(err.message.find("store.url " + at.shown_url()) != std::string::npos);
      CHECK(err.message.find(klynaa::test::pg_server::password) == std::string::npos);
    }
  }
  // An older or equal version opens.
  at.sql("UPDATE meta SET value = '1' WHERE key = 'schema_version'",
         "UPDATE klynaa.meta SET value = '1' WHERE key = 'schema_version'",
         [](store_at& a) { set_journal_version(a.journal_dir(), 1); });
  at.open();
  at.open(true);
}

TEST_CASE("a version 1 store is upgraded in place: its jobs gain attempt_base 0", "[store]") {
  temp_dir dir;
  {
    auto s = open_store(dir / "klynaa.db");
    commit_one(*s, make_request("v1", {make_job("v1#1", 1)}));
  }
  raw_sql(dir / "klynaa.db", "ALTER TABLE jobs DROP COLUMN attempt_base; "
                    "UPDATE meta SET value = '1' WHERE key = 'schema_version'");
  {
    sqlite_options o;
    o.path = dir / "klynaa.db";
    o.read_only = true;
    store_error err;
    CHECK(open_sqlite_store(o, err) == nullptr);  // a reader cannot upgrade
    CHECK(err.message.find("schema version 1") != std::string::npos);
  }
  auto s = open_store(dir / "klynaa.db");
  auto j = s->find_job("v1#1");
  REQUIRE(j);
  CHECK(j->attempt_base == 0);
  CHECK(ids_of(unfinished(*s)) == std::vector<std::string>{"v1#1"});
}

TEST_CASE("a version 2 store is upgraded in place: its ok attempts are shown once, new ones too",
          "[store]") {
  temp_dir dir;
  {
    auto s = open_store(dir / "klynaa.db");
    commit_one(*s, make_request("v2", {make_job("v2#1", 1), make_job("v2#2", 2)}));
  }
  // Version 2 kept a successful attempt as an attempts row, like any other.
  raw_sql(dir / "klynaa.db", "ALTER TABLE jobs DROP COLUMN ok_node; ALTER TABLE jobs DROP COLUMN ok_duration_ms; "
                    "ALTER TABLE jobs DROP COLUMN ok_at_ms; "
                    "UPDATE jobs SET state = 3, attempts = 1 WHERE id = 'v2#1'; "
                    "INSERT INTO attempts VALUES('v2#1', 1, 'node-old', 'ok', '', 5, 1700000000000); "
                    "UPDATE meta SET value = '2' WHERE key = 'schema_version'");
  auto s = open_store(dir / "klynaa.db");
  auto old = nlohmann::json::parse(s->history_json("v2#1"));
  REQUIRE(old.size() == 1);
  CHECK(old[0]["node"] == "node-old");
  CHECK(old[0]["outcome"] == "ok");
  batch done;
  auto d = update("v2#2", job_state::done, 1, 2);
  d.node = "node-new";
  d.outcome = "ok";
  d.duration_ms = 3;
  done.updates.push_back(d);
  commit_ok(*s, done);
  auto h = nlohmann::json::parse(s->history_json("v2#2"));
  REQUIRE(h.size() == 1);
  CHECK(h[0]["node"] == "node-new");
  CHECK(h[0]["duration_ms"] == 3);
  CHECK(h[0]["attempt"] == 1);
}

TEST_CASE("a store that cannot be opened says which file", "[store]") {
  temp_dir dir;
  sqlite_options o;
  o.path = dir.path + "/no/such/dir/klynaa.db";
  store_error err;
  CHECK(open_sqlite_store(o, err) == nullptr);
  CHECK(err.message.find(o.path) != std::string::npos);
}

TEST_CASE("a failed commit applies nothing of its batch and says why", "[store]") {
  store_at at(KLYNAA_EACH_BACKEND);
  INFO("backend: " << at.backend);
  auto s = at.open();
  commit_one(*s, make_request("evt-1", {make_job("evt-1#1", 1)}));
  commit_one(*s, delivered("del-7", 7, 2));
  // A request the database refuses, as a full disk or an I/O error would.
  at.sql("CREATE TRIGGER refuse_boom BEFORE INSERT ON requests WHEN NEW.id LIKE 'boom%' "
         "BEGIN SELECT RAISE(ABORT, 'boom requests are refused'); END",
         "CREATE FUNCTION klynaa.refuse_boom() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
         "IF NEW.id LIKE 'boom%' THEN RAISE EXCEPTION 'boom requests are refused'; END IF; "
         "RETURN NEW; END $$; CREATE TRIGGER refuse_boom BEFORE INSERT ON klynaa.requests "
         "FOR EACH ROW EXECUTE FUNCTION klynaa.refuse_boom()",
         // The journal's disk refuses any record holding a boom request.
         [](store_at& a) { a.fs->fail_writes_containing("boom-", "boom requests are refused"); });

  batch b;
  b.requests.push_back(make_request("evt-2", {make_job("evt-2#1", 4)}));
  b.requests.push_back(closing("conf-7", 7, 5));
  b.updates.push_back(update("evt-1#1", job_state::done, 1, 1));
  b.children.push_back(make_job("#escrow-released-7", 6));
  b.requests.push_back(make_request("boom-1", {make_job("boom-1#1", 7)}));
  store_error err;
  CHECK(!s->commit(b, err));
  CHECK(err.message.find("boom requests are refused") != std::string::npos);

  auto check_nothing_applied = [&](store& st) {
    CHECK(!st.find_job("evt-2#1"));
    CHECK(!st.find_job("conf-7#1"));
    CHECK(!st.find_job("#escrow-released-7"));
    CHECK(!st.find_job("boom-1#1"));
    CHECK(st.find_job("evt-1#1")->state == job_state::ready);
    CHECK(st.find_job("del-7#2")->state == job_state::ready);  // not cancelled
    CHECK(st.max_seq() == 3);
  };
  check_nothing_applied(*s);

  // Regression: the statement that failed stayed un-reset, so every later commit
  // using it failed too ("bad parameter or other API misuse") and the broker
  // rejected every request until restarted.
  SECTION("the next commit works") {
    for (int round = 0; round < 2; ++round) {
      batch good = b;
      good.requests.pop_back();
      auto out = commit_ok(*s, good);
      CHECK(out.requests[0].duplicate == (round == 1));
      CHECK(out.requests[1].duplicate == (round == 1));
      CHECK(s->find_job("evt-2#1"));
      CHECK(s->find_job("evt-1#1")->state == job_state::done);
      CHECK(s->find_job("del-7#2")->state == job_state::cancelled);
      // And a failure again leaves the store usable again.
      batch bad;
      bad.requests.push_back(make_request("boom-2", {}));
      store_error e2;
      CHECK(!s->commit(bad, e2));
      CHECK(e2.message.find("boom requests are refused") != std::string::npos);
    }
  }
  SECTION("nothing of it is there after a reopen") {
    s.reset();
    auto again = at.open();
    check_nothing_applied(*again);
  }
}

TEST_CASE("a read-only store refuses commits and changes nothing", "[store]") {
  store_at at(KLYNAA_EACH_BACKEND);
  INFO("backend: " << at.backend);
  {
    auto s = at.open();
    commit_one(*s, make_request("evt-1", {make_job("evt-1#1", 1)}));
  }
  {
    auto ro = at.open(/*read_only=*/true);
    CHECK(ro->find_job("evt-1#1"));
    CHECK(ro->max_seq() == 1);
    batch b;
    b.requests.push_back(make_request("evt-2", {make_job("evt-2#1", 2)}));
    b.updates.push_back(update("evt-1#1", job_state::done, 1, 1));
    store_error err;
    CHECK(!ro->commit(b, err));
    CHECK(!err.message.empty());
    CHECK(!ro->find_job("evt-2#1"));
  }
  auto s = at.open();
  CHECK(!s->find_job("evt-2#1"));
  CHECK(s->find_job("evt-1#1")->state == job_state::ready);
  CHECK(!commit_one(*s, make_request("evt-2", {make_job("evt-2#1", 2)})).duplicate);
}

namespace {

/// The child of the kill -9 test: commits batches of 1 to 4 requests in a loop and
/// writes the id of each committed request to `fd`, one a line, once commit returned.
[[noreturn]] void commit_until_killed(const std::string& backend, const std::string& dir, int round, int fd) {
  store_error err;
  std::unique_ptr<store> s;
  if (backend == "journal") {
    journal_options o;
    o.dir = dir + "/journal";
    s = open_journal_store(o, err);
  } else {
    sqlite_options o;
    o.path = dir + "/klynaa.db";
    s = open_sqlite_store(o, err);
  }
  if (!s) _exit(2);
  int64_t seq = s->max_seq();
  for (int i = 0; i < 1000000; ++i) {
    batch b;
    for (int k = 0; k <= i % 4; ++k) {
      auto id = "r" + std::to_string(round) + "-" + std::to_string(i) + "-" + std::to_string(k);
      b.requests.push_back(make_request(id, {make_job(id + "#1", ++seq)}));
    }
    if (i > 0) {  // and a state change of an earlier job, as the broker batches them
      auto prev = "r" + std::to_string(round) + "-" + std::to_string(i - 1) + "-0#1";
      b.updates.push_back(update(prev, job_state::running, 1, 0));
    }
    if (!s->commit(b, err)) _exit(3);
    std::string acks;
    for (auto& r : b.requests) acks += r.id + "\n";
    for (size_t off = 0; off < acks.size();) {
      ssize_t n = ::write(fd, acks.data() + off, acks.size() - off);
      if (n <= 0) _exit(4);
      off += static_cast<size_t>(n);
    }
  }
  _exit(0);
}

/// Reads what is available on `fd` into `buf` for up to `ms`; false at end of file.
bool read_for(int fd, std::string& buf, int ms) {
  pollfd p{fd, POLLIN, 0};
  if (::poll(&p, 1, ms) <= 0) return true;
  char chunk[4096];
  ssize_t n = ::read(fd, chunk, sizeof chunk);
  if (n <= 0) return false;
  buf.append(chunk, static_cast<size_t>(n));
  return true;
}

}  // namespace

TEST_CASE("every request acknowledged before a kill -9 is a duplicate after reopening",
          "[store]") {
  const std::string backend = GENERATE(as<std::string>{}, "sqlite", "journal");
  INFO("backend: " << backend);
  temp_dir dir;
  std::mt19937 rng(std::random_device{}());
  size_t total_acked = 0;
  for (int round = 0; round < 4; ++round) {
    INFO("round " << round);
    int fds[2];
    REQUIRE(::pipe(fds) == 0);
    pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
      ::close(fds[0]);
      commit_until_killed(backend, dir.path, round, fds[1]);
    }
    ::close(fds[1]);

    // Wait for the first acknowledgement, then kill at a random moment after it.
    std::string buf;
    bool open = true;
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (open && buf.find('\n') == std::string::npos &&
           std::chrono::steady_clock::now() < deadline)
      open = read_for(fds[0], buf, 20);
    auto kill_at = std::chrono::steady_clock::now() +
                   std::chrono::microseconds(std::uniform_int_distribution<int>(0, 300000)(rng));
    while (open && std::chrono::steady_clock::now() < kill_at) open = read_for(fds[0], buf, 1);
    ::kill(pid, SIGKILL);
    int status = 0;
    REQUIRE(::waitpid(pid, &status, 0) == pid);
    // What the child wrote before it died was acknowledged: read it to the end.
    while (read_for(fds[0], buf, 1000)) {
    }
    ::close(fds[0]);
    INFO("child status " << status);
    REQUIRE(WIFSIGNALED(status));
    REQUIRE(WTERMSIG(status) == SIGKILL);

    std::vector<std::string> acked;
    for (size_t pos = 0, nl; (nl = buf.find('\n', pos)) != std::string::npos; pos = nl + 1)
      acked.push_back(buf.substr(pos, nl - pos));
    REQUIRE(!acked.empty());
    total_acked += acked.size();

    std::unique_ptr<store> s;
    if (backend == "journal") {
      journal_options o;
      o.dir = dir / "journal";
      store_error err;
      s = open_journal_store(o, err);
      INFO(err.message);
      REQUIRE(s);
    } else {
      s = open_store(dir / "klynaa.db");
    }
    batch again;
    for (auto& id : acked) again.requests.push_back(make_request(id, {make_job(id + "#9", 1)}));
    auto out = commit_ok(*s, again);
    for (size_t i = 0; i < acked.size(); ++i) {
      INFO(acked[i]);
      CHECK(out.requests[i].duplicate);
      CHECK(out.requests[i].job_ids == std::vector<std::string>{acked[i] + "#1"});
      REQUIRE(out.requests[i].existing.size() == 1);
    }
    CHECK(!s->find_job(acked.back() + "#9"));
    store_error err;
    CHECK(s->load_unfinished([](job_record&&) {}, err));
    if (backend == "journal") {
      // Batches are atomic: every stored request has its one job, no more, no less.
      auto st = static_cast<journal_store&>(*s).stats();
      CHECK(st.requests == st.jobs);
      CHECK(st.requests >= total_acked);
      s.reset();  // and its lock, before the next child opens it
      continue;
    }
    s.reset();
    // Batches are atomic: every stored request has its one job, no more, no less.
    CHECK(raw_count(dir / "klynaa.db", "SELECT COUNT(*) FROM requests") ==
          raw_count(dir / "klynaa.db", "SELECT COUNT(*) FROM jobs"));
    CHECK(raw_count(dir / "klynaa.db", "SELECT COUNT(*) FROM requests") >=
          static_cast<int64_t>(total_acked));
    CHECK(raw_count(dir / "klynaa.db", "SELECT COUNT(*) FROM pragma_integrity_check WHERE "
                              "integrity_check <> 'ok'") == 0);
  }
}

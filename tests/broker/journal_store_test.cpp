// Tests of the journal store (broker/journal_store.hpp; docs/design.md, "The
// journal store") beyond the store tests every backend runs (store_test.cpp,
// store_jobs_test.cpp, store_durability_test.cpp): what a done job keeps, the
// state rebuilt from the log and from checkpoints, compaction and retention,
// read-only views, and commits under injected faults (journal_fault_fs.hpp).
#include "broker/journal_store.hpp"

#include <catch2/catch.hpp>

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "journal_fault_fs.hpp"
#include "store_fixture.hpp"
#include "tests/support/temp_dir.hpp"

using namespace klynaa::broker;
using namespace store_fixture;
using klynaa::test::fault_fs;
using klynaa::test::temp_dir;

namespace {

struct journal_at {
  temp_dir dir;
  std::shared_ptr<fault_fs> fs = std::make_shared<fault_fs>();
  journal_options opts;
  journal_at() {
    opts.dir = dir / "journal";
    opts.fs = fs;
  }
  std::unique_ptr<journal_store> try_open(store_error& err, bool read_only = false) {
    auto o = opts;
    o.read_only = read_only;
    return open_journal_store(o, err);
  }
  std::unique_ptr<journal_store> open(bool read_only = false) {
    store_error err;
    auto s = try_open(err, read_only);
    INFO("open: " << err.message);
    REQUIRE(s);
    return s;
  }
  std::vector<std::string> files() const {
    std::vector<std::string> names;
    for (auto& e : std::filesystem::directory_iterator(opts.dir)) names.push_back(e.path().filename());
    std::sort(names.begin(), names.end());
    return names;
  }
  size_t count(const std::string& prefix) const {
    auto f = files();
    return static_cast<size_t>(std::count_if(f.begin(), f.end(), [&](auto& n) { return n.rfind(prefix, 0) == 0; }));
  }
};

nlohmann::json record_json(const job_record& j) {
  return {{"id", j.id}, {"request_id", j.request_id}, {"function", j.function}, {"data", j.data_json},
          {"okey", j.ordering_key}, {"seq", j.seq}, {"state", static_cast<int>(j.state)}, {"due", j.due_ms},
          {"attempts", j.attempts}, {"ts", j.ts_ms}, {"created", j.created_ms}, {"updated", j.updated_ms},
          {"auto", j.auto_release}, {"base", j.attempt_base}, {"error", j.last_error_json},
          {"result", j.result_json}};
}

/// Everything the store answers about `ids`, and its counts, as JSON text.
std::string snapshot(store& s, const std::vector<std::string>& ids) {
  nlohmann::json out;
  for (auto& id : ids) {
    auto j = s.find_job(id);
    out["jobs"][id] = j ? record_json(*j) : nlohmann::json();
    out["history"][id] = nlohmann::json::parse(s.history_json(id));
  }
  auto counts = s.count_by_function();
  std::sort(counts.begin(), counts.end());
  for (auto& [fn, st, n] : counts) out["counts"].push_back({fn, static_cast<int>(st), n});
  out["max_seq"] = s.max_seq();
  out["unfinished"] = ids_of(unfinished(s));
  out["dead"] = ids_of(s.list_jobs(job_state::dead, 100));
  return out.dump(1);
}

job_update ended(const std::string& id, job_state st, int64_t attempts, int64_t seq, const std::string& outcome,
                 const std::string& error = "", const std::string& result = "") {
  auto u = update(id, st, attempts, seq);
  u.outcome = outcome;
  u.node = "node-a";
  u.duration_ms = 12;
  u.last_error_json = error;
  u.result_json = result;
  return u;
}

/// A state with every kind of thing the journal keeps; the ids to look at.
std::vector<std::string> build_varied_state(store& s) {
  const std::string err = R"({"code":"transient","message":"HTTP 503"})";
  batch b;
  b.requests.push_back(make_request("pub", {make_job("pub#1", 1), make_job("pub#2", 2, "notifyNearbyWorkers")}));
  b.requests.push_back(make_request("inv", {make_job("inv#1", 3, "processEscrowRelease")}, /*op=*/1));
  b.requests.push_back(make_request("odd", {make_job("j-odd", 4)}));  // ids not "<request>#n"
  b.requests.push_back(closing("conf-9", 9, 5));
  b.requests.push_back(delivered("del-9", 9, 6));  // closed already: its auto-release is not stored
  b.requests.push_back(delivered("del-8", 8, 8));
  commit_ok(s, b);
  batch u;
  u.updates.push_back(ended("pub#1", job_state::done, 1, 1, "ok", "", R"({"sent":1})"));
  u.updates.push_back(ended("pub#2", job_state::retry_wait, 1, 2, "retry", err));
  u.updates.push_back(ended("inv#1", job_state::done, 1, 3, "ok", "", R"({"released":true})"));
  u.updates.push_back(ended("j-odd", job_state::dead, 5, 4, "dead", err));
  u.updates.push_back(update("conf-9#1", job_state::running, 1, 5));
  u.children.push_back(make_job("#escrow-released-9", 10, "sendPickupNotification", "pickup:9"));
  commit_ok(s, u);
  commit_one(s, closing("conf-8", 8, 11));  // cancels del-8#2
  return {"pub#1", "pub#2", "inv#1", "j-odd", "conf-9#1", "del-9#1", "del-9#2", "del-8#1", "del-8#2",
          "#escrow-released-9", "conf-8#1"};
}

/// The duplicate answers of every request of build_varied_state.
std::string duplicates(store& s) {
  nlohmann::json out;
  for (auto id : {"pub", "inv", "odd", "conf-9", "del-9", "del-8", "conf-8"}) {
    auto o = commit_one(s, make_request(id, {make_job(std::string(id) + "#x", 99)}));
    nlohmann::json e = {{"dup", o.duplicate}, {"op", o.original_op}, {"ids", o.job_ids}};
    for (auto& j : o.existing) e["existing"].push_back(record_json(j));
    out[id] = e;
  }
  return out.dump(1);
}

}  // namespace

TEST_CASE("journal store: a done job keeps its result only when it belongs to an invoke request",
          "[journal][store]") {
  journal_at at;
  auto s = at.open();
  batch b;
  b.requests.push_back(make_request("inv", {make_job("inv#1", 1, "processEscrowRelease")}, /*op=*/1));
  b.requests.push_back(make_request("pub", {make_job("pub#1", 2)}, /*op=*/0));
  commit_ok(*s, b);
  batch done;
  done.updates.push_back(ended("inv#1", job_state::done, 1, 1, "ok", "", R"({"released":true})"));
  done.updates.push_back(ended("pub#1", job_state::done, 1, 2, "ok", "", R"({"sent":1})"));
  commit_ok(*s, done);
  auto check = [](store& st) {
    CHECK(st.find_job("inv#1")->result_json == R"({"released":true})");
    CHECK(st.find_job("pub#1")->result_json.empty());
    CHECK(st.find_job("pub#1")->data_json.empty());  // compact: what a done job needs, no more
    CHECK(st.find_job("pub#1")->request_id == "pub");
    auto dup = commit_one(st, make_request("inv", {make_job("inv#1", 9)}, 1));
    CHECK(dup.duplicate);
    REQUIRE(dup.existing.size() == 1);
    CHECK(dup.existing[0].state == job_state::done);
    CHECK(dup.existing[0].result_json == R"({"released":true})");  // a repeated invoke answers with it
  };
  check(*s);
  s.reset();
  s = at.open();
  check(*s);  // rebuilt from the log
  store_error err;
  REQUIRE(s->checkpoint(err));
  s.reset();
  s = at.open();
  check(*s);  // and from a checkpoint
}

TEST_CASE("journal store: the state rebuilt from the log or a checkpoint answers as the live one did",
          "[journal][store]") {
  journal_at at;
  auto s = at.open();
  auto ids = build_varied_state(*s);
  const auto live = snapshot(*s, ids);
  INFO(live);
  s.reset();

  s = at.open();  // from the log
  CHECK(snapshot(*s, ids) == live);
  store_error err;
  REQUIRE(s->checkpoint(err));
  CHECK(at.files() == std::vector<std::string>{"LOCK", journal_checkpoint_name(3), journal_segment_name(4)});
  s.reset();

  s = at.open();  // from the checkpoint alone
  CHECK(s->stats().checkpoint_bytes > 0);
  CHECK(snapshot(*s, ids) == live);
  const auto dups = duplicates(*s);  // written to the log after the checkpoint
  s.reset();
  s = at.open();  // the checkpoint and the log after it
  CHECK(snapshot(*s, ids) == live);
  CHECK(duplicates(*s) == dups);
  // The closed pickup survived both: a later delivery gets no auto-release.
  CHECK(commit_one(*s, delivered("del-9b", 9, 20)).job_ids == std::vector<std::string>{"del-9b#1"});
}

TEST_CASE("journal store: checkpoints delete old segments, and a request due in 30 days survives them all",
          "[journal][store]") {
  journal_at at;
  at.opts.segment_bytes = 4096;
  at.opts.checkpoint_min_bytes = 16384;
  at.opts.synchronous_full = false;  // durability is not what this test is about: no fsync per commit
  auto s = at.open();
  const int64_t due = wall_ms() + 30LL * 86400000;
  auto later = make_request("later", {make_job("later#1", 1)});
  later.jobs[0].due_ms = due;
  commit_one(*s, later);
  int64_t seq = 1;
  for (int i = 0; i < 400; ++i) {  // traffic that ends, and is pruned as it goes
    auto id = "r" + std::to_string(i);
    commit_one(*s, make_request(id, {make_job(id + "#1", ++seq)}));
    batch fin;
    fin.updates.push_back(ended(id + "#1", job_state::done, 1, seq, "ok"));
    fin.prune_before_ms = wall_ms() + 1000;
    commit_ok(*s, fin);
  }
  CHECK(s->stats().checkpoints >= 3);
  CHECK(at.count("checkpoint-") == 1);  // the older ones went with their segments
  CHECK(at.count("segment-") <= 8);
  CHECK(s->stats().requests == 1);  // only the pending one's key is left
  s.reset();
  s = at.open();
  auto left = unfinished(*s);
  REQUIRE(left.size() == 1);
  CHECK(left[0].id == "later#1");
  CHECK(left[0].due_ms == due);
  CHECK(commit_one(*s, make_request("later", {make_job("later#9", 900)})).duplicate);
  CHECK(!commit_one(*s, make_request("r5", {make_job("r5#1", 901)})).duplicate);  // pruned
}

TEST_CASE("journal store: a dedup key is kept until every job of its request ended before the cut",
          "[journal][store]") {
  journal_at at;
  auto s = at.open();
  auto old = make_request("old", {make_job("old#1", 1), make_job("old#2", 2)});
  old.accepted_ms = wall_ms() - 30LL * 86400000;  // accepted long before any cut below
  commit_one(*s, old);
  batch one;
  one.updates.push_back(ended("old#1", job_state::done, 1, 1, "ok"));
  commit_ok(*s, one);
  const int64_t week_ago = wall_ms() - 7LL * 86400000;
  CHECK(s->prune(week_ago) == 0);  // old#1 ended just now, after the cut
  CHECK(s->prune(wall_ms() + 1000) == 1);  // old#1 goes; old#2 still runs, so the key stays
  CHECK(commit_one(*s, make_request("old", {})).duplicate);
  batch two;
  two.updates.push_back(ended("old#2", job_state::done, 1, 2, "ok"));
  commit_ok(*s, two);
  CHECK(s->prune(week_ago) == 0);
  CHECK(s->prune(wall_ms() + 1000) == 2);  // old#2, then the key
  CHECK(!commit_one(*s, make_request("old", {})).duplicate);
}

TEST_CASE("journal store: a read-only open beside a writer in this process is a live view of it",
          "[journal][store]") {
  journal_at at;
  auto w = at.open();
  commit_one(*w, make_request("a", {make_job("a#1", 1)}));
  auto view = at.open(/*read_only=*/true);
  CHECK(view->find_job("a#1"));
  commit_one(*w, make_request("b", {make_job("b#1", 2)}));
  CHECK(view->find_job("b#1"));  // what the writer committed since
  CHECK(view->max_seq() == 2);
  store_error err;
  batch b;
  b.requests.push_back(make_request("c", {make_job("c#1", 3)}));
  CHECK(!view->commit(b, err));
  CHECK(err.message.find("read-only") != std::string::npos);
  w.reset();
  CHECK(view->find_job("b#1"));  // the writer gone: the view keeps what it saw
  auto again = at.open();  // and the journal can be opened for writing again
  CHECK(again->find_job("b#1"));
}

TEST_CASE("journal store: a view reads while the writer commits, from another thread", "[journal][store]") {
  journal_at at;
  at.opts.synchronous_full = false;  // many commits, quickly
  auto w = at.open();
  auto view = at.open(/*read_only=*/true);
  std::atomic<bool> stop{false};
  std::atomic<int64_t> reads{0};
  std::thread reader([&] {
    while (!stop.load()) {
      auto dead = view->list_jobs(job_state::dead, 10);
      for (auto& j : dead) CHECK(view->history_json(j.id) != "[]");
      int64_t n = 0;
      for (auto& [fn, st, c] : view->count_by_function()) n += c;
      CHECK(n <= view->max_seq());
      reads.fetch_add(1);
    }
  });
  for (int i = 1; i <= 300; ++i) {
    auto id = "v" + std::to_string(i);
    batch b;
    b.requests.push_back(make_request(id, {make_job(id + "#1", i)}));
    if (i > 1) {
      auto prev = "v" + std::to_string(i - 1) + "#1";
      b.updates.push_back(i % 3 ? ended(prev, job_state::done, 1, i - 1, "ok")
                                : ended(prev, job_state::dead, 1, i - 1, "dead", R"({"code":"x"})"));
    }
    if (i % 50 == 0) b.prune_before_ms = wall_ms() + 1000;
    commit_ok(*w, b);
  }
  store_error err;
  REQUIRE(w->checkpoint(err));
  stop = true;
  reader.join();
  CHECK(reads.load() > 0);
  CHECK(view->list_jobs(job_state::dead, 1000).size() == 100);  // every third
}

TEST_CASE("journal store: a read-only open with no writer reads the files and changes none of them",
          "[journal][store]") {
  journal_at at;
  { commit_one(*at.open(), make_request("a", {make_job("a#1", 1)})); }
  const auto seg = at.opts.dir + "/" + journal_segment_name(1);
  std::ofstream(seg, std::ios::app | std::ios::binary) << "torn";
  const auto before = klynaa::test::read_file(seg);
  auto ro = at.open(/*read_only=*/true);
  CHECK(ro->find_job("a#1"));
  REQUIRE(ro->recovery_cut());
  CHECK(ro->recovery_cut()->bytes == 4);
  CHECK(klynaa::test::read_file(seg) == before);
  CHECK(at.files() == std::vector<std::string>{"LOCK", journal_segment_name(1)});
}

TEST_CASE("journal store: a commit cut short by a full disk applies nothing, and the next one works",
          "[journal][store][faults]") {
  journal_at at;
  auto s = at.open();
  commit_one(*s, delivered("del-7", 7, 1));
  const auto ids = std::vector<std::string>{"del-7#1", "del-7#2", "conf-7#1", "evt#1"};
  const auto before = snapshot(*s, ids);
  batch b;
  b.requests.push_back(closing("conf-7", 7, 3));  // would cancel del-7#2
  b.requests.push_back(make_request("evt", {make_job("evt#1", 4)}));
  b.updates.push_back(update("del-7#1", job_state::running, 1, 1));
  at.fs->short_write_next(40);
  store_error err;
  CHECK(!s->commit(b, err));
  CHECK(err.message.find("No space left on device") != std::string::npos);
  CHECK(snapshot(*s, ids) == before);
  CHECK(!commit_one(*s, make_request("evt", {make_job("evt#1", 4)})).duplicate);  // not stored before
  at.fs->fail_next_sync();
  CHECK(!s->commit(b, err));  // written, but the sync failed: not applied either
  CHECK(err.message.find("Input/output error") != std::string::npos);
  CHECK(s->find_job("del-7#2")->state == job_state::ready);
  auto out = commit_ok(*s, b);
  CHECK(out.requests[0].cancelled == std::vector<std::string>{"del-7#2"});
  const auto after = snapshot(*s, ids);
  s.reset();
  at.fs->crash();
  s = at.open();
  CHECK(!s->recovery_cut());
  CHECK(snapshot(*s, ids) == after);
}

TEST_CASE("journal store: with synchronous full a crash loses nothing acknowledged; with normal, a prefix stays",
          "[journal][store][faults]") {
  journal_at at;
  {
    auto s = at.open();
    for (int i = 1; i <= 5; ++i)
      commit_one(*s, make_request("f" + std::to_string(i), {make_job("f" + std::to_string(i) + "#1", i)}));
  }
  at.fs->crash();
  {
    auto s = at.open();
    for (int i = 1; i <= 5; ++i) CHECK(s->find_job("f" + std::to_string(i) + "#1"));
  }
  at.opts.synchronous_full = false;
  {
    auto s = at.open();
    for (int i = 6; i <= 9; ++i)
      commit_one(*s, make_request("f" + std::to_string(i), {make_job("f" + std::to_string(i) + "#1", i)}));
  }
  at.fs->crash(/*keep=*/150);  // some of the unsynced records reached the disk, the last one torn
  auto s = at.open();
  REQUIRE(s->recovery_cut());
  CHECK(s->recovery_cut()->file == at.opts.dir + "/" + journal_segment_name(1));
  CHECK(s->recovery_cut()->bytes > 0);
  int present = 0;
  for (int i = 1; i <= 9; ++i) {
    const bool there = s->find_job("f" + std::to_string(i) + "#1").has_value();
    if (i <= 5) CHECK(there);
    if (there) CHECK(present == i - 1);  // a prefix: nothing after a gap
    present += there ? 1 : 0;
  }
  CHECK(present < 9);
}

TEST_CASE("journal store: damage before the end refuses to open, naming the file and the offset",
          "[journal][store][faults]") {
  journal_at at;
  {
    auto s = at.open();
    for (int i = 1; i <= 3; ++i)
      commit_one(*s, make_request("d" + std::to_string(i), {make_job("d" + std::to_string(i) + "#1", i)}));
  }
  const auto seg = at.opts.dir + "/" + journal_segment_name(1);
  SECTION("a bit flip in the first record") {
    std::fstream f(seg, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(journal::file_header_size + 40);
    f.put('\x7f');
    f.close();
    store_error err;
    CHECK(!at.try_open(err));
    CHECK(err.message.find(seg + " at offset " + std::to_string(journal::file_header_size)) != std::string::npos);
  }
  SECTION("a bad checkpoint") {
    {
      auto s = at.open();
      store_error err;
      REQUIRE(s->checkpoint(err));
    }
    const auto ck = at.opts.dir + "/" + journal_checkpoint_name(3);
    std::fstream f(ck, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(journal::file_header_size + 30);
    f.put('\x01');
    f.close();
    store_error err;
    CHECK(!at.try_open(err));
    CHECK(err.message.find(ck + " at offset " + std::to_string(journal::file_header_size)) != std::string::npos);
  }
}

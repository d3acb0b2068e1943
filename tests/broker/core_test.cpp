// The broker's loop (broker_core) in this process, on a store whose commits the
// test can hold: what ends up in which group commit. The fake node and the
// client are the integration tests' (tests/integration/fake_node.hpp,
// support.hpp); here they talk to the loop over inproc and 127.0.0.1.
#include "broker/core.hpp"
#include "broker/dlq.hpp"

#include <condition_variable>
#include <functional>
#include <mutex>
#include <thread>

#include <catch2/catch.hpp>

#include "../integration/fake_node.hpp"
#include "../integration/support.hpp"

using namespace klynaa;
using namespace klynaa::test;
using namespace std::chrono_literals;
namespace cl = protocol::cluster;

namespace {

/// A store that forwards to SQLite, can hold a commit until released, and
/// remembers every job update it committed, by commit.
class gated_store final : public broker::store {
 public:
  explicit gated_store(std::unique_ptr<broker::store> inner) : inner_(std::move(inner)) {}

  /// The next commit waits in the writer until release().
  void hold() {
    std::lock_guard<std::mutex> lk(mu_);
    holding_ = true;
  }
  void release() {
    {
      std::lock_guard<std::mutex> lk(mu_);
      holding_ = false;
    }
    cv_.notify_all();
  }
  bool held() {
    std::lock_guard<std::mutex> lk(mu_);
    return waiting_;
  }
  /// (commit number, job id, state, outcome) of each update committed so far.
  std::vector<std::tuple<int, std::string, broker::job_state, std::string>> updates() {
    std::lock_guard<std::mutex> lk(mu_);
    return updates_;
  }

  std::optional<broker::commit_outcome> commit(const broker::batch& b, broker::store_error& err) override {
    {
      std::unique_lock<std::mutex> lk(mu_);
      waiting_ = holding_;
      cv_.wait(lk, [&] { return !holding_; });
      waiting_ = false;
    }
    auto out = inner_->commit(b, err);
    std::lock_guard<std::mutex> lk(mu_);
    ++commits_;
    if (out)
      for (auto& u : b.updates) updates_.emplace_back(commits_, u.id, u.state, u.outcome);
    return out;
  }
  bool load_unfinished(const std::function<void(broker::job_record&&)>& sink, broker::store_error& err) override {
    return inner_->load_unfinished(sink, err);
  }
  int64_t max_seq() override { return inner_->max_seq(); }
  std::optional<broker::job_record> find_job(const std::string& id) override { return inner_->find_job(id); }
  std::vector<broker::job_record> list_jobs(broker::job_state s, size_t limit) override {
    return inner_->list_jobs(s, limit);
  }
  std::string history_json(const std::string& id) override { return inner_->history_json(id); }
  std::vector<std::tuple<std::string, broker::job_state, int64_t>> count_by_function() override {
    return inner_->count_by_function();
  }

 private:
  std::unique_ptr<broker::store> inner_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool holding_ = false;
  bool waiting_ = false;
  int commits_ = 0;
  std::vector<std::tuple<int, std::string, broker::job_state, std::string>> updates_;
};

/// A broker_core on a temp dir, its loop on a thread of its own.
struct loop_fixture {
  temp_dir dir;  // first: removed last, after the loop and its store are gone
  zmq::context_t ctx;
  gated_store* store = nullptr;
  std::unique_ptr<broker::broker_core> core;
  std::atomic<int> phase{static_cast<int>(broker::phase::running)};
  std::thread thread;
  std::string ingress;
  const std::string cluster = "inproc://core-test-cluster";

  /// `at`: the data dir (default: a temp dir of its own), e.g. a stopped
  /// loop's, for a restart; `tweak` changes the options before the start.
  explicit loop_fixture(std::string at = {}, const std::function<void(broker::broker_options&)>& tweak = {}) {
    const std::string data = at.empty() ? dir.path : at;
    broker::sqlite_options so;
    so.path = data + "/broker.db";
    broker::store_error serr;
    auto inner = broker::open_sqlite_store(so, serr);
    REQUIRE(inner);
    auto gs = std::make_unique<gated_store>(std::move(inner));
    store = gs.get();
    broker::broker_options o;
    o.ingress_bind = "tcp://127.0.0.1:*";
    o.cluster_binds = {cluster};
    o.data_dir = data;
    if (tweak) tweak(o);
    core = std::make_unique<broker::broker_core>(ctx, o, std::move(gs));
    std::string err;
    REQUIRE(core->open(err));
    ingress = core->bound_endpoints()["ingress"].get<std::string>();
    thread = std::thread([this] { core->run(phase); });
  }
  ~loop_fixture() {
    store->release();
    phase = static_cast<int>(broker::phase::stopping);
    thread.join();
    core.reset();
  }
  int64_t ok_of(const std::string& function) {
    auto s = core->stats();
    auto f = s.functions.find(function);
    if (f == s.functions.end()) return 0;
    auto ok = f->second.outcomes.find("ok");
    return ok == f->second.outcomes.end() ? 0 : ok->second;
  }
};

json created(int64_t pickup) {
  return {{"pickup_id", pickup}, {"customer_id", 101}, {"lat", 0.1}, {"lng", 0.2}};
}

}  // namespace

TEST_CASE("a job's start and end that meet in one open batch are committed as one update") {
  loop_fixture f;
  fake_node node(f.ctx, f.cluster, "a", {"geo"}, 10);
  raw_client client(f.ctx, f.ingress);
  auto accepted = [&](const std::string& id, int64_t pickup) {
    auto r = client.call(publish_frame(id, "pickup.created", created(pickup)));
    return r && r->status == protocol::reply_status::accepted;
  };
  REQUIRE(accepted("a", 1));
  REQUIRE(accepted("b", 1));  // waits for a: same pickup
  auto a = node.next_job();
  REQUIRE(a);
  REQUIRE(a->job_id == "a#1");
  CHECK(!node.next_job(200ms));  // b#1 is held back behind a#1

  // Hold the writer in a commit (a request of another pickup), so that what
  // follows gathers in the open batch behind it.
  f.store->hold();
  client.send_frames({"", publish_frame("z", "pickup.created", created(5))});
  REQUIRE(wait_for([&] { return f.store->held(); }, 10000ms));
  node.finish(*a);  // b#1 may run now: its start goes into the open batch
  auto b = node.next_job();
  REQUIRE(b);
  CHECK(b->job_id == "b#1");
  node.finish(*b);  // and its end, into the same one
  REQUIRE(wait_for([&] { return f.ok_of("notifyNearbyWorkers") == 2; }, 10000ms));
  f.store->release();
  REQUIRE(wait_for(
      [&] {
        for (auto& [n, id, state, outcome] : f.store->updates())
          if (id == "b#1" && state == broker::job_state::done) return true;
        return false;
      },
      10000ms));

  std::vector<std::tuple<int, std::string, broker::job_state, std::string>> of_b;
  for (auto& u : f.store->updates())
    if (std::get<1>(u) == "b#1") of_b.push_back(u);
  REQUIRE(of_b.size() == 1);  // not `running` and then `done`
  CHECK(std::get<2>(of_b[0]) == broker::job_state::done);
  CHECK(std::get<3>(of_b[0]) == "ok");
  // a#1 started before the hold: its start and end are two updates, in two commits.
  std::vector<int> commits_of_a;
  for (auto& [n, id, state, outcome] : f.store->updates())
    if (id == "a#1") commits_of_a.push_back(n);
  REQUIRE(commits_of_a.size() == 2);
  CHECK(commits_of_a[0] < commits_of_a[1]);
}

// --- The dead-letter gauge (klynaa_dead_letters, /stats dead_letters) --------

namespace {

/// What `klynaa dlq list` counts: a read-only store of its own on the same file.
struct dlq_view {
  broker::dlq_reader reader;
  explicit dlq_view(const std::string& data_dir)
      : reader([path = data_dir + "/broker.db"]() -> std::unique_ptr<broker::store> {
          broker::sqlite_options so;
          so.path = path;
          so.read_only = true;
          broker::store_error e;
          return broker::open_sqlite_store(so, e);
        }) {}
  int64_t total() { return reader.list(1000).value("total", int64_t{-1}); }
};

int64_t gauge(loop_fixture& f) { return f.core->stats().dead_letters; }

/// The gauge and the list agree on `n` (each step commits through the writer).
void check_dlq(loop_fixture& f, dlq_view& v, int64_t n) {
  bool ok = wait_for([&] { return v.total() == n && gauge(f) == n; }, 10000ms);
  INFO("dlq list " << v.total() << ", gauge " << gauge(f) << ", expected " << n);
  CHECK(ok);
}

void small_retries(broker::broker_options& o) {
  o.cfg.retry = {2, 0, 0};  // 2 attempts, retried at once
  o.cfg.scheduler.misfire_grace_seconds = 0;
}

}  // namespace

TEST_CASE("the dead-letter gauge equals the dead-letter queue after every kind of death, replay, purge and "
          "restart", "[dlq]") {
  temp_dir data;
  auto f = std::make_unique<loop_fixture>(data.path, small_retries);
  dlq_view view(data.path);
  auto client = std::make_unique<raw_client>(f->ctx, f->ingress);  // closed before its context
  auto publish = [&](const std::string& id, const std::string& type, const json& d) {
    auto r = client->call(publish_frame(id, type, d));
    REQUIRE(r);
    REQUIRE(r->status == protocol::reply_status::accepted);
  };
  check_dlq(*f, view, 0);
  auto node = std::make_unique<fake_node>(f->ctx, f->cluster, "a", std::vector<std::string>{"geo"}, 10);

  // 1. A permanent failure (Django's 404), dying while the writer is held in
  // another commit: the gauge must not count it before the store holds it.
  publish("p404", "pickup.created", created(1));
  auto j = node->next_job();
  REQUIRE(j);
  f->store->hold();
  client->send_frames({"", publish_frame("z", "pickup.created", created(99))});
  REQUIRE(wait_for([&] { return f->store->held(); }, 10000ms));
  node->finish(*j, "permanent", "http_404", "no such pickup", 404);
  std::this_thread::sleep_for(400ms);  // the loop has taken the DONE and published its stats
  CHECK(view.total() == 0);
  CHECK(gauge(*f) == 0);  // not 1: the death is not stored yet
  f->store->release();
  REQUIRE(!client->recv_frames().empty());  // z's `accepted`
  check_dlq(*f, view, 1);
  auto z = node->next_job();
  REQUIRE(z);
  node->finish(*z);

  // 2. Attempts exhausted: two transient failures.
  publish("p503", "pickup.created", created(2));
  for (int attempt = 1; attempt <= 2; ++attempt) {
    auto t = node->next_job();
    REQUIRE(t);
    CHECK(t->attempt == attempt);
    node->finish(*t, "transient", "http_503", "Django is down", 503);
  }
  check_dlq(*f, view, 2);

  // 3. Attempts exhausted by a lost lease: the second attempt's node leaves.
  publish("plost", "pickup.created", created(3));
  auto l1 = node->next_job();
  REQUIRE(l1);
  node->finish(*l1, "transient", "timeout", "no answer");
  auto l2 = node->next_job();
  REQUIRE(l2);
  CHECK(l2->attempt == 2);
  node->send(cl::bye{});
  check_dlq(*f, view, 3);
  node = std::make_unique<fake_node>(f->ctx, f->cluster, "b", std::vector<std::string>{"geo"}, 10);

  // 4. A fan-out job (updateWorkerLocation, to every geo node) that fails permanently.
  publish("loc", "worker.location", {{"worker_id", 201}, {"lat", 0.1}, {"lng", 0.2}, {"available", true}});
  auto fo = node->next_job();
  REQUIRE(fo);
  CHECK(fo->function == "updateWorkerLocation");
  node->finish(*fo, "permanent", "invalid_data", "bad worker");
  check_dlq(*f, view, 4);

  // 5. Replay one, then all; the replayed jobs succeed.
  auto one = f->core->dlq_command("replay", {"p404#1", "p404#1"}, false, 10000ms);  // named twice: once
  CHECK(one["replayed"] == json::array({"p404#1"}));
  check_dlq(*f, view, 3);
  auto r1 = node->next_job();
  REQUIRE(r1);
  node->finish(*r1);
  auto all = f->core->dlq_command("replay", {}, true, 10000ms);
  CHECK(all["replayed"].size() == 3);
  check_dlq(*f, view, 0);
  for (int i = 0; i < 3; ++i) {
    auto r = node->next_job();
    REQUIRE(r);
    node->finish(*r, i == 0 ? "ok" : "permanent", "http_404", "gone", 404);  // two die again
  }
  check_dlq(*f, view, 2);

  // 6. Purge one; the other stays across a restart.
  auto dead = view.reader.list(10)["jobs"];
  REQUIRE(dead.size() == 2);
  const std::string purged = dead[0]["job_id"], kept = dead[1]["job_id"];
  auto p1 = f->core->dlq_command("purge", {purged, purged}, false, 10000ms);
  CHECK(p1["purged"] == json::array({purged}));
  check_dlq(*f, view, 1);

  node.reset();
  client.reset();
  f.reset();  // the broker stops; another starts on its store
  f = std::make_unique<loop_fixture>(data.path, small_retries);
  CHECK(gauge(*f) == 1);  // at once, from the store
  check_dlq(*f, view, 1);
  auto pall = f->core->dlq_command("purge", {}, true, 10000ms);
  CHECK(pall["purged"] == json::array({kept}));
  check_dlq(*f, view, 0);
}

// Django's 429 with Retry-After: 2 s and max_delay_ms = 1000 (the issue): the
// next attempt is 2 s away, not at most 1 s.
TEST_CASE("a transient failure's Retry-After is waited past retry.max_delay_ms", "[backoff]") {
  loop_fixture f({}, [](broker::broker_options& o) {
    o.cfg.retry = {8, 100, 1000};
    o.cfg.scheduler.misfire_grace_seconds = 0;
  });
  fake_node node(f.ctx, f.cluster, "a", {"geo"}, 10);
  raw_client client(f.ctx, f.ingress);
  auto r = client.call(publish_frame("ra", "pickup.created", created(1)));
  REQUIRE(r);
  REQUIRE(r->status == protocol::reply_status::accepted);
  auto j = node.next_job();
  REQUIRE(j);
  cl::done d;
  d.job_id = j->job_id;
  d.lease = j->lease;
  d.outcome = "transient";
  d.error_code = "http_429";
  d.http_status = 429;
  d.retry_after_ms = 2000;
  d.credit = 1;
  const auto sent = std::chrono::steady_clock::now();
  node.send(d);
  auto again = node.next_job(10000ms);
  const auto waited = std::chrono::steady_clock::now() - sent;
  REQUIRE(again);
  CHECK(again->attempt == 2);
  INFO("next attempt after " << std::chrono::duration_cast<std::chrono::milliseconds>(waited).count() << " ms");
  CHECK(waited >= 1950ms);  // 2 s, less the clock's and the loop's slack
  CHECK(waited < 5000ms);
}

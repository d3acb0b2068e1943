// Tests of broker/admission: the checks of docs/ingress-protocol.md ("Checks,
// in order", `overloaded` and `shutting_down`) and docs/reliability.md ("What
// each fault does"), and the write request a request becomes. In-process, no
// sockets: each test passes the broker's state and `now`.
#include "broker/admission.hpp"

#include <catch2/catch.hpp>

#include "protocol/jobs.hpp"

using namespace klynaa;
using namespace klynaa::broker;

namespace {

protocol::request created(const std::string& id, int64_t pickup = 7) {
  protocol::request r;
  r.operation = protocol::op::publish;
  r.id = id;
  r.type = "pickup.created";
  r.ts_ms = 1700000000000;
  r.data = {{"pickup_id", pickup}, {"customer_id", 101}, {"lat", 0.1}, {"lng", 0.2}};
  return r;
}

struct seqs {
  int64_t next = 41;
  int calls = 0;
  std::function<int64_t()> fn() {
    return [this] {
      ++calls;
      return ++next;
    };
  }
};

void check_refused(const admission& a, protocol::error_code code, int64_t retry_after) {
  REQUIRE(a.reply);
  CHECK(a.reply->status == protocol::reply_status::rejected);
  REQUIRE(a.reply->error);
  CHECK(a.reply->error->code == std::string(protocol::to_string(code)));
  CHECK(a.reply->retry_after_ms == retry_after);
  CHECK(a.write.jobs.empty());
}

}  // namespace

TEST_CASE("a ping is answered pong and writes nothing", "[admission]") {
  protocol::request ping;
  ping.operation = protocol::op::ping;
  admission_state st;
  st.draining = true;  // a draining broker still answers ping
  seqs s;
  auto a = admit(ping, st, protocol::config{}, 1000, s.fn());
  REQUIRE(a.reply);
  CHECK(a.reply->status == protocol::reply_status::pong);
  CHECK(a.reply->version);
  CHECK(s.calls == 0);
}

TEST_CASE("a draining broker answers shutting_down before any other check", "[admission]") {
  admission_state st;
  st.draining = true;
  st.pending = 10;
  st.commit_failures = 3;
  st.disk_free_mb = 1;
  protocol::config cfg;
  cfg.ingress.max_pending = 5;
  seqs s;
  auto a = admit(created("r1"), st, cfg, 1000, s.fn());
  check_refused(a, protocol::error_code::shutting_down, 1000);
  CHECK(a.reply->id == std::optional<std::string>("r1"));
  CHECK(s.calls == 0);
}

TEST_CASE("ingress.max_pending pending jobs make a request overloaded, one fewer does not", "[admission]") {
  protocol::config cfg;
  cfg.ingress.max_pending = 5;
  admission_state st;
  st.pending = 5;
  seqs s;
  auto a = admit(created("r1"), st, cfg, 1000, s.fn());
  check_refused(a, protocol::error_code::overloaded, 1000);
  CHECK(a.reply->error->message == "the broker holds 5 pending jobs (ingress.max_pending); retry later");
  st.pending = 4;
  CHECK_FALSE(admit(created("r1"), st, cfg, 1000, s.fn()).reply);
}

TEST_CASE("a failing store rejects every request as overloaded naming the store's error", "[admission]") {
  admission_state st;
  st.commit_failures = 1;
  st.last_commit_error = "disk full";
  st.disk_free_mb = 1;  // the store's failure is the first to say so
  seqs s;
  auto a = admit(created("r1"), st, protocol::config{}, 1000, s.fn());
  check_refused(a, protocol::error_code::overloaded, 1000);
  CHECK(a.reply->error->message ==
        "the broker cannot write to its store (disk full); nothing was stored, retry later");
  auto same = store_failure_rejection(std::string("r1"), "disk full");
  CHECK(same.error->message == a.reply->error->message);
  CHECK(same.retry_after_ms == 1000);
}

TEST_CASE("free disk space under ingress.min_free_disk_mb rejects with a 5 s retry, unmeasured space does not",
          "[admission]") {
  protocol::config cfg;
  cfg.ingress.min_free_disk_mb = 64;
  admission_state st;
  st.disk_free_mb = 63;
  seqs s;
  auto a = admit(created("r1"), st, cfg, 1000, s.fn());
  check_refused(a, protocol::error_code::overloaded, 5000);
  CHECK(a.reply->error->message ==
        "the broker's disk has 63 MB free, under ingress.min_free_disk_mb (64); nothing was stored, retry later");
  st.disk_free_mb = 64;
  CHECK_FALSE(admit(created("r1"), st, cfg, 1000, s.fn()).reply);
  st.disk_free_mb = -1;
  CHECK_FALSE(admit(created("r1"), st, cfg, 1000, s.fn()).reply);
}

TEST_CASE("an admitted request becomes the write of the jobs it implies, numbered in order", "[admission]") {
  protocol::config cfg;
  seqs s;
  auto req = created("r1", 7);
  auto a = admit(req, admission_state{}, cfg, 5000, s.fn());
  REQUIRE_FALSE(a.reply);
  const auto& w = a.write;
  CHECK(w.id == "r1");
  CHECK(w.type == "pickup.created");
  CHECK(w.op == static_cast<int>(protocol::op::publish));
  CHECK(w.ts_ms == req.ts_ms);
  CHECK(w.accepted_ms == 5000);
  auto expected = protocol::derive_jobs(req, cfg.escrow.hold_seconds * 1000);
  REQUIRE(w.jobs.size() == expected.jobs.size());
  REQUIRE_FALSE(w.jobs.empty());
  for (size_t i = 0; i < w.jobs.size(); ++i) {
    CHECK(w.jobs[i].id == expected.jobs[i].id);
    CHECK(w.jobs[i].request_id == "r1");
    CHECK(w.jobs[i].function == expected.jobs[i].function);
    CHECK(w.jobs[i].ordering_key == "pickup:7");
    CHECK(w.jobs[i].seq == 42 + static_cast<int64_t>(i));
    CHECK(w.jobs[i].state == job_state::ready);
    CHECK(w.jobs[i].created_ms == 5000);
    CHECK(w.jobs[i].ts_ms == req.ts_ms);
  }
  CHECK(s.calls == static_cast<int>(w.jobs.size()));
}

TEST_CASE("a delivered pickup's write holds the delayed auto-release, a confirmation closes the pickup",
          "[admission]") {
  protocol::config cfg;
  seqs s;
  protocol::request delivered;
  delivered.id = "d1";
  delivered.type = "pickup.delivered";
  delivered.ts_ms = 1000;
  delivered.data = {{"pickup_id", 7}, {"customer_id", 101}, {"worker_id", 3}};
  auto a = admit(delivered, admission_state{}, cfg, 2000, s.fn());
  REQUIRE_FALSE(a.reply);
  bool release = false;
  for (auto& j : a.write.jobs)
    if (j.auto_release) {
      release = true;
      CHECK(j.due_ms > 2000);
    }
  CHECK(release);
  protocol::request confirmed;
  confirmed.id = "c1";
  confirmed.type = "pickup.confirmed";
  confirmed.ts_ms = 1000;
  confirmed.data = {{"pickup_id", 7}, {"customer_id", 101}, {"worker_id", 3}};
  auto c = admit(confirmed, admission_state{}, cfg, 2000, s.fn());
  REQUIRE_FALSE(c.reply);
  CHECK(c.write.closes_pickup == std::optional<int64_t>(7));
}

TEST_CASE("a message with the wrong frames is malformed with a nil id and the frame count", "[admission]") {
  auto r = frame_layout_rejection(3);
  CHECK(r.status == protocol::reply_status::rejected);
  CHECK_FALSE(r.id);
  REQUIRE(r.error);
  CHECK(r.error->code == "malformed");
  CHECK(r.error->message ==
        "a request is one msgpack frame, optionally preceded by one empty delimiter frame; got 3 frames");
}

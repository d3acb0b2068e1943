// The PostgreSQL store's commit (pg_store.cpp, "One round trip per commit"):
// queue_batch() sends BEGIN, the fence, a few set-based statements for the
// whole batch and COMMIT in libpq's pipeline mode, each with a handler for its
// result; read_pipeline() then reads every result after the one sync. Nothing
// sent may depend on a result not read yet: each step's logic runs in the
// server. A commit's statements, whatever its size (docs/performance.md, "The
// PostgreSQL store"): one apply_requests per run of independent requests
// (usually one run), one update_jobs, one insert_attempts, one insert_children.
#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "broker/pg_store_impl.hpp"

namespace klynaa::broker {

using namespace pg_detail;

namespace {

int64_t now_ms() {
  using namespace std::chrono;
  return duration_cast<milliseconds>(system_clock::now().time_since_epoch()).count();
}

int64_t mono_ns() {
  using namespace std::chrono;
  return duration_cast<nanoseconds>(steady_clock::now().time_since_epoch()).count();
}

/// As sqlite_store's pickup_of: the pickup of "pickup:N", else -1.
int64_t pickup_of(const std::string& okey) {
  constexpr const char prefix[] = "pickup:";
  if (okey.rfind(prefix, 0) != 0) return -1;
  return std::stoll(okey.substr(sizeof(prefix) - 1));
}

/// A job as to_jsonb() shows a row of klynaa.jobs (a duplicate's `existing`).
job_record job_from_json(const nlohmann::json& o) {
  job_record j;
  j.id = o.at("id").get<std::string>();
  j.request_id = o.at("request_id").get<std::string>();
  j.function = o.at("function").get<std::string>();
  j.data_json = o.at("data").get<std::string>();
  j.ordering_key = o.at("okey").get<std::string>();
  j.seq = o.at("seq").get<int64_t>();
  j.state = static_cast<job_state>(o.at("state").get<int>());
  j.due_ms = o.at("due_ms").get<int64_t>();
  j.attempts = o.at("attempts").get<int64_t>();
  j.ts_ms = o.at("ts_ms").get<int64_t>();
  j.created_ms = o.at("created_ms").get<int64_t>();
  j.updated_ms = o.at("updated_ms").get<int64_t>();
  j.auto_release = o.at("auto_release").get<bool>();
  j.last_error_json = o.at("last_error").get<std::string>();
  j.result_json = o.at("result").get<std::string>();
  j.attempt_base = o.at("attempt_base").get<int64_t>();
  return j;
}

/// The elements of an int[] in text form ("{1,2}").
std::vector<int64_t> int_array(const std::string& text) {
  std::vector<int64_t> out;
  const char* p = text.c_str();
  while (*p) {
    if (*p == '-' || (*p >= '0' && *p <= '9')) {
      char* end = nullptr;
      out.push_back(std::strtoll(p, &end, 10));
      p = end;
    } else {
      ++p;
    }
  }
  return out;
}

/// Splits the batch's requests into runs that one set-based statement applies
/// as if one at a time: within a run no two requests share a request id, a
/// job id or a pickup (one closes or auto-releases it). Anything one of them
/// does that another could see — a duplicate id, a job id already inserted, a
/// pickup closed or its auto-release cancelled — is then between runs, and
/// later statements of a pipeline see earlier ones. Returns each run's end.
std::vector<size_t> independent_runs(const std::vector<new_request>& requests) {
  std::vector<size_t> ends;
  std::unordered_set<std::string_view> request_ids, job_ids;
  std::unordered_set<int64_t> pickups;
  auto conflicts = [&](const new_request& r) {
    if (request_ids.count(r.id)) return true;
    if (r.closes_pickup && pickups.count(*r.closes_pickup)) return true;
    for (auto& j : r.jobs)
      if (job_ids.count(j.id) || (j.auto_release && pickups.count(pickup_of(j.ordering_key)))) return true;
    return false;
  };
  for (size_t i = 0; i < requests.size(); ++i) {
    auto& r = requests[i];
    if (conflicts(r)) {
      ends.push_back(i);
      request_ids.clear();
      job_ids.clear();
      pickups.clear();
    }
    request_ids.insert(r.id);
    if (r.closes_pickup) pickups.insert(*r.closes_pickup);
    for (auto& j : r.jobs) {
      job_ids.insert(j.id);
      if (j.auto_release) pickups.insert(pickup_of(j.ordering_key));
    }
  }
  if (!requests.empty()) ends.push_back(requests.size());
  return ends;
}

/// The ids of the jobs the batch ends (done or cancelled): they move to
/// klynaa.jobs_done in the same commit (pg_sql.cpp, move_finished). Empty
/// when none does.
std::string ended_ids(const batch& b) {
  array_param ids;
  bool any = false;
  auto ends = [](job_state s) { return s == job_state::done || s == job_state::cancelled; };
  for (auto& u : b.updates)
    if (ends(u.state)) ids.text(u.id), any = true;
  for (auto& c : b.children)
    if (ends(c.state)) ids.text(c.id), any = true;
  return any ? ids.done() : std::string();
}

std::vector<std::string> string_array(const std::string& json_text) {
  std::vector<std::string> out;
  auto v = nlohmann::json::parse(json_text, nullptr, false);
  if (v.is_array())
    for (auto& e : v)
      if (e.is_string()) out.push_back(e.get<std::string>());
  return out;
}

/// The 15 columns of a job as parallel arrays, in the order apply_requests and
/// insert_children read them (broker/pg_sql.cpp): one place that encodes a job.
struct job_columns {
  array_param id, request_id, function, data, okey, seq, state, due, attempts, ts, created, auto_rel,
      last_error, result, attempt_base;
  void add(const job_record& j, int64_t now) {
    id.text(j.id);
    request_id.text(j.request_id);
    function.text(j.function);
    data.text(j.data_json);
    okey.text(j.ordering_key);
    seq.i64(j.seq);
    state.i64(static_cast<int>(j.state));
    due.i64(j.due_ms);
    attempts.i64(j.attempts);
    ts.i64(j.ts_ms);
    created.i64(j.created_ms ? j.created_ms : now);
    auto_rel.boolean(j.auto_release);
    last_error.text(j.last_error_json);
    result.text(j.result_json);
    attempt_base.i64(j.attempt_base);
  }
  params& into(params& p) {
    return p.add(id.done()).add(request_id.done()).add(function.done()).add(data.done()).add(okey.done())
        .add(seq.done()).add(state.done()).add(due.done()).add(attempts.done()).add(ts.done())
        .add(created.done()).add(auto_rel.done()).add(last_error.done()).add(result.done())
        .add(attempt_base.done());
  }
};

}  // namespace

void pg_store::impl::send(const char* name, const params& p, handler h, std::vector<handler>& queue) {
  auto ptrs = p.pointers();
  if (!PQsendQueryPrepared(conn, name, p.size(), ptrs.data(), nullptr, nullptr, 0))
    throw pg_failure(one_line(PQerrorMessage(conn)));
  queue.push_back(std::move(h));
}

void pg_store::impl::send_sql(const char* sql, std::vector<handler>& queue) {
  if (!PQsendQueryParams(conn, sql, 0, nullptr, nullptr, nullptr, nullptr, 0))
    throw pg_failure(one_line(PQerrorMessage(conn)));
  queue.push_back([](const PGresult*) {});
}

void pg_store::impl::queue_batch(const batch& b, int64_t now, commit_outcome& out, std::vector<handler>& q) {
  send_sql("BEGIN", q);
  if (fence_token) send("fence", params().add(*fence_token).add(holder), {}, q);
  out.requests.resize(b.requests.size());
  size_t first = 0;
  for (size_t end : independent_runs(b.requests)) {
    queue_requests(b, first, end, now, out, q);
    first = end;
  }
  queue_updates(b, now, q);
  queue_children(b, now, out, q);
  if (auto ids = ended_ids(b); !ids.empty()) send("move_finished", params().add(std::move(ids)), {}, q);
  if (b.prune_before_ms) queue_prune(*b.prune_before_ms, b.prune_limit, out, q);
  if (!b.replay_ids.empty() || b.replay_all) queue_replay(b, now, out, q);
  if (!b.purge_ids.empty() || b.purge_all) queue_purge(b, out, q);
  if (b.probe) send("probe", params().add(now), {}, q);
  // The server sends the results so far before it commits, so that the
  // client sees how long COMMIT (the WAL flush) took on its own (commit_stats).
  if (!PQsendFlushRequest(conn)) throw pg_failure(one_line(PQerrorMessage(conn)));
  send_sql("COMMIT", q);
}

void pg_store::impl::queue_requests(const batch& b, size_t first, size_t last, int64_t now,
                                    commit_outcome& out, std::vector<handler>& q) {
  array_param id, op, type, ts, accepted, closes;
  array_param rn, k, pickup;
  job_columns jobs;
  for (size_t i = first; i < last; ++i) {
    auto& r = b.requests[i];
    id.text(r.id);
    op.i64(r.op);
    type.text(r.type);
    ts.i64(r.ts_ms);
    accepted.i64(r.accepted_ms);
    if (r.closes_pickup) closes.i64(*r.closes_pickup); else closes.null();
    for (size_t n = 0; n < r.jobs.size(); ++n) {
      auto& j = r.jobs[n];
      rn.i64(static_cast<int64_t>(i - first + 1));
      k.i64(static_cast<int64_t>(n + 1));
      jobs.add(j, now);
      // Only an auto-release checks whether its pickup is closed (as in SQLite).
      if (j.auto_release) pickup.i64(pickup_of(j.ordering_key)); else pickup.null();
    }
  }
  params p;
  p.add(id.done()).add(op.done()).add(type.done()).add(ts.done()).add(accepted.done()).add(closes.done())
      .add(now).add(rn.done()).add(k.done());
  jobs.into(p).add(pickup.done());
  send("apply_requests", p, [&out, &b, first, last](const PGresult* res) {
    if (PQntuples(res) != static_cast<int>(last - first))
      throw std::runtime_error("apply_requests returned " + std::to_string(PQntuples(res)) + " rows for " +
                               std::to_string(last - first) + " requests");
    for (int row = 0; row < PQntuples(res); ++row) {
      const size_t i = first + static_cast<size_t>(i64(res, row, 0)) - 1;
      auto& r = b.requests.at(i);
      auto& o = out.requests.at(i);
      if (!PQgetisnull(res, row, 1)) {  // a duplicate of a request committed earlier
        o.duplicate = true;
        o.original_op = static_cast<int>(i64(res, row, 1));
        o.job_ids = string_array(text(res, row, 2));
        for (auto& j : nlohmann::json::parse(text(res, row, 3))) o.existing.push_back(job_from_json(j));
        continue;
      }
      if (!PQgetisnull(res, row, 4))
        for (int64_t n : int_array(text(res, row, 4))) {
          const auto index = static_cast<size_t>(n - 1);
          o.job_ids.push_back(r.jobs.at(index).id);
          o.created.push_back(static_cast<uint32_t>(index));
        }
      if (!PQgetisnull(res, row, 5)) o.cancelled = string_array(text(res, row, 5));
    }
  }, q);
}

void pg_store::impl::queue_updates(const batch& b, int64_t now, std::vector<handler>& q) {
  if (b.updates.empty()) return;
  // One UPDATE row per job and one history row per (job, attempt): the last
  // of each, as applying them one after the other would leave it. (An UPDATE
  // that joins two source rows to one target row applies an arbitrary one.)
  struct attempt_hash {
    size_t operator()(const std::pair<std::string_view, int64_t>& a) const {
      return std::hash<std::string_view>()(a.first) * 31 + std::hash<int64_t>()(a.second);
    }
  };
  std::unordered_map<std::string_view, size_t> last_update;
  std::unordered_map<std::pair<std::string_view, int64_t>, size_t, attempt_hash> last_attempt;
  for (size_t i = 0; i < b.updates.size(); ++i) {
    auto& u = b.updates[i];
    last_update[u.id] = i;
    if (!u.outcome.empty()) last_attempt[{u.id, u.attempts}] = i;
  }
  array_param id, state, attempts, due, seq, last_error, result;
  array_param a_id, a_attempt, a_node, a_outcome, a_error, a_duration;
  bool any_attempt = false;
  for (size_t i = 0; i < b.updates.size(); ++i) {
    auto& u = b.updates[i];
    if (last_update[u.id] == i) {
      id.text(u.id);
      state.i64(static_cast<int>(u.state));
      attempts.i64(u.attempts);
      due.i64(u.due_ms);
      seq.i64(u.seq);
      last_error.text(u.last_error_json);
      result.text(u.result_json);
    }
    if (!u.outcome.empty() && last_attempt[{u.id, u.attempts}] == i) {
      any_attempt = true;
      a_id.text(u.id);
      a_attempt.i64(u.attempts);
      a_node.text(u.node);
      a_outcome.text(u.outcome);
      a_error.text(u.last_error_json);
      a_duration.i64(u.duration_ms);
    }
  }
  send("update_jobs", params().add(id.done()).add(state.done()).add(attempts.done()).add(due.done())
           .add(seq.done()).add(last_error.done()).add(result.done()).add(now), {}, q);
  if (any_attempt)
    send("insert_attempts", params().add(a_id.done()).add(a_attempt.done()).add(a_node.done())
             .add(a_outcome.done()).add(a_error.done()).add(a_duration.done()).add(now), {}, q);
}

void pg_store::impl::queue_children(const batch& b, int64_t now, commit_outcome& out, std::vector<handler>& q) {
  out.children_inserted.assign(b.children.size(), false);
  if (b.children.empty()) return;
  // A repeated id is inserted at most once, the first time: only that one is sent.
  auto first_of = std::make_shared<std::unordered_map<std::string, size_t>>();
  job_columns jobs;
  for (size_t i = 0; i < b.children.size(); ++i) {
    auto& c = b.children[i];
    if (!first_of->emplace(c.id, i).second) continue;
    jobs.add(c, now);
  }
  params p;
  jobs.into(p).add(now);
  send("insert_children", p, [&out, first_of](const PGresult* r) {
    for (int row = 0; row < PQntuples(r); ++row) out.children_inserted.at(first_of->at(text(r, row, 0))) = true;
  }, q);
}

void pg_store::impl::queue_prune(int64_t before_ms, int64_t limit, commit_outcome& out, std::vector<handler>& q) {
  params p;
  p.add(before_ms).add(limit);
  send("prune_jobs", p, [&out, limit](const PGresult* r) {
    const int64_t jobs = i64(r, 0, 0);
    out.pruned += jobs;
    out.prune_more = out.prune_more || jobs >= limit;
  }, q);
  send("prune_requests", p, [&out, limit](const PGresult* r) {
    const int64_t requests = i64(r, 0, 0);
    out.pruned += requests;
    out.prune_more = out.prune_more || requests >= limit;
  }, q);
}

void pg_store::impl::queue_replay(const batch& b, int64_t now, commit_outcome& out, std::vector<handler>& q) {
  params p;
  if (b.replay_all)
    p.null().add(b.replay_limit);
  else
    p.add(nlohmann::json(b.replay_ids).dump()).null();
  p.add(b.replay_seq_base).add(now);
  send("replay", p, [&out](const PGresult* r) {
    for (int i = 0; i < PQntuples(r); ++i) out.replayed.push_back(read_job(r, i));
  }, q);
  // Dead jobs left after replaying the oldest replay_limit: there were more.
  if (b.replay_all)
    send("dead_left", params(), [&out](const PGresult* r) { out.replay_more = text(r, 0, 0) == "t"; }, q);
}

void pg_store::impl::queue_purge(const batch& b, commit_outcome& out, std::vector<handler>& q) {
  params p;
  if (b.purge_all)
    p.null();
  else
    p.add(nlohmann::json(b.purge_ids).dump());
  send("purge", p, [&out, &b](const PGresult* r) {
    for (int i = 0; i < PQntuples(r); ++i) out.purged.push_back(text(r, i, 0));
    if (b.purge_all) return;
    // In the order asked for, as the SQLite store answers.
    auto pos = [&b](const std::string& id) {
      return std::find(b.purge_ids.begin(), b.purge_ids.end(), id) - b.purge_ids.begin();
    };
    std::stable_sort(out.purged.begin(), out.purged.end(),
                     [&](const std::string& x, const std::string& y) { return pos(x) < pos(y); });
  }, q);
}

/// Reads the results of the queued statements up to the sync. Returns the
/// first error (empty when every statement succeeded and COMMIT returned).
std::string pg_store::impl::read_pipeline(const std::vector<handler>& q, int64_t& results_before_commit_ns) {
  std::string error;
  size_t idx = 0;
  for (;;) {
    result_ptr r(PQgetResult(conn));
    if (!r) {
      if (PQstatus(conn) != CONNECTION_OK) break;
      if (++idx > q.size()) break;  // cannot happen: no sync after the last statement
      if (idx + 1 == q.size()) results_before_commit_ns = mono_ns();  // COMMIT's is next
      continue;
    }
    auto st = PQresultStatus(r.get());
    if (st == PGRES_PIPELINE_SYNC) break;
    if (st == PGRES_FATAL_ERROR || st == PGRES_NONFATAL_ERROR || st == PGRES_BAD_RESPONSE) {
      if (error.empty()) error = result_error(r.get());
    } else if (st == PGRES_PIPELINE_ABORTED) {
      if (error.empty()) error = "pipeline aborted";
    } else if (error.empty() && idx < q.size() && q[idx]) {
      try {
        q[idx](r.get());
      } catch (const std::exception& e) {
        error = std::string("reading a result: ") + e.what();
      }
    }
  }
  if (!connected()) {
    if (error.empty() || error == "pipeline aborted") error = one_line(PQerrorMessage(conn));
    if (error.empty()) error = "the connection was lost";
  }
  return error;
}

std::optional<commit_outcome> pg_store::impl::commit(const batch& b, store_error& err) {
  const int64_t t0 = mono_ns();
  if (!ensure_connected(&err)) return std::nullopt;
  commit_outcome out;
  std::vector<handler> q;
  std::string error;
  int64_t t_sent = 0, t_results = 0;
  try {
    if (!PQenterPipelineMode(conn)) throw pg_failure(one_line(PQerrorMessage(conn)));
    queue_batch(b, now_ms(), out, q);
    if (!PQpipelineSync(conn)) throw pg_failure(one_line(PQerrorMessage(conn)));
    t_sent = mono_ns();
    error = read_pipeline(q, t_results);
  } catch (const std::exception& e) {
    // A send failed half-way: the pipeline's state is unknown, drop the connection.
    err.message = message(std::string("commit failed: ") + e.what());
    disconnect();
    return std::nullopt;
  }
  if (!connected()) {
    err.message = message("commit failed, the connection was lost: " + error);
    disconnect();
    return std::nullopt;
  }
  if (!PQexitPipelineMode(conn)) {
    err.message = message("commit failed: " + one_line(PQerrorMessage(conn)));
    disconnect();
    return std::nullopt;
  }
  if (!error.empty()) {
    // An explicit transaction that failed stays open (aborted) after the sync.
    if (PQtransactionStatus(conn) != PQTRANS_IDLE) PQclear(PQexec(conn, "ROLLBACK"));
    err.message = message(error);
    return std::nullopt;
  }
  const int64_t t_end = mono_ns();
  if (t_results == 0) t_results = t_end;
  stats.commits += 1;
  stats.statements += static_cast<int64_t>(q.size());
  stats.encode_ns += t_sent - t0;
  stats.execute_ns += t_results - t_sent;
  stats.commit_ns += t_end - t_results;
  stats.total_ns += t_end - t0;
  return out;
}

}  // namespace klynaa::broker

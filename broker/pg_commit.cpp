// The PostgreSQL store's commit (pg_store.cpp, "One round trip per commit"):
// queue_batch() sends BEGIN, the fence, one prepared statement per item of the
// batch and COMMIT in libpq's pipeline mode, each with a handler for its result;
// read_pipeline() then reads every result after the one sync. Nothing sent may
// depend on a result not read yet: each step's logic runs in the server.
#include <algorithm>
#include <chrono>
#include <string>
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

/// A request's candidate jobs as the JSON array apply_request reads.
std::string jobs_param(const std::vector<job_record>& jobs, int64_t now) {
  auto arr = nlohmann::json::array();
  for (auto& j : jobs) {
    nlohmann::json o = {{"id", j.id},
                        {"request_id", j.request_id},
                        {"function", j.function},
                        {"data", j.data_json},
                        {"okey", j.ordering_key},
                        {"seq", j.seq},
                        {"state", static_cast<int>(j.state)},
                        {"due_ms", j.due_ms},
                        {"attempts", j.attempts},
                        {"ts_ms", j.ts_ms},
                        {"created_ms", j.created_ms ? j.created_ms : now},
                        {"auto_release", j.auto_release},
                        {"last_error", j.last_error_json},
                        {"result", j.result_json},
                        {"attempt_base", j.attempt_base}};
    // Only an auto-release checks whether its pickup is closed (as in SQLite).
    if (j.auto_release) o["pickup"] = pickup_of(j.ordering_key);
    arr.push_back(std::move(o));
  }
  return arr.dump();
}

std::vector<std::string> string_array(const std::string& json_text) {
  std::vector<std::string> out;
  auto v = nlohmann::json::parse(json_text, nullptr, false);
  if (v.is_array())
    for (auto& e : v)
      if (e.is_string()) out.push_back(e.get<std::string>());
  return out;
}

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
  for (size_t i = 0; i < b.requests.size(); ++i) queue_request(b.requests[i], now, out.requests[i], q);
  for (auto& u : b.updates) {
    send("update_job", params().add(u.id).add(static_cast<int>(u.state)).add(u.attempts).add(u.due_ms)
             .add(u.seq).add(u.last_error_json).add(u.result_json).add(now), {}, q);
    if (!u.outcome.empty())
      send("insert_attempt", params().add(u.id).add(u.attempts).add(u.node).add(u.outcome)
               .add(u.last_error_json).add(u.duration_ms).add(now), {}, q);
  }
  out.children_inserted.assign(b.children.size(), false);
  for (size_t i = 0; i < b.children.size(); ++i) {
    auto& c = b.children[i];
    send("insert_job", params().add(c.id).add(c.request_id).add(c.function).add(c.data_json)
             .add(c.ordering_key).add(c.seq).add(static_cast<int>(c.state)).add(c.due_ms)
             .add(c.attempts).add(c.ts_ms).add(c.created_ms ? c.created_ms : now).add(now)
             .add(c.auto_release).add(c.last_error_json).add(c.result_json).add(c.attempt_base),
         [&out, i](const PGresult* r) { out.children_inserted[i] = std::string(PQcmdTuples(const_cast<PGresult*>(r))) == "1"; },
         q);
  }
  if (b.prune_before_ms) queue_prune(*b.prune_before_ms, b.prune_limit, out, q);
  if (!b.replay_ids.empty() || b.replay_all) queue_replay(b, now, out, q);
  if (!b.purge_ids.empty() || b.purge_all) queue_purge(b, out, q);
  if (b.probe) send("probe", params().add(now), {}, q);
  // The server sends the results so far before it commits, so that the
  // client sees how long COMMIT (the WAL flush) took on its own (commit_stats).
  if (!PQsendFlushRequest(conn)) throw pg_failure(one_line(PQerrorMessage(conn)));
  send_sql("COMMIT", q);
}

void pg_store::impl::queue_request(const new_request& r, int64_t now, request_outcome& out, std::vector<handler>& q) {
  send("request_jobs", params().add(r.id), [&out](const PGresult* res) {
    for (int i = 0; i < PQntuples(res); ++i) out.existing.push_back(read_job(res, i));
  }, q);
  params p;
  p.add(r.id).add(r.op).add(r.type).add(r.ts_ms).add(r.accepted_ms).add(r.closes_pickup).add(now)
      .add(jobs_param(r.jobs, now));
  send("apply_request", p, [&out, &r](const PGresult* res) {
    if (!PQgetisnull(res, 0, 0)) {
      out.duplicate = true;
      out.original_op = static_cast<int>(i64(res, 0, 0));
      out.job_ids = string_array(text(res, 0, 1));
      return;
    }
    out.existing.clear();  // not a duplicate: nothing was there before
    auto ordinals = nlohmann::json::parse(text(res, 0, 2));
    for (auto& n : ordinals) {
      const auto index = n.get<size_t>() - 1;
      out.job_ids.push_back(r.jobs.at(index).id);
      out.created.push_back(static_cast<uint32_t>(index));
    }
    out.cancelled = string_array(text(res, 0, 3));
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

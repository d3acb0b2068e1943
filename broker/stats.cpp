// The typed stats and their JSON (stats.hpp). The keys are those of
// docs/operations.md ("Watching it"); tests and the dashboard read them.
#include "broker/stats.hpp"

namespace klynaa::broker {

namespace {

using json = nlohmann::json;

json functions_json(const std::map<std::string, function_stats>& functions) {
  json out = json::object();
  for (auto& [fn, f] : functions) {
    json& o = out[fn];
    for (auto& [state, n] : f.states) o[state] = n;
    if (!f.outcomes.empty()) o["outcomes"] = f.outcomes;
  }
  return out;
}

json nodes_json(const std::vector<node_view>& nodes) {
  json out = json::array();
  for (auto& n : nodes)
    out.push_back({{"name", n.name}, {"kinds", n.kinds}, {"credit", n.credit}, {"running", n.running},
                   {"last_heartbeat_ms", n.last_heartbeat_ms}, {"stats", n.stats}, {"withdrawn", n.withdrawn}});
  return out;
}

json durations_json(const std::map<std::string, duration_stats>& durations) {
  json out = json::object();
  for (auto& [fn, h] : durations)
    out[fn] = {{"bounds", h.bounds}, {"buckets", h.buckets}, {"sum", h.sum}, {"count", h.count}};
  return out;
}

void lists_json(const broker_stats& s, json& out) {
  json failures = json::array();
  for (auto& f : s.recent_failures)
    failures.push_back({{"ts_ms", f.ts_ms}, {"job_id", f.job_id}, {"function", f.function}, {"attempt", f.attempt},
                        {"node", f.node}, {"outcome", f.outcome}, {"code", f.code}, {"message", f.message}});
  json retrying = json::array();
  for (auto& r : s.retrying)
    retrying.push_back({{"job_id", r.job_id}, {"function", r.function}, {"attempts", r.attempts},
                        {"next_run_ms", r.next_run_ms}});
  json history = json::array();
  for (auto& h : s.history)
    history.push_back({{"ts_ms", h.ts_ms}, {"ok", h.ok}, {"retry", h.retry}, {"dead", h.dead},
                       {"accepted", h.accepted}, {"pending", h.pending}});
  out["recent_failures"] = std::move(failures);
  out["retrying"] = std::move(retrying);
  out["history"] = std::move(history);
}

// Tolerant readers: a missing or mistyped key keeps the default.
int64_t num(const json& j, const char* key) {
  return j.is_object() && j.contains(key) && j[key].is_number() ? j[key].get<int64_t>() : 0;
}
double real(const json& j, const char* key) {
  return j.is_object() && j.contains(key) && j[key].is_number() ? j[key].get<double>() : 0.0;
}
std::string str(const json& j, const char* key) {
  return j.is_object() && j.contains(key) && j[key].is_string() ? j[key].get<std::string>() : std::string();
}
const json& sub(const json& j, const char* key) {
  static const json null;
  return j.is_object() && j.contains(key) ? j[key] : null;
}
std::map<std::string, int64_t> counts(const json& j) {
  std::map<std::string, int64_t> out;
  if (j.is_object())
    for (auto& [k, v] : j.items())
      if (v.is_number()) out[k] = v.get<int64_t>();
  return out;
}

void read_functions(const json& j, broker_stats& s) {
  if (!j.is_object()) return;
  for (auto& [fn, f] : j.items()) {
    auto& out = s.functions[fn];
    if (!f.is_object()) continue;
    for (auto& [k, v] : f.items())
      if (k == "outcomes")
        out.outcomes = counts(v);
      else if (v.is_number())
        out.states[k] = v.get<int64_t>();
  }
}

void read_nodes(const json& j, broker_stats& s) {
  if (!j.is_array()) return;
  for (auto& n : j) {
    node_view v;
    v.name = str(n, "name");
    for (auto& k : sub(n, "kinds"))
      if (k.is_string()) v.kinds.push_back(k.get<std::string>());
    v.credit = num(n, "credit");
    v.running = num(n, "running");
    v.last_heartbeat_ms = num(n, "last_heartbeat_ms");
    if (sub(n, "stats").is_object()) v.stats = n["stats"];
    const auto& w = sub(n, "withdrawn");
    if (w.is_object())
      for (auto& [kind, why] : w.items()) v.withdrawn[kind] = why.is_string() ? why.get<std::string>() : "";
    s.nodes.push_back(std::move(v));
  }
}

void read_durations(const json& j, broker_stats& s) {
  if (!j.is_object()) return;
  for (auto& [fn, h] : j.items()) {
    duration_stats d;
    for (auto& b : sub(h, "bounds"))
      if (b.is_number()) d.bounds.push_back(b.get<double>());
    for (auto& b : sub(h, "buckets"))
      if (b.is_number()) d.buckets.push_back(b.get<int64_t>());
    d.sum = real(h, "sum");
    d.count = num(h, "count");
    s.durations[fn] = std::move(d);
  }
}

void read_lists(const json& j, broker_stats& s) {
  for (auto& f : sub(j, "recent_failures"))
    s.recent_failures.push_back({num(f, "ts_ms"), str(f, "job_id"), str(f, "function"), num(f, "attempt"),
                                 str(f, "node"), str(f, "outcome"), str(f, "code"), str(f, "message")});
  for (auto& r : sub(j, "retrying"))
    s.retrying.push_back({str(r, "job_id"), str(r, "function"), num(r, "attempts"), num(r, "next_run_ms")});
  for (auto& h : sub(j, "history"))
    s.history.push_back({num(h, "ts_ms"), num(h, "ok"), num(h, "retry"), num(h, "dead"), num(h, "accepted"),
                         num(h, "pending")});
}

}  // namespace

json to_json(const broker_stats& s) {
  if (s.role && *s.role == "standby")
    return {{"role", "standby"}, {"broker_name", s.broker_name.value_or("")}, {"lease_ms", s.lease_ms},
            {"message", s.message}};
  json out = {{"ts_ms", s.ts_ms},
              {"version", s.version},
              {"commit", s.commit},
              {"pending", s.pending},
              {"functions", functions_json(s.functions)},
              {"nodes", nodes_json(s.nodes)},
              {"ingress", s.ingress},
              {"dead_total", s.dead_total},
              {"dead_letters", s.dead_letters},
              {"durations", durations_json(s.durations)},
              {"draining", s.draining},
              {"disk_free_mb", s.disk_free_mb},
              {"store", {{"commits", s.store.commits},
                         {"requests", s.store.requests},
                         {"updates", s.store.updates},
                         {"commit_seconds", static_cast<double>(s.store.commit_us) / 1e6}}},
              {"cluster_link", {{"frames_sent", s.cluster_link.frames_sent},
                                {"messages_sent", s.cluster_link.messages_sent},
                                {"frames_received", s.cluster_link.frames_received},
                                {"messages_received", s.cluster_link.messages_received}}}};
  lists_json(s, out);
  json stages = json::object();
  for (auto& [name, x] : s.ack_stages)
    stages[name] = {{"n", x.n}, {"p50_us", x.p50_us}, {"p90_us", x.p90_us}, {"p99_us", x.p99_us},
                    {"max_us", x.max_us}};
  out["ack_timeline"] = stages;
  if (s.role) out["role"] = *s.role;
  if (s.broker_name) out["broker_name"] = *s.broker_name;
  return out;
}

broker_stats stats_from_json(const json& j) {
  broker_stats s;
  if (!j.is_object()) return s;
  if (j.contains("role") && j["role"].is_string()) s.role = j["role"].get<std::string>();
  if (j.contains("broker_name") && j["broker_name"].is_string()) s.broker_name = j["broker_name"].get<std::string>();
  s.lease_ms = num(j, "lease_ms");
  s.message = str(j, "message");
  s.ts_ms = num(j, "ts_ms");
  s.version = str(j, "version");
  s.commit = str(j, "commit");
  s.pending = num(j, "pending");
  read_functions(sub(j, "functions"), s);
  read_nodes(sub(j, "nodes"), s);
  s.ingress = counts(sub(j, "ingress"));
  s.dead_total = num(j, "dead_total");
  s.dead_letters = num(j, "dead_letters");
  read_durations(sub(j, "durations"), s);
  read_lists(j, s);
  s.draining = j.contains("draining") && j["draining"].is_boolean() && j["draining"].get<bool>();
  s.disk_free_mb = j.contains("disk_free_mb") ? num(j, "disk_free_mb") : -1;
  const auto& st = sub(j, "store");
  s.store = {num(st, "commits"), num(st, "requests"), num(st, "updates"),
             static_cast<int64_t>(real(st, "commit_seconds") * 1e6 + 0.5)};
  for (auto& [name, x] : sub(j, "ack_timeline").items())
    s.ack_stages[name] = {num(x, "n"), num(x, "p50_us"), num(x, "p90_us"), num(x, "p99_us"), num(x, "max_us")};
  const auto& link = sub(j, "cluster_link");
  s.cluster_link = {num(link, "frames_sent"), num(link, "messages_sent"), num(link, "frames_received"),
                    num(link, "messages_received")};
  return s;
}

void stats_counters::histogram::observe(double seconds) {
  sum += seconds;
  ++count;
  for (size_t i = 0; i < sizeof(bounds) / sizeof(bounds[0]); ++i)
    if (seconds <= bounds[i]) {
      ++counts[i];
      return;
    }
}

void stats_counters::note_failure(failure_entry f) {
  recent_failures.push_back(std::move(f));
  if (recent_failures.size() > max_failures) recent_failures.erase(recent_failures.begin());
}

void stats_counters::add_history(int64_t now, int64_t pending) {
  history_point p;
  p.ts_ms = now;
  for (auto& [fn, per] : outcomes) {
    auto get = [&](const char* o) {
      auto it = per.find(o);
      return it == per.end() ? int64_t{0} : it->second;
    };
    p.ok += get("ok");
    p.retry += get("retry");
    p.dead += get("dead");
  }
  auto acc = ingress.find("accepted");
  p.accepted = acc == ingress.end() ? 0 : acc->second;
  p.pending = pending;
  history.push_back(p);
  if (history.size() > max_history) history.erase(history.begin());
}

std::map<std::string, duration_stats> stats_counters::duration_snapshot() const {
  std::map<std::string, duration_stats> out;
  for (auto& [fn, h] : durations) {
    auto& d = out[fn];
    d.bounds.assign(std::begin(histogram::bounds), std::end(histogram::bounds));
    d.buckets.assign(std::begin(h.counts), std::end(h.counts));
    d.sum = h.sum;
    d.count = h.count;
  }
  return out;
}

}  // namespace klynaa::broker

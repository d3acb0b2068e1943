#include "broker/admin.hpp"

#include <httplib.h>

#include <algorithm>
#include <sstream>

#include "broker/dashboard/dashboard.hpp"
#include "protocol/log.hpp"
#include "protocol/version.hpp"

namespace klynaa::broker {

struct admin_server::impl {
  httplib::Server server;
  std::thread thread;
  std::string host;
  int port = 0;
};

admin_server::admin_server() : impl_(std::make_unique<impl>()) {}
admin_server::~admin_server() { stop(); }

namespace {

bool is_loopback(const std::string& host) {
  return host == "127.0.0.1" || host == "localhost" || host == "::1" || host.rfind("127.", 0) == 0;
}

std::string label(const std::string& v) {
  std::string out;
  for (char c : v) {
    if (c == '\\' || c == '"') out += '\\';
    if (c == '\n') {
      out += "\\n";
      continue;
    }
    out += c;
  }
  return out;
}

bool is_dashboard_page(const httplib::Request& req) {
  return (req.method == "GET" || req.method == "HEAD") && (req.path == "/" || req.path == "/dashboard");
}

}  // namespace

namespace {

/// The adaptive in-flight limits each node reports (node_stats extra.limits,
/// actors::limits_json; docs/reliability.md, "Adaptive in-flight limits").
void render_limits(std::ostringstream& o, const nlohmann::json& nodes) {
  struct family {
    const char* name;
    const char* help;
    const char* key;
    double scale;
  };
  static const family per_function[] = {
      {"klynaa_downstream_limit", "The adaptive in-flight limit of a downstream and function in a node.", "limit", 1},
      {"klynaa_downstream_in_flight", "Calls in flight to a downstream from a function in a node.", "in_flight", 1},
      {"klynaa_downstream_latency_seconds", "Median latency of a downstream's last window of calls from a function.",
       "latency_ms", 0.001},
      {"klynaa_downstream_latency_floor_seconds", "The latency floor the adaptive limit compares with.",
       "min_rtt_ms", 0.001},
  };
  auto limits_of = [](const nlohmann::json& n) {
    const auto* p = &n;
    for (const char* k : {"stats", "extra", "limits", "downstreams"}) {
      if (!p->is_object() || !p->contains(k)) return nlohmann::json::object();
      p = &(*p)[k];
    }
    return p->is_object() ? *p : nlohmann::json::object();
  };
  for (const auto& f : per_function) {
    o << "# HELP " << f.name << " " << f.help << "\n# TYPE " << f.name << " gauge\n";
    for (auto& n : nodes) {
      const auto downstreams = limits_of(n);
      for (auto& [d, ds] : downstreams.items()) {
        const auto functions = ds.value("functions", nlohmann::json::object());  // items() refers to it
        for (auto& [fn, v] : functions.items())
          o << f.name << "{node=\"" << label(n.value("name", "")) << "\",downstream=\"" << label(d)
            << "\",function=\"" << label(fn) << "\"} " << v.value(f.key, 0.0) * f.scale << "\n";
      }
    }
  }
  o << "# HELP klynaa_downstream_waiting Calls waiting in a node for their downstream's limit.\n"
    << "# TYPE klynaa_downstream_waiting gauge\n";
  for (auto& n : nodes) {
    const auto downstreams = limits_of(n);
    for (auto& [d, ds] : downstreams.items())
      o << "klynaa_downstream_waiting{node=\"" << label(n.value("name", "")) << "\",downstream=\"" << label(d)
        << "\"} " << ds.value("waiting", int64_t{0}) << "\n";
  }
}

void render_jobs(std::ostringstream& o, const broker_stats& s) {
  o << "# HELP klynaa_jobs_total Job attempts that ended, by function and outcome (ok, retry, dead).\n"
    << "# TYPE klynaa_jobs_total counter\n";
  for (auto& [fn, f] : s.functions)
    for (auto& [outcome, n] : f.outcomes)
      o << "klynaa_jobs_total{function=\"" << label(fn) << "\",outcome=\"" << label(outcome) << "\"} " << n << "\n";
  auto state = [](const function_stats& f, const char* name) {
    auto it = f.states.find(name);
    return it == f.states.end() ? int64_t{0} : it->second;
  };
  o << "# HELP klynaa_queue_depth Jobs waiting to run (ready or waiting to retry), by function.\n"
    << "# TYPE klynaa_queue_depth gauge\n";
  for (auto& [fn, f] : s.functions)
    o << "klynaa_queue_depth{function=\"" << label(fn) << "\"} " << state(f, "ready") + state(f, "retry_wait") << "\n";
  o << "# HELP klynaa_jobs_running Jobs leased to a node, by function.\n"
    << "# TYPE klynaa_jobs_running gauge\n";
  for (auto& [fn, f] : s.functions)
    o << "klynaa_jobs_running{function=\"" << label(fn) << "\"} " << state(f, "running") << "\n";
  o << "# HELP klynaa_job_duration_seconds Duration of job attempts, by function.\n"
    << "# TYPE klynaa_job_duration_seconds histogram\n";
  for (auto& [fn, h] : s.durations) {
    int64_t cumulative = 0;
    for (size_t i = 0; i < h.bounds.size() && i < h.buckets.size(); ++i) {
      cumulative += h.buckets[i];
      o << "klynaa_job_duration_seconds_bucket{function=\"" << label(fn) << "\",le=\"" << h.bounds[i] << "\"} "
        << cumulative << "\n";
    }
    o << "klynaa_job_duration_seconds_bucket{function=\"" << label(fn) << "\",le=\"+Inf\"} " << h.count << "\n";
    o << "klynaa_job_duration_seconds_sum{function=\"" << label(fn) << "\"} " << h.sum << "\n";
    o << "klynaa_job_duration_seconds_count{function=\"" << label(fn) << "\"} " << h.count << "\n";
  }
}

// Nodes report their own counters over the cluster protocol (node_stats); the
// broker exposes them labelled `node`. Their form is the node's
// (docs/cluster-protocol.md, "NODE_STATS"), hence JSON.
void render_node_counters(std::ostringstream& o, const std::vector<node_view>& nodes) {
  o << "# HELP klynaa_downstream_requests_total Calls to Django and push providers, by node, service and outcome.\n"
    << "# TYPE klynaa_downstream_requests_total counter\n";
  for (auto& n : nodes) {
    auto node = label(n.name);
    const auto& st = n.stats;
    if (!st.contains("extra") || !st["extra"].contains("downstream")) continue;
    for (auto& [key, count] : st["extra"]["downstream"].items()) {
      auto slash = key.find('/');
      o << "klynaa_downstream_requests_total{node=\"" << node << "\",service=\"" << label(key.substr(0, slash))
        << "\",outcome=\"" << label(slash == std::string::npos ? "" : key.substr(slash + 1)) << "\"} "
        << count.get<int64_t>() << "\n";
    }
  }
  o << "# HELP klynaa_node_jobs_total Job attempts a node finished, by node, function and outcome.\n"
    << "# TYPE klynaa_node_jobs_total counter\n";
  for (auto& n : nodes) {
    auto node = label(n.name);
    if (!n.stats.contains("jobs")) continue;
    for (auto& [fn, per] : n.stats["jobs"].items())
      for (auto& [outcome, count] : per.items())
        o << "klynaa_node_jobs_total{node=\"" << node << "\",function=\"" << label(fn) << "\",outcome=\""
          << label(outcome) << "\"} " << count.get<int64_t>() << "\n";
  }
}

// Circuit breakers per node and downstream (actors/breaker.hpp).
void render_breakers(std::ostringstream& o, const std::vector<node_view>& nodes) {
  auto breakers_of = [](const node_view& n) {
    const auto& st = n.stats;
    if (!st.contains("extra") || !st["extra"].contains("breakers") || !st["extra"]["breakers"].is_object())
      return nlohmann::json::object();
    return st["extra"]["breakers"];
  };
  o << "# HELP klynaa_circuit_breaker_state A downstream's circuit breaker in a node: 0 closed, 1 half-open, 2 open.\n"
    << "# TYPE klynaa_circuit_breaker_state gauge\n";
  for (auto& n : nodes) {
    const auto breakers = breakers_of(n);  // not a temporary: items() refers to it
    for (auto& [service, b] : breakers.items()) {
      auto st = b.value("state", "closed");
      o << "klynaa_circuit_breaker_state{node=\"" << label(n.name) << "\",service=\"" << label(service) << "\"} "
        << (st == "open" ? 2 : st == "half_open" ? 1 : 0) << "\n";
    }
  }
  o << "# HELP klynaa_circuit_breaker_opens_total Times a downstream's circuit breaker opened in a node.\n"
    << "# TYPE klynaa_circuit_breaker_opens_total counter\n";
  for (auto& n : nodes) {
    const auto breakers = breakers_of(n);
    for (auto& [service, b] : breakers.items())
      o << "klynaa_circuit_breaker_opens_total{node=\"" << label(n.name) << "\",service=\"" << label(service)
        << "\"} " << b.value("opens", int64_t{0}) << "\n";
  }
}

}  // namespace

std::string render_metrics(const broker_stats& s) {
  std::ostringstream o;
  o << "# HELP klynaa_build_info The running binary's version and git commit; always 1.\n"
    << "# TYPE klynaa_build_info gauge\n"
    << "klynaa_build_info{version=\"" << label(std::string{protocol::build_version()})
    << "\",commit=\"" << label(std::string{protocol::build_commit()}) << "\"} 1\n";
  render_jobs(o, s);
  o << "# HELP klynaa_dead_letters Jobs in the dead-letter queue.\n"
    << "# TYPE klynaa_dead_letters gauge\n"
    << "klynaa_dead_letters " << s.dead_letters << "\n";
  o << "# HELP klynaa_nodes Nodes connected to the broker.\n"
    << "# TYPE klynaa_nodes gauge\n"
    << "klynaa_nodes " << s.nodes.size() << "\n";
  o << "# HELP klynaa_ingress_requests_total Ingress requests by reply status.\n"
    << "# TYPE klynaa_ingress_requests_total counter\n";
  for (auto& [status, n] : s.ingress)
    o << "klynaa_ingress_requests_total{status=\"" << label(status) << "\"} " << n << "\n";
  render_node_counters(o, s.nodes);
  render_breakers(o, s.nodes);
  nlohmann::json nodes = nlohmann::json::array();  // render_limits reads the nodes' own reports
  for (auto& n : s.nodes) nodes.push_back({{"name", n.name}, {"stats", n.stats}});
  render_limits(o, nodes);
  o << "# HELP klynaa_node_running_jobs Jobs a node is running now.\n"
    << "# TYPE klynaa_node_running_jobs gauge\n";
  for (auto& n : s.nodes) o << "klynaa_node_running_jobs{node=\"" << label(n.name) << "\"} " << n.running << "\n";
  return o.str();
}

std::string render_metrics(const nlohmann::json& stats) { return render_metrics(stats_from_json(stats)); }

namespace {

void add_dlq_routes(httplib::Server& srv, const admin_handlers& h) {
  // Dead-letter queue (klynaa dlq, the dashboard). Job ids go in the query
  // string (?id=...; they contain '#' and ':'), never in the path.
  auto json_reply = [](httplib::Response& res, int status, const nlohmann::json& body) {
    res.status = status;
    res.set_content(body.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace), "application/json");
  };
  srv.Get("/dlq", [h, json_reply](const httplib::Request& req, httplib::Response& res) {
    size_t limit = 100;
    if (req.has_param("limit")) {
      try {
        limit = std::stoul(req.get_param_value("limit"));
      } catch (...) {
        return json_reply(res, 400, {{"error", "bad_request"}, {"message", "limit must be a number"}});
      }
    }
    json_reply(res, 200, h.dlq_list(std::min<size_t>(std::max<size_t>(limit, 1), 10000)));
  });
  srv.Get("/dlq/job", [h, json_reply](const httplib::Request& req, httplib::Response& res) {
    if (!req.has_param("id"))
      return json_reply(res, 400, {{"error", "bad_request"}, {"message", "give the job as ?id=JOB"}});
    auto id = req.get_param_value("id");
    auto job = h.dlq_show(id);
    if (job.is_null())
      return json_reply(res, 404, {{"error", "not_found"}, {"message", "no dead job " + id}});
    json_reply(res, 200, job);
  });
  for (std::string action : {"replay", "purge"}) {
    srv.Post("/dlq/" + action, [h, json_reply, action](const httplib::Request& req, httplib::Response& res) {
      std::vector<std::string> ids;
      for (size_t i = 0, n = req.get_param_value_count("id"); i < n; ++i) ids.push_back(req.get_param_value("id", i));
      const bool all = req.has_param("all") && req.get_param_value("all") != "0";
      if (ids.empty() == !all)
        return json_reply(res, 400, {{"error", "bad_request"},
                                     {"message", "give the jobs as ?id=JOB (repeatable) or all of them as ?all=1"}});
      auto out = h.dlq_command(action, ids, all);
      json_reply(res, out.contains("error") ? 503 : 200, out);
    });
  }
}

void add_pages(httplib::Server& srv, const admin_handlers& h) {
  // The dashboard (issue 9): one self-contained page; its script polls /stats
  // and /dlq with the token the user gives it. Nothing else may load or frame it.
  auto dashboard = [](const httplib::Request&, httplib::Response& res) {
    res.set_header("Cache-Control", "no-store");
    res.set_header("X-Content-Type-Options", "nosniff");
    res.set_header("Referrer-Policy", "no-referrer");
    res.set_header("X-Frame-Options", "DENY");
    res.set_header("Content-Security-Policy",
                   "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                   "img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
                   "frame-ancestors 'none'");
    const auto page = dashboard_html();
    res.set_content(page.data(), page.size(), "text/html; charset=utf-8");
  };
  srv.Get("/", dashboard);
  srv.Get("/dashboard", dashboard);
  srv.Get("/healthz", [h](const httplib::Request&, httplib::Response& res) {
    if (!h.health) {
      res.set_content(R"({"status":"ok"})", "application/json");
      return;
    }
    auto [status, body] = h.health();
    res.status = status;
    res.set_content(body.dump(), "application/json");
  });
  srv.Get("/livez", [](const httplib::Request&, httplib::Response& res) {
    res.set_content(R"({"status":"alive"})", "application/json");
  });
}

}  // namespace

bool admin_server::start(const std::string& bind, const std::string& token, admin_handlers h,
                         std::string& err) {
  auto colon = bind.rfind(':');
  if (colon == std::string::npos) {
    err = "admin.bind must be HOST:PORT, got '" + bind + "'";
    return false;
  }
  impl_->host = bind.substr(0, colon);
  int port = 0;
  try {
    port = std::stoi(bind.substr(colon + 1));
  } catch (...) {
    err = "admin.bind must be HOST:PORT, got '" + bind + "'";
    return false;
  }
  if (token.empty() && !is_loopback(impl_->host)) {
    err = "admin.bind " + bind + " is beyond loopback: set admin.token (a bearer token) first";
    return false;
  }
  auto& srv = impl_->server;
  if (!token.empty()) {
    srv.set_pre_routing_handler([token](const httplib::Request& req, httplib::Response& res) {
      // /healthz stays open for load balancers and probes: it tells nothing. So
      // does the dashboard page, which a browser navigation must load without
      // the token: it holds no data, and its own calls send the token.
      if (req.path == "/healthz" || req.path == "/livez" || is_dashboard_page(req) ||
          req.get_header_value("Authorization") == "Bearer " + token)
        return httplib::Server::HandlerResponse::Unhandled;
      res.status = 401;
      res.set_content(R"({"error":"unauthorized","message":"send Authorization: Bearer <admin.token>"})",
                      "application/json");
      return httplib::Server::HandlerResponse::Handled;
    });
  }
  srv.Get("/metrics", [h](const httplib::Request&, httplib::Response& res) {
    res.set_content(render_metrics(h.stats()), "text/plain; version=0.0.4");
  });
  srv.Get("/stats", [h](const httplib::Request&, httplib::Response& res) {
    res.set_content(to_json(h.stats()).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace),
                    "application/json");
  });
  add_dlq_routes(srv, h);
  add_pages(srv, h);
  if (port == 0)
    port = srv.bind_to_any_port(impl_->host);
  else if (!srv.bind_to_port(impl_->host, port))
    port = -1;
  if (port <= 0) {
    err = "cannot bind the admin endpoint to " + bind + " (admin.bind)";
    return false;
  }
  impl_->port = port;
  impl_->thread = std::thread([this] { impl_->server.listen_after_bind(); });
  log::info("admin", "listening", {{"address", address()}});
  return true;
}

void admin_server::stop() {
  if (impl_->thread.joinable()) {
    impl_->server.stop();
    impl_->thread.join();
  }
}

std::string admin_server::address() const {
  return impl_->host + ":" + std::to_string(impl_->port);
}

}  // namespace klynaa::broker

// klynaa-upstream: a fast fake of the HTTP upstreams a node calls (the Django
// API of docs/events-and-functions.md, and the push providers), for benchmarks
// of the node's HTTP clients. See docs/performance.md, "The fake upstream
// (klynaa-upstream)".
//
//   klynaa-upstream [--bind 127.0.0.1] [--port 0] [--latency-ms 0]
//                   [--latency-step-ms N --step-after-s T] [--capacity 0]
//                   [--retry-after-s 1] [--tokens-per-user 1] [--api-key K]
//                   [--h2-max-streams 1000]
//
// One thread and one epoll loop, never a thread per connection. Each connection
// speaks HTTP/1.1 (keep-alive, pipelining, Expect: 100-continue, chunked bodies)
// or cleartext HTTP/2 with prior knowledge (libnghttp2's server session), chosen
// by its first bytes: the 24-byte HTTP/2 client preface, or anything else.
//
// Every answer is held for the current latency (--latency-ms; after
// --step-after-s seconds, --latency-step-ms) on a timer: a min-heap of due times
// in the loop, woken by one timerfd. No thread ever sleeps. A request is "in
// flight" from its last byte read to its answer; above --capacity in flight (0:
// no limit) a request is refused at once with 503 and Retry-After.
//
// GET /_stats answers the counters as JSON at once (never delayed, refused or
// counted). SIGTERM and SIGINT print the same JSON, with "final": true, as the
// last stdout line and exit 0. The first stdout line is {"listening": "HOST:PORT"}.
//
// Routes (the answers are deterministic functions of the ids in the path):
//   GET    /api/serverless/pickups/{id}/               pickup JSON (404 for id 0)
//   GET    /api/users/{id}/tokens/                     --tokens-per-user tokens
//   DELETE /api/users/{id}/tokens/{token}/             204
//   GET    /api/users/admins/                          two admins
//   GET    /api/workers/available/                     three workers
//   POST   /api/serverless/escrow/{id}/release/        {"status": "released", ...}
//                                                      (400 without a "reason" string)
//   GET    /api/analytics/pickups/                     three pickups, "next": null
//   POST   /api/reports/                               201 {"id": n}
//   POST   /api/cleanup/                               {"deleted": 0}
//   POST   /push, /webhook                             200 (the webhook provider)
//   POST   /v1/projects/{p}/messages:send              FCM: {"name": ...}
//   POST   /token                                      OAuth2: {"access_token", ...}
//   POST   /                                           SNS Publish: PublishResponse XML
// anything else 404, a wrong method 405 (with Allow). With --api-key K, /api/
// routes without `Authorization: Api-Key K` get 401, as the reference app does.
// A malformed HTTP/1.1 request gets 400 (413 for a body over 1 MiB, 431 for a
// header section over 64 KiB) and the connection is closed after it.
//
// The parts: upstream_options (the command line), upstream_routes (what each
// request gets), upstream_h1 (the HTTP/1.1 parser), upstream_server (the loop
// and connections) and upstream_exchange (requests and answers, both protocols).
#include <utility>

#include "bench/upstream_options.hpp"
#include "bench/upstream_server.hpp"

int main(int argc, char** argv) {
  using namespace klynaa::upstream;
  options o = parse_args(argc, argv);
  static server s(std::move(o));
  the_server = &s;
  s.start();
  s.run();
}

// The SQL of the PostgreSQL store (pg_store.cpp explains the design): the
// schema, created once under an advisory lock, and the statements prepared on
// every connection. The tables mirror sqlite_store.cpp's.
#include <string>
#include <utility>
#include <vector>

#include "broker/pg_store_impl.hpp"

namespace klynaa::broker::pg_detail {

// Any constant: serialises first-time schema creation between brokers.
const char* const init_lock = "SELECT pg_advisory_xact_lock(7236982611093125)";

// Version 2 (issue 22): done jobs leave the hot table klynaa.jobs for
// klynaa.jobs_done in the commit that ends them (move_finished),
// so that klynaa.jobs holds only the live jobs and the dead letters, whatever
// the retention (docs/performance.md, "The PostgreSQL store").
const char* const upgrade_to_2_sql = R"sql(
CREATE TABLE IF NOT EXISTS klynaa.jobs_done(LIKE klynaa.jobs INCLUDING DEFAULTS, PRIMARY KEY (id));
CREATE INDEX IF NOT EXISTS jobs_done_updated ON klynaa.jobs_done(updated_ms);
-- The hot table sees every job inserted, updated and deleted: vacuum it after
-- a fixed number of dead rows, unthrottled, not after a fraction of a table
-- that stays small (docs/performance.md, "The PostgreSQL store").
ALTER TABLE klynaa.jobs SET (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 20000,
                             autovacuum_vacuum_cost_delay = 0);
UPDATE klynaa.meta SET value = '2' WHERE key = 'schema_version';
)sql";

// Version 1's tables; a new store then runs upgrade_to_2_sql too (pg_store.cpp).
const char* const schema_sql = R"sql(
CREATE TABLE IF NOT EXISTS klynaa.meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS klynaa.requests(
  id TEXT PRIMARY KEY, op INTEGER NOT NULL, type TEXT NOT NULL, ts_ms BIGINT NOT NULL,
  accepted_ms BIGINT NOT NULL, jobs JSONB NOT NULL);
CREATE TABLE IF NOT EXISTS klynaa.jobs(
  id TEXT PRIMARY KEY, request_id TEXT NOT NULL, function TEXT NOT NULL, data TEXT NOT NULL,
  okey TEXT NOT NULL, seq BIGINT NOT NULL, state INTEGER NOT NULL, due_ms BIGINT NOT NULL,
  attempts BIGINT NOT NULL, ts_ms BIGINT NOT NULL, created_ms BIGINT NOT NULL,
  updated_ms BIGINT NOT NULL, auto_release BOOLEAN NOT NULL,
  last_error TEXT NOT NULL DEFAULT '', result TEXT NOT NULL DEFAULT '',
  attempt_base BIGINT NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS jobs_unfinished ON klynaa.jobs(seq) WHERE state < 3;
CREATE INDEX IF NOT EXISTS jobs_dead ON klynaa.jobs(updated_ms) WHERE state = 4;
CREATE INDEX IF NOT EXISTS jobs_finished ON klynaa.jobs(updated_ms) WHERE state IN (3, 5);
CREATE INDEX IF NOT EXISTS requests_accepted ON klynaa.requests(accepted_ms);
CREATE INDEX IF NOT EXISTS jobs_auto_release ON klynaa.jobs(okey) WHERE auto_release AND state < 3;
CREATE TABLE IF NOT EXISTS klynaa.closed_pickups(pickup_id BIGINT PRIMARY KEY, closed_ms BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS klynaa.attempts(
  job_id TEXT NOT NULL, attempt BIGINT NOT NULL, node TEXT NOT NULL, outcome TEXT NOT NULL,
  error TEXT NOT NULL, duration_ms BIGINT NOT NULL, at_ms BIGINT NOT NULL,
  PRIMARY KEY(job_id, attempt));
CREATE TABLE IF NOT EXISTS klynaa.lease(
  name TEXT PRIMARY KEY, holder TEXT, token BIGINT NOT NULL DEFAULT 0, expires_at TIMESTAMPTZ);
CREATE UNIQUE INDEX IF NOT EXISTS lease_token ON klynaa.lease(name, token);
CREATE OR REPLACE FUNCTION klynaa.check_fence(p_token BIGINT, p_holder TEXT) RETURNS void
LANGUAGE plpgsql AS $fence$
BEGIN
  -- A KEY SHARE lock holds off a takeover (an UPDATE of the token, a key
  -- column: the lease_token index) until this commit ends, but not a renewal (an
  -- UPDATE of expires_at only), which must never wait for a commit's fsync.
  PERFORM 1 FROM klynaa.lease WHERE name = 'broker' AND token = p_token AND holder = p_holder
    FOR KEY SHARE;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'fenced: the lease is held by another broker' USING ERRCODE = 'KLF01';
  END IF;
END
$fence$;
)sql";

namespace {

/// Every job, live or finished (for reads): `FROM ` all_jobs ` j`.
constexpr const char* all_jobs = "(SELECT * FROM klynaa.jobs UNION ALL SELECT * FROM klynaa.jobs_done)";

constexpr const char* job_columns =
    "j.id, j.request_id, j.function, j.data, j.okey, j.seq, j.state, j.due_ms, j.attempts, "
    "j.ts_ms, j.created_ms, j.updated_ms, j.auto_release, j.last_error, j.result, j.attempt_base";

// The statements, prepared on every connection. Parameters are sent as text and
// cast in the SQL.
const std::vector<std::pair<const char*, std::string>> all_statements = {
    // Requests of one commit, set-based (pg_commit.cpp, queue_requests): what
    // sqlite_store's apply_request does one request at a time, for every
    // request of the arrays at once. The client hands over only requests that
    // do not depend on one another (no shared request id, job id or pickup),
    // because every part of one statement sees the database as it was before
    // the statement. $1-$6: the requests (id, op, type, ts_ms, accepted_ms,
    // closes_pickup or null); $7: now; $8-$25: their candidate jobs, one array
    // per column: the request's ordinal in $1 (1-based), the job's in its
    // request, the jobs columns, and for an auto-release its pickup (else null).
    // One row per request, in order: its ordinal; for a duplicate the first
    // request's op, job ids and jobs as stored now (JSON); else the ordinals of
    // the jobs inserted (an int[], null for none) and the auto-releases
    // cancelled (JSON, null for none).
    {"apply_requests", R"sql(
WITH r AS (
  SELECT * FROM unnest($1::text[], $2::int[], $3::text[], $4::bigint[], $5::bigint[], $6::bigint[])
                WITH ORDINALITY AS r(id, op, type, ts_ms, accepted_ms, closes, n)),
dup AS (SELECT r.n, q.op, q.jobs FROM r JOIN klynaa.requests q ON q.id = r.id),
fresh AS (SELECT * FROM r WHERE r.n NOT IN (SELECT n FROM dup)),
cancel AS (
  UPDATE klynaa.jobs x SET state = 5, updated_ms = $7::bigint
    FROM fresh f
   WHERE f.closes IS NOT NULL AND x.okey = 'pickup:' || f.closes
     AND x.auto_release AND x.state < 3 AND x.state <> 1
  RETURNING f.n, x.id),
closing AS (
  INSERT INTO klynaa.closed_pickups(pickup_id, closed_ms)
  SELECT f.closes, $7::bigint FROM fresh f WHERE f.closes IS NOT NULL
  ON CONFLICT DO NOTHING),
cand AS (
  SELECT c.* FROM unnest($8::int[], $9::int[], $10::text[], $11::text[], $12::text[], $13::text[], $14::text[],
                         $15::bigint[], $16::int[], $17::bigint[], $18::bigint[], $19::bigint[], $20::bigint[],
                         $21::boolean[], $22::text[], $23::text[], $24::bigint[], $25::bigint[])
                  WITH ORDINALITY AS c(rn, k, id, request_id, function, data, okey, seq, state, due_ms,
                                       attempts, ts_ms, created_ms, auto_release, last_error, result,
                                       attempt_base, pickup, o)
    JOIN fresh f ON f.n = c.rn
   WHERE (c.pickup IS NULL OR (c.pickup IS DISTINCT FROM f.closes AND NOT EXISTS (
            SELECT 1 FROM klynaa.closed_pickups p WHERE p.pickup_id = c.pickup)))
     AND NOT EXISTS (SELECT 1 FROM klynaa.jobs_done d WHERE d.id = c.id)),
ins AS (
  INSERT INTO klynaa.jobs(id, request_id, function, data, okey, seq, state, due_ms, attempts, ts_ms,
                          created_ms, updated_ms, auto_release, last_error, result, attempt_base)
  SELECT id, request_id, function, data, okey, seq, state, due_ms, attempts, ts_ms, created_ms, $7::bigint,
         auto_release, last_error, result, attempt_base
    FROM cand ORDER BY o
  ON CONFLICT (id) DO NOTHING
  RETURNING id),
created AS (  -- a job id repeated within one request was inserted the first time
  SELECT c.rn, jsonb_agg(c.id ORDER BY c.k) AS jobs, array_agg(c.k ORDER BY c.k) AS ks
    FROM cand c
   WHERE c.o IN (SELECT min(x.o) FROM cand x JOIN ins ON ins.id = x.id GROUP BY x.id)
   GROUP BY c.rn),
req AS (
  INSERT INTO klynaa.requests(id, op, type, ts_ms, accepted_ms, jobs)
  SELECT f.id, f.op, f.type, f.ts_ms, f.accepted_ms, COALESCE(cr.jobs, '[]'::jsonb)
    FROM fresh f LEFT JOIN created cr ON cr.rn = f.n ORDER BY f.n),
cancelled AS (SELECT n, jsonb_agg(id ORDER BY id) AS ids FROM cancel GROUP BY n)
SELECT r.n, d.op, d.jobs::text,
       CASE WHEN d.n IS NOT NULL THEN (
         SELECT COALESCE(jsonb_agg(to_jsonb(j) ORDER BY u.k), '[]'::jsonb)::text
           FROM jsonb_array_elements_text(d.jobs) WITH ORDINALITY AS u(id, k)
           JOIN (SELECT * FROM klynaa.jobs UNION ALL SELECT * FROM klynaa.jobs_done) j ON j.id = u.id) END,
       cr.ks::text, ca.ids::text
  FROM r LEFT JOIN dup d ON d.n = r.n LEFT JOIN created cr ON cr.rn = r.n
         LEFT JOIN cancelled ca ON ca.n = r.n
 ORDER BY r.n
)sql"},
    // Job state changes of one commit, at most one per job (the client keeps
    // the last): $1-$7 id, state, attempts, due_ms, seq, last_error, result.
    {"update_jobs", R"sql(
UPDATE klynaa.jobs x SET state = u.state, attempts = u.attempts, due_ms = u.due_ms, seq = u.seq,
                         last_error = u.last_error, result = u.result, updated_ms = $8::bigint
  FROM unnest($1::text[], $2::int[], $3::bigint[], $4::bigint[], $5::bigint[], $6::text[], $7::text[])
       AS u(id, state, attempts, due_ms, seq, last_error, result)
 WHERE x.id = u.id
)sql"},
    // Attempt history of one commit, at most one row per (job, attempt).
    {"insert_attempts", R"sql(
INSERT INTO klynaa.attempts(job_id, attempt, node, outcome, error, duration_ms, at_ms)
SELECT u.job_id, u.attempt, u.node, u.outcome, u.error, u.duration_ms, $7::bigint
  FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::bigint[])
       AS u(job_id, attempt, node, outcome, error, duration_ms)
ON CONFLICT (job_id, attempt) DO UPDATE SET node = EXCLUDED.node, outcome = EXCLUDED.outcome,
  error = EXCLUDED.error, duration_ms = EXCLUDED.duration_ms, at_ms = EXCLUDED.at_ms
)sql"},
    // Jobs created by jobs, each id at most once (the client drops repeats):
    // inserted unless the id exists; returns the ids inserted.
    {"insert_children", R"sql(
INSERT INTO klynaa.jobs(id, request_id, function, data, okey, seq, state, due_ms, attempts, ts_ms,
                        created_ms, updated_ms, auto_release, last_error, result, attempt_base)
SELECT c.id, c.request_id, c.function, c.data, c.okey, c.seq, c.state, c.due_ms, c.attempts, c.ts_ms,
       c.created_ms, $16::bigint, c.auto_release, c.last_error, c.result, c.attempt_base
  FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bigint[], $7::int[],
              $8::bigint[], $9::bigint[], $10::bigint[], $11::bigint[], $12::boolean[], $13::text[],
              $14::text[], $15::bigint[]) WITH ORDINALITY
       AS c(id, request_id, function, data, okey, seq, state, due_ms, attempts, ts_ms, created_ms,
            auto_release, last_error, result, attempt_base, o)
 WHERE NOT EXISTS (SELECT 1 FROM klynaa.jobs_done d WHERE d.id = c.id)
 ORDER BY c.o
ON CONFLICT (id) DO NOTHING
RETURNING id
)sql"},
    // The jobs this commit ended (done, or a job made by a job that was
    // already finished), $1 their ids, leave the hot table (upgrade_to_2_sql):
    // found by primary key, sent after the statements that end them. An
    // auto-release cancelled by a closed pickup (rare) stays until pruned.
    {"move_finished", R"sql(
WITH d AS (DELETE FROM klynaa.jobs x WHERE x.id = ANY($1::text[]) AND x.state IN (3, 5) RETURNING x.*)
INSERT INTO klynaa.jobs_done SELECT * FROM d
ON CONFLICT (id) DO UPDATE SET state = EXCLUDED.state, attempts = EXCLUDED.attempts,
  due_ms = EXCLUDED.due_ms, seq = EXCLUDED.seq, last_error = EXCLUDED.last_error,
  result = EXCLUDED.result, updated_ms = EXCLUDED.updated_ms, attempt_base = EXCLUDED.attempt_base
)sql"},
    // Retention, one chunk: finished jobs with their history, then (next
    // statement, so it sees them gone) old requests none of whose jobs is left.
    {"prune_jobs", R"sql(
WITH victims AS (
  SELECT id FROM (SELECT id, updated_ms FROM klynaa.jobs_done WHERE updated_ms < $1::bigint
                  UNION ALL
                  SELECT id, updated_ms FROM klynaa.jobs WHERE state IN (3, 5) AND updated_ms < $1::bigint) v
   ORDER BY updated_ms LIMIT $2::bigint),
gone_attempts AS (DELETE FROM klynaa.attempts WHERE job_id IN (SELECT id FROM victims)),
gone_done AS (DELETE FROM klynaa.jobs_done WHERE id IN (SELECT id FROM victims) RETURNING 1),
gone_hot AS (DELETE FROM klynaa.jobs WHERE id IN (SELECT id FROM victims) RETURNING 1)
SELECT (SELECT count(*) FROM gone_done) + (SELECT count(*) FROM gone_hot)
)sql"},
    {"prune_requests", R"sql(
WITH gone AS (
  DELETE FROM klynaa.requests WHERE id IN (
    SELECT r.id FROM klynaa.requests r WHERE r.accepted_ms < $1::bigint AND NOT EXISTS (
      SELECT 1 FROM jsonb_array_elements_text(r.jobs) e(id)
       WHERE EXISTS (SELECT 1 FROM klynaa.jobs j WHERE j.id = e.id)
          OR EXISTS (SELECT 1 FROM klynaa.jobs_done d WHERE d.id = e.id))
    ORDER BY r.accepted_ms LIMIT $2::bigint)
  RETURNING 1)
SELECT count(*) FROM gone
)sql"},
    // Dead-letter replay: $1 the ids (a JSON array) or null for the oldest $2.
    {"replay", std::string(R"sql(
WITH d AS (SELECT id, seq FROM klynaa.jobs
            WHERE state = 4 AND ($1::jsonb IS NULL OR id IN (SELECT jsonb_array_elements_text($1::jsonb)))
            ORDER BY seq, id LIMIT $2::bigint),
n AS (SELECT id, $3::bigint + row_number() OVER (ORDER BY seq, id) - 1 AS new_seq FROM d),
j AS (UPDATE klynaa.jobs x SET state = 0, seq = n.new_seq, due_ms = $4::bigint,
                               updated_ms = $4::bigint, attempt_base = x.attempts
        FROM n WHERE x.id = n.id AND x.state = 4 RETURNING x.*)
SELECT )sql") + job_columns + " FROM j ORDER BY j.seq"},
    {"dead_left", "SELECT EXISTS (SELECT 1 FROM klynaa.jobs WHERE state = 4)"},
    {"purge", R"sql(
WITH d AS (SELECT id FROM klynaa.jobs
            WHERE state = 4 AND ($1::jsonb IS NULL OR id IN (SELECT jsonb_array_elements_text($1::jsonb)))),
gone_attempts AS (DELETE FROM klynaa.attempts WHERE job_id IN (SELECT id FROM d)),
gone AS (DELETE FROM klynaa.jobs WHERE id IN (SELECT id FROM d) AND state = 4
         RETURNING id, updated_ms)
SELECT id FROM gone ORDER BY updated_ms, id
)sql"},
    {"probe",
     "INSERT INTO klynaa.meta(key, value) VALUES('last_probe', $1::text) "
     "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value"},
    {"fence", "SELECT klynaa.check_fence($1::bigint, $2::text)"},
    // Renewal by the holder: expires_at only (no key column), so it takes a
    // lock that fenced commits do not hold it off with (check_fence).
    {"renew_lease",
     "UPDATE klynaa.lease SET expires_at = now() + $2::bigint * interval '1 millisecond' "
     "WHERE name = 'broker' AND holder = $1::text RETURNING token"},
    {"lease", R"sql(
INSERT INTO klynaa.lease AS l (name, holder, token, expires_at)
VALUES ('broker', $1::text, 1, now() + $2::bigint * interval '1 millisecond')
ON CONFLICT (name) DO UPDATE
   SET token = CASE WHEN l.holder = EXCLUDED.holder THEN l.token ELSE l.token + 1 END,
       holder = EXCLUDED.holder, expires_at = EXCLUDED.expires_at
 WHERE l.holder = EXCLUDED.holder OR l.expires_at IS NULL OR l.expires_at <= now()
RETURNING token
)sql"},
    {"lease_holder", "SELECT COALESCE(holder, ''), token FROM klynaa.lease WHERE name = 'broker'"},
    {"release_lease",
     "UPDATE klynaa.lease SET expires_at = now() WHERE name = 'broker' AND holder = $1::text AND token = $2::bigint"},
    {"find_job", std::string("SELECT ") + job_columns + " FROM klynaa.jobs j WHERE j.id = $1::text UNION ALL " +
                     "SELECT " + job_columns + " FROM klynaa.jobs_done j WHERE j.id = $1::text LIMIT 1"},
    {"load", std::string("SELECT ") + job_columns + " FROM klynaa.jobs j WHERE j.state < 3 ORDER BY j.seq"},
    {"max_seq", "SELECT GREATEST((SELECT COALESCE(MAX(seq), 0) FROM klynaa.jobs), "
                "(SELECT COALESCE(MAX(seq), 0) FROM klynaa.jobs_done))"},
    {"list_jobs", std::string("SELECT ") + job_columns + " FROM " + all_jobs +
                      " j WHERE j.state = $1::int ORDER BY j.updated_ms DESC LIMIT $2::bigint"},
    {"history",
     "SELECT attempt, node, outcome, error, duration_ms, at_ms FROM klynaa.attempts "
     "WHERE job_id = $1::text ORDER BY attempt"},
    {"count", std::string("SELECT function, state, COUNT(*) FROM ") + all_jobs + " j GROUP BY function, state"},
};

}  // namespace

const std::vector<std::pair<const char*, std::string>>& statements() { return all_statements; }

}  // namespace klynaa::broker::pg_detail

#!/bin/bash
# Klynaa Jobs side by side with what a Django shop runs today (issue 8; docs/performance.md).
#
#   bash bench/compare.sh N ANCHORS_DIR
#
# 1. builds a Release build in build/ (scripts/build.sh release: no sanitizers, no tests) of klynaa and klynaa-bench;
# 2. installs what the anchors need from Debian when missing (redis-server, python3-celery,
#    python3-redis, ruby-sidekiq, ruby-hiredis; as root, idempotent);
# 3. runs, one after the other on this machine: the machine's ceilings (klynaa-bench --ceilings),
#    Klynaa (klynaa-bench --start --count N, plus the two paced latency runs of issue 8 and an ingress-only run of
#    `klynaa broker` without a node), then each
#    anchor ANCHORS_DIR/NAME/run.sh N;
# 4. prints every raw JSON line as it comes, then ONE summary JSON line (the last line) with the
#    ratios klynaa e2e jobs/s / anchor e2e jobs/s. A run that fails shows its error in the summary.
#
# Environment:
#   KLYNAA_BENCH_ARGS   extra klynaa-bench arguments for the throughput run
#                       (default: --type worker.location, i.e. updateWorkerLocation jobs)
#   KLYNAA_PACED=0      skip the paced latency runs (5,000 req/s acks; 1,000 jobs/s e2e)
#   STORE=B             the store backend of every Klynaa run: sqlite (the default), journal,
#                       or postgres (then KLYNAA_STORE_URL names the database); passed as
#                       klynaa-bench --store B and written in the summary as "store"
#   ANCHOR_TIMEOUT      seconds per anchor run (default 1200)
#   SKIP_BUILD=1        use build/ as it is
# Exit status: 0 when Klynaa's throughput run succeeded, 1 otherwise (anchor failures are
# reported in the summary, not in the exit status); 2 on bad usage.
set -u
N=${1:-}; ANCHORS=${2:-}
if [ -z "$N" ] || [ -z "$ANCHORS" ] || ! [ "$N" -gt 0 ] 2>/dev/null; then
  echo "usage: bash bench/compare.sh N ANCHORS_DIR" >&2; exit 2
fi
[ -d "$ANCHORS" ] || { echo "compare.sh: no anchors dir $ANCHORS" >&2; exit 2; }
ANCHORS=$(cd "$ANCHORS" && pwd)
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=$ROOT/build
BENCH=$BUILD/klynaa-bench
OUT=$(mktemp -d /tmp/klynaa-compare-XXXXXX)
trap 'rm -rf "$OUT"' EXIT
export PYTHONDONTWRITEBYTECODE=1  # the anchors dir stays as it is
PY=/usr/bin/python3; [ -x $PY ] || PY=python3
say() { echo "compare.sh: $*" >&2; }

# ---- 1. Release build
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  say "building $BUILD (Release, -j2)"
  bash "$ROOT/scripts/build.sh" release klynaa klynaa-bench >"$OUT/build.log" 2>&1 ||
    { tail -30 "$OUT/build.log" >&2; say "the Release build failed"; exit 1; }
fi
[ -x "$BENCH" ] && [ -x "$BUILD/klynaa" ] || { say "no $BENCH or $BUILD/klynaa"; exit 1; }

# ---- 2. what the anchors need (their run.sh would install it too, inside their timing window)
missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
$PY -c "import celery" 2>/dev/null || missing+=(python3-celery)
# kombu's Redis transport needs the redis module, which python3-celery does not pull in; the
# Celery anchor's own install line misses it (it dies with "'NoneType' object has no attribute 'Redis'")
$PY -c "import redis" 2>/dev/null || missing+=(python3-redis)
ruby -e 'require "sidekiq"' 2>/dev/null || missing+=(ruby-sidekiq)
ruby -e 'require "hiredis"' 2>/dev/null || missing+=(ruby-hiredis)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    say "installing ${missing[*]}"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"; } \
      >"$OUT/apt.log" 2>&1 || { tail -5 "$OUT/apt.log" >&2; say "apt-get failed; the anchors may fail"; }
  else
    say "missing ${missing[*]} and not root: the anchors that need them will fail"
  fi
fi

# run NAME CMD...: runs CMD in its own process group with stdout in $OUT/NAME.out, stderr in
# $OUT/NAME.err; afterwards kills whatever is left of that group (only what it started).
run() {
  local name=$1; shift
  say "running $name: $*  (load average: $(cut -d' ' -f1-3 /proc/loadavg))"
  setsid "$@" >"$OUT/$name.out" 2>"$OUT/$name.err" &
  local pid=$!
  wait $pid; local rc=$?
  kill -- -$pid 2>/dev/null
  echo $rc >"$OUT/$name.rc"
  local line; line=$(grep '^{' "$OUT/$name.out" | tail -1)
  [ -n "$line" ] && echo "$line"
  [ $rc = 0 ] || { say "$name exited $rc:"; tail -5 "$OUT/$name.err" >&2; }
  return $rc
}

# ---- 3. the runs, one after the other
STORE_ARGS=()
[ -z "${STORE:-}" ] || STORE_ARGS=(--store "$STORE")
run ceilings "$BENCH" --ceilings --data-dir "$OUT"
# shellcheck disable=SC2086
run klynaa "$BENCH" --start "${STORE_ARGS[@]}" --count "$N" --timeout 600 ${KLYNAA_BENCH_ARGS:-}
KRC=$?
if [ "${KLYNAA_PACED:-1}" != 0 ]; then
  # issue 8: ack latency at a paced 5,000 req/s (5 s), e2e latency at a paced 1,000 jobs/s
  # (5 s, every request an invoke, so every job is a latency sample)
  run klynaa_paced_ack "$BENCH" --start "${STORE_ARGS[@]}" --rate 5000 --count 25000 --connections 2 --e2e-every 0 --timeout 300
  run klynaa_paced_e2e "$BENCH" --start "${STORE_ARGS[@]}" --rate 1000 --count 5000 --connections 2 --e2e-every 1 --timeout 300
fi
# issue 8's ack target on the ingress alone: `klynaa broker` with no node, so no job
# runs on the same two cores while it accepts
run klynaa_ingress_only "$BENCH" --start "${STORE_ARGS[@]}" --broker-only --count "$N" --timeout 300
ANAMES=()
for d in "$ANCHORS"/*/; do
  [ -f "$d/run.sh" ] || continue
  d=${d%/}; a=$(basename "$d"); ANAMES+=("$a")
  run "anchor_$a" timeout -k 10 "${ANCHOR_TIMEOUT:-1200}" bash "$d/run.sh" "$N"
done

# ---- 4. the summary: one JSON line
$PY - "$OUT" "$N" "${STORE:-sqlite}" "${ANAMES[@]}" <<'PY'
import json, os, sys
out, n, store, anchors = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:]

def result(name):
    def read(ext):
        try:
            return open(os.path.join(out, f"{name}.{ext}")).read()
        except OSError:
            return ""
    rc = read("rc").strip()
    line = None
    for l in read("out").splitlines():
        l = l.strip()
        if l.startswith("{"):
            try:
                line = json.loads(l)
            except ValueError:
                pass
    if rc == "0" and line is not None:
        return line
    err = (read("err") + read("out")).strip().splitlines()
    return {"error": f"exit {rc or '?'}" + ("" if line is not None else ", no JSON line"),
            "output_tail": err[-12:]}

s = {"n": n, "store": store, "ceilings": result("ceilings"), "klynaa": result("klynaa")}
for k in ("klynaa_paced_ack", "klynaa_paced_e2e", "klynaa_ingress_only"):
    if os.path.exists(os.path.join(out, f"{k}.rc")):
        s[k] = result(k)
s["anchors"] = {a: result(f"anchor_{a}") for a in anchors}
k = s["klynaa"].get("e2e_jobs_per_s")
ratios = {}
for a, r in s["anchors"].items():
    v = r.get("e2e_jobs_per_s")
    ratios[a] = round(k / v, 2) if k and v else None
s["ratios_e2e_jobs_per_s"] = ratios
c = s["ceilings"]
if "error" not in c and "error" not in s["klynaa"]:
    kl = s["klynaa"]
    s["fraction_of_ceiling"] = {
        "acks_vs_zmq_req_rep": round(kl["ingress_acks_per_s"] / c["zmq_dealer_router"]["req_rep_per_s"], 3)
        if kl.get("ingress_acks_per_s") else None,
        "e2e_vs_sqlite_batch256_rows": round(k / c["sqlite_wal_full"]["batch256_rows_per_s"], 3) if k else None,
        # Klynaa's own store alone, accepting and ending jobs on one writer thread
        "e2e_vs_klynaa_store_jobs": round(k / c["klynaa_store"]["jobs_per_s"], 3)
        if k and c.get("klynaa_store", {}).get("jobs_per_s") else None,
    }
# a human-readable digest on stderr
def g(r, *path):
    for p in path:
        if not isinstance(r, dict) or r.get(p) is None:
            return "-"
        r = r[p]
    return r
print("\n--- summary (N=%d, store %s, load average %s)" % (n, store, open("/proc/loadavg").read().split()[:3]), file=sys.stderr)
print("ceilings: klynaa store alone %s jobs/s (%s accepts/s, %s ends/s), sqlite %s rows/s in batches, fsync p99 %s ms" % (
    g(s["ceilings"], "klynaa_store", "jobs_per_s"), g(s["ceilings"], "klynaa_store", "accepts_per_s"),
    g(s["ceilings"], "klynaa_store", "ends_per_s"), g(s["ceilings"], "sqlite_wal_full", "batch256_rows_per_s"),
    g(s["ceilings"], "fsync_ms", "p99")), file=sys.stderr)
print("klynaa: acks/s %s  e2e jobs/s %s  ack p99 %s ms  e2e p99 %s ms  rss %s MB" % (
    g(s["klynaa"], "ingress_acks_per_s"), g(s["klynaa"], "e2e_jobs_per_s"),
    g(s["klynaa"], "ack_latency_ms", "p99"), g(s["klynaa"], "e2e_latency_ms", "p99"),
    g(s["klynaa"], "rss_mb")), file=sys.stderr)
if "klynaa_ingress_only" in s:
    print("klynaa_ingress_only (klynaa broker, no node): acks/s %s  ack p50 %s / p99 %s ms" % (
        g(s["klynaa_ingress_only"], "ingress_acks_per_s"), g(s["klynaa_ingress_only"], "ack_latency_ms", "p50"),
        g(s["klynaa_ingress_only"], "ack_latency_ms", "p99")), file=sys.stderr)
for a, r in s["anchors"].items():
    print("%s: e2e jobs/s %s  p99 %s ms  ratio %s  %s" % (a, g(r, "e2e_jobs_per_s"),
          g(r, "e2e_latency_ms", "p99"), ratios.get(a), r.get("error", "")), file=sys.stderr)
print(json.dumps(s))
PY
exit $KRC

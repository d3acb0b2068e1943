#!/bin/bash
# A broker with history (issue 21, docs/performance.md "A broker with history"):
# one `klynaa run` (broker and node in one process) takes JOBS worker.location
# events flat out, in chunks, with every job run and the default 7-day dedup
# retention, so that the store holds all of them at the end. Before the first
# chunk and after the last, the same two measurements: ack latency paced at
# RATE req/s on 4 connections for 20 s (the broker's ack_timeline then covers
# that run only), and a flat-out run of 200,000 events.
#
#   bash bench/history.sh [JOBS] [CHUNK] [RATE]     (default: 10000000 1000000 5000)
#
# Environment: CONFIG (a klynaa.toml passed to `klynaa run`, e.g. to pick the
# store backend), DATA_PARENT (where the data dir goes; default $TMPDIR or
# /tmp), SKIP_BUILD=1 (use build/ as it is).
#
# Prints each klynaa-bench JSON line as it comes, one JSON line per chunk
# {jobs, seconds, jobs_per_s, store_mb, rss_mb}, then one summary line:
#   {jobs, start: {paced, flat}, end: {paced, flat}, chunks: [...], store_mb, rss_mb}
# where paced = {p50, p99, p999} ack ms and flat = {e2e_jobs_per_s, acks_per_s}.
# Uses the Release tree build/. Binds 127.0.0.1 only.
set -u
JOBS=${1:-10000000}
CHUNK=${2:-1000000}
RATE=${3:-5000}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=$ROOT/build
PY=/usr/bin/python3
OUT=$(mktemp -d "${DATA_PARENT:-${TMPDIR:-/tmp}}/klynaa-history-XXXXXX")
KPID=""
cleanup() {
  [ -z "$KPID" ] || { kill -TERM "$KPID" 2>/dev/null; wait "$KPID" 2>/dev/null; }
  rm -rf "$OUT"
}
trap cleanup EXIT
say() { echo "history.sh: $*" >&2; }
fail() { say "$*"; exit 1; }

if [ "${SKIP_BUILD:-0}" != 1 ]; then
  say "building $BUILD (Release)"
  bash "$ROOT/scripts/build.sh" release klynaa klynaa-bench >"$OUT/build.log" 2>&1 ||
    { tail -30 "$OUT/build.log" >&2; fail "the Release build failed"; }
fi

rss_mb() { awk '/^VmRSS/ {printf "%.1f", $2 / 1024}' "/proc/$1/status" 2>/dev/null; }
store_mb() { du -sm "$OUT/data" | cut -f1; }

mkdir -p "$OUT/data"
args=(run --data-dir "$OUT/data" --ingress "tcp://127.0.0.1:*")
[ -z "${CONFIG:-}" ] || args+=(--config "$CONFIG")
KLYNAA_ADMIN_BIND="127.0.0.1:0" KLYNAA_LOG_LEVEL=warning DJANGO_API_URL=${DJANGO_API_URL:-http://127.0.0.1:9} \
  "$BUILD/klynaa" "${args[@]}" 2>"$OUT/klynaa.log" &
KPID=$!
for _ in $(seq 600); do
  [ -s "$OUT/data/broker.json" ] && break
  kill -0 "$KPID" 2>/dev/null || { tail -5 "$OUT/klynaa.log" >&2; fail "klynaa run exited"; }
  sleep 0.1
done
[ -s "$OUT/data/broker.json" ] || fail "no broker.json after 60 s"

bench() {  # klynaa-bench against the running broker; prints its JSON line, keeps it in $OUT/$1
  local name=$1; shift
  "$BUILD/klynaa-bench" --data-dir "$OUT/data" --pid "$KPID" --timeout 3600 "$@" >"$OUT/$name.json" ||
    { cat "$OUT/$name.json" >&2; fail "klynaa-bench ($name) failed"; }
  cat "$OUT/$name.json"
}
measure() {  # $1: start | end
  bench "$1-paced" --rate "$RATE" --connections 4 --count $((RATE * 20)) --type worker.location
  bench "$1-flat" --count 200000 --type worker.location
}

say "start: paced $RATE req/s and flat out (load average $(cut -d' ' -f1-3 /proc/loadavg))"
measure start
done_jobs=$((RATE * 20 + 200000))
CHUNKS=()
while [ "$done_jobs" -lt "$JOBS" ]; do
  n=$((JOBS - done_jobs)); [ "$n" -gt "$CHUNK" ] && n=$CHUNK
  T0=$(date +%s.%N)
  bench chunk --count "$n" --type worker.location --e2e-every 0 >/dev/null
  T1=$(date +%s.%N)
  done_jobs=$((done_jobs + n))
  line=$($PY -c 'import json,sys; a=sys.argv[1:]; s=float(a[2])-float(a[1]);
print(json.dumps({"jobs": int(a[0]), "seconds": round(s, 1), "jobs_per_s": round(int(a[3]) / s),
                  "store_mb": int(a[4]), "rss_mb": float(a[5] or 0)}))' \
    "$done_jobs" "$T0" "$T1" "$n" "$(store_mb)" "$(rss_mb "$KPID")")
  echo "$line"
  CHUNKS+=("$line")
  kill -0 "$KPID" 2>/dev/null || fail "klynaa run died after $done_jobs jobs"
done
say "end: paced $RATE req/s and flat out after $done_jobs jobs"
measure end

$PY - "$OUT" "$done_jobs" "$(store_mb)" "$(rss_mb "$KPID")" "${CHUNKS[@]}" <<'EOF'
import json, sys
out, jobs, store, rss = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4] or 0)
def load(name):
    with open(f"{out}/{name}.json") as f:
        return json.loads(f.readline())
def figures(when):
    p, f = load(f"{when}-paced"), load(f"{when}-flat")
    lat = p["ack_latency_ms"]
    return {"paced": {k: lat.get(k) for k in ("p50", "p99", "p999")},
            "flat": {"e2e_jobs_per_s": f["e2e_jobs_per_s"], "acks_per_s": f["ingress_acks_per_s"]},
            "broker_ack_timeline_us": p.get("broker_ack_timeline_us")}
print(json.dumps({"jobs": jobs, "start": figures("start"), "end": figures("end"),
                  "chunks": [json.loads(c) for c in sys.argv[5:]], "store_mb": store, "rss_mb": rss}))
EOF

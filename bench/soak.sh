#!/bin/bash
# Memory with many pending jobs (issues 7 and 8): a `klynaa broker` with no node
# accepts COUNT pickup.created events (one notifyNearbyWorkers job each, which
# waits: no node hosts geo), then the broker's RSS is sampled every STEP seconds
# for MINUTES minutes while they stay pending; then the broker is restarted on
# the same store and the time and RSS to load them back are measured.
#
#   bash bench/soak.sh [COUNT] [MINUTES] [STEP]     (default: 1000000 10 10)
#
# Prints the klynaa-bench JSON line of the load, then one summary line:
#   {count, pending, load_seconds, rss_mb{after_load, min, max, last, samples},
#    restart{seconds, rss_mb}, store_mb}
# Uses the Release tree build/ (built here unless SKIP_BUILD=1). Binds 127.0.0.1 only.
set -u
COUNT=${1:-1000000}
MINUTES=${2:-10}
STEP=${3:-10}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=$ROOT/build
PY=/usr/bin/python3
OUT=$(mktemp -d /tmp/klynaa-soak-XXXXXX)
BPID=""
cleanup() {
  [ -z "$BPID" ] || { kill -TERM "$BPID" 2>/dev/null; wait "$BPID" 2>/dev/null; }
  rm -rf "$OUT"
}
trap cleanup EXIT
say() { echo "soak.sh: $*" >&2; }
fail() { say "$*"; exit 1; }

if [ "${SKIP_BUILD:-0}" != 1 ]; then
  say "building $BUILD (Release)"
  bash "$ROOT/scripts/build.sh" release klynaa klynaa-bench >"$OUT/build.log" 2>&1 ||
    { tail -30 "$OUT/build.log" >&2; fail "the Release build failed"; }
fi

rss_mb() { awk '/^VmRSS/ {printf "%.1f", $2 / 1024}' "/proc/$1/status" 2>/dev/null; }
stat_pending() {  # ready jobs of notifyNearbyWorkers, from the admin endpoint
  curl -s "http://$ADMIN/stats" | $PY -c '
import json, sys
s = json.load(sys.stdin)
print(s["functions"].get("notifyNearbyWorkers", {}).get("ready", 0))'
}
start_broker() {  # $1: log file
  rm -f "$OUT/data/broker.json"
  KLYNAA_INGRESS_BIND="tcp://127.0.0.1:*" KLYNAA_CLUSTER_BIND="tcp://127.0.0.1:*" KLYNAA_ADMIN_BIND="127.0.0.1:0" \
  KLYNAA_INGRESS_MAX_PENDING=$((COUNT + 100000)) KLYNAA_LOG_LEVEL=warning KLYNAA_SCHEDULER_MISFIRE_GRACE_SECONDS=0 \
    "$BUILD/klynaa" broker --data-dir "$OUT/data" 2>"$1" &
  BPID=$!
  for _ in $(seq 6000); do
    [ -s "$OUT/data/broker.json" ] && break
    kill -0 "$BPID" 2>/dev/null || { tail -5 "$1" >&2; fail "the broker exited"; }
    sleep 0.05
  done
  [ -s "$OUT/data/broker.json" ] || fail "no broker.json after 300 s"
  ADMIN=$($PY -c 'import json,sys; print(json.load(open(sys.argv[1]))["admin"].split("//")[-1])' "$OUT/data/broker.json")
}

mkdir -p "$OUT/data"
start_broker "$OUT/broker.log"
say "loading $COUNT pickup.created events (load average $(cut -d' ' -f1-3 /proc/loadavg))"
T0=$(date +%s.%N)
"$BUILD/klynaa-bench" --data-dir "$OUT/data" --count "$COUNT" --type pickup.created --no-wait \
  --e2e-every 0 --timeout 3600 >"$OUT/load.json" || fail "klynaa-bench failed"
T1=$(date +%s.%N)
cat "$OUT/load.json"
for _ in $(seq 100); do  # the stats snapshot trails the last commit a little
  PENDING=$(stat_pending)
  [ "$PENDING" -ge "$COUNT" ] && break
  sleep 0.1
done
[ "$PENDING" -ge "$COUNT" ] || fail "only $PENDING of $COUNT jobs are pending"
AFTER=$(rss_mb "$BPID")
say "$PENDING pending, broker RSS $AFTER MB; sampling every ${STEP}s for ${MINUTES} min"
SAMPLES=()
END=$((SECONDS + ${MINUTES%.*} * 60 + 1))
while [ "$SECONDS" -lt "$END" ]; do
  sleep "$STEP"
  kill -0 "$BPID" 2>/dev/null || fail "the broker died during the soak"
  SAMPLES+=("$(rss_mb "$BPID")")
done
PENDING_END=$(stat_pending)
[ "$PENDING_END" -ge "$COUNT" ] || fail "pending dropped to $PENDING_END during the soak"

say "restarting the broker on the same store"
kill -TERM "$BPID"; wait "$BPID" 2>/dev/null; BPID=""
R0=$(date +%s.%N)
start_broker "$OUT/broker2.log"
until [ "$(stat_pending 2>/dev/null || echo 0)" -ge "$COUNT" ]; do
  kill -0 "$BPID" 2>/dev/null || fail "the restarted broker died"
  sleep 0.2
done
R1=$(date +%s.%N)
RESTART_RSS=$(rss_mb "$BPID")
STORE_MB=$(du -sm "$OUT/data" | cut -f1)

$PY - "$COUNT" "$PENDING_END" "$T0" "$T1" "$AFTER" "$R0" "$R1" "$RESTART_RSS" "$STORE_MB" "${SAMPLES[@]}" <<'EOF'
import json, sys
a = sys.argv[1:]
samples = [float(x) for x in a[9:]]
print(json.dumps({
    "count": int(a[0]), "pending": int(a[1]),
    "load_seconds": round(float(a[3]) - float(a[2]), 1),
    "rss_mb": {"after_load": float(a[4]), "min": min(samples), "max": max(samples),
               "last": samples[-1], "samples": len(samples)},
    "restart": {"seconds": round(float(a[6]) - float(a[5]), 1), "rss_mb": float(a[7])},
    "store_mb": int(a[8]),
}))
EOF

#!/bin/bash
# Notification jobs against a slow upstream (issue 19): how many
# sendPickupNotification jobs a node finishes per second when every Django read
# and every push takes L ms, and what that costs the node in threads and memory.
#
#   bash bench/notify.sh [COUNT] [LATENCY_MS...]     (default: 3000 events; 0 20 100 500 ms)
#
# For each latency: klynaa-upstream (bench/fake_upstream.cpp) answers the Django
# API and the webhook push provider after L ms (above CAPACITY requests held it
# answers 503 with Retry-After); deploy/local-cluster.sh starts one `klynaa
# broker` and one `klynaa node --actors notifier` on 127.0.0.1, with
# NOTIFICATION_SERVICE=webhook pointed at the upstream; klynaa-bench publishes
# COUNT pickup.accepted events, each for its own pickup (so ordering keys do not
# serialise them), and waits until their sendPickupNotification jobs are done.
# Each job reads the pickup and the customer's tokens from "Django" and pushes
# to each token (--tokens-per-user, default 1): three upstream requests a job.
#
# Prints one JSON line per latency: klynaa-bench's figures (e2e_jobs_per_s ...),
# plus the node's most threads and largest RSS while it ran, and the upstream's
# requests, refused (503) and most requests held at once; then a summary line.
#
# Environment: CAPACITY (upstream --capacity, default 0 = none), TOKENS (pushes
# per job, default 1), NODE_ENV (extra KEY=VALUE settings for the node, e.g.
# "KLYNAA_NODE_NOTIFIER_WORKERS=5000"), SKIP_BUILD=1 (use build/ as it is),
# STEP_MS and STEP_AFTER_S (the upstream's latency becomes STEP_MS that many
# seconds after it starts: the line then adds the upstream's goodput, answers
# other than 503 per second, from 10 s after the step to the run's tail (the
# last moment at least CAPACITY / 2 requests were held), beside what it
# allows, CAPACITY / STEP_MS), BUILD_DIR (a Release tree other than build/).
# Uses the Release tree build/ (or BUILD_DIR). Everything binds 127.0.0.1.
set -u
COUNT=${1:-3000}; shift || true
LATENCIES=("$@"); [ ${#LATENCIES[@]} -gt 0 ] || LATENCIES=(0 20 100 500)
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${BUILD_DIR:-$ROOT/build}
PY=/usr/bin/python3
OUT=$(mktemp -d /tmp/klynaa-notify-bench-XXXXXX)
UP_PID=""
LC_PID=""
SAMPLER_PID=""
cleanup() {
  [ -z "$SAMPLER_PID" ] || kill "$SAMPLER_PID" 2>/dev/null
  [ -z "$LC_PID" ] || { kill -TERM "$LC_PID" 2>/dev/null; wait "$LC_PID" 2>/dev/null; }
  [ -z "$UP_PID" ] || { kill -TERM "$UP_PID" 2>/dev/null; wait "$UP_PID" 2>/dev/null; }
  rm -rf "$OUT"
}
trap cleanup EXIT
say() { echo "notify.sh: $*" >&2; }
json_field() { $PY -c "import json,sys; d=json.load(sys.stdin); print(eval('d' + sys.argv[1]))" "$1"; }

if [ "${SKIP_BUILD:-0}" != 1 ]; then
  say "building $BUILD (Release)"
  bash "$ROOT/scripts/build.sh" release klynaa klynaa-bench klynaa-upstream >"$OUT/build.log" 2>&1 ||
    { tail -30 "$OUT/build.log" >&2; say "the Release build failed"; exit 1; }
fi
for b in klynaa klynaa-bench klynaa-upstream; do
  [ -x "$BUILD/$b" ] || { say "no $BUILD/$b: build it (bash scripts/build.sh release)"; exit 1; }
done

# Samples the node's threads and RSS (from /proc) and the upstream's requests
# held, uptime, requests and 503s, every 200 ms, into $3 as
# "threads rss_kib upstream_in_flight uptime_s requests refused" lines.
sample() {
  local node_pid=$1 up=$2 file=$3
  while kill -0 "$node_pid" 2>/dev/null; do
    local t r h
    t=$(awk '/^Threads:/ {print $2}' "/proc/$node_pid/status" 2>/dev/null)
    r=$(awk '/^VmRSS:/ {print $2}' "/proc/$node_pid/status" 2>/dev/null)
    h=$(curl -s "http://$up/_stats" | $PY -c 'import json,sys; d=json.load(sys.stdin)
print(d["in_flight"], d["uptime_s"], d["requests"]["total"], d["refused"])' 2>/dev/null)
    echo "${t:-0} ${r:-0} ${h:-0 0 0 0}" >>"$file"
    sleep 0.2
  done
}

# CPU seconds (user + system) process $1 has used so far.
cpu_seconds() { awk '{printf "%.2f", ($14 + $15) / 100}' "/proc/$1/stat" 2>/dev/null || echo 0; }

SUMMARY="{\"workload\": \"pickup.accepted -> sendPickupNotification, webhook provider\", \"count\": $COUNT"
for lat in "${LATENCIES[@]}"; do
  say "latency $lat ms: starting klynaa-upstream (load average $(cut -d' ' -f1-3 /proc/loadavg))"
  step=()
  [ -z "${STEP_MS:-}" ] || step=(--latency-step-ms "$STEP_MS" --step-after-s "${STEP_AFTER_S:-30}")
  "$BUILD/klynaa-upstream" --port 0 --latency-ms "$lat" --capacity "${CAPACITY:-0}" "${step[@]}" \
    --tokens-per-user "${TOKENS:-1}" >"$OUT/up$lat.out" 2>"$OUT/up$lat.err" &
  UP_PID=$!
  for _ in $(seq 100); do grep -q listening "$OUT/up$lat.out" && break; sleep 0.05; done
  UP=$(head -1 "$OUT/up$lat.out" | json_field '["listening"]') ||
    { cat "$OUT/up$lat.err" >&2; say "klynaa-upstream did not start"; exit 1; }

  # shellcheck disable=SC2086
  env KLYNAA_BIN="$BUILD/klynaa" LC_ACTORS=notifier DJANGO_API_URL="http://$UP" DJANGO_API_KEY=bench-key \
    NOTIFICATION_SERVICE=webhook KLYNAA_NOTIFICATIONS_WEBHOOK_URL="http://$UP/push" KLYNAA_LOG_LEVEL=warning \
    ${NODE_ENV:-} bash "$ROOT/deploy/local-cluster.sh" 1 "$OUT/c$lat" >"$OUT/lc$lat.out" 2>"$OUT/lc$lat.err" &
  LC_PID=$!
  for _ in $(seq 600); do grep -q '^{' "$OUT/lc$lat.out" && break; kill -0 $LC_PID 2>/dev/null || break; sleep 0.1; done
  INFO=$(grep '^{' "$OUT/lc$lat.out" | head -1)
  [ -n "$INFO" ] || { tail "$OUT/lc$lat.err" >&2; say "the cluster did not start"; exit 1; }
  INGRESS=$(echo "$INFO" | json_field '["ingress"]')
  ADMIN=$(echo "$INFO" | json_field '["admin"][len("http://"):]')
  BPID=$(echo "$INFO" | json_field '["broker_pid"]')
  NPID=$(echo "$INFO" | json_field '["node_pids"][0]')
  sample "$NPID" "$UP" "$OUT/samples$lat" &
  SAMPLER_PID=$!

  LINE=$(/usr/bin/time -f '%U %S' -o "$OUT/benchcpu$lat" "$BUILD/klynaa-bench" --ingress "$INGRESS" --admin "$ADMIN" --pid "$BPID" --type pickup.accepted \
           --wait-function sendPickupNotification --count "$COUNT" --keys "$COUNT" --timeout 900 \
           2>"$OUT/bench$lat.err" | grep '^{' | tail -1)
  kill "$SAMPLER_PID" 2>/dev/null; wait "$SAMPLER_PID" 2>/dev/null; SAMPLER_PID=""
  UPSTATS=$(curl -s "http://$UP/_stats")
  CPU="$(cpu_seconds "$BPID") $(cpu_seconds "$NPID") $(cpu_seconds "$UP_PID") $(awk '{print $1 + $2}' "$OUT/benchcpu$lat" 2>/dev/null)"
  kill -TERM "$LC_PID" 2>/dev/null; wait "$LC_PID" 2>/dev/null; LC_PID=""
  kill -TERM "$UP_PID" 2>/dev/null; wait "$UP_PID" 2>/dev/null; UP_PID=""
  [ -n "$LINE" ] || { tail "$OUT/bench$lat.err" >&2; say "klynaa-bench failed at latency $lat ms"; exit 1; }
  LINE=$(LINE="$LINE" UPSTATS="$UPSTATS" CPU="$CPU" STEP_MS="${STEP_MS:-}" STEP_AFTER_S="${STEP_AFTER_S:-30}" \
    CAPACITY="${CAPACITY:-0}" $PY - "$lat" "$OUT/samples$lat" <<'EOF'
import json, os, sys
lat, samples = int(sys.argv[1]), sys.argv[2]
d = json.loads(os.environ["LINE"])
up = json.loads(os.environ["UPSTATS"] or "{}")
rows = [tuple(float(x) for x in l.split()) for l in open(samples) if len(l.split()) == 6] if os.path.exists(samples) else []
d.update({"upstream_latency_ms": lat,
          "node_threads_max": int(max((r[0] for r in rows), default=0)),
          "node_rss_mb_max": round(max((r[1] for r in rows), default=0) / 1024, 1),
          "upstream_requests": up.get("requests", {}).get("total"),
          "upstream_refused": up.get("refused"),
          "upstream_max_in_flight": up.get("max_in_flight"),
          "upstream_connections": up.get("connections", {}).get("accepted")})
if os.environ["STEP_MS"]:
    # Goodput after the step: answers other than 503 per second, from 10 s
    # after it to the last sample, beside capacity / latency.
    step_ms, from_s = int(os.environ["STEP_MS"]), float(os.environ["STEP_AFTER_S"]) + 10
    # The run's tail, when fewer jobs are left than the upstream could hold,
    # says nothing about the limits: the measure ends at the last sample
    # with at least half the capacity in flight.
    cap = int(os.environ["CAPACITY"])
    after = [r for r in rows if r[3] >= from_s]
    busy = [i for i, r in enumerate(after) if r[2] >= cap / 2]
    after = after[:busy[-1] + 1] if busy else []
    d["latency_step"] = {"to_ms": step_ms, "at_s": float(os.environ["STEP_AFTER_S"])}
    if len(after) >= 2 and after[-1][3] > after[0][3]:
        span = after[-1][3] - after[0][3]
        good = (after[-1][4] - after[-1][5]) - (after[0][4] - after[0][5])
        d["latency_step"]["seconds_measured"] = round(span, 1)
        d["latency_step"]["goodput_per_s"] = round(good / span, 1)
        if cap > 0:
            d["latency_step"]["upstream_allows_per_s"] = round(cap * 1000 / step_ms, 1)
            d["latency_step"]["goodput_share"] = round(good / span / (cap * 1000 / step_ms), 3)
# CPU seconds (user + system) each process spent, per 1,000 jobs: where the two
# cores went, whatever else the machine was doing.
cpu = [float(x) for x in os.environ.get("CPU", "").split()]
if len(cpu) == 4 and d.get("jobs_done"):
    d["cpu_ms_per_job"] = {name: round(1000 * c / d["jobs_done"], 3)
                           for name, c in zip(("broker", "node", "upstream", "bench"), cpu)}
print(json.dumps(d))
EOF
)
  echo "$LINE"
  RATE=$(echo "$LINE" | json_field '["e2e_jobs_per_s"]')
  SUMMARY+=", \"jobs_per_s_at_${lat}ms\": $RATE"
done
echo "$SUMMARY}"

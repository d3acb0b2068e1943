#!/bin/bash
# One node against several (issue 5): the same workload through a broker with
# 1 node and with N nodes, started by deploy/local-cluster.sh on this machine.
#
#   bash bench/cluster.sh [COUNT] [NODES...]        (default: 20000 requests, nodes 1 3)
#
# The workload runs each job once (unlike the fanned-out worker.location):
# notifyNearbyWorkers at random places on Earth, answered from each node's
# in-memory geo index (loaded from the reference Django, seeded near Lagos, so
# almost no query finds a worker and no notification follows). Every 100th
# request is an invoke, for end-to-end latency.
#
# Prints one klynaa-bench JSON line per node count (with "nodes" added), then a
# summary line with the throughput ratios against 1 node. Uses the Release build
# in build/ (the Release tree, built here with scripts/build.sh release unless SKIP_BUILD=1). Everything binds 127.0.0.1.
set -u
COUNT=${1:-20000}; shift || true
NODES=("$@"); [ ${#NODES[@]} -gt 0 ] || NODES=(1 3)
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=$ROOT/build
PY=/usr/bin/python3
OUT=$(mktemp -d /tmp/klynaa-cluster-bench-XXXXXX)
DJANGO_PID=""
LC_PID=""
cleanup() {
  [ -z "$LC_PID" ] || { kill -TERM "$LC_PID" 2>/dev/null; wait "$LC_PID" 2>/dev/null; }
  [ -z "$DJANGO_PID" ] || { kill -TERM "$DJANGO_PID" 2>/dev/null; wait "$DJANGO_PID" 2>/dev/null; }
  rm -rf "$OUT"
}
trap cleanup EXIT
say() { echo "cluster.sh: $*" >&2; }

if [ "${SKIP_BUILD:-0}" != 1 ]; then
  say "building $BUILD (Release)"
  bash "$ROOT/scripts/build.sh" release klynaa klynaa-bench >"$OUT/build.log" 2>&1 ||
    { tail -30 "$OUT/build.log" >&2; say "the Release build failed"; exit 1; }
fi

# The reference Django on a free port (the geo index loads its available workers).
PORT=$($PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
KLYNAA_DEMO_DB=$OUT/django DJANGO_API_KEY=bench-key KLYNAA_INGRESS=tcp://127.0.0.1:9 \
  $PY "$ROOT/examples/django/serve.py" "127.0.0.1:$PORT" --seed --quiet >"$OUT/django.log" 2>&1 &
DJANGO_PID=$!
mkdir -p "$OUT/django"
for _ in $(seq 300); do grep -q READY "$OUT/django.log" && break; sleep 0.1; done
grep -q READY "$OUT/django.log" || { tail "$OUT/django.log" >&2; say "Django did not start"; exit 1; }

declare -A RATE
for n in "${NODES[@]}"; do
  say "$n node(s): starting deploy/local-cluster.sh (load average $(cut -d' ' -f1-3 /proc/loadavg))"
  KLYNAA_BIN=$BUILD/klynaa LC_ACTORS=geo DJANGO_API_URL=http://127.0.0.1:$PORT DJANGO_API_KEY=bench-key \
    KLYNAA_LOG=warning bash "$ROOT/deploy/local-cluster.sh" "$n" "$OUT/c$n" >"$OUT/lc$n.out" 2>"$OUT/lc$n.err" &
  LC_PID=$!
  for _ in $(seq 600); do grep -q '^{' "$OUT/lc$n.out" && break; kill -0 $LC_PID 2>/dev/null || break; sleep 0.1; done
  INFO=$(grep '^{' "$OUT/lc$n.out" | head -1)
  [ -n "$INFO" ] || { tail "$OUT/lc$n.err" >&2; say "the cluster did not start"; exit 1; }
  INGRESS=$(echo "$INFO" | $PY -c 'import json,sys; print(json.load(sys.stdin)["ingress"])')
  ADMIN=$(echo "$INFO" | $PY -c 'import json,sys; print(json.load(sys.stdin)["admin"][len("http://"):])')
  BPID=$(echo "$INFO" | $PY -c 'import json,sys; print(json.load(sys.stdin)["broker_pid"])')
  LINE=$("$BUILD/klynaa-bench" --ingress "$INGRESS" --admin "$ADMIN" --pid "$BPID" --type notifyNearbyWorkers \
           --count "$COUNT" --keys 1000000 2>"$OUT/bench$n.err" | grep '^{' | tail -1)
  kill -TERM "$LC_PID" 2>/dev/null; wait "$LC_PID" 2>/dev/null; LC_PID=""
  [ -n "$LINE" ] || { tail "$OUT/bench$n.err" >&2; say "klynaa-bench failed with $n node(s)"; exit 1; }
  LINE=$(echo "$LINE" | $PY -c "import json,sys; d=json.load(sys.stdin); d['nodes']=$n; print(json.dumps(d))")
  echo "$LINE"
  RATE[$n]=$(echo "$LINE" | $PY -c 'import json,sys; print(json.load(sys.stdin)["e2e_jobs_per_s"])')
done

SUMMARY="{\"workload\": \"notifyNearbyWorkers\", \"count\": $COUNT, \"cores\": $(nproc)"
for n in "${NODES[@]}"; do
  SUMMARY+=", \"e2e_jobs_per_s_${n}_nodes\": ${RATE[$n]}"
  SUMMARY+=", \"ratio_${n}_vs_${NODES[0]}\": $($PY -c "print(round(${RATE[$n]} / ${RATE[${NODES[0]}]}, 2))")"
done
echo "$SUMMARY}"

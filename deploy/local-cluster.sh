#!/usr/bin/env bash
# Starts one Klynaa broker and N nodes on 127.0.0.1, waits until the broker's
# /stats lists N nodes, prints the endpoints as one JSON line on stdout, then
# runs until SIGTERM/SIGINT; on any exit it stops every process it started
# (SIGTERM, then SIGKILL after the grace period).
#
#   deploy/local-cluster.sh N [DATA_DIR]
#
# DATA_DIR: the broker's data dir is DATA_DIR/broker, node i's DATA_DIR/node-i.
# Without it a temporary directory is used and removed at exit.
# Environment: KLYNAA_BIN (default build/klynaa of this tree),
#   LC_INGRESS_PORT, LC_CLUSTER_PORT, LC_ADMIN_PORT (default: ephemeral),
#   LC_ACTORS (default notifier,escrow,geo,scheduler),
#   LC_WAIT_SECONDS (default 30), DJANGO_API_URL (default http://127.0.0.1:8000).
# Only 127.0.0.1 is ever bound or contacted: the bind variables of the
# environment (which win over flags) are overridden.
set -euo pipefail

usage() { echo "usage: $0 N [DATA_DIR]" >&2; exit 2; }
[ $# -ge 1 ] && [ $# -le 2 ] || usage
N=$1
[[ "$N" =~ ^[1-9][0-9]*$ ]] || usage

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${KLYNAA_BIN:-$ROOT/build/klynaa}
[ -x "$BIN" ] || { echo "local-cluster: $BIN not found or not executable (build first: bash scripts/build.sh release)" >&2; exit 1; }

TMP_DIR=""
if [ $# -eq 2 ]; then
  DATA_DIR=$2
  mkdir -p "$DATA_DIR"
else
  TMP_DIR=$(mktemp -d -t klynaa-local-cluster.XXXXXX)
  DATA_DIR=$TMP_DIR
fi
DATA_DIR=$(cd "$DATA_DIR" && pwd)
WAIT=${LC_WAIT_SECONDS:-30}
ACTORS=${LC_ACTORS:-notifier,escrow,geo,scheduler}

# loopback only, whatever the caller's environment says
export KLYNAA_INGRESS_BIND="tcp://127.0.0.1:${LC_INGRESS_PORT:-*}"
export KLYNAA_CLUSTER_BIND="tcp://127.0.0.1:${LC_CLUSTER_PORT:-*}"
export KLYNAA_ADMIN_BIND="127.0.0.1:${LC_ADMIN_PORT:-0}"
export DJANGO_API_URL=${DJANGO_API_URL:-http://127.0.0.1:8000}
case "$DJANGO_API_URL" in
  http://127.0.0.1:*|http://127.0.0.1/*|http://127.0.0.1) ;;
  *) echo "local-cluster: DJANGO_API_URL must be on 127.0.0.1 (got $DJANGO_API_URL)" >&2; exit 2 ;;
esac

BROKER_PID=""
NODE_PIDS=()
STOPPED=0

stop_pid() {  # stop_pid PID NAME: SIGTERM, wait up to grace+10 s, then SIGKILL
  local pid=$1 name=$2 i rc
  kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 400; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    echo "local-cluster: $name ($pid) still running, SIGKILL" >&2
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rc=0; wait "$pid" 2>/dev/null || rc=$?
  [ "$rc" -eq 0 ] || echo "local-cluster: $name ($pid) exited $rc" >&2
}

cleanup() {
  [ "$STOPPED" -eq 0 ] || return 0
  STOPPED=1
  trap - TERM INT
  local p i=0
  for p in "${NODE_PIDS[@]}"; do i=$((i + 1)); stop_pid "$p" "node-$i"; done
  [ -z "$BROKER_PID" ] || stop_pid "$BROKER_PID" broker
  [ -z "$TMP_DIR" ] || rm -rf "$TMP_DIR"
  echo "local-cluster: stopped" >&2
}
trap cleanup EXIT
trap 'cleanup; exit 0' TERM INT

json_get() {  # json_get FILE KEY -> the value (first element of a list)
  /usr/bin/python3 - "$1" "$2" <<'PY'
import json, sys
v = json.load(open(sys.argv[1]))[sys.argv[2]]
print(v[0] if isinstance(v, list) else v)
PY
}

admin_get() {  # admin_get PATH
  local auth=()
  [ -z "${KLYNAA_ADMIN_TOKEN:-}" ] || auth=(-H "Authorization: Bearer $KLYNAA_ADMIN_TOKEN")
  curl -fsS --max-time 2 "${auth[@]}" "http://$ADMIN$1"
}

mkdir -p "$DATA_DIR/broker"
rm -f "$DATA_DIR/broker/broker.json"
"$BIN" broker --data-dir "$DATA_DIR/broker" 2>"$DATA_DIR/broker.log" &
BROKER_PID=$!

deadline=$((SECONDS + WAIT))
until [ -s "$DATA_DIR/broker/broker.json" ]; do
  kill -0 "$BROKER_PID" 2>/dev/null || { echo "local-cluster: broker exited; see $DATA_DIR/broker.log" >&2; tail -n 5 "$DATA_DIR/broker.log" >&2; exit 1; }
  [ "$SECONDS" -lt "$deadline" ] || { echo "local-cluster: no broker.json after ${WAIT}s" >&2; exit 1; }
  sleep 0.1
done
sleep 0.1  # let the writer finish the file
INGRESS=$(json_get "$DATA_DIR/broker/broker.json" ingress)
CLUSTER=$(json_get "$DATA_DIR/broker/broker.json" cluster)
ADMIN=$(json_get "$DATA_DIR/broker/broker.json" admin)

for ((i = 1; i <= N; i++)); do
  mkdir -p "$DATA_DIR/node-$i"
  "$BIN" node --broker "$CLUSTER" --actors "$ACTORS" --name "node-$i" \
      --data-dir "$DATA_DIR/node-$i" 2>"$DATA_DIR/node-$i.log" &
  NODE_PIDS+=($!)
done

count=0
until [ "$count" -eq "$N" ]; do
  [ "$SECONDS" -lt "$deadline" ] || { echo "local-cluster: /stats shows $count of $N nodes after ${WAIT}s" >&2; exit 1; }
  i=0
  for p in "${NODE_PIDS[@]}"; do
    i=$((i + 1))
    kill -0 "$p" 2>/dev/null || { echo "local-cluster: node-$i exited; see $DATA_DIR/node-$i.log" >&2; tail -n 5 "$DATA_DIR/node-$i.log" >&2; exit 1; }
  done
  sleep 0.2
  count=$(admin_get /stats 2>/dev/null | /usr/bin/python3 -c 'import json,sys; print(len(json.load(sys.stdin)["nodes"]))' 2>/dev/null || echo 0)
done

/usr/bin/python3 - "$INGRESS" "$CLUSTER" "$ADMIN" "$DATA_DIR" "$BROKER_PID" "$N" "${NODE_PIDS[@]}" <<'PY'
import json, sys
ingress, cluster, admin, data_dir, broker_pid, n, *pids = sys.argv[1:]
print(json.dumps({"ingress": ingress, "cluster": cluster, "admin": "http://" + admin,
                  "data_dir": data_dir, "broker_pid": int(broker_pid),
                  "nodes": int(n), "node_pids": [int(p) for p in pids]}), flush=True)
PY

# run until a signal (sleep in the background so the trap fires at once) or
# until the broker dies
while kill -0 "$BROKER_PID" 2>/dev/null; do
  sleep 1 &
  wait $! || true
done
echo "local-cluster: broker exited on its own; see $DATA_DIR/broker.log" >&2
exit 1

#!/usr/bin/env bash
# The README's main command: installs what is missing, builds the Release
# klynaa (build/klynaa, that target only: no tests), starts the
# reference Django app and `klynaa run` on its embedded defaults, walks a pickup
# through accepted -> delivered -> confirmed, runs the two `invoke` commands of
# the old Lambda layer, and shows what happened. Leaves nothing running.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build.sh release klynaa

DEMO=${DEMO_DIR:-demo-run}
rm -rf "$DEMO"
mkdir -p "$DEMO/django" "$DEMO/klynaa"
export DJANGO_API_KEY=dev-key
export DJANGO_API_URL=http://127.0.0.1:8000
export KLYNAA_INGRESS=tcp://127.0.0.1:5555
export KLYNAA_DEMO_DB="$PWD/$DEMO/django"
PY=/usr/bin/python3

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

echo "== starting the reference Django app on 127.0.0.1:8000"
$PY examples/django/serve.py 127.0.0.1:8000 --seed --quiet > "$DEMO/django.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do grep -q READY "$DEMO/django.log" 2>/dev/null && break; sleep 0.1; done

echo "== starting klynaa run (ingress tcp://127.0.0.1:5555, admin 127.0.0.1:9464)"
build/klynaa run --data-dir "$DEMO/klynaa" 2> "$DEMO/klynaa.log" &
pids+=($!)
for _ in $(seq 100); do [ -f "$DEMO/klynaa/broker.json" ] && break; sleep 0.1; done

echo "== walking a pickup through created -> accepted -> delivered -> confirmed"
$PY examples/django/manage.py demo_walkthrough

echo
echo "== klynaa invoke sendPickupNotification"
build/klynaa invoke sendPickupNotification --data '{"pickup_id": 1, "notification_type": "pickup_requested", "user_type": "worker"}' || true
echo "== klynaa invoke processEscrowRelease"
build/klynaa invoke processEscrowRelease --data '{"pickup_id": 1, "release_reason": "customer_confirmed"}' || true

sleep 1
echo
echo "== notifications written by the log provider ($DEMO/klynaa/outbox.jsonl)"
cat "$DEMO/klynaa/outbox.jsonl" 2>/dev/null || echo "(none)"
echo
echo "== escrow releases recorded by Django"
curl -s http://127.0.0.1:8000/api/demo/state/ | $PY -c '
import json, sys
s = json.load(sys.stdin)
for r in s.get("escrow_releases", []):
    print("  pickup %s released %s %s (%s)" % (r["pickup_id"], r["amount"], r["currency"], r["reason"]))
calls = s.get("escrow_calls", [])
print("  %d release call(s) answered: %s" % (len(calls), ", ".join(str(c["status_code"]) for c in calls)))
'
echo
echo "Logs: $DEMO/klynaa.log (JSON lines), $DEMO/django.log"

#!/usr/bin/python3
"""Steady event load for the dashboard's browser test, through the Python client.

    /usr/bin/python3 tests/browser/load.py --ingress tcp://127.0.0.1:PORT
        [--rate 25] [--seconds 120] [--pickups 1,2] [--fail-every 100]

Publishes, round robin: worker.location for workers 201-205 and
pickup.accepted for the given (known) pickups; every --fail-every-th event is
a pickup.accepted for a pickup Django does not know (its notification fails
with a 404: permanent, dead). Stops after --seconds, on SIGTERM, or when its
stdin closes (the test that started it went away). Prints a "published N" line
a second. Needs Debian's python3-zmq and python3-msgpack.
"""
import argparse
import os
import signal
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "clients", "python"))

from klynaa_client import Client, KlynaaError  # noqa: E402

stop = threading.Event()


def watch_stdin():
    try:
        while sys.stdin.read(4096):
            pass
    except Exception:
        pass
    stop.set()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ingress", required=True)
    ap.add_argument("--rate", type=float, default=25.0, help="events per second")
    ap.add_argument("--seconds", type=float, default=120.0, help="stop after this long")
    ap.add_argument("--pickups", default="1,2", help="pickup ids Django knows")
    ap.add_argument("--fail-every", type=int, default=100, help="every n-th event fails permanently (0: never)")
    args = ap.parse_args()

    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    threading.Thread(target=watch_stdin, daemon=True).start()
    pickups = [int(p) for p in args.pickups.split(",") if p.strip()]
    client = Client(args.ingress, timeout_s=5, retries=1)
    run = "%x" % int(time.time() * 1000)
    deadline = time.monotonic() + args.seconds
    interval = 1.0 / max(args.rate, 0.1)
    n = errors = 0
    next_at = time.monotonic()
    last_print = 0.0
    try:
        while not stop.is_set() and time.monotonic() < deadline:
            i = n
            if args.fail_every and i % args.fail_every == args.fail_every - 1:
                etype, data = "pickup.accepted", {"pickup_id": 900000 + i, "customer_id": 101, "worker_id": 201}
            elif i % 2 == 0 or not pickups:
                w = 201 + (i // 2) % 5
                etype, data = "worker.location", {"worker_id": w, "lat": 6.52 + (i % 7) * 0.001,
                                                  "lng": 3.38 + (i % 5) * 0.001, "available": True}
            else:
                p = pickups[(i // 2) % len(pickups)]
                etype, data = "pickup.accepted", {"pickup_id": p, "customer_id": 101, "worker_id": 201}
            try:
                client.publish(etype, data, id="load-%s-%d" % (run, i))
            except KlynaaError as e:
                errors += 1
                print("error %s" % e, flush=True)
            n += 1
            now = time.monotonic()
            if now - last_print >= 1.0:
                print("published %d errors %d" % (n, errors), flush=True)
                last_print = now
            next_at += interval
            delay = next_at - time.monotonic()
            if delay > 0:
                stop.wait(delay)
            else:
                next_at = time.monotonic()
    finally:
        client.close()
    print("published %d errors %d" % (n, errors), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

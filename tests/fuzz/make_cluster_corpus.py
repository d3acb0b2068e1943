#!/usr/bin/python3
"""Writes the seed corpus of the cluster fuzz target (tests/fuzz/corpus/cluster/).

Run once by hand when the cluster protocol changes (Debian's python3-msgpack),
and commit the files: /usr/bin/python3 tests/fuzz/make_cluster_corpus.py

Each seed is one frame of docs/cluster-protocol.md: every message type, valid,
with and without its optional keys; BATCH frames of JOBs, DONEs and CREDITs, an
empty one, a nested one, one of 1025 frames; and invalid frames (wrong types,
missing keys, strings where bins belong, truncated msgpack). Deterministic; the
script replaces only its own files (seed-*); crash reproducers (regress-*) stay.
"""
import os

import msgpack

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "corpus", "cluster")
seeds = {}


def pack(obj):
    return msgpack.packb(obj, use_bin_type=True)


def add(name, frame):
    assert name not in seeds, name
    seeds[name] = frame


ready = {"t": "ready", "v": 1, "node": "node-a", "kinds": ["geo", "notifier"], "credit": 14, "batch": True}
welcome = {"t": "welcome", "heartbeat_ms": 1000, "lease_ms": 30000, "batch": True}
job = {"t": "job", "job_id": "evt-1#1", "function": "updateWorkerLocation",
       "data_json": '{"worker_id":3,"lat":6.5,"lng":3.4,"available":true}', "attempt": 1, "lease": 7,
       "ts_ms": 1700000000000}
done = {"t": "done", "job_id": "evt-1#1", "lease": 7, "outcome": "ok", "result_json": "{}", "error_code": "",
        "error_message": "", "http_status": 0, "retry_after_ms": -1, "duration_ms": 0,
        "children": [{"job_id": "evt-1#1#1", "function": "sendPickupNotification",
                      "data_json": '{"pickup_id":7}', "due_ms": 0}], "credit": 1}
failed = dict(done, outcome="transient", result_json="", error_code="http_503", error_message="Django is down",
              http_status=503, retry_after_ms=2000, children=[])
credit = {"t": "credit", "n": 3}
heartbeat = {"t": "heartbeat"}
bye = {"t": "bye", "jobs": ["evt-1#1", "evt-2#1"], "reason": "standby"}
stats = {"t": "node_stats", "json": '{"node":"node-a","held":2}'}
withdraw = {"t": "withdraw", "kinds": ["escrow"], "reason": "11 restarts", "credit": 4, "jobs": ["evt-3#1"]}

for name, m in [("ready", ready), ("welcome", welcome), ("job", job), ("done", done), ("done-failed", failed),
                ("credit", credit), ("heartbeat", heartbeat), ("bye", bye), ("node-stats", stats),
                ("withdraw", withdraw)]:
    add(name, pack(m))
add("ready-without-batch", pack({k: v for k, v in ready.items() if k != "batch"}))
add("welcome-without-batch", pack({k: v for k, v in welcome.items() if k != "batch"}))
add("done-minimal", pack({"t": "done", "job_id": "x#1", "lease": 1, "outcome": "permanent"}))


def batch(frames):
    return pack({"t": "batch", "frames": frames})


jobs = [pack(dict(job, job_id="evt-%d#1" % i, lease=i)) for i in range(1, 9)]
dones = [pack(dict(done, job_id="evt-%d#1" % i, lease=i, children=[])) for i in range(1, 9)]
add("batch-jobs", batch(jobs))
add("batch-dones-credit", batch(dones + [pack(credit), pack(heartbeat)]))
add("batch-empty", batch([]))
add("batch-nested", batch([batch(jobs[:2]), pack(job)]))
add("batch-garbage-inside", batch([b"\xc1", b"", pack([1, 2, 3]), pack(job)[:-3]]))
add("batch-too-many", batch([pack(heartbeat)] * 1025))
add("batch-strings-not-bins", pack({"t": "batch", "frames": ["x", "y"]}))
add("batch-frames-map", pack({"t": "batch", "frames": {"a": b"x"}}))
add("batch-missing-frames", pack({"t": "batch"}))
add("ready-batch-int", pack(dict(ready, batch=1)))
add("ready-v2", pack(dict(ready, v=2)))
add("done-bad-outcome", pack(dict(done, outcome="maybe")))
add("done-negative-credit", pack(dict(done, credit=-1)))
add("done-child-not-map", pack(dict(done, children=[1])))
add("job-bin-id", pack(dict(job, job_id=b"evt-1#1")))
add("unknown-type", pack({"t": "teleport"}))
add("no-type", pack({"job_id": "x"}))
add("not-a-map", pack(["ready"]))
add("truncated", pack(done)[:20])
add("trailing-bytes", pack(heartbeat) + b"\x00")
add("array-claims-2e32", b"\x81\xa1t\xa5batch\xa6frames\xdd\xff\xff\xff\xff")
add("bin-claims-4gib", b"\x82\xa1t\xa5batch\xa6frames\x91\xc6\xff\xff\xff\xff")

os.makedirs(OUT, exist_ok=True)
for f in os.listdir(OUT):
    if f.startswith("seed-"):
        os.remove(os.path.join(OUT, f))
for name, frame in sorted(seeds.items()):
    with open(os.path.join(OUT, "seed-" + name), "wb") as f:
        f.write(frame)
print("wrote %d seeds to %s" % (len(seeds), OUT))

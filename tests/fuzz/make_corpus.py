#!/usr/bin/python3
"""Writes the seed corpus of the ingress fuzz target (tests/fuzz/corpus/ingress/)
and its libFuzzer dictionary (tests/fuzz/ingress.dict).

Run once by hand when the protocol changes (Debian's python3-msgpack), and commit
the files: /usr/bin/python3 tests/fuzz/make_corpus.py

Each seed is one ingress request frame: valid publish/invoke/ping requests for
every event type and function (docs/events-and-functions.md), then invalid ones
for every check of docs/ingress-protocol.md "Checks, in order": broken msgpack,
truncated frames, wrong types, bad values, deep nesting, huge strings and counts.
The output is deterministic. The script replaces only its own files (seed-*);
crash reproducers added by hand (regress-*) stay.
"""
import os
import struct
import sys

import msgpack

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "corpus", "ingress")
DICT = os.path.join(HERE, "ingress.dict")

seeds = {}


def add(name, frame):
    assert name not in seeds, name
    assert isinstance(frame, bytes)
    seeds[name] = frame


def pack(obj, **kw):
    return msgpack.packb(obj, use_bin_type=True, **kw)


# --- hand-built msgpack pieces (what msgpack.packb will not write) -----------

def raw_str(b):
    """A msgpack str holding the bytes b as they are (e.g. invalid UTF-8)."""
    n = len(b)
    if n < 32:
        return bytes([0xA0 | n]) + b
    if n < 0x100:
        return b"\xd9" + bytes([n]) + b
    if n < 0x10000:
        return b"\xda" + struct.pack(">H", n) + b
    return b"\xdb" + struct.pack(">I", n) + b


def map_header(n):
    if n < 16:
        return bytes([0x80 | n])
    if n < 0x10000:
        return b"\xde" + struct.pack(">H", n)
    return b"\xdf" + struct.pack(">I", n)


def raw_map(pairs):
    """A map from (key bytes, value bytes) pairs, each already msgpack."""
    return map_header(len(pairs)) + b"".join(k + v for k, v in pairs)


def f64(x):
    return b"\xcb" + struct.pack(">d", x)


def f32(x):
    return b"\xca" + struct.pack(">f", x)


def k(s):
    return pack(s)


# --- valid requests -----------------------------------------------------------

EVENTS = {
    "pickup.created": {"pickup_id": 7, "customer_id": 101, "lat": -1.2921, "lng": 36.8219,
                       "waste_type": "plastic", "radius_km": 3.5},
    "pickup.accepted": {"pickup_id": 7, "customer_id": 101, "worker_id": 201},
    "pickup.delivered": {"pickup_id": 7, "customer_id": 101, "worker_id": 201},
    "pickup.confirmed": {"pickup_id": 7, "customer_id": 101},
    "pickup.disputed": {"pickup_id": 7, "reason": "bags left at the gate"},
    "worker.location": {"worker_id": 201, "lat": 6.5244, "lng": 3.3792, "available": True},
}
EVENTS_MINIMAL = {
    "pickup.created": {"pickup_id": 1, "customer_id": 1, "lat": 0, "lng": 0},
    "pickup.disputed": {"pickup_id": 1},
    "worker.location": {"worker_id": 1, "lat": -90, "lng": 180, "available": False},
}
FUNCTIONS = {
    "sendPickupNotification": {"pickup_id": 7, "notification_type": "pickup_accepted",
                               "user_type": "customer", "user_id": 101},
    "processEscrowRelease": {"pickup_id": 7, "release_reason": "customer_confirmed"},
    "notifyNearbyWorkers": {"pickup_id": 7, "lat": 51.5, "lng": -0.12, "radius_km": 10},
    "updateWorkerLocation": {"worker_id": 201, "lat": 90, "lng": -180.0, "available": True},
    "generateDailyReport": {"date": "2024-02-29"},
    "generateWeeklyAnalytics": {"week_start": "2024-06-03"},
    "cleanupData": {"older_than_days": 90},
}
FUNCTIONS_MINIMAL = {
    "sendPickupNotification": {"report_id": 3, "notification_type": "daily_report",
                               "user_type": "admin"},
    "generateDailyReport": {},
    "generateWeeklyAnalytics": {},
    "cleanupData": {"older_than_days": 0},
}


def req(type_, data, op=None, id_="evt-42", **extra):
    r = {"v": 1}
    if op is not None:
        r["op"] = op
    r["id"] = id_
    r["type"] = type_
    r["data"] = data
    r.update(extra)
    return r


for name, data in EVENTS.items():
    add(f"seed-publish-{name}", pack(req(name, data, op="publish", ts=1717171717000)))
for name, data in EVENTS_MINIMAL.items():
    add(f"seed-publish-{name}-minimal", pack(req(name, data)))
for name, data in FUNCTIONS.items():
    add(f"seed-publish-{name}", pack(req(name, data, op="publish")))
    add(f"seed-invoke-{name}", pack(req(name, data, op="invoke", id_=f"inv:{name}.1",
                                        ts=1717171717000, timeout_ms=5000)))
for name, data in FUNCTIONS_MINIMAL.items():
    add(f"seed-invoke-{name}-minimal", pack(req(name, data, op="invoke")))

add("seed-ping", pack({"v": 1, "op": "ping"}))
add("seed-ping-with-id", pack({"v": 1, "op": "ping", "id": "ping-1"}))
add("seed-ping-with-odd-id", pack({"v": 1, "op": "ping", "id": "\u00e9 not checked"}))
add("seed-ping-odd-id-bytes", raw_map([(k("v"), pack(1)), (k("op"), k("ping")),
                                       (k("id"), raw_str(b"\xff\xfe"))]))

# Encodings a client may choose: float32, wide ints, key order, nil optionals,
# extra fields kept, unicode text, str8/16/32 forms, a map16 at the top.
add("seed-publish-float32-coordinates",
    pack(req("worker.location", {"worker_id": 5, "lat": 12.5, "lng": -7.25,
                                 "available": True}), use_single_float=True))
add("seed-publish-wide-ints", raw_map([
    (k("v"), b"\xcf" + struct.pack(">Q", 1)),
    (k("id"), k("wide")),
    (k("type"), k("pickup.accepted")),
    (k("ts"), b"\xcf" + struct.pack(">Q", 253402300799999)),
    (k("data"), raw_map([(k("pickup_id"), b"\xcf" + struct.pack(">Q", 2**63 - 1)),
                         (k("customer_id"), b"\xce" + struct.pack(">I", 101)),
                         (k("worker_id"), b"\xd3" + struct.pack(">q", 201))])),
]))
add("seed-publish-keys-reordered", pack({"data": {"customer_id": 1, "pickup_id": 2},
                                         "type": "pickup.confirmed", "id": "r", "v": 1}))
add("seed-publish-nil-optionals", pack(req("pickup.created", {
    "pickup_id": 7, "customer_id": 101, "lat": 1.5, "lng": 2.5, "waste_type": None,
    "radius_km": None}, op=None, ts=None)))
add("seed-publish-extra-fields", pack(req("pickup.accepted", {
    "pickup_id": 7, "customer_id": 101, "worker_id": 201,
    "note": "keep me", "tags": ["a", 1, -2, 3.5, None, True, {"x": [[], {}]}],
    "nested": {"a": {"b": {"c": {"d": "deep"}}}}}, extra_top="ignored")))
add("seed-publish-unicode-text", pack(req("pickup.disputed", {
    "pickup_id": 9, "reason": "\u00c7a ne va pas \u2014 \u5783\u573e \U0001F5D1"})))
add("seed-publish-id-all-chars", pack(req("pickup.confirmed", {"pickup_id": 1, "customer_id": 2},
                                          id_="AZaz09._:-" + "x" * 118)))
add("seed-publish-str8-str16-forms", raw_map([
    (k("v"), pack(1)),
    (b"\xd9\x02id", b"\xd9\x03abc"),
    (b"\xda\x00\x04type", b"\xda\x00\x0fpickup.accepted"),
    (k("data"), pack({"pickup_id": 1, "customer_id": 2, "worker_id": 3})),
]))
add("seed-publish-map16-top", b"\xde\x00\x04" + k("v") + pack(1) + k("id") + k("m16")
    + k("type") + k("cleanupData") + k("data") + b"\xde\x00\x00")
add("seed-publish-big-text-str32", pack(req("pickup.created", {
    "pickup_id": 7, "customer_id": 101, "lat": 0.5, "lng": 0.5,
    "waste_type": "w" * 70000})))
add("seed-publish-many-extra-keys", pack(req("pickup.confirmed", dict(
    [("pickup_id", 1), ("customer_id", 2)] + [(f"k{i}", i) for i in range(2000)]))))
add("seed-publish-long-array-long-key", pack(req("pickup.confirmed", {
    "pickup_id": 1, "customer_id": 2, "k" * 4000: [0] * 4000})))
add("seed-notify-except-when", pack(req("sendPickupNotification", {
    "pickup_id": 7, "report_id": 8, "notification_type": "daily_report", "user_type": "worker"})))


def nested(depth, leaf=0):
    """A value of `depth` levels of containers (arrays and maps in turn)."""
    v = leaf
    for i in range(depth):
        v = [v] if i % 2 else {"n": v}
    return v


# The top-level map is level 1 and data level 2: 30 more levels is exactly 32.
add("seed-depth-32-ok", pack(req("cleanupData", {"older_than_days": 1, "x": nested(30)})))
add("seed-depth-33-too-deep", pack(req("cleanupData", {"x": nested(31)})))
add("seed-depth-1000-arrays", b"\x91" * 1000 + b"\x00")
add("seed-depth-1000-maps", b"\x81\xa1a" * 1000 + b"\xc0")

# --- invalid frames -------------------------------------------------------------

add("seed-empty", b"")
add("seed-reserved-byte", b"\xc1")
add("seed-not-a-map-array", pack([1, "v", {"v": 1}]))
add("seed-not-a-map-int", pack(1))
add("seed-not-a-map-str", pack("v"))
add("seed-not-a-map-nil", b"\xc0")
add("seed-trailing-bytes", pack({"v": 1, "op": "ping"}) + b"\x00")
add("seed-two-maps", pack({"v": 1, "op": "ping"}) * 2)
full = pack(req("pickup.created", EVENTS["pickup.created"], op="publish", ts=1717171717000))
for cut in (1, 2, 5, 17, len(full) // 2, len(full) - 1):
    add(f"seed-truncated-at-{cut}", full[:cut])
add("seed-map32-claims-4g-pairs", b"\xdf\xff\xff\xff\xff" + k("v") + pack(1))
add("seed-array32-claims-4g", pack({"v": 1, "x": 0})[:-1] + b"\xdd\xff\xff\xff\xff\x00")
add("seed-str32-claims-4g", b"\x81" + k("v") + b"\xdb\xff\xff\xff\xff" + b"ab")
add("seed-bin32-claims-4g", b"\x81" + k("v") + b"\xc6\xff\xff\xff\xff" + b"ab")
add("seed-ext-values", raw_map([(k("v"), pack(1)), (k("id"), k("e")), (k("type"), k("cleanupData")),
                                (k("data"), raw_map([(k("a"), b"\xd4\x01\x02"),
                                                     (k("b"), b"\xc7\x03\x05abc")]))]))
add("seed-int-key", raw_map([(pack(1), pack(1)), (k("v"), pack(1))]))
add("seed-bin-key", raw_map([(b"\xc4\x01v", pack(1))]))
add("seed-duplicate-key-v", raw_map([(k("v"), pack(1)), (k("v"), pack(1)), (k("op"), k("ping"))]))
add("seed-duplicate-key-id-first-echoed", raw_map([(k("v"), pack(1)), (k("id"), k("a")),
                                                    (k("id"), k("b"))]))

# v
add("seed-v-missing", pack({"op": "ping", "id": "x"}))
add("seed-v-nil", pack({"v": None, "id": "x"}))
add("seed-v-string", pack({"v": "1", "id": "x"}))
add("seed-v-float", raw_map([(k("v"), f64(1.0)), (k("id"), k("x"))]))
add("seed-v-2", pack({"v": 2, "id": "x"}))
add("seed-v-negative", pack({"v": -1, "id": "x"}))
add("seed-v-max-uint64", raw_map([(k("v"), b"\xcf" + b"\xff" * 8)]))

# op
add("seed-op-unknown", pack({"v": 1, "op": "publsh", "id": "x"}))
add("seed-op-int", pack({"v": 1, "op": 2, "id": "x"}))
add("seed-op-bytes", raw_map([(k("v"), pack(1)), (k("op"), b"\xc4\x04ping")]))

# id
base = EVENTS["pickup.accepted"]
add("seed-id-missing", pack({"v": 1, "type": "pickup.accepted", "data": base}))
add("seed-id-empty", pack(req("pickup.accepted", base, id_="")))
add("seed-id-129-chars", pack(req("pickup.accepted", base, id_="a" * 129)))
add("seed-id-space", pack(req("pickup.accepted", base, id_="evt 42")))
add("seed-id-slash-unicode", pack(req("pickup.accepted", base, id_="evt/\u00e9\u2014")))
add("seed-id-int", pack(req("pickup.accepted", base, id_=42)))
add("seed-id-invalid-utf8", raw_map([(k("v"), pack(1)), (k("id"), raw_str(b"\xc3\x28\xff")),
                                     (k("type"), k("pickup.accepted")), (k("data"), pack(base))]))
add("seed-id-long-nul", raw_map([(k("v"), pack(2)), (k("id"), raw_str(b"\x00" * 300))]))

# type
add("seed-type-missing", pack({"v": 1, "id": "x", "data": {}}))
add("seed-type-int", pack(req(7, base)))
add("seed-type-unknown", pack(req("pickup.exploded", base)))
add("seed-type-case", pack(req("Pickup.Accepted", base)))
add("seed-type-event-invoked", pack(req("pickup.accepted", base, op="invoke")))
add("seed-type-unknown-invoked", pack(req("sendEmail", {}, op="invoke")))

# ts
add("seed-ts-negative", pack(req("pickup.accepted", base, ts=-1)))
add("seed-ts-float", pack(req("pickup.accepted", base, ts=1717171717000.5)))
add("seed-ts-too-big", pack(req("pickup.accepted", base, ts=253402300800000)))
add("seed-ts-zero", pack(req("pickup.accepted", base, ts=0)))
add("seed-ts-string", pack(req("pickup.accepted", base, ts="2024-06-01T00:00:00Z")))

# data
add("seed-data-missing", pack({"v": 1, "id": "x", "type": "pickup.accepted"}))
add("seed-data-nil", pack(req("pickup.accepted", None)))
add("seed-data-array", pack(req("pickup.accepted", [7, 101, 201])))
add("seed-data-string", pack(req("pickup.accepted", "{}")))
add("seed-data-int-key", raw_map([(k("v"), pack(1)), (k("id"), k("x")), (k("type"), k("cleanupData")),
                                  (k("data"), raw_map([(pack(1), pack(2))]))]))
add("seed-data-duplicate-key", raw_map([(k("v"), pack(1)), (k("id"), k("x")),
                                        (k("type"), k("cleanupData")),
                                        (k("data"), raw_map([(k("a"), pack(1)), (k("a"), pack(2))]))]))
add("seed-data-invalid-utf8-key", raw_map([(k("v"), pack(1)), (k("id"), k("x")),
                                           (k("type"), k("cleanupData")),
                                           (k("data"), raw_map([(raw_str(b"\xed\xa0\x80"), pack(1))]))]))
add("seed-data-invalid-utf8-text", raw_map([(k("v"), pack(1)), (k("id"), k("x")),
                                            (k("type"), k("pickup.disputed")),
                                            (k("data"), raw_map([(k("pickup_id"), pack(1)),
                                                                 (k("reason"), raw_str(b"\xc0\xaf"))]))]))
add("seed-data-invalid-utf8-deep", raw_map([(k("v"), pack(1)), (k("id"), k("x")),
                                            (k("type"), k("cleanupData")),
                                            (k("data"), raw_map([(k("a"), b"\x92\x01" + raw_str(b"\xf4\x90\x80\x80"))]))]))
add("seed-data-bin-value", pack(req("cleanupData", {"blob": b"\x00\x01\x02"})))
add("seed-data-nan", raw_map([(k("v"), pack(1)), (k("id"), k("x")), (k("type"), k("cleanupData")),
                              (k("data"), raw_map([(k("x"), f64(float("nan")))]))]))
add("seed-data-inf-float32", raw_map([(k("v"), pack(1)), (k("id"), k("x")), (k("type"), k("cleanupData")),
                                      (k("data"), raw_map([(k("x"), f32(float("-inf")))]))]))

# data fields, one failure each, in the order of their tables
created = EVENTS["pickup.created"]
for field, value in [("pickup_id", None), ("pickup_id", 0), ("pickup_id", -7), ("pickup_id", "7"),
                     ("pickup_id", 2**64 - 1), ("customer_id", True), ("lat", 90.0000001),
                     ("lat", "1.5"), ("lng", -180.5), ("lng", None), ("waste_type", 5),
                     ("radius_km", 0), ("radius_km", -1.5), ("radius_km", "far")]:
    data = dict(created)
    data[field] = value
    tag = "nil" if value is None else str(value).replace("/", "_")[:20]
    add(f"seed-field-pickup.created-{field}-{tag}", pack(req("pickup.created", data)))
add("seed-field-pickup_id-float-7.0", raw_map([
    (k("v"), pack(1)), (k("id"), k("x")), (k("type"), k("pickup.confirmed")),
    (k("data"), raw_map([(k("pickup_id"), f64(7.0)), (k("customer_id"), pack(1))]))]))
add("seed-field-lat-nan", raw_map([
    (k("v"), pack(1)), (k("id"), k("x")), (k("type"), k("worker.location")),
    (k("data"), raw_map([(k("worker_id"), pack(1)), (k("lat"), f64(float("nan"))),
                         (k("lng"), pack(0)), (k("available"), pack(True))]))]))
add("seed-field-lng-inf-float32", raw_map([
    (k("v"), pack(1)), (k("id"), k("x")), (k("type"), k("worker.location")),
    (k("data"), raw_map([(k("worker_id"), pack(1)), (k("lat"), pack(0)),
                         (k("lng"), f32(float("inf"))), (k("available"), pack(True))]))]))
add("seed-field-available-int", pack(req("worker.location", {"worker_id": 1, "lat": 0, "lng": 0,
                                                             "available": 1})))
add("seed-field-notification-type-bad", pack(req("sendPickupNotification", {
    "pickup_id": 1, "notification_type": "pickup_lost", "user_type": "customer"})))
add("seed-field-user-type-bad", pack(req("sendPickupNotification", {
    "pickup_id": 1, "notification_type": "pickup_accepted", "user_type": "robot"})))
add("seed-field-daily-report-no-report-id", pack(req("sendPickupNotification", {
    "notification_type": "daily_report", "user_type": "admin"}, op="invoke")))
add("seed-field-pickup-id-missing", pack(req("sendPickupNotification", {
    "notification_type": "pickup_accepted", "user_type": "customer"})))
add("seed-field-release-reason-bad", pack(req("processEscrowRelease", {
    "pickup_id": 1, "release_reason": "because"}, op="invoke")))
for date in ("2023-02-29", "2024-13-01", "2024-1-01", "0000-01-01", "9999-12-31", "2024-06-0x",
             "2024/06/03", ""):
    add(f"seed-field-date-{date or 'empty'}".replace("/", "_"),
        pack(req("generateDailyReport", {"date": date}, op="invoke")))
add("seed-field-date-int", pack(req("generateDailyReport", {"date": 20240603})))
add("seed-field-week-start-tuesday", pack(req("generateWeeklyAnalytics", {"week_start": "2024-06-04"})))
add("seed-field-week-start-1600-monday", pack(req("generateWeeklyAnalytics",
                                                  {"week_start": "1600-01-03"})))
add("seed-field-older-than-days-negative", pack(req("cleanupData", {"older_than_days": -1})))
add("seed-field-older-than-days-float", pack(req("cleanupData", {"older_than_days": 1.0})))
add("seed-field-older-than-days-max", raw_map([
    (k("v"), pack(1)), (k("id"), k("x")), (k("type"), k("cleanupData")),
    (k("data"), raw_map([(k("older_than_days"), b"\xcf" + b"\xff" * 8)]))]))

# timeout_ms
inv = FUNCTIONS["processEscrowRelease"]
add("seed-timeout-zero", pack(req("processEscrowRelease", inv, op="invoke", timeout_ms=0)))
add("seed-timeout-too-big", pack(req("processEscrowRelease", inv, op="invoke", timeout_ms=86400001)))
add("seed-timeout-max", pack(req("processEscrowRelease", inv, op="invoke", timeout_ms=86400000)))
add("seed-timeout-negative", pack(req("processEscrowRelease", inv, op="invoke", timeout_ms=-5)))
add("seed-timeout-string", pack(req("processEscrowRelease", inv, op="invoke", timeout_ms="5s")))
add("seed-timeout-on-publish-ignored", pack(req("processEscrowRelease", inv, timeout_ms="x")))

# --- the dictionary (libFuzzer -dict): every name of the protocol as a msgpack str ---

WORDS = ["v", "op", "id", "type", "ts", "data", "timeout_ms", "publish", "invoke", "ping"]
WORDS += list(EVENTS) + list(FUNCTIONS)
for fields in list(EVENTS.values()) + list(FUNCTIONS.values()) + list(FUNCTIONS_MINIMAL.values()):
    WORDS += list(fields)
WORDS += ["notification_type", "user_type", "report_id", "release_reason", "daily_report",
          "pickup_requested", "pickup_accepted", "pickup_delivered", "escrow_released",
          "pickup_disputed", "customer", "worker", "admin", "customer_confirmed",
          "auto_release", "2024-06-03", "2024-02-29"]
DICT_ENTRIES = []
for w in dict.fromkeys(WORDS):  # unique, in order
    DICT_ENTRIES.append(pack(w))
# Headers and values the decoder treats specially: nil, bools, float32/64, the
# int, str, bin, array, map and ext formats with their length fields.
DICT_ENTRIES += [b"\xc0", b"\xc2", b"\xc3", b"\xca", b"\xcb", b"\xcc", b"\xcd", b"\xce", b"\xcf",
                 b"\xd0", b"\xd1", b"\xd2", b"\xd3", b"\xd9", b"\xda\x00", b"\xdb\x00\x00",
                 b"\xc4", b"\xc5", b"\xc6", b"\xdc\x00", b"\xdd\x00\x00", b"\xde\x00",
                 b"\xdf\x00\x00", b"\xd4", b"\xc7", b"\xc1", b"\x81\xa1v\x01",
                 f64(7.0), f64(float("nan")), f32(float("inf")), b"\xcf" + b"\xff" * 8,
                 b"\xcf\x7f" + b"\xff" * 7]


def dict_line(b):
    return '"' + "".join(chr(c) if 0x20 <= c < 0x7F and chr(c) not in '"\\' else f"\\x{c:02x}"
                         for c in b) + '"'


# --- write -------------------------------------------------------------------------

os.makedirs(OUT, exist_ok=True)
for old in os.listdir(OUT):
    if old.startswith("seed-"):
        os.remove(os.path.join(OUT, old))
for name, frame in sorted(seeds.items()):
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(frame)
with open(DICT, "w") as f:
    f.write("# libFuzzer dictionary of the ingress fuzz target; written by make_corpus.py\n")
    for e in DICT_ENTRIES:
        f.write(dict_line(e) + "\n")
print(f"make_corpus: wrote {len(seeds)} seeds to {os.path.relpath(OUT)} and "
      f"{len(DICT_ENTRIES)} words to {os.path.relpath(DICT)}", file=sys.stderr)

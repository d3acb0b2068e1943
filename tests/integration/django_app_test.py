#!/usr/bin/python3
"""Integration test of the reference Django app (examples/django/) and the
Python ingress client (clients/python/klynaa_client.py).

Run:  /usr/bin/python3 tests/integration/django_app_test.py   (needs Debian's
python3-django, python3-zmq, python3-msgpack; only 127.0.0.1 is used)

It starts examples/django/serve.py on a free port with a temporary DB and a
fake ingress (a ZeroMQ ROUTER this test binds, answering `accepted`), then
checks every route of the API the jobs call (examples/django/README.md, "The
contract API") with and without the API key, the escrow
rules (idempotency, 409s, 404, concurrency), analytics pagination, reports
and cleanup, fault injection, the demo actions' events, the outbox, the
management commands and the client's retry/failover behaviour.
"""
import concurrent.futures
import http.client
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import django_app_support as support  # noqa: E402
from django_app_support import (API_KEY, DJANGO_DIR, ISO_RE, PICKUP_KEYS, PY, call, new_pickup,  # noqa: E402
                                set_faults, state, two_decimals)
from klynaa_client import Client, KlynaaUnavailable  # noqa: E402
from testutil import free_port  # noqa: E402  (on sys.path through the support module)

# The module fixture: the fake ingress and the reference app, shared by every test.
setUpModule = support.set_up_module
tearDownModule = support.tear_down_module


class ContractApiTest(unittest.TestCase):
    def test_startup_fast(self):
        self.assertLess(support.SERVER.startup_s, 5.0)

    def test_every_route_requires_api_key(self):
        p = new_pickup(status="delivered", worker_id=201)
        routes = [
            ("GET", "/api/serverless/pickups/%d/" % p["id"], None, 200),
            ("GET", "/api/users/101/tokens/", None, 200),
            ("DELETE", "/api/users/999/tokens/nope/", None, 204),
            ("GET", "/api/users/admins/", None, 200),
            ("GET", "/api/workers/available/", None, 200),
            ("POST", "/api/serverless/escrow/%d/release/" % p["id"], {"reason": "admin"}, 200),
            ("GET", "/api/analytics/pickups/?from=2020-01-01T00:00:00Z&to=2020-01-02T00:00:00Z", None, 200),
            ("POST", "/api/reports/", {"kind": "daily", "period_start": "2026-01-01T00:00:00Z",
                                       "period_end": "2026-01-02T00:00:00Z", "summary": {}}, 201),
            ("POST", "/api/cleanup/", {"older_than_days": 3650}, 200),
        ]
        for method, path, body, ok in routes:
            for bad in (None, "Api-Key wrong", "Bearer " + API_KEY, "Api-Key"):
                hdr = {} if bad is None else {"Authorization": bad}
                st, b, h, _ = call(method, path, body, headers=hdr, auth=False)
                self.assertEqual(st, 401, (method, path, bad))
                self.assertTrue(h["content-type"].startswith("application/json"))
                self.assertEqual(b["error"], "unauthorized")
            st, b, _, _ = call(method, path, body)
            self.assertEqual(st, ok, (method, path, b))
        # nothing was released by the unauthorized escrow attempts: one 200, calls logged
        calls = [c for c in state()["escrow_calls"] if c["pickup_id"] == p["id"]]
        self.assertEqual(sorted(c["status_code"] for c in calls), [200, 401, 401, 401, 401])

    def test_pickup_shape(self):
        p = new_pickup(price="99.99", currency="NGN", created_at="2026-03-04T05:06:07Z")
        st, b, _, _ = call("GET", "/api/serverless/pickups/%d/" % p["id"])
        self.assertEqual(st, 200)
        self.assertEqual(set(b), PICKUP_KEYS)
        self.assertEqual(b["status"], "requested")
        self.assertIsNone(b["worker_id"])
        self.assertEqual(b["price"], 99.99)
        self.assertEqual(b["created_at"], "2026-03-04T05:06:07Z")
        self.assertIsNone(b["accepted_at"])
        st, b, _, _ = call("GET", "/api/serverless/pickups/987654/")
        self.assertEqual(st, 404)
        self.assertEqual(b["error"], "not_found")

    def test_tokens_and_delete(self):
        call("POST", "/api/demo/tokens/", {"user_id": 777, "token": "tok:A-1_x", "platform": "ios"}, auth=False)
        call("POST", "/api/demo/tokens/", {"user_id": 777, "token": "tok-B", "platform": "android"}, auth=False)
        st, b, _, _ = call("GET", "/api/users/777/tokens/")
        self.assertEqual(st, 200)
        self.assertEqual(b, {"user_id": 777, "tokens": [{"token": "tok:A-1_x", "platform": "ios"},
                                                        {"token": "tok-B", "platform": "android"}]})
        st, _, _, raw = call("DELETE", "/api/users/777/tokens/tok%3AA-1_x/")
        self.assertEqual((st, raw), (204, b""))
        st, _, _, _ = call("DELETE", "/api/users/777/tokens/tok%3AA-1_x/")
        self.assertEqual(st, 204)  # idempotent
        st, b, _, _ = call("GET", "/api/users/777/tokens/")
        self.assertEqual(b["tokens"], [{"token": "tok-B", "platform": "android"}])
        st, b, _, _ = call("GET", "/api/users/424242/tokens/")
        self.assertEqual(b, {"user_id": 424242, "tokens": []})
        # an SNS endpoint ARN has "/" in it: sent as %2F, it arrives decoded
        arn = "arn:aws:sns:eu-west-1:123456789012:endpoint/GCM/klynaa/0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
        call("POST", "/api/demo/tokens/", {"user_id": 778, "token": arn, "platform": "android"}, auth=False)
        st, _, _, raw = call("DELETE", "/api/users/778/tokens/%s/" % urllib.parse.quote(arn, safe=""))
        self.assertEqual((st, raw), (204, b""))
        self.assertEqual(call("GET", "/api/users/778/tokens/")[1]["tokens"], [])

    def test_admins_and_workers(self):
        st, b, _, _ = call("GET", "/api/users/admins/")
        self.assertEqual(st, 200)
        self.assertGreaterEqual(len(b["admins"]), 3)
        self.assertEqual(set(b["admins"][0]), {"id", "email"})
        call("POST", "/api/demo/workers/", {"id": 301, "lat": 6.6, "lng": 3.4, "service_radius_km": 7.5},
             auth=False)
        call("POST", "/api/demo/workers/", {"id": 302, "lat": 6.6, "lng": 3.4, "available": False}, auth=False)
        st, b, _, _ = call("GET", "/api/workers/available/")
        ws = {w["id"]: w for w in b["workers"]}
        self.assertIn(301, ws)
        self.assertNotIn(302, ws)
        self.assertEqual(ws[301], {"id": 301, "lat": 6.6, "lng": 3.4, "service_radius_km": 7.5})
        self.assertTrue({201, 202, 203}.issubset(ws))

    def test_wrong_method_and_unknown_route(self):
        st, b, h, _ = call("POST", "/api/users/admins/", {})
        self.assertEqual(st, 405)
        self.assertEqual(b["error"], "method_not_allowed")
        st, b, _, _ = call("GET", "/api/does-not-exist/")
        self.assertEqual(st, 404)
        self.assertEqual(b["error"], "not_found")

    def test_keep_alive(self):
        c = http.client.HTTPConnection("127.0.0.1", support.SERVER.port, timeout=10)
        try:
            for auth, want in ((True, 200), (False, 401), (True, 200)):
                st, _, h, _ = call("GET", "/api/users/admins/", auth=auth, conn=c)
                self.assertEqual(st, want)
                self.assertNotEqual(h.get("connection", "").lower(), "close")
        finally:
            c.close()


class EscrowTest(unittest.TestCase):
    def release(self, pid, reason="customer_confirmed", key=True):
        hdr = {"Idempotency-Key": "escrow-release-%d" % pid} if key else {}
        return call("POST", "/api/serverless/escrow/%d/release/" % pid, {"reason": reason}, headers=hdr)

    def test_release_once_then_409(self):
        p = new_pickup(status="delivered", worker_id=201, price=2500.75, currency="NGN")
        st, b, _, _ = self.release(p["id"])
        self.assertEqual(st, 200)
        self.assertEqual(b, {"pickup_id": p["id"], "status": "released", "amount": 2500.75, "currency": "NGN"})
        for reason in ("customer_confirmed", "auto_release", "admin"):
            st, b, _, _ = self.release(p["id"], reason)
            self.assertEqual((st, b), (409, {"status": "already_released"}))
        s = state()
        rel = [r for r in s["escrow_releases"] if r["pickup_id"] == p["id"]]
        self.assertEqual(len(rel), 1)
        self.assertEqual(rel[0]["idempotency_key"], "escrow-release-%d" % p["id"])
        self.assertEqual(rel[0]["reason"], "customer_confirmed")
        calls = [c for c in s["escrow_calls"] if c["pickup_id"] == p["id"]]
        self.assertEqual([(c["status_code"], c["status"]) for c in calls],
                         [(200, "released")] + [(409, "already_released")] * 3)
        self.assertTrue(all(c["idempotency_key"] == "escrow-release-%d" % p["id"] for c in calls))

    def test_disputed_and_unknown(self):
        p = new_pickup(status="disputed", worker_id=201)
        st, b, _, _ = self.release(p["id"], "auto_release")
        self.assertEqual((st, b), (409, {"status": "disputed"}))
        st, b, _, _ = self.release(555555)
        self.assertEqual(st, 404)
        self.assertFalse([r for r in state()["escrow_releases"] if r["pickup_id"] == p["id"]])

    def test_bad_reason(self):
        p = new_pickup(status="delivered", worker_id=201)
        st, b, _, _ = call("POST", "/api/serverless/escrow/%d/release/" % p["id"], {"reason": "because"})
        self.assertEqual(st, 400)
        self.assertEqual(b["field"], "reason")
        st, b, _, _ = call("POST", "/api/serverless/escrow/%d/release/" % p["id"], {})
        self.assertEqual(st, 400)

    def test_concurrent_releases_at_most_one(self):
        p = new_pickup(status="delivered", worker_id=202, price=10)
        with concurrent.futures.ThreadPoolExecutor(12) as ex:
            results = list(ex.map(lambda _: self.release(p["id"], "auto_release")[:2], range(24)))
        codes = sorted(r[0] for r in results)
        self.assertEqual(codes.count(200), 1, codes)
        self.assertEqual(codes.count(409), 23, codes)
        s = state()
        self.assertEqual(len([r for r in s["escrow_releases"] if r["pickup_id"] == p["id"]]), 1)
        calls = [c for c in s["escrow_calls"] if c["pickup_id"] == p["id"]]
        self.assertEqual(len(calls), 24)
        self.assertEqual(len([c for c in calls if c["status"] == "released"]), 1)


class AnalyticsReportsCleanupTest(unittest.TestCase):
    def test_pagination(self):
        day = "2025-02-03"
        made = [new_pickup(created_at="%sT%02d:15:00Z" % (day, h), status="delivered", worker_id=201,
                           accepted_at="%sT%02d:20:00Z" % (day, h), delivered_at="%sT%02d:50:00Z" % (day, h),
                           price=10.10 + h) for h in range(0, 24, 3)]  # 8 pickups
        new_pickup(created_at="2025-02-04T00:00:00Z")   # next day: excluded (to is exclusive)
        new_pickup(created_at="2025-02-02T23:59:59Z")   # day before: excluded
        path = "/api/analytics/pickups/?from=%sT00:00:00Z&to=2025-02-04T00:00:00Z" % day
        got, pages, cursor = [], 0, None
        while True:
            st, b, _, _ = call("GET", path + ("&cursor=" + cursor if cursor else ""))
            self.assertEqual(st, 200, b)
            self.assertEqual(set(b), {"pickups", "next"})
            self.assertLessEqual(len(b["pickups"]), 3)
            got += b["pickups"]
            pages += 1
            cursor = b["next"]
            if cursor is None:
                break
            self.assertLess(pages, 10)
        self.assertEqual(pages, 3)
        self.assertEqual([p["id"] for p in got], [p["id"] for p in made])
        for p in got:
            self.assertEqual(set(p), PICKUP_KEYS)
            self.assertTrue(two_decimals(p["price"]))
            for k in ("created_at", "accepted_at", "delivered_at"):
                self.assertRegex(p[k], ISO_RE)
        # offsets are accepted too (+ may arrive decoded as a space)
        st, b, _, _ = call("GET", "/api/analytics/pickups/?from=2025-02-03T01:00:00%2B01:00&to=2025-02-03T01:00:00Z")
        self.assertEqual([p["id"] for p in b["pickups"]], [made[0]["id"]])
        st, b, _, _ = call("GET", path + "&cursor=not-a-cursor")
        self.assertEqual(st, 400)
        st, b, _, _ = call("GET", "/api/analytics/pickups/?from=yesterday")
        self.assertEqual((st, b["field"]), (400, "from"))

    def test_reports(self):
        body = {"kind": "daily", "period_start": "2026-11-26T00:00:00Z", "period_end": "2026-11-27T00:00:00Z",
                "summary": {"pickups_by_status": {"delivered": 2}, "delivered_revenue": {"NGN": 20.2},
                            "mean_minutes_to_accept": None, "mean_minutes_to_deliver": 5.5, "top_workers": []}}
        st, b, _, _ = call("POST", "/api/reports/", body)
        self.assertEqual(st, 201)
        self.assertEqual(set(b), {"id"})
        rep = [r for r in state()["reports"] if r["id"] == b["id"]][0]
        self.assertEqual(rep["summary"], body["summary"])
        self.assertEqual(rep["period_start"], body["period_start"])
        # Idempotency-Key makes a repeat return the same report
        k = {"Idempotency-Key": "report-daily-2026-11-26"}
        st1, b1, _, _ = call("POST", "/api/reports/", body, headers=k)
        st2, b2, _, _ = call("POST", "/api/reports/", body, headers=k)
        self.assertEqual((st1, st2), (201, 201))
        self.assertEqual(b1, b2)
        st, b, _, _ = call("POST", "/api/reports/", dict(body, summary=[1]))
        self.assertEqual(st, 400)
        st, b, _, _ = call("POST", "/api/reports/", {"summary": {}})
        self.assertEqual((st, b["field"]), (400, "kind"))

    def test_cleanup(self):
        old = []
        for days in (400, 200):
            t = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - days * 86400))
            st, b, _, _ = call("POST", "/api/demo/reports/", {"kind": "daily", "created_at": t}, auth=False)
            self.assertEqual(st, 201)
            old.append(b["id"])
        st, b, _, _ = call("POST", "/api/cleanup/", {"older_than_days": 300})
        self.assertEqual((st, b), (200, {"deleted": 1}))
        st, b, _, _ = call("POST", "/api/cleanup/", {"older_than_days": 300})
        self.assertEqual((st, b), (200, {"deleted": 0}))
        ids = {r["id"] for r in state()["reports"]}
        self.assertNotIn(old[0], ids)
        self.assertIn(old[1], ids)
        st, b, _, _ = call("POST", "/api/cleanup/", {"older_than_days": "x"})
        self.assertEqual(st, 400)


class FaultsTest(unittest.TestCase):
    def tearDown(self):
        set_faults(mode="none")

    def test_down_then_recovers(self):
        f = set_faults(mode="down", count=2)
        self.assertEqual((f["mode"], f["count"]), ("down", 2))
        codes = [call("GET", "/api/users/admins/")[0] for _ in range(3)]
        self.assertEqual(codes, [503, 503, 200])
        # demo routes never fault
        set_faults(mode="down", count=-1)
        self.assertEqual(call("GET", "/api/demo/state/", auth=False)[0], 200)
        self.assertEqual([call("GET", "/api/workers/available/")[0] for _ in range(3)], [503] * 3)
        set_faults(mode="none")
        self.assertEqual(call("GET", "/api/workers/available/")[0], 200)

    def test_429_retry_after(self):
        set_faults(mode="429", count=1, retry_after=3)
        st, b, h, _ = call("GET", "/api/users/admins/")
        self.assertEqual(st, 429)
        self.assertEqual(h["retry-after"], "3")
        self.assertEqual(call("GET", "/api/users/admins/")[0], 200)

    def test_slow(self):
        set_faults(mode="slow", count=1, delay_ms=400)
        t0 = time.monotonic()
        st = call("GET", "/api/users/admins/")[0]
        self.assertEqual(st, 200)
        self.assertGreaterEqual(time.monotonic() - t0, 0.38)
        t0 = time.monotonic()
        call("GET", "/api/users/admins/")
        self.assertLess(time.monotonic() - t0, 0.3)

    def test_garbage(self):
        set_faults(mode="garbage", count=1)
        st, b, h, raw = call("GET", "/api/users/admins/")
        self.assertEqual(st, 200)
        with self.assertRaises(ValueError):
            json.loads(raw)

    def test_path_prefix_and_escrow_log(self):
        p = new_pickup(status="delivered", worker_id=203)
        set_faults(mode="down", count=1, path_prefix="/api/serverless/escrow/")
        self.assertEqual(call("GET", "/api/users/admins/")[0], 200)  # other prefix: untouched
        rel = "/api/serverless/escrow/%d/release/" % p["id"]
        key = {"Idempotency-Key": "escrow-release-%d" % p["id"]}
        self.assertEqual(call("POST", rel, {"reason": "admin"}, headers=key)[0], 503)
        self.assertEqual(call("POST", rel, {"reason": "admin"}, headers=key)[0], 200)
        s = state()
        calls = [(c["status_code"], c["fault"]) for c in s["escrow_calls"] if c["pickup_id"] == p["id"]]
        self.assertEqual(calls, [(503, "down"), (200, None)])
        self.assertTrue(any(r["path"] == rel and r["status"] == 503 and r["fault"] == "down"
                            for r in s["requests"]))

    def test_bad_fault_config(self):
        st, b, _, _ = call("POST", "/api/demo/faults/", {"mode": "explode"}, auth=False)
        self.assertEqual(st, 400)


class DemoEventsTest(unittest.TestCase):
    def check_event(self, resp, type_, data):
        ev, reply = resp["event"], resp["ingress"]
        self.assertEqual(ev["type"], type_)
        self.assertEqual(reply["status"], "accepted", reply)
        self.assertEqual(reply["jobs"], [ev["id"] + "#1"])
        sent = [r for r in support.INGRESS.published(type_) if r["id"] == ev["id"]]
        self.assertEqual(len(sent), 1)
        r = sent[0]
        self.assertEqual(r["v"], 1)
        self.assertEqual(r["op"], "publish")
        self.assertRegex(r["id"], r"^[A-Za-z0-9._:-]{1,128}$")
        self.assertIsInstance(r["ts"], int)
        self.assertEqual(r["data"], data)

    def test_walk_through_events(self):
        st, b, _, _ = call("POST", "/api/demo/pickups/", {"customer_id": 102, "lat": 6.53, "lng": 3.38,
                                                          "price": 3000, "waste_type": "plastic",
                                                          "radius_km": 4}, auth=False)
        self.assertEqual(st, 201)
        pid = b["pickup"]["id"]
        self.assertEqual(set(b["pickup"]), PICKUP_KEYS)
        self.check_event(b, "pickup.created", {"pickup_id": pid, "customer_id": 102, "lat": 6.53, "lng": 3.38,
                                               "waste_type": "plastic", "radius_km": 4})
        st, b, _, _ = call("POST", "/api/demo/pickups/%d/accept/" % pid, {"worker_id": 204}, auth=False)
        self.assertEqual((st, b["pickup"]["status"], b["pickup"]["worker_id"]), (200, "accepted", 204))
        self.check_event(b, "pickup.accepted", {"pickup_id": pid, "customer_id": 102, "worker_id": 204})
        st, b, _, _ = call("POST", "/api/demo/pickups/%d/deliver/" % pid, auth=False)
        self.assertEqual(b["pickup"]["status"], "delivered")
        self.assertRegex(b["pickup"]["delivered_at"], ISO_RE)
        self.check_event(b, "pickup.delivered", {"pickup_id": pid, "customer_id": 102, "worker_id": 204})
        st, b, _, _ = call("POST", "/api/demo/pickups/%d/confirm/" % pid, auth=False)
        self.assertEqual(b["pickup"]["status"], "confirmed")
        self.check_event(b, "pickup.confirmed", {"pickup_id": pid, "customer_id": 102})
        # invalid transition: nothing published
        n = len(support.INGRESS.published())
        st, b, _, _ = call("POST", "/api/demo/pickups/%d/deliver/" % pid, auth=False)
        self.assertEqual((st, b["error"]), (409, "invalid_transition"))
        self.assertEqual(len(support.INGRESS.published()), n)
        st, b, _, _ = call("POST", "/api/demo/pickups/999999/accept/", {"worker_id": 1}, auth=False)
        self.assertEqual(st, 404)
        outbox = [e for e in state()["outbox"] if e["data"].get("pickup_id") == pid]
        self.assertEqual([e["type"] for e in outbox], ["pickup.created", "pickup.accepted", "pickup.delivered",
                                                       "pickup.confirmed"])
        self.assertTrue(all(e["status"] == "accepted" for e in outbox))

    def test_dispute_and_worker_location(self):
        p = new_pickup(status="delivered", worker_id=201)
        st, b, _, _ = call("POST", "/api/demo/pickups/%d/dispute/" % p["id"], {"reason": "bags missing"},
                           auth=False)
        self.assertEqual((st, b["pickup"]["status"]), (200, "disputed"))
        self.check_event(b, "pickup.disputed", {"pickup_id": p["id"], "reason": "bags missing"})
        st, b, _, _ = call("POST", "/api/demo/workers/205/location/", {"lat": 6.51, "lng": 3.37,
                                                                       "available": False}, auth=False)
        self.assertEqual(st, 200)
        self.check_event(b, "worker.location", {"worker_id": 205, "lat": 6.51, "lng": 3.37, "available": False})
        ids = [w["id"] for w in call("GET", "/api/workers/available/")[1]["workers"]]
        self.assertNotIn(205, ids)
        st, b, _, _ = call("POST", "/api/demo/workers/205/location/", {"lat": 6.51, "lng": 3.37,
                                                                       "available": True}, auth=False)
        self.check_event(b, "worker.location", {"worker_id": 205, "lat": 6.51, "lng": 3.37, "available": True})
        st, b, _, _ = call("POST", "/api/demo/workers/205/location/", {"lat": 91, "lng": 3.37}, auth=False)
        self.assertEqual((st, b["field"]), (400, "lat"))

    def test_outbox_when_ingress_silent(self):
        with support.INGRESS.lock:
            support.INGRESS.silent = True
        try:
            st, b, _, _ = call("POST", "/api/demo/pickups/", {"customer_id": 103, "lat": 6.5, "lng": 3.3},
                               auth=False)
        finally:
            with support.INGRESS.lock:
                support.INGRESS.silent = False
        self.assertEqual(st, 201)  # the domain change committed anyway
        self.assertEqual(b["ingress"]["status"], "unavailable")
        ev_id = b["event"]["id"]
        sent = [r for r in support.INGRESS.published() if r["id"] == ev_id]
        self.assertEqual(len(sent), 2)  # first try + one resend, same id
        pend = [e for e in state()["outbox"] if e["id"] == ev_id]
        self.assertEqual(pend[0]["status"], "pending")
        st, b, _, _ = call("POST", "/api/demo/outbox/flush/", auth=False)
        self.assertEqual(st, 200)
        self.assertIn(ev_id, [r["id"] for r in b["replies"] if r["status"] == "accepted"])
        self.assertEqual([e["status"] for e in state()["outbox"] if e["id"] == ev_id], ["accepted"])


class ClientTest(unittest.TestCase):
    def test_ping_publish_invoke_duplicate(self):
        with Client(support.INGRESS.endpoint, timeout_s=2) as c:
            self.assertEqual(c.ping()["status"], "pong")
            r = c.publish("pickup.confirmed", {"pickup_id": 1, "customer_id": 2}, id="client-test-1", ts=1234)
            self.assertEqual(r, {"v": 1, "id": "client-test-1", "status": "accepted",
                                 "jobs": ["client-test-1#1"]})
            self.assertEqual(c.publish("pickup.confirmed", {"pickup_id": 1, "customer_id": 2},
                                       id="client-test-1")["status"], "duplicate")
            r = c.invoke("cleanupData", {"older_than_days": 1}, timeout_ms=1000)
            self.assertEqual(r, {"echo": {"older_than_days": 1}})  # invoke returns the result
            auto = c.publish("pickup.confirmed", {"pickup_id": 1, "customer_id": 2})
            self.assertRegex(auto["id"], r"^[0-9a-f]{32}$")
        req = [r for r in support.INGRESS.published() if r["id"] == "client-test-1"][0]
        self.assertEqual(req["ts"], 1234)
        self.assertEqual(support.INGRESS.frames[-1], 2)  # empty delimiter + one msgpack frame

    def test_resend_same_id_after_timeout(self):
        with support.INGRESS.lock:
            support.INGRESS.drop_next = 1
        with Client(support.INGRESS.endpoint, timeout_s=0.5, retries=2) as c:
            r = c.publish("worker.location", {"worker_id": 9, "lat": 1, "lng": 2, "available": True},
                          id="client-retry-1")
        self.assertEqual(r["status"], "accepted")
        self.assertEqual(len([x for x in support.INGRESS.published() if x["id"] == "client-retry-1"]), 2)

    def test_failover_to_second_endpoint(self):
        dead = "tcp://127.0.0.1:%d" % free_port()
        with Client(dead + "," + support.INGRESS.endpoint, timeout_s=0.4) as c:
            self.assertEqual(c.ping()["status"], "pong")
            # later requests stick to the endpoint that answered
            t0 = time.monotonic()
            self.assertEqual(c.ping()["status"], "pong")
            self.assertLess(time.monotonic() - t0, 0.3)

    def test_unavailable(self):
        dead = "tcp://127.0.0.1:%d" % free_port()
        t0 = time.monotonic()
        with Client(dead, timeout_s=0.3, retries=1) as c:
            with self.assertRaises(KlynaaUnavailable) as cm:
                c.publish("pickup.confirmed", {"pickup_id": 1, "customer_id": 2}, id="never")
        self.assertEqual(cm.exception.request_id, "never")
        self.assertLess(time.monotonic() - t0, 2)


class ManagementCommandsTest(unittest.TestCase):
    def test_fresh_db_seed_and_walkthrough(self):
        tmp = tempfile.mkdtemp(prefix="klynaa-django-cmd-")
        try:
            env = dict(support.SERVER.env, KLYNAA_DEMO_DB=tmp)
            manage = os.path.join(DJANGO_DIR, "manage.py")
            out = subprocess.run([PY, manage, "seed"], env=env, capture_output=True, timeout=30)
            self.assertEqual(out.returncode, 0, out.stderr.decode())
            self.assertIn(b"seeded", out.stdout)
            self.assertTrue(os.path.exists(os.path.join(tmp, "db.sqlite3")))
            before = len(support.INGRESS.published())
            out = subprocess.run([PY, manage, "demo_walkthrough"], env=env, capture_output=True, timeout=30)
            self.assertEqual(out.returncode, 0, out.stderr.decode())
            types = [r["type"] for r in support.INGRESS.published()[before:]]
            self.assertEqual(types, ["worker.location", "pickup.created", "pickup.accepted", "pickup.delivered",
                                     "pickup.confirmed"])
            self.assertIn(b"is now confirmed", out.stdout)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    unittest.main(verbosity=2)

#!/usr/bin/python3
"""The Python client (clients/python/klynaa_client.py) against a real broker.

    /usr/bin/python3 tests/integration/python_client_test.py [--klynaa PATH] [unittest args]

PATH defaults to $KLYNAA_BIN, else build/klynaa.  Needs Debian's python3-zmq,
python3-msgpack and python3-django; only 127.0.0.1 is used.

It starts the reference Django app (examples/django/serve.py) and `klynaa run`
(temporary data dir, ingress on a fixed free port so the broker can be
restarted on it, admin on an ephemeral port read from broker.json) and checks:
ping; publish accepted then duplicate; rejected requests raise KlynaaRejected
naming the code and the field; invoke returns the result, raises on failed and
timeout; overloaded (ingress.max_pending) and shutting_down (a draining
broker) raise or are retried within the time budget; a SIGSTOPped broker gives
KlynaaUnavailable within the budget; the same Client works again after the
broker is killed and restarted on the same port; a dead first endpoint fails
over to the live broker; publish_on_commit in a Django transaction publishes
only after the commit, under a stable id, and nothing on rollback; the
reference app publishes through it.  Every process started is killed and
every temp dir removed, also on failure.
"""
import os
import signal
import sys
import threading
import time
import unittest

import msgpack
import zmq

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import pyclient_support as support  # noqa: E402  (puts clients/python on sys.path)
from pyclient_support import (RUN, Broker, ensure_main_broker, recorded_sleeps, uid,  # noqa: E402
                              wait_for)
from pyclient_django_cases import PublishOnCommitCases, ReferenceAppCases  # noqa: E402
from klynaa_client import (Client, KlynaaError, KlynaaInvokeFailed, KlynaaInvokeTimeout,  # noqa: E402
                           KlynaaOverloaded, KlynaaRejected, KlynaaShuttingDown, KlynaaUnavailable,
                           KlynaaUnexpectedReply)
from testutil import free_port  # noqa: E402  (on sys.path through the support module)

# The module fixture: the Django app and the main broker, shared by every test.
setUpModule = support.set_up_module
tearDownModule = support.tear_down_module


class A_RequestsTest(unittest.TestCase):
    """ping, publish, rejections, invoke against the running broker."""

    def setUp(self):
        ensure_main_broker()
        self.c = Client(support.BROKER.endpoint, timeout_s=5)

    def tearDown(self):
        self.c.close()

    def test_ping(self):
        r = self.c.ping()
        self.assertEqual((r["v"], r["status"]), (1, "pong"))
        raw = self.c.request({"v": 1, "op": "ping", "id": "ping-" + RUN})
        self.assertEqual(raw["status"], "pong")
        # The reply's id is the request's id (docs/ingress-protocol.md, "Reply").
        self.assertEqual(raw.get("id"), "ping-" + RUN)

    def test_publish_accepted_then_duplicate(self):
        eid = uid("dup")
        data = {"pickup_id": 7, "customer_id": 101, "worker_id": 201}
        r = self.c.publish("pickup.accepted", data, id=eid, ts=int(time.time() * 1000))
        self.assertEqual(r, {"v": 1, "id": eid, "status": "accepted", "jobs": [eid + "#1"]})
        r2 = self.c.publish("pickup.accepted", data, id=eid)
        self.assertEqual(r2, {"v": 1, "id": eid, "status": "duplicate", "jobs": [eid + "#1"]})
        # an id from the client's default is a fresh uuid
        r3 = self.c.publish("pickup.accepted", data)
        self.assertRegex(r3["id"], r"^[0-9a-f]{32}$")
        self.assertEqual(r3["status"], "accepted")

    def test_rejected_publish_raises_with_code_and_field(self):
        ok = {"pickup_id": 7, "customer_id": 101, "worker_id": 201}
        cases = [
            ("unknown event type", "pickup.teleported", ok, "unknown_type", "type"),
            ("missing field", "pickup.accepted", {"pickup_id": 7, "customer_id": 101}, "missing_field",
             "data.worker_id"),
            ("nil field", "pickup.accepted", dict(ok, worker_id=None), "missing_field", "data.worker_id"),
            ("bad type", "pickup.accepted", dict(ok, pickup_id="seven"), "invalid_field", "data.pickup_id"),
            ("out of range", "pickup.created", {"pickup_id": 7, "customer_id": 101, "lat": 91, "lng": 3.3},
             "invalid_field", "data.lat"),
            ("bad enum", "worker.location", {"worker_id": 9, "lat": 1, "lng": 2, "available": "yes"},
             "invalid_field", "data.available"),
        ]
        for name, type_, data, code, field in cases:
            with self.subTest(name):
                eid = uid("rej")
                with self.assertRaises(KlynaaRejected) as cm:
                    self.c.publish(type_, data, id=eid)
                e = cm.exception
                self.assertEqual((e.code, e.field, e.request_id), (code, field, eid))
                self.assertNotIsInstance(e, KlynaaUnavailable)  # not "try again later"
                self.assertTrue(e.message)
                self.assertEqual(e.reply["status"], "rejected")
                self.assertIn(code, str(e))
                self.assertIn(field, str(e))
                # nothing was stored: the same id is new once the request is right
                fixed = self.c.publish("pickup.accepted", ok, id=eid)
                self.assertEqual(fixed["status"], "accepted")
        with self.assertRaises(KlynaaRejected) as cm:
            self.c.publish("pickup.accepted", ok, id="bad id!")
        self.assertEqual((cm.exception.code, cm.exception.field, cm.exception.request_id),
                         ("invalid_field", "id", "bad id!"))

    def test_rejected_invoke(self):
        with self.assertRaises(KlynaaRejected) as cm:
            self.c.invoke("pickup.accepted", {"pickup_id": 1, "customer_id": 2, "worker_id": 3})
        self.assertEqual((cm.exception.code, cm.exception.field), ("unknown_type", "type"))
        with self.assertRaises(KlynaaRejected) as cm:
            self.c.invoke("processEscrowRelease", {"pickup_id": 1, "release_reason": "because"})
        self.assertEqual((cm.exception.code, cm.exception.field), ("invalid_field", "data.release_reason"))

    def test_invoke_returns_result(self):
        self.assertEqual(self.c.invoke("updateWorkerLocation",
                                       {"worker_id": 9001, "lat": 10.0, "lng": 10.0, "available": False},
                                       timeout_ms=10000), {})
        r = self.c.invoke("cleanupData", {"older_than_days": 3650}, timeout_ms=20000)
        self.assertIsInstance(r, dict)
        self.assertIn("deleted", r)
        self.assertIn("pruned", r)
        # nearest seeded workers around Lagos, nearest first
        p = support.DJANGO.pickup()
        r = self.c.invoke("notifyNearbyWorkers", {"pickup_id": p["id"], "lat": 6.5244, "lng": 3.3792},
                          timeout_ms=20000)
        self.assertEqual(r["workers"][0], 201, r)
        self.assertEqual(r["distances_km"], sorted(r["distances_km"]))
        self.assertTrue(all(d <= 5 for d in r["distances_km"]), r)

    def test_invoke_escrow_release(self):
        p = support.DJANGO.pickup(status="delivered", worker_id=202)
        data = {"pickup_id": p["id"], "release_reason": "customer_confirmed"}
        r = self.c.invoke("processEscrowRelease", data, id=uid("esc"), timeout_ms=20000)
        self.assertEqual(r, {"status": "released", "amount": 2500.5, "currency": "NGN"})
        r = self.c.invoke("processEscrowRelease", dict(data, release_reason="admin"), timeout_ms=20000)
        self.assertEqual(r["status"], "already_released")

    def test_invoke_failure_raises(self):
        eid = uid("fail")
        with self.assertRaises(KlynaaInvokeFailed) as cm:
            self.c.invoke("processEscrowRelease", {"pickup_id": 999999, "release_reason": "admin"}, id=eid,
                          timeout_ms=20000)
        e = cm.exception
        self.assertEqual((e.code, e.http_status, e.function, e.request_id),
                         ("permanent", 404, "processEscrowRelease", eid))
        self.assertTrue(e.message)
        self.assertEqual(e.reply["status"], "failed")
        self.assertIn("404", str(e))
        self.assertIsInstance(e, KlynaaError)
        self.assertNotIsInstance(e, (KlynaaRejected, KlynaaUnavailable))
        # the same id again starts nothing and answers with the stored outcome
        with self.assertRaises(KlynaaInvokeFailed) as cm:
            self.c.invoke("processEscrowRelease", {"pickup_id": 999999, "release_reason": "admin"}, id=eid,
                          timeout_ms=20000)
        self.assertEqual(cm.exception.http_status, 404)

    def test_invoke_timeout_then_same_id_waits_for_the_job(self):
        p = support.DJANGO.pickup(status="delivered", worker_id=203)
        support.DJANGO.faults(mode="slow", count=1, delay_ms=2500, path_prefix="/api/serverless/escrow/")
        try:
            eid = uid("slow")
            data = {"pickup_id": p["id"], "release_reason": "admin"}
            t0 = time.monotonic()
            with self.assertRaises(KlynaaInvokeTimeout) as cm:
                self.c.invoke("processEscrowRelease", data, id=eid, timeout_ms=500)
            self.assertLess(time.monotonic() - t0, 2.4)
            self.assertEqual((cm.exception.request_id, cm.exception.timeout_ms), (eid, 500))
            self.assertEqual(cm.exception.reply["status"], "timeout")
            # the job kept running; invoking the same id waits for that job
            r = self.c.invoke("processEscrowRelease", data, id=eid, timeout_ms=20000)
            self.assertEqual(r["status"], "released")
        finally:
            support.DJANGO.faults(mode="none")

    def test_invoke_with_a_publish_id(self):
        eid = uid("pubinv")
        self.c.publish("worker.location", {"worker_id": 9002, "lat": 10, "lng": 10, "available": False}, id=eid)
        with self.assertRaises(KlynaaUnexpectedReply) as cm:
            self.c.invoke("updateWorkerLocation", {"worker_id": 9002, "lat": 10, "lng": 10, "available": False},
                          id=eid)
        self.assertEqual(cm.exception.reply["status"], "duplicate")


class B_OutageTest(unittest.TestCase):
    """A stopped, killed, restarted broker; a dead endpoint."""

    def tearDown(self):
        ensure_main_broker()

    def test_timeout_when_broker_stopped(self):
        c = Client(support.BROKER.endpoint, timeout_s=0.5, retries=1)
        try:
            self.assertEqual(c.ping()["status"], "pong")
            eid = uid("stop")
            data = {"pickup_id": 8, "customer_id": 101, "worker_id": 201}
            support.BROKER.pause()
            try:
                t0 = time.monotonic()
                with self.assertRaises(KlynaaUnavailable) as cm:
                    c.publish("pickup.accepted", data, id=eid)
                took = time.monotonic() - t0
            finally:
                support.BROKER.resume()
            self.assertNotIsInstance(cm.exception, (KlynaaOverloaded, KlynaaShuttingDown))
            self.assertEqual(cm.exception.request_id, eid)
            self.assertIsNone(cm.exception.reply)
            self.assertEqual(cm.exception.endpoints, [support.BROKER.endpoint] * 2)  # first try + one resend
            self.assertGreaterEqual(took, 0.95)
            self.assertLess(took, 2.0)  # the budget: (retries + 1) x timeout_s = 1 s (+ slack for a busy CI)
            # once it runs again, the same client works and the same id is safe
            r = c.publish("pickup.accepted", data, id=eid)
            self.assertIn(r["status"], ("accepted", "duplicate"))
            self.assertEqual(r["jobs"], [eid + "#1"])
        finally:
            c.close()

    def test_reconnect_after_kill_and_restart(self):
        c = Client(support.BROKER.endpoint, timeout_s=1, retries=1)
        try:
            eid = uid("kill")
            data = {"pickup_id": 9, "customer_id": 101, "worker_id": 201}
            self.assertEqual(c.publish("pickup.accepted", data, id=eid)["status"], "accepted")
            support.BROKER.kill9()
            with self.assertRaises(KlynaaUnavailable):
                c.ping()
            support.BROKER.start()  # same port, same data dir
            self.assertEqual(c.ping()["status"], "pong")
            # accepted before the kill -9: still known
            r = c.publish("pickup.accepted", data, id=eid)
            self.assertEqual((r["status"], r["jobs"]), ("duplicate", [eid + "#1"]))
        finally:
            c.close()

    def test_reconnect_within_one_call(self):
        c = Client(support.BROKER.endpoint, timeout_s=1, retries=20)
        try:
            self.assertEqual(c.ping()["status"], "pong")
            support.BROKER.kill9()
            out = {}
            eid = uid("inflight")

            def send():
                t0 = time.monotonic()
                try:
                    out["reply"] = c.publish("pickup.accepted", {"pickup_id": 10, "customer_id": 101,
                                                                 "worker_id": 201}, id=eid)
                except Exception as e:  # reported below
                    out["error"] = e
                out["took"] = time.monotonic() - t0

            t = threading.Thread(target=send)
            t.start()
            time.sleep(0.3)
            support.BROKER.start()
            t.join(30)
            self.assertFalse(t.is_alive())
            self.assertNotIn("error", out)
            self.assertEqual(out["reply"]["status"], "accepted")
            self.assertLess(out["took"], 21)
        finally:
            c.close()

    def test_failover_from_dead_first_endpoint(self):
        dead = "tcp://127.0.0.1:%d" % free_port()
        c = Client([dead, support.BROKER.endpoint], timeout_s=1)
        try:
            t0 = time.monotonic()
            eid = uid("failover")
            r = c.publish("pickup.confirmed", {"pickup_id": 11, "customer_id": 101}, id=eid)
            self.assertEqual(r["status"], "accepted")
            self.assertGreaterEqual(time.monotonic() - t0, 0.95)  # one timeout on the dead endpoint
            self.assertLess(time.monotonic() - t0, 3)             # then the live broker
            # later requests stick to the endpoint that answered (the dead one would cost 1 s)
            t0 = time.monotonic()
            self.assertEqual(c.ping()["status"], "pong")
            self.assertLess(time.monotonic() - t0, 0.9)
            with Client(support.BROKER.endpoint) as direct:
                self.assertEqual(direct.publish("pickup.confirmed", {"pickup_id": 11, "customer_id": 101},
                                                id=eid)["status"], "duplicate")
        finally:
            c.close()
        # every endpoint dead: unavailable, naming the endpoints tried
        with Client([dead, "tcp://127.0.0.1:%d" % free_port()], timeout_s=0.3) as c2:
            with self.assertRaises(KlynaaUnavailable) as cm:
                c2.ping()
            self.assertEqual(len(set(cm.exception.endpoints)), 2)


    def test_standby_first_endpoint_passes_to_the_active_broker(self):
        """A standby broker (docs/deployment.md) refuses with overloaded and a
        message starting "standby broker": the client moves to the next endpoint
        at once instead of waiting retry_after_ms on the standby."""
        ensure_main_broker()
        ctx = zmq.Context.instance()
        router = ctx.socket(zmq.ROUTER)
        router.linger = 0
        port = router.bind_to_random_port("tcp://127.0.0.1")
        seen = []
        stop = threading.Event()

        def standby():
            while not stop.is_set():
                if not router.poll(50):
                    continue
                frames = router.recv_multipart()
                req = msgpack.unpackb(frames[-1], raw=False)
                seen.append(req.get("op"))
                rep = {"id": req.get("id"), "status": "rejected", "retry_after_ms": 2500,
                       "error": {"code": "overloaded",
                                 "message": "standby broker: the active broker holds the lease; "
                                            "try another endpoint"}}
                router.send_multipart(frames[:-1] + [msgpack.packb(rep)])

        t = threading.Thread(target=standby, daemon=True)
        t.start()
        c = Client(["tcp://127.0.0.1:%d" % port, support.BROKER.endpoint], timeout_s=2)
        try:
            t0 = time.monotonic()
            r = c.publish("pickup.confirmed", {"pickup_id": 12, "customer_id": 101}, id=uid("standby"))
            self.assertEqual(r["status"], "accepted")
            self.assertLess(time.monotonic() - t0, 1.5)  # not the standby's 2.5 s retry_after_ms
            self.assertEqual(seen, ["publish"])
            self.assertEqual(c.publish("pickup.confirmed", {"pickup_id": 13, "customer_id": 101},
                                       id=uid("standby"))["status"], "accepted")
            self.assertEqual(seen, ["publish"])  # it sticks to the active broker
        finally:
            c.close()
            stop.set()
            t.join(5)
            router.close()


class C_BusyBrokerTest(unittest.TestCase):
    """overloaded (ingress.max_pending = 1) and shutting_down on a second broker."""

    @classmethod
    def setUpClass(cls):
        cls.busy = Broker("busy", {"DJANGO_API_URL": "http://127.0.0.1:%d" % support.DJANGO.port,
                                   "KLYNAA_INGRESS_MAX_PENDING": "1"})
        support.AUX.append(cls.busy)

    @classmethod
    def tearDownClass(cls):
        support.DJANGO.faults(mode="none")
        cls.busy.terminate()

    def confirm(self, c, pickup_id, eid=None):
        return c.publish("pickup.confirmed", {"pickup_id": pickup_id, "customer_id": 101}, id=eid or uid("busy"))

    def test_1_overloaded(self):
        p = support.DJANGO.pickup(status="delivered", worker_id=204)
        # The escrow call fails transiently until the faults are cleared, so
        # its job stays pending and the broker is at its max_pending of 1.
        support.DJANGO.faults(mode="down", count=-1, path_prefix="/api/serverless/escrow/")
        try:
            with Client(self.busy.endpoint, timeout_s=2) as c:
                self.assertEqual(self.confirm(c, p["id"])["status"], "accepted")
            rejected0 = self.busy.ingress_count("rejected")
            with Client(self.busy.endpoint, timeout_s=2, retry_busy=False) as c, recorded_sleeps() as sleeps:
                with self.assertRaises(KlynaaOverloaded) as cm:
                    self.confirm(c, p["id"], "ovl-" + RUN)
            self.assertEqual(sleeps, [])  # raised at once
            e = cm.exception
            self.assertIsInstance(e, KlynaaUnavailable)  # "try again later"
            self.assertNotIsInstance(e, KlynaaRejected)
            self.assertEqual((e.code, e.retry_after_ms, e.request_id), ("overloaded", 1000, "ovl-" + RUN))
            self.assertIn("max_pending", e.message)
            # the retry does not fit in a 0.9 s budget: raised at once, no sleep
            with Client(self.busy.endpoint, timeout_s=0.3, retries=2) as c, recorded_sleeps() as sleeps:
                with self.assertRaises(KlynaaOverloaded):
                    self.confirm(c, p["id"])
            self.assertEqual(sleeps, [])
            # a 4 s budget: sent at 0 s, 1 s and 2 s, then raised (1 s wait + 1 s attempt would not fit)
            with Client(self.busy.endpoint, timeout_s=1, retries=3) as c, recorded_sleeps() as sleeps:
                t0 = time.monotonic()
                with self.assertRaises(KlynaaOverloaded):
                    self.confirm(c, p["id"])
                took = time.monotonic() - t0
            self.assertEqual(sleeps, [1.0, 1.0])  # retry_after_ms
            self.assertLess(took, 4.0)
            self.assertTrue(wait_for(lambda: self.busy.ingress_count("rejected") == rejected0 + 5, 5),
                            self.busy.stats().get("ingress"))
            # the client retries by itself and gets through once the backlog clears
            timer = threading.Timer(0.5, lambda: support.DJANGO.faults(mode="none"))
            timer.start()
            try:
                with Client(self.busy.endpoint, timeout_s=2, retries=3) as c, recorded_sleeps() as sleeps:
                    r = self.confirm(c, p["id"], "ovl-ok-" + RUN)
            finally:
                timer.join()
            self.assertEqual(r["status"], "accepted")
            self.assertGreaterEqual(len(sleeps), 1)  # it was overloaded first, and waited retry_after_ms
            self.assertEqual(set(sleeps), {1.0})
        finally:
            support.DJANGO.faults(mode="none")

    def test_2_shutting_down(self):
        # wait until the backlog of test_1 is gone
        self.assertTrue(wait_for(lambda: self.busy.fresh_stats()["pending"] == 0, 30), self.busy.stats())
        p = support.DJANGO.pickup(status="delivered", worker_id=205)
        support.DJANGO.faults(mode="slow", count=1, delay_ms=3000, path_prefix="/api/serverless/escrow/")
        with Client(self.busy.endpoint, timeout_s=2) as c:
            self.assertEqual(self.confirm(c, p["id"])["status"], "accepted")
        # the escrow job is in flight (Django holds it 3 s): SIGTERM drains
        self.assertTrue(wait_for(lambda: self.busy.stats()["functions"].get("processEscrowRelease", {})
                                 .get("running", 0) > 0, 10), self.busy.stats())
        self.busy.proc.send_signal(signal.SIGTERM)
        seen = {}

        def draining():
            with Client(self.busy.endpoint, timeout_s=1, retries=0, retry_busy=False) as c:
                try:
                    self.confirm(c, p["id"], "drain-%s-%d" % (RUN, len(seen)))
                except KlynaaShuttingDown as e:
                    seen["e"] = e
                    return True
                except KlynaaUnavailable:  # overloaded (the running job) until the drain begins
                    pass
                seen[len(seen)] = True
                return False
        self.assertTrue(wait_for(draining, 2.5, 0.05))
        e = seen["e"]
        self.assertIsInstance(e, KlynaaUnavailable)
        self.assertEqual((e.code, e.retry_after_ms), ("shutting_down", 1000))
        # with an endpoint list, the client moves on to the next broker at once
        eid = uid("drain-failover")
        with Client([self.busy.endpoint, support.BROKER.endpoint], timeout_s=2) as c, recorded_sleeps() as sleeps:
            t0 = time.monotonic()
            r = c.publish("pickup.accepted", {"pickup_id": 12, "customer_id": 101, "worker_id": 201}, id=eid)
            took = time.monotonic() - t0
        self.assertEqual(sleeps, [])  # no retry_after_ms wait: straight to the next endpoint ...
        self.assertLess(took, 1.9)    # ... on the draining broker's answer, not after a 2 s timeout
        self.assertEqual(r["status"], "accepted")
        with Client(support.BROKER.endpoint) as direct:
            self.assertEqual(direct.publish("pickup.accepted", {"pickup_id": 12, "customer_id": 101,
                                                                "worker_id": 201}, id=eid)["status"], "duplicate")
        self.assertEqual(self.busy.proc.wait(15), 0)  # the drain ends with exit 0



class D_PublishOnCommitTest(PublishOnCommitCases, unittest.TestCase):
    """klynaa_client.publish_on_commit in a Django transaction (in this process)."""


class E_ReferenceAppTest(ReferenceAppCases, unittest.TestCase):
    """examples/django publishes its events through publish_on_commit to the broker."""


if __name__ == "__main__":
    if "--klynaa" in sys.argv:
        i = sys.argv.index("--klynaa")
        support.KLYNAA = os.path.abspath(sys.argv[i + 1])
        del sys.argv[i:i + 2]
    unittest.main(verbosity=2)

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
import contextlib
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.error
import urllib.request
import uuid

import msgpack
import zmq

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "clients", "python"))

from klynaa_client import (Client, KlynaaError, KlynaaInvokeFailed, KlynaaInvokeTimeout,  # noqa: E402
                           KlynaaOverloaded, KlynaaRejected, KlynaaShuttingDown, KlynaaUnavailable,
                           KlynaaUnexpectedReply, django_client, event_id, publish_on_commit)
sys.path.insert(0, os.path.join(ROOT, "tests", "support"))
from testutil import die_with_parent, free_port, wait_for  # noqa: E402

PY = "/usr/bin/python3"
KLYNAA = os.environ.get("KLYNAA_BIN", os.path.join(ROOT, "build", "klynaa"))
API_KEY = "pyclient-test-key"
RUN = uuid.uuid4().hex[:8]  # makes ids unique per run
SANITIZER_MARKS = ("AddressSanitizer", "runtime error:", "LeakSanitizer")


@contextlib.contextmanager
def recorded_sleeps():
    """The client's time.sleep calls (its busy-retry waits), still sleeping."""
    import klynaa_client
    calls, real = [], time.sleep

    def sleep(s):
        calls.append(round(s, 3))
        real(s)
    klynaa_client.time.sleep = sleep
    try:
        yield calls
    finally:
        klynaa_client.time.sleep = real


def uid(name):
    return "pyc-%s-%s-%s" % (name, RUN, uuid.uuid4().hex[:6])


def spawn(args, env, log_path):
    log = open(log_path, "ab")
    try:
        return subprocess.Popen(args, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                preexec_fn=die_with_parent)
    finally:
        log.close()


def stop_process(proc, sig=signal.SIGTERM, wait_s=15):
    if proc is None or proc.poll() is not None:
        return
    try:
        proc.send_signal(signal.SIGCONT)
        proc.send_signal(sig)
        proc.wait(wait_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


class Broker:
    """`klynaa run` on 127.0.0.1 with its own data dir and a fixed ingress port."""

    def __init__(self, name, env, port=None):
        self.dir = os.path.join(TMP, name)
        os.makedirs(self.dir)
        self.data = os.path.join(self.dir, "data")
        self.log_path = os.path.join(self.dir, "klynaa.log")
        self.port = port or free_port()
        self.endpoint = "tcp://127.0.0.1:%d" % self.port
        self.env = dict(os.environ, KLYNAA_ADMIN_BIND="127.0.0.1:0", KLYNAA_SHUTDOWN_GRACE_SECONDS="5",
                        KLYNAA_RETRY_BASE_DELAY_MS="100", KLYNAA_RETRY_MAX_DELAY_MS="1000",
                        KLYNAA_RETRY_MAX_ATTEMPTS="40", KLYNAA_DJANGO_TIMEOUT_MS="8000",
                        DJANGO_API_KEY=API_KEY)
        self.env.pop("KLYNAA_ADMIN_TOKEN", None)
        self.env.update(env)
        self.proc = None
        self.admin = None
        self.start()

    def start(self):
        """Start (again) on the same port and data dir; waits for broker.json."""
        last = ""
        for _ in range(3):  # the binary may be briefly missing while it is relinked
            if not wait_for(lambda: os.access(KLYNAA, os.X_OK), 120, 0.5):
                raise RuntimeError("%s is not executable; build it first or pass --klynaa" % KLYNAA)
            try:
                os.remove(os.path.join(self.data, "broker.json"))
            except FileNotFoundError:
                pass
            self.proc = spawn([KLYNAA, "run", "--data-dir", self.data, "--ingress", self.endpoint], self.env,
                              self.log_path)
            if wait_for(self._ready, 60, 0.05):
                return
            stop_process(self.proc, signal.SIGKILL)
            last = self.log()[-3000:]
            time.sleep(2)
        raise RuntimeError("klynaa run did not start on %s:\n%s" % (self.endpoint, last))

    def _ready(self):
        if self.proc.poll() is not None:
            return True  # exited: start() notices below
        try:
            with open(os.path.join(self.data, "broker.json")) as f:
                info = json.load(f)
        except (OSError, ValueError):
            return False
        if info.get("pid") != self.proc.pid:
            return False
        self.admin = info["admin"]
        return info["ingress"] == self.endpoint

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def stats(self):
        with urllib.request.urlopen("http://%s/stats" % self.admin, timeout=10) as r:
            return json.loads(r.read())

    def fresh_stats(self):
        """Stats published after this call started (the snapshot is refreshed every 250 ms)."""
        t = int(time.time() * 1000)
        out = {}

        def newer():
            out["s"] = self.stats()
            return out["s"]["ts_ms"] > t
        if not wait_for(newer, 10, 0.1):
            raise AssertionError("broker stats were not refreshed")
        return out["s"]

    def ingress_count(self, status):
        return self.fresh_stats().get("ingress", {}).get(status, 0)

    def pause(self):
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self):
        if self.running():
            self.proc.send_signal(signal.SIGCONT)

    def kill9(self):
        self.proc.send_signal(signal.SIGCONT)
        self.proc.kill()
        self.proc.wait(10)

    def terminate(self):
        stop_process(self.proc)

    def log(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""


class DjangoApp:
    """examples/django/serve.py on a chosen port with its own database."""

    def __init__(self, port, ingress):
        self.port = port
        self.dir = os.path.join(TMP, "django")
        os.makedirs(self.dir)
        env = dict(os.environ, KLYNAA_DEMO_DB=self.dir, DJANGO_API_KEY=API_KEY, KLYNAA_INGRESS=ingress,
                   KLYNAA_INGRESS_TIMEOUT_S="1", KLYNAA_INGRESS_RETRIES="1")
        self.log_path = os.path.join(self.dir, "serve.log")
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([PY, os.path.join(ROOT, "examples", "django", "serve.py"),
                                          "127.0.0.1:%d" % port, "--seed", "--quiet"], env=env,
                                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log,
                                         preexec_fn=die_with_parent)
        ready, _, _ = select.select([self.proc.stdout], [], [], 60)
        line = self.proc.stdout.readline().decode() if ready else ""
        if not line.startswith("READY"):
            stop_process(self.proc, signal.SIGKILL)
            with open(self.log_path, "rb") as f:
                raise RuntimeError("serve.py did not start: %r\n%s" % (line, f.read().decode()[-3000:]))

    def call(self, method, path, body=None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request("http://127.0.0.1:%d%s" % (self.port, path), data=data, method=method,
                                     headers={"Content-Type": "application/json",
                                              "Authorization": "Api-Key " + API_KEY})
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read())

    def faults(self, **kw):
        return self.call("POST", "/api/demo/faults/", kw)

    def pickup(self, **kw):
        body = {"customer_id": 101, "lat": 6.5244, "lng": 3.3792, "price": 2500.5, "publish": False}
        body.update(kw)
        return self.call("POST", "/api/demo/pickups/", body)["pickup"]

    def stop(self):
        stop_process(self.proc)
        self.proc.stdout.close()


TMP = None
DJANGO = None
BROKER = None
AUX = []  # other brokers started by tests


def setUpModule():
    global TMP, DJANGO, BROKER
    TMP = tempfile.mkdtemp(prefix="klynaa-pyclient-test-")
    try:
        # Each needs the other's address before it starts; Django first, since
        # geo loads the available workers when the broker starts.
        django_port, ingress_port = free_port(), free_port()
        DJANGO = DjangoApp(django_port, "tcp://127.0.0.1:%d" % ingress_port)
        BROKER = Broker("main", {"DJANGO_API_URL": "http://127.0.0.1:%d" % django_port}, port=ingress_port)
    except BaseException:
        tearDownModule()
        raise


def tearDownModule():
    import klynaa_client
    for c in list(klynaa_client._django_clients.values()):
        c.close()
    problems = []
    for b in [BROKER] + AUX:
        if b is None or b.proc is None:
            continue
        b.terminate()
        log = b.log()
        if any(m in log for m in SANITIZER_MARKS):
            problems.append("sanitizer report in %s:\n%s" % (b.log_path, log[-4000:]))
    if DJANGO is not None:
        DJANGO.stop()
    if TMP:
        shutil.rmtree(TMP, ignore_errors=True)
    if problems:
        raise AssertionError("\n\n".join(problems))


def ensure_main_broker():
    BROKER.resume()
    if not BROKER.running():
        BROKER.start()


# --------------------------------------------------------------------------- tests

class A_RequestsTest(unittest.TestCase):
    """ping, publish, rejections, invoke against the running broker."""

    def setUp(self):
        ensure_main_broker()
        self.c = Client(BROKER.endpoint, timeout_s=5)

    def tearDown(self):
        self.c.close()

    def test_ping(self):
        r = self.c.ping()
        self.assertEqual((r["v"], r["status"]), (1, "pong"))
        raw = self.c.request({"v": 1, "op": "ping", "id": "ping-" + RUN})
        self.assertEqual(raw["status"], "pong")
        # docs/ingress-protocol.md, "Reply": the reply's id is the request's id.
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
        p = DJANGO.pickup()
        r = self.c.invoke("notifyNearbyWorkers", {"pickup_id": p["id"], "lat": 6.5244, "lng": 3.3792},
                          timeout_ms=20000)
        self.assertEqual(r["workers"][0], 201, r)
        self.assertEqual(r["distances_km"], sorted(r["distances_km"]))
        self.assertTrue(all(d <= 5 for d in r["distances_km"]), r)

    def test_invoke_escrow_release(self):
        p = DJANGO.pickup(status="delivered", worker_id=202)
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
        p = DJANGO.pickup(status="delivered", worker_id=203)
        DJANGO.faults(mode="slow", count=1, delay_ms=2500, path_prefix="/api/serverless/escrow/")
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
            DJANGO.faults(mode="none")

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
        c = Client(BROKER.endpoint, timeout_s=0.5, retries=1)
        try:
            self.assertEqual(c.ping()["status"], "pong")
            eid = uid("stop")
            data = {"pickup_id": 8, "customer_id": 101, "worker_id": 201}
            BROKER.pause()
            try:
                t0 = time.monotonic()
                with self.assertRaises(KlynaaUnavailable) as cm:
                    c.publish("pickup.accepted", data, id=eid)
                took = time.monotonic() - t0
            finally:
                BROKER.resume()
            self.assertNotIsInstance(cm.exception, (KlynaaOverloaded, KlynaaShuttingDown))
            self.assertEqual(cm.exception.request_id, eid)
            self.assertIsNone(cm.exception.reply)
            self.assertEqual(cm.exception.endpoints, [BROKER.endpoint] * 2)  # first try + one resend
            self.assertGreaterEqual(took, 0.95)
            self.assertLess(took, 2.0)  # the budget: (retries + 1) x timeout_s = 1 s (+ slack for a busy CI)
            # once it runs again, the same client works and the same id is safe
            r = c.publish("pickup.accepted", data, id=eid)
            self.assertIn(r["status"], ("accepted", "duplicate"))
            self.assertEqual(r["jobs"], [eid + "#1"])
        finally:
            c.close()

    def test_reconnect_after_kill_and_restart(self):
        c = Client(BROKER.endpoint, timeout_s=1, retries=1)
        try:
            eid = uid("kill")
            data = {"pickup_id": 9, "customer_id": 101, "worker_id": 201}
            self.assertEqual(c.publish("pickup.accepted", data, id=eid)["status"], "accepted")
            BROKER.kill9()
            with self.assertRaises(KlynaaUnavailable):
                c.ping()
            BROKER.start()  # same port, same data dir
            self.assertEqual(c.ping()["status"], "pong")
            # accepted before the kill -9: still known
            r = c.publish("pickup.accepted", data, id=eid)
            self.assertEqual((r["status"], r["jobs"]), ("duplicate", [eid + "#1"]))
        finally:
            c.close()

    def test_reconnect_within_one_call(self):
        c = Client(BROKER.endpoint, timeout_s=1, retries=20)
        try:
            self.assertEqual(c.ping()["status"], "pong")
            BROKER.kill9()
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
            BROKER.start()
            t.join(30)
            self.assertFalse(t.is_alive())
            self.assertNotIn("error", out)
            self.assertEqual(out["reply"]["status"], "accepted")
            self.assertLess(out["took"], 21)
        finally:
            c.close()

    def test_failover_from_dead_first_endpoint(self):
        dead = "tcp://127.0.0.1:%d" % free_port()
        c = Client([dead, BROKER.endpoint], timeout_s=1)
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
            with Client(BROKER.endpoint) as direct:
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
        c = Client(["tcp://127.0.0.1:%d" % port, BROKER.endpoint], timeout_s=2)
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
        cls.busy = Broker("busy", {"DJANGO_API_URL": "http://127.0.0.1:%d" % DJANGO.port,
                                   "KLYNAA_INGRESS_MAX_PENDING": "1"})
        AUX.append(cls.busy)

    @classmethod
    def tearDownClass(cls):
        DJANGO.faults(mode="none")
        cls.busy.terminate()

    def confirm(self, c, pickup_id, eid=None):
        return c.publish("pickup.confirmed", {"pickup_id": pickup_id, "customer_id": 101}, id=eid or uid("busy"))

    def test_1_overloaded(self):
        p = DJANGO.pickup(status="delivered", worker_id=204)
        # The escrow call fails transiently until the faults are cleared, so
        # its job stays pending and the broker is at its max_pending of 1.
        DJANGO.faults(mode="down", count=-1, path_prefix="/api/serverless/escrow/")
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
            timer = threading.Timer(0.5, lambda: DJANGO.faults(mode="none"))
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
            DJANGO.faults(mode="none")

    def test_2_shutting_down(self):
        # wait until the backlog of test_1 is gone
        self.assertTrue(wait_for(lambda: self.busy.fresh_stats()["pending"] == 0, 30), self.busy.stats())
        p = DJANGO.pickup(status="delivered", worker_id=205)
        DJANGO.faults(mode="slow", count=1, delay_ms=3000, path_prefix="/api/serverless/escrow/")
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
        with Client([self.busy.endpoint, BROKER.endpoint], timeout_s=2) as c, recorded_sleeps() as sleeps:
            t0 = time.monotonic()
            r = c.publish("pickup.accepted", {"pickup_id": 12, "customer_id": 101, "worker_id": 201}, id=eid)
            took = time.monotonic() - t0
        self.assertEqual(sleeps, [])  # no retry_after_ms wait: straight to the next endpoint ...
        self.assertLess(took, 1.9)    # ... on the draining broker's answer, not after a 2 s timeout
        self.assertEqual(r["status"], "accepted")
        with Client(BROKER.endpoint) as direct:
            self.assertEqual(direct.publish("pickup.accepted", {"pickup_id": 12, "customer_id": 101,
                                                                "worker_id": 201}, id=eid)["status"], "duplicate")
        self.assertEqual(self.busy.proc.wait(15), 0)  # the drain ends with exit 0


class D_PublishOnCommitTest(unittest.TestCase):
    """klynaa_client.publish_on_commit in a Django transaction (in this process)."""

    @classmethod
    def setUpClass(cls):
        ensure_main_broker()
        import django
        from django.conf import settings
        if not settings.configured:
            settings.configure(
                DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3",
                                       "NAME": os.path.join(TMP, "shop.sqlite3")}},
                INSTALLED_APPS=[], USE_TZ=True,
                KLYNAA_INGRESS=BROKER.endpoint, KLYNAA_INGRESS_TIMEOUT_S=2, KLYNAA_INGRESS_RETRIES=1)
            django.setup()
        from django.db import connection
        with connection.cursor() as cur:
            cur.execute("CREATE TABLE IF NOT EXISTS shop_pickup (id INTEGER PRIMARY KEY, status TEXT)")

    def setUp(self):
        ensure_main_broker()

    def insert(self, status):
        from django.db import connection
        with connection.cursor() as cur:
            cur.execute("INSERT INTO shop_pickup (status) VALUES (%s)", [status])
            return cur.lastrowid

    def exists(self, pk):
        from django.db import connection
        with connection.cursor() as cur:
            cur.execute("SELECT COUNT(*) FROM shop_pickup WHERE id = %s", [pk])
            return cur.fetchone()[0] == 1

    def test_published_after_commit_with_stable_id(self):
        from django.db import transaction
        replies = []
        before = BROKER.ingress_count("accepted")
        with transaction.atomic():
            pk = self.insert("accepted")
            eid = publish_on_commit("pickup.accepted", {"pickup_id": pk, "customer_id": 101, "worker_id": 201},
                                    id=event_id("pickup.accepted", RUN, pk), on_reply=replies.append)
            self.assertEqual(eid, "pickup.accepted.%s.%d" % (RUN, pk))
            # not sent yet: the broker accepted nothing while the transaction is open
            self.assertEqual(BROKER.ingress_count("accepted"), before)
            self.assertEqual(replies, [])
        self.assertEqual(replies, [{"v": 1, "id": eid, "status": "accepted", "jobs": [eid + "#1"]}])
        self.assertTrue(wait_for(lambda: BROKER.ingress_count("accepted") == before + 1, 5))
        # the id is stable: sending the same event again is a duplicate
        r = django_client().publish("pickup.accepted", {"pickup_id": pk, "customer_id": 101, "worker_id": 201},
                                    id=eid)
        self.assertEqual((r["status"], r["jobs"]), ("duplicate", [eid + "#1"]))

    def test_rollback_publishes_nothing(self):
        from django.db import transaction
        replies, errors = [], []
        before = BROKER.ingress_count("accepted")
        with self.assertRaises(RuntimeError):
            with transaction.atomic():
                pk = self.insert("accepted")
                eid = publish_on_commit("pickup.accepted",
                                        {"pickup_id": pk, "customer_id": 101, "worker_id": 201},
                                        id=event_id("pickup.accepted", "rollback", RUN, pk),
                                        on_reply=replies.append, on_error=errors.append)
                raise RuntimeError("the view failed")
        self.assertFalse(self.exists(pk))
        self.assertEqual((replies, errors), ([], []))
        self.assertEqual(BROKER.ingress_count("accepted"), before)
        # the broker never saw the id: it is new
        r = django_client().publish("pickup.accepted", {"pickup_id": pk, "customer_id": 101, "worker_id": 201},
                                    id=eid)
        self.assertEqual(r["status"], "accepted")

    def test_savepoint_rollback_drops_only_its_events(self):
        from django.db import transaction
        sent = []
        with transaction.atomic():
            outer = publish_on_commit("pickup.confirmed", {"pickup_id": 21, "customer_id": 101},
                                      id=uid("outer"), on_reply=sent.append)
            try:
                with transaction.atomic():
                    publish_on_commit("pickup.confirmed", {"pickup_id": 22, "customer_id": 101},
                                      id=uid("inner"), on_reply=sent.append)
                    raise ValueError("inner block fails")
            except ValueError:
                pass
        self.assertEqual([r["id"] for r in sent], [outer])

    def test_default_id_and_ts(self):
        from django.db import transaction
        sent = []
        with transaction.atomic():
            eid = publish_on_commit("worker.location", {"worker_id": 9003, "lat": 10, "lng": 10, "available": False},
                                    on_reply=sent.append)
        self.assertRegex(eid, r"^[0-9a-f]{32}$")
        self.assertEqual((sent[0]["id"], sent[0]["status"]), (eid, "accepted"))

    def test_data_is_checked_now_and_frozen(self):
        from django.db import transaction
        with self.assertRaises(TypeError):
            with transaction.atomic():
                pk = self.insert("accepted")
                publish_on_commit("pickup.accepted", {"pickup_id": pk, "customer_id": object()}, id=uid("bad"))
        self.assertFalse(self.exists(pk))  # the error surfaced inside the transaction: rolled back
        sent = []
        data = {"pickup_id": 23, "customer_id": 101, "worker_id": 201}
        with transaction.atomic():
            publish_on_commit("pickup.accepted", data, id=uid("frozen"), on_reply=sent.append)
            data["worker_id"] = "changed later"  # would be invalid_field if it were sent
        self.assertEqual(sent[0]["status"], "accepted")

    def test_errors_after_commit_are_reported_not_raised(self):
        from django.db import transaction
        errors = []
        with transaction.atomic():
            pk = self.insert("accepted")
            eid = publish_on_commit("pickup.accepted", {"pickup_id": pk, "customer_id": 101}, id=uid("nofield"),
                                    on_error=errors.append)
        self.assertTrue(self.exists(pk))
        self.assertEqual(len(errors), 1)
        self.assertIsInstance(errors[0], KlynaaRejected)
        self.assertEqual((errors[0].code, errors[0].field, errors[0].request_id),
                         ("missing_field", "data.worker_id", eid))
        # without on_error: logged on "klynaa_client", the commit stands
        with self.assertLogs("klynaa_client", "ERROR") as logs:
            with transaction.atomic():
                pk = self.insert("accepted")
                publish_on_commit("pickup.teleported", {"pickup_id": pk}, id=uid("unknown"))
        self.assertTrue(self.exists(pk))
        self.assertIn("unknown_type", "\n".join(logs.output))
        # no broker answering: on_error gets KlynaaUnavailable
        dead = Client("tcp://127.0.0.1:%d" % free_port(), timeout_s=0.3, retries=0)
        try:
            with transaction.atomic():
                publish_on_commit("pickup.confirmed", {"pickup_id": 24, "customer_id": 101}, id=uid("dead"),
                                  client=dead, on_error=errors.append)
        finally:
            dead.close()
        self.assertIsInstance(errors[-1], KlynaaUnavailable)

    def test_runner_defers_the_send(self):
        from django.db import transaction
        later = []
        with transaction.atomic():
            eid = publish_on_commit("pickup.confirmed", {"pickup_id": 25, "customer_id": 101}, id=uid("later"),
                                    runner=later.append)
        self.assertEqual(len(later), 1)  # committed, handed to the runner, not sent yet
        r = later[0]()
        self.assertEqual((r["id"], r["status"]), (eid, "accepted"))


class E_ReferenceAppTest(unittest.TestCase):
    """examples/django publishes its events through publish_on_commit to the broker."""

    def setUp(self):
        ensure_main_broker()

    def test_demo_action_publishes_after_commit(self):
        b = DJANGO.call("POST", "/api/demo/pickups/", {"customer_id": 102, "lat": 6.53, "lng": 3.38})
        ev, reply = b["event"], b["ingress"]
        self.assertEqual(ev["type"], "pickup.created")
        self.assertEqual(reply, {"v": 1, "id": ev["id"], "status": "accepted", "jobs": [ev["id"] + "#1"]})
        with Client(BROKER.endpoint) as c:
            self.assertEqual(c.publish(ev["type"], ev["data"], id=ev["id"])["status"], "duplicate")
        # an invalid transition commits nothing and publishes nothing
        with self.assertRaises(urllib.error.HTTPError) as cm:
            DJANGO.call("POST", "/api/demo/pickups/%d/deliver/" % b["pickup"]["id"], {})
        self.assertEqual(cm.exception.code, 409)

    def test_outbox_resends_the_same_id(self):
        p = DJANGO.pickup()
        BROKER.pause()
        try:
            b = DJANGO.call("POST", "/api/demo/pickups/%d/accept/" % p["id"], {"worker_id": 201})
        finally:
            BROKER.resume()
        self.assertEqual(b["pickup"]["status"], "accepted")  # the change committed anyway
        self.assertEqual(b["ingress"]["status"], "unavailable")
        ev_id = b["event"]["id"]
        state = DJANGO.call("GET", "/api/demo/state/")
        self.assertEqual([e["status"] for e in state["outbox"] if e["id"] == ev_id], ["pending"])
        replies = DJANGO.call("POST", "/api/demo/outbox/flush/", {})["replies"]
        mine = [r for r in replies if r.get("id") == ev_id]
        self.assertEqual(len(mine), 1)
        # the paused broker may have taken the first sends when it resumed
        self.assertIn(mine[0]["status"], ("accepted", "duplicate"))
        self.assertEqual(mine[0]["jobs"], [ev_id + "#1"])


if __name__ == "__main__":
    if "--klynaa" in sys.argv:
        i = sys.argv.index("--klynaa")
        KLYNAA = os.path.abspath(sys.argv[i + 1])
        del sys.argv[i:i + 2]
    unittest.main(verbosity=2)

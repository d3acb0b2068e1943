"""What tests/integration/django_app_test.py uses around its test cases: the
fake ingress (a ZeroMQ ROUTER answering `accepted`), the reference app's server
(examples/django/serve.py), the module fixture that starts and stops both, and
HTTP helpers (call, state, set_faults, new_pickup).

The fixture's state (INGRESS, SERVER) lives here, so the test module reads it
as attributes of this module.
"""
import http.client
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import msgpack
import zmq

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
DJANGO_DIR = os.path.join(ROOT, "examples", "django")
sys.path.insert(0, os.path.join(ROOT, "clients", "python"))
sys.path.insert(0, os.path.join(ROOT, "tests", "support"))
from testutil import free_port  # noqa: E402

PY = "/usr/bin/python3"
API_KEY = "test-key-123"
AUTH = {"Authorization": "Api-Key " + API_KEY}
ISO_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")
PICKUP_KEYS = {"id", "status", "customer_id", "worker_id", "lat", "lng", "price", "currency", "created_at",
               "accepted_at", "delivered_at"}


class FakeIngress:
    """A ROUTER socket answering like the broker: publish -> accepted, ping -> pong."""

    def __init__(self):
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.port = self.sock.bind_to_random_port("tcp://127.0.0.1")
        self.endpoint = "tcp://127.0.0.1:%d" % self.port
        self.requests = []        # decoded request maps, in arrival order
        self.frames = []          # frame counts (without the identity)
        self.seen = {}            # id -> jobs (dedup like the broker)
        self.drop_next = 0        # swallow this many requests without answering
        self.silent = False       # answer nothing
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        while not self._stop.is_set():
            if not dict(poller.poll(50)):
                continue
            frames = self.sock.recv_multipart()
            ident, rest = frames[0], frames[1:]
            delim = len(rest) >= 2 and rest[0] == b""
            try:
                req = msgpack.unpackb(rest[-1], raw=False)
            except Exception:
                req = None
            with self.lock:
                self.requests.append(req)
                self.frames.append(len(rest))
                if self.silent or self.drop_next > 0:
                    self.drop_next = max(0, self.drop_next - 1)
                    continue
                rid = req.get("id") if isinstance(req, dict) else None
                op = req.get("op", "publish") if isinstance(req, dict) else None
                if op == "ping":
                    reply = {"v": 1, "id": rid, "status": "pong"}
                elif op == "invoke":
                    reply = {"v": 1, "id": rid, "status": "ok", "result": {"echo": req.get("data")}}
                elif rid in self.seen:
                    reply = {"v": 1, "id": rid, "status": "duplicate", "jobs": self.seen[rid]}
                else:
                    self.seen[rid] = [rid + "#1"]
                    reply = {"v": 1, "id": rid, "status": "accepted", "jobs": self.seen[rid]}
            out = [ident] + ([b""] if delim else []) + [msgpack.packb(reply, use_bin_type=True)]
            self.sock.send_multipart(out)

    def published(self, type_=None):
        with self.lock:
            return [r for r in self.requests
                    if isinstance(r, dict) and r.get("op", "publish") == "publish"
                    and (type_ is None or r.get("type") == type_)]

    def close(self):
        self._stop.set()
        self.thread.join(2)
        self.sock.close(0)
        self.ctx.term()


class Server:
    def __init__(self, ingress, page_size=3):
        self.tmp = tempfile.mkdtemp(prefix="klynaa-django-test-")
        self.port = free_port()
        env = dict(os.environ, KLYNAA_DEMO_DB=self.tmp, DJANGO_API_KEY=API_KEY, KLYNAA_INGRESS=ingress,
                   KLYNAA_DEMO_PAGE_SIZE=str(page_size), KLYNAA_INGRESS_TIMEOUT_S="0.7",
                   KLYNAA_INGRESS_RETRIES="1")
        self.env = env
        self.log = open(os.path.join(self.tmp, "server.log"), "wb")
        t0 = time.monotonic()
        self.proc = subprocess.Popen([PY, os.path.join(DJANGO_DIR, "serve.py"), "127.0.0.1:%d" % self.port,
                                      "--seed", "--quiet"], env=env, stdout=subprocess.PIPE, stderr=self.log)
        line = self.proc.stdout.readline().decode()
        if not line.startswith("READY"):
            self.stop()
            raise RuntimeError("server did not start: %r\n%s" % (line, self.server_log()))
        self.startup_s = time.monotonic() - t0

    def server_log(self):
        try:
            with open(os.path.join(self.tmp, "server.log"), "rb") as f:
                return f.read().decode("utf-8", "replace")[-4000:]
        except OSError:
            return ""

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc.stdout.close()
        self.log.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


INGRESS = None
SERVER = None


def set_up_module():
    global INGRESS, SERVER
    INGRESS = FakeIngress()
    SERVER = Server(INGRESS.endpoint)


def tear_down_module():
    if SERVER:
        SERVER.stop()
    if INGRESS:
        INGRESS.close()


def call(method, path, body=None, headers=None, auth=True, conn=None, raw=False):
    """-> (status, parsed JSON or None, response headers dict, raw body)."""
    h = {"Accept": "application/json"}
    if auth:
        h.update(AUTH)
    h.update(headers or {})
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        h["Content-Type"] = "application/json"
    own = conn is None
    c = conn or http.client.HTTPConnection("127.0.0.1", SERVER.port, timeout=10)
    try:
        c.request(method, path, body=data, headers=h)
        r = c.getresponse()
        payload = r.read()
        hdrs = {k.lower(): v for k, v in r.getheaders()}
    finally:
        if own:
            c.close()
    parsed = None
    if payload and hdrs.get("content-type", "").startswith("application/json"):
        parsed = json.loads(payload)
    return r.status, parsed, hdrs, payload


def state():
    st, body, _, _ = call("GET", "/api/demo/state/", auth=False)
    assert st == 200
    return body


def set_faults(**kw):
    st, body, _, _ = call("POST", "/api/demo/faults/", kw, auth=False)
    assert st == 200, body
    return body


def new_pickup(**kw):
    body = {"customer_id": 101, "lat": 6.5244, "lng": 3.3792, "price": 1234.5, "publish": False}
    body.update(kw)
    st, b, _, _ = call("POST", "/api/demo/pickups/", body, auth=False)
    assert st == 201, (st, b)
    return b["pickup"]


def two_decimals(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool) and abs(round(x, 2) - x) < 1e-9

"""What tests/integration/python_client_test.py and its parts share: the
processes it starts (`klynaa run` as Broker, the reference Django app as
DjangoApp), the module fixture that starts and stops them, and small helpers.

The fixture's state (TMP, DJANGO, BROKER, AUX) and KLYNAA (the binary, set from
--klynaa) live here, so the test modules read them as attributes of this module.
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
import time
import urllib.error
import urllib.request
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "clients", "python"))

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


def set_up_module():
    global TMP, DJANGO, BROKER
    TMP = tempfile.mkdtemp(prefix="klynaa-pyclient-test-")
    try:
        # Each needs the other's address before it starts; Django first, since
        # geo loads the available workers when the broker starts.
        django_port, ingress_port = free_port(), free_port()
        DJANGO = DjangoApp(django_port, "tcp://127.0.0.1:%d" % ingress_port)
        BROKER = Broker("main", {"DJANGO_API_URL": "http://127.0.0.1:%d" % django_port}, port=ingress_port)
    except BaseException:
        tear_down_module()
        raise


def tear_down_module():
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

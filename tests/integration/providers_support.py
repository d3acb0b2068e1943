"""What tests/integration/providers_test.py shares: the reference Django app
(Django), `klynaa run` with a provider configured (Klynaa, klynaa_config), RSA
keys, clean environments, and the module fixture that starts and stops them.

The fixture's state (TMP, DJANGO, KEYS) and KLYNAA (the binary, set from
--klynaa) live here, so the test module reads them as attributes of this module.
"""
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "clients", "python"))
sys.path.insert(0, os.path.join(ROOT, "tests", "fakes"))

from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import rsa  # noqa: E402

from klynaa_client import Client  # noqa: E402

PY = "/usr/bin/python3"
KLYNAA = os.environ.get("KLYNAA_BIN", os.path.join(ROOT, "build", "klynaa"))
API_KEY = "providers-test-key"
CLIENT_EMAIL = "klynaa-jobs@klynaa-fake.iam.gserviceaccount.com"
PROJECT = "klynaa-fake"
AWS_REGION = "eu-west-1"
AWS_ACCESS_KEY = "AKIDKLYNAAFAKE0001"
AWS_SECRET = "klynaa/fake+secret/0123456789abcdefABCDEF"
AWS_SESSION_TOKEN = "klynaa-fake-session-token/+=="
WORKER = 201  # seeded by serve.py --seed
WAIT_S = 60   # the longest any one wait in this file may take

# Variables of the environment that would change what klynaa or botocore does.
SCRUB_PREFIXES = ("KLYNAA_", "AWS_", "GOOGLE_", "FIREBASE_", "DJANGO_", "NOTIFICATION_", "BOTO_")
SCRUB = {"http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"}


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(SCRUB_PREFIXES) and k not in SCRUB}
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    env.update(extra)
    return env


def pdeathsig():
    """A prefix that kills the child when this process dies, even by SIGKILL (ctest's timeout)."""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "KILL", "--"] if setpriv else []


def wait_until(cond, timeout=WAIT_S, what="condition"):
    end = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > end:
            raise AssertionError("timed out after %ss waiting for %s" % (timeout, what))
        time.sleep(0.1)


def rsa_key():
    """-> (private PEM PKCS#8, as in Google's key files; public PEM)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return private, public


def endpoint_arn(platform, n):
    return "arn:aws:sns:%s:123456789012:endpoint/%s/klynaa-%s/%s" % (
        AWS_REGION, platform, platform.lower(), uuid.UUID(int=n))


# ---- what this module starts, all torn down by cleanup()

TMP = None
DJANGO = None
KEYS = {}
_KLYNAAS = []


class Django:
    def __init__(self, tmp):
        self.dir = os.path.join(tmp, "django")
        os.makedirs(self.dir)
        self.log = open(os.path.join(self.dir, "server.log"), "wb")
        env = clean_env(KLYNAA_DEMO_DB=self.dir, DJANGO_API_KEY=API_KEY,
                        KLYNAA_INGRESS="tcp://127.0.0.1:9",  # the test publishes, not Django
                        KLYNAA_INGRESS_TIMEOUT_S="0.5", KLYNAA_INGRESS_RETRIES="0")
        self.proc = subprocess.Popen(pdeathsig() + [PY, os.path.join(ROOT, "examples", "django", "serve.py"),
                                                    "127.0.0.1:0", "--seed", "--quiet"],
                                     env=env, stdout=subprocess.PIPE, stderr=self.log)
        line = self.proc.stdout.readline().decode()
        if not line.startswith("READY http://127.0.0.1:"):
            self.stop()
            raise RuntimeError("Django did not start: %r\n%s" % (line, self.server_log()))
        self.url = line.split()[1]
        self.port = int(self.url.rsplit(":", 1)[1])

    def server_log(self):
        with open(os.path.join(self.dir, "server.log"), "rb") as f:
            return f.read().decode("utf-8", "replace")[-4000:]

    def call(self, method, path, body=None, auth=True):
        h = {"Accept": "application/json"}
        if auth:
            h["Authorization"] = "Api-Key " + API_KEY
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            h["Content-Type"] = "application/json"
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            c.request(method, path, body=data, headers=h)
            r = c.getresponse()
            raw = r.read()
        finally:
            c.close()
        return r.status, (json.loads(raw) if raw else None)

    def add_token(self, user_id, token, platform):
        st, b = self.call("POST", "/api/demo/tokens/", {"user_id": user_id, "token": token, "platform": platform},
                          auth=False)
        assert st == 201, (st, b)

    def tokens(self, user_id):
        st, b = self.call("GET", "/api/users/%d/tokens/" % user_id)
        assert st == 200, (st, b)
        return {t["token"] for t in b["tokens"]}

    def accepted_pickup(self, customer_id):
        st, b = self.call("POST", "/api/demo/pickups/", {"customer_id": customer_id, "lat": 6.5244, "lng": 3.3792,
                                                         "price": 2500, "status": "accepted", "worker_id": WORKER,
                                                         "publish": False}, auth=False)
        assert st == 201, (st, b)
        return b["pickup"]["id"]

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc.stdout.close()
        self.log.close()


class Klynaa:
    """`klynaa run` on ephemeral ports with its own data dir and config file."""

    def __init__(self, name, config, env):
        self.dir = tempfile.mkdtemp(prefix=name + "-", dir=TMP)
        self.data = os.path.join(self.dir, "data")
        self.config = os.path.join(self.dir, "klynaa.toml")
        with open(self.config, "w") as f:
            f.write(config)
        self.log_path = os.path.join(self.dir, "klynaa.log")
        self.log = open(self.log_path, "wb")
        self.exit_code = None
        _KLYNAAS.append(self)
        self.proc = subprocess.Popen(pdeathsig() + [KLYNAA, "run", "--config", self.config, "--data-dir", self.data,
                                                    "--ingress", "tcp://127.0.0.1:*"],
                                     env=clean_env(**env), stdin=subprocess.DEVNULL, stdout=self.log,
                                     stderr=subprocess.STDOUT)

        def bound():
            if self.proc.poll() is not None:
                raise AssertionError("klynaa exited with %s:\n%s" % (self.proc.returncode, self.output()))
            try:
                with open(os.path.join(self.data, "broker.json")) as f:
                    j = json.load(f)
            except (OSError, ValueError):
                return None
            return j if j.get("pid") == self.proc.pid else None

        self.endpoints = wait_until(bound, what="klynaa to write broker.json")
        self.ingress = self.endpoints["ingress"]
        self.admin = self.endpoints["admin"]

    def output(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def stats(self):
        host, port = self.admin.rsplit(":", 1)
        c = http.client.HTTPConnection(host, int(port), timeout=5)
        try:
            c.request("GET", "/stats")
            return json.loads(c.getresponse().read())
        finally:
            c.close()

    def function(self, name):
        return self.stats().get("functions", {}).get(name, {})

    def wait_outcome(self, function, outcome, n=1):
        """Waits until `n` jobs of `function` ended with `outcome` and none is left unfinished."""
        def done():
            f = self.function(function)
            unfinished = sum(f.get(k, 0) for k in ("ready", "running", "retry_wait"))
            return f if f.get("outcomes", {}).get(outcome, 0) >= n and unfinished == 0 else None
        return wait_until(done, what="%d %s job(s) of %s" % (n, outcome, function))

    def client(self):
        return Client(self.ingress, timeout_s=10, retries=1)

    def stop(self):
        """SIGTERM; returns the exit code (SIGKILL after 20 s: then 128+9)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()
        if self.exit_code is None:
            rc = self.proc.returncode
            self.exit_code = 128 - rc if rc < 0 else rc
        return self.exit_code


def klynaa_config(service, **notifications):
    lines = ["[django]", 'url = "%s"' % DJANGO.url, 'api_key = "%s"' % API_KEY, "timeout_ms = 5000",
             "[admin]", 'bind = "127.0.0.1:0"',
             "[notifications]", 'service = "%s"' % service]
    lines += ['%s = "%s"' % kv for kv in notifications.items()]
    lines += ["[retry]", "max_attempts = 3", "base_delay_ms = 200", "max_delay_ms = 1000",
              "[shutdown]", "grace_seconds = 5",
              "[log]", 'level = "info"',
              # No scheduled job may add pushes of its own (the daily report notifies
              # the admins): nothing missed fires at start, and the schedules name a
              # minute that does not come during a test (midnight of February 29).
              "[scheduler]", "misfire_grace_seconds = 0"]
    for function in ("generateDailyReport", "generateWeeklyAnalytics", "cleanupData"):
        lines += ["[[schedule]]", 'name = "quiet-%s"' % function, 'cron = "0 0 29 2 *"',
                  'function = "%s"' % function]
    return "\n".join(lines) + "\n"


def cleanup():
    for k in _KLYNAAS:
        try:
            k.stop()
        except Exception:
            pass
    global DJANGO
    if DJANGO:
        DJANGO.stop()
        DJANGO = None
    if TMP:
        shutil.rmtree(TMP, ignore_errors=True)


def set_up_module():
    global TMP, DJANGO
    if not os.access(KLYNAA, os.X_OK):
        raise unittest.SkipTest("%s missing: build first (scripts/build.sh) or pass --klynaa PATH" % KLYNAA)
    TMP = tempfile.mkdtemp(prefix="klynaa-providers-test-")
    try:
        DJANGO = Django(TMP)
        KEYS["good"] = rsa_key()
        KEYS["wrong"] = rsa_key()
    except BaseException:
        cleanup()
        raise


def tear_down_module():
    cleanup()


def on_sigterm(signum, frame):
    cleanup()
    os._exit(128 + signum)

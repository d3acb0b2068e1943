#!/usr/bin/python3
"""The `firebase` and `sns` push providers end to end, against local fakes that
verify what they receive with independent libraries (docs/events-and-functions.md,
"Push providers" and "Failures and retries"; docs/configuration.md).

    /usr/bin/python3 tests/integration/providers_test.py [--klynaa PATH] [unittest args]

PATH defaults to $KLYNAA_BIN, else build/klynaa. Needs Debian's python3-django,
python3-zmq, python3-msgpack, python3-jwt, python3-cryptography and
python3-botocore. Only 127.0.0.1 is used; every process it starts is killed and
every temporary directory removed, also when a test fails.

It starts the reference Django app (examples/django/serve.py, a free port, a
temporary database), the fakes of tests/fakes/ (fcm_fake.py: Google's OAuth2
token endpoint and FCM HTTP v1, checking the RS256 assertion with PyJWT;
sns_fake.py: SNS Publish, recomputing SigV4 with botocore), and `klynaa run`
with a config file pointing the provider at the fake. It publishes events and
invokes sendPickupNotification with the Python client, then checks:

* the fake accepted correctly signed requests carrying the right message for
  each of the recipient's tokens (FCM: one access token, fetched once, for
  every send);
* a token the provider calls invalid (UNREGISTERED, EndpointDisabled) is
  deleted in Django, the others kept, and the job's result counts it;
* requests signed with a wrong key or secret, sent by the test directly, are
  refused by the fake (so the fakes really check);
* `klynaa run` configured with a wrong key or secret has its requests refused;
  the job fails permanently (dead letter, per docs/events-and-functions.md, "Failures and retries": a 4xx
  that is not 408/429),
  no token is deleted, and klynaa keeps serving and stops cleanly (exit 0, no
  sanitizer report).
"""
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.parse
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "clients", "python"))
sys.path.insert(0, os.path.join(ROOT, "tests", "fakes"))

import jwt  # noqa: E402
import botocore.session  # noqa: E402
from botocore.config import Config  # noqa: E402
from botocore.exceptions import ClientError  # noqa: E402
from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import rsa  # noqa: E402

from fcm_fake import FCM_SCOPE, FcmFake  # noqa: E402
from klynaa_client import Client  # noqa: E402
from sns_fake import SnsFake  # noqa: E402

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


def setUpModule():
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


def tearDownModule():
    cleanup()


def on_sigterm(signum, frame):
    cleanup()
    os._exit(128 + signum)


class ProviderCase(unittest.TestCase):
    """Shared checks of a klynaa run: stops it and checks the exit and the log."""

    def stop_klynaa(self, k):
        code = k.stop()
        out = k.output()
        self.assertEqual(code, 0, out[-4000:])
        for marker in ("AddressSanitizer", "runtime error:", "LeakSanitizer"):
            self.assertNotIn(marker, out)

    def assert_serving(self, k):
        self.assertIsNone(k.proc.poll(), "klynaa exited:\n" + k.output()[-4000:])
        with k.client() as c:
            self.assertEqual(c.ping()["status"], "pong")


# ---------------------------------------------------------------- firebase

class FirebaseTest(ProviderCase):
    @classmethod
    def setUpClass(cls):
        private, public = KEYS["good"]
        cls.fake = FcmFake(public, CLIENT_EMAIL, PROJECT).start()
        cls.addClassCleanup(cls.fake.stop)

    def service_account(self, key):
        path = os.path.join(TMP, "service-account-%s.json" % key)
        with open(path, "w") as f:
            json.dump({"type": "service_account", "project_id": PROJECT, "private_key_id": "fake-" + key,
                       "private_key": KEYS[key][0], "client_email": CLIENT_EMAIL,
                       "token_uri": "https://oauth2.googleapis.com/token"}, f)
        return path

    def start_klynaa(self, key):
        config = klynaa_config("firebase", firebase_url=self.fake.url, firebase_token_url=self.fake.token_url)
        return Klynaa("firebase-" + key, config, {"GOOGLE_APPLICATION_CREDENTIALS": self.service_account(key)})

    def sends(self, job_id):
        return [r for r in self.fake.received() if r["endpoint"] == "send"
                and (r.get("message") or {}).get("data", {}).get("job_id") == job_id]

    def test_pushes_signed_and_unregistered_token_deleted(self):
        customer, other = 9101, 9111
        good = ["fcm-9101-android-%s" % uuid.uuid4().hex, "fcm-9101-ios-%s" % uuid.uuid4().hex]
        dead = "fcm-9101-dead-%s:APA91b_x" % uuid.uuid4().hex
        DJANGO.add_token(customer, good[0], "android")
        DJANGO.add_token(customer, good[1], "ios")
        DJANGO.add_token(customer, dead, "android")
        other_good, other_dead = "fcm-9111-ok-%s" % uuid.uuid4().hex, "fcm-9111-dead-%s" % uuid.uuid4().hex
        DJANGO.add_token(other, other_good, "android")
        DJANGO.add_token(other, other_dead, "ios")
        self.fake.add_unregistered(dead, other_dead)
        pickup = DJANGO.accepted_pickup(customer)
        before = len(self.fake.received())

        k = self.start_klynaa("good")
        event = "fcm-accepted-%d" % pickup
        with k.client() as c:
            r = c.publish("pickup.accepted", {"pickup_id": pickup, "customer_id": customer, "worker_id": WORKER},
                          id=event)
        self.assertEqual(r["status"], "accepted", r)
        self.assertEqual(r["jobs"], [event + "#1"])
        k.wait_outcome("sendPickupNotification", "ok")

        # Every push of the job reached FCM with a valid access token and the right message.
        sends = self.sends(event + "#1")
        self.assertEqual(sorted(s["token"] for s in sends), sorted(good + [dead]), sends)
        for s in sends:
            msg = s["message"]
            self.assertEqual(msg["notification"], {"title": "Pickup accepted",
                                                   "body": "A worker accepted your pickup #%d." % pickup})
            self.assertEqual(msg["data"]["pickup_id"], str(pickup))
            self.assertEqual(msg["data"]["notification_type"], "pickup_accepted")
            self.assertEqual(s["project"], PROJECT)
            if s["token"] == dead:
                self.assertEqual((s["accepted"], s["status"], s["error"]), (False, 404, "UNREGISTERED"))
            else:
                self.assertEqual((s["accepted"], s["status"]), (True, 200), s)
        # The UNREGISTERED token is gone from Django; the others stay.
        self.assertEqual(DJANGO.tokens(customer), set(good))

        # The access token is revoked: the next send gets 401, klynaa fetches a new
        # token and sends again (firebase.hpp). invoke: the job's result counts the
        # pushes (docs/events-and-functions.md, "sendPickupNotification"); Client.invoke
        # returns it.
        self.fake.revoke_access_tokens()
        with k.client() as c:
            r = c.invoke("sendPickupNotification", {"pickup_id": pickup, "notification_type": "pickup_delivered",
                                                    "user_type": "customer", "user_id": other},
                         id="fcm-invoke-%d" % pickup, timeout_ms=30000)
        self.assertEqual(r, {"sent": 1, "failed": 0, "invalid_tokens": 1, "recipients": [other]})
        self.assertEqual(DJANGO.tokens(other), {other_good})

        # One access token, fetched once with a verified assertion, served every send
        # of the first job (3 pushes, sent together). The second job's two pushes go
        # out together with the revoked token, both get 401; one new token is
        # fetched and both are sent again with it (firebase.hpp, send_all).
        mine = self.fake.received()[before:]
        self.assertEqual([r["endpoint"] for r in mine],
                         ["token", "send", "send", "send", "send", "send", "token", "send", "send"], mine)
        tokens = [r for r in mine if r["endpoint"] == "token"]
        for t in tokens:
            self.assertTrue(t["accepted"], t)
            self.assertEqual(t["header"]["alg"], "RS256")
            self.assertEqual((t["claims"]["iss"], t["claims"]["aud"]), (CLIENT_EMAIL, self.fake.token_url))
            self.assertEqual(t["claims"]["scope"], FCM_SCOPE)
            self.assertLessEqual(t["claims"]["exp"] - t["claims"]["iat"], 3600)
        self.assertNotEqual(tokens[0]["access_token"], tokens[1]["access_token"])
        self.assertEqual([s["access_token"] for s in mine[1:6]], [tokens[0]["access_token"]] * 5)
        self.assertEqual([s["access_token"] for s in mine[7:]], [tokens[1]["access_token"]] * 2)
        for refused in mine[4:6]:
            self.assertEqual((refused["status"], refused["error"]), (401, "UNAUTHENTICATED"))
        # the same two pushes, sent again
        self.assertEqual(sorted(json.dumps(m["message"], sort_keys=True) for m in mine[7:]),
                         sorted(json.dumps(m["message"], sort_keys=True) for m in mine[4:6]))
        self.assertEqual(mine[7]["message"]["data"]["job_id"], "fcm-invoke-%d#1" % pickup)
        self.assertEqual([r for r in mine if not r["accepted"] and r.get("error") not in
                          ("UNREGISTERED", "UNAUTHENTICATED")], [])
        self.assert_serving(k)
        self.stop_klynaa(k)

    def test_fake_refuses_wrongly_signed_requests(self):
        now = int(time.time())
        claims = {"iss": CLIENT_EMAIL, "scope": FCM_SCOPE, "aud": self.fake.token_url, "iat": now, "exp": now + 3600}

        def token_request(assertion, grant="urn:ietf:params:oauth:grant-type:jwt-bearer"):
            body = urllib.parse.urlencode({"grant_type": grant, "assertion": assertion})
            return self.post(self.fake.token_url, body, {"Content-Type": "application/x-www-form-urlencoded"})

        cases = [
            ("signed with another key", jwt.encode(claims, KEYS["wrong"][0], algorithm="RS256"),
             "invalid_grant", "Invalid JWT Signature."),
            ("another audience", jwt.encode(dict(claims, aud="https://oauth2.googleapis.com/token"),
                                            KEYS["good"][0], algorithm="RS256"), "invalid_grant", None),
            ("another issuer", jwt.encode(dict(claims, iss="someone@else.iam.gserviceaccount.com"),
                                          KEYS["good"][0], algorithm="RS256"), "invalid_grant", None),
            ("expired", jwt.encode(dict(claims, iat=now - 7200, exp=now - 3600), KEYS["good"][0], algorithm="RS256"),
             "invalid_grant", None),
            ("a two-hour lifetime", jwt.encode(dict(claims, exp=now + 7200), KEYS["good"][0], algorithm="RS256"),
             "invalid_grant", None),
            ("another scope", jwt.encode(dict(claims, scope="https://www.googleapis.com/auth/devstorage.read_only"),
                                         KEYS["good"][0], algorithm="RS256"), "invalid_scope", None),
            ("HS256 instead of RS256",
             jwt.encode(claims, "not-the-rsa-key", algorithm="HS256"), "invalid_grant", None),
        ]
        for name, assertion, error, description in cases:
            with self.subTest(name):
                status, body = token_request(assertion)
                self.assertEqual((status, body["error"]), (400, error), body)
                if description:
                    self.assertEqual(body["error_description"], description)
                last = self.fake.received()[-1]
                self.assertEqual((last["endpoint"], last["accepted"], last["error"]), ("token", False, error))

        # A correctly signed assertion gets a token; that token sends; a forged one does not.
        status, body = token_request(jwt.encode(claims, KEYS["good"][0], algorithm="RS256"))
        self.assertEqual(status, 200, body)
        send_url = "%s/v1/projects/%s/messages:send" % (self.fake.url, PROJECT)
        message = json.dumps({"message": {"token": "fcm-direct", "notification": {"title": "t", "body": "b"},
                                          "data": {"k": "v"}}})
        for bearer, want in ((body["access_token"], 200), ("ya29.forged", 401), ("", 401)):
            status, answer = self.post(send_url, message, {"Content-Type": "application/json",
                                                           "Authorization": "Bearer " + bearer})
            self.assertEqual(status, want, answer)
            if want == 401:
                self.assertEqual(answer["error"]["status"], "UNAUTHENTICATED")
        # another project is refused, and a non-string data value is INVALID_ARGUMENT
        status, answer = self.post(send_url.replace(PROJECT, "someone-else"), message,
                                   {"Content-Type": "application/json", "Authorization": "Bearer " + body["access_token"]})
        self.assertEqual((status, answer["error"]["status"]), (403, "PERMISSION_DENIED"))
        bad = json.dumps({"message": {"token": "fcm-direct", "data": {"n": 1}}})
        status, answer = self.post(send_url, bad, {"Content-Type": "application/json",
                                                   "Authorization": "Bearer " + body["access_token"]})
        self.assertEqual((status, answer["error"]["status"]), (400, "INVALID_ARGUMENT"))

    def test_klynaa_with_wrong_key_is_refused_and_the_job_dies(self):
        customer = 9102
        token = "fcm-9102-%s" % uuid.uuid4().hex
        DJANGO.add_token(customer, token, "android")
        self.fake.add_unregistered(token)  # were it sent, it would be deleted: it must not be
        pickup = DJANGO.accepted_pickup(customer)
        before = len(self.fake.received())

        k = self.start_klynaa("wrong")
        event = "fcm-wrong-key-%d" % pickup
        with k.client() as c:
            self.assertEqual(c.publish("pickup.accepted", {"pickup_id": pickup, "customer_id": customer,
                                                           "worker_id": WORKER}, id=event)["status"], "accepted")
        f = k.wait_outcome("sendPickupNotification", "dead")
        self.assertEqual(f["outcomes"].get("ok", 0), 0, f)

        mine = self.fake.received()[before:]
        self.assertGreaterEqual(len(mine), 1)
        for r in mine:  # only token requests, each refused for its signature
            self.assertEqual((r["endpoint"], r["accepted"], r["status"], r["error"], r["reason"]),
                             ("token", False, 400, "invalid_grant", "Invalid JWT Signature."), r)
        self.assertEqual(DJANGO.tokens(customer), {token})
        self.assertGreaterEqual(k.stats()["dead_letters"], 1)
        out = k.output()
        self.assertIn("refused the service account", out)
        self.assertNotIn(KEYS["wrong"][0].splitlines()[1], out)  # the key never reaches the log
        self.assert_serving(k)
        self.stop_klynaa(k)

    @staticmethod
    def post(url, body, headers):
        u = urllib.parse.urlsplit(url)
        c = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
        try:
            c.request("POST", u.path, body=body.encode(), headers=headers)
            r = c.getresponse()
            return r.status, json.loads(r.read())
        finally:
            c.close()


# ---------------------------------------------------------------- sns

class SnsTest(ProviderCase):
    @classmethod
    def setUpClass(cls):
        cls.fake = SnsFake(AWS_ACCESS_KEY, AWS_SECRET, AWS_REGION, session_token=AWS_SESSION_TOKEN).start()
        cls.addClassCleanup(cls.fake.stop)

    def start_klynaa(self, secret):
        config = klynaa_config("sns", sns_endpoint=self.fake.url)
        return Klynaa("sns", config, {"AWS_ACCESS_KEY_ID": AWS_ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": secret,
                                      "AWS_REGION": AWS_REGION, "AWS_SESSION_TOKEN": AWS_SESSION_TOKEN})

    def publishes(self, job_id):
        out = []
        for r in self.fake.received():
            gcm = ((r.get("message") or {}).get("GCM") or {})
            if gcm.get("data", {}).get("job_id") == job_id:
                out.append(r)
        return out

    def botocore_client(self, secret, token=AWS_SESSION_TOKEN, access_key=AWS_ACCESS_KEY, region=AWS_REGION):
        """botocore's own SNS client, aimed at the fake; closed after the test."""
        s = botocore.session.Session()
        s.set_credentials(access_key, secret, token)
        client = s.create_client("sns", region_name=region, endpoint_url=self.fake.url,
                                 config=Config(retries={"max_attempts": 0}, connect_timeout=5, read_timeout=10))
        self.addCleanup(client.close)
        return client

    def test_publishes_signed_and_disabled_endpoint_deleted(self):
        customer, other = 9201, 9211
        good = [endpoint_arn("GCM", 92011), endpoint_arn("APNS", 92012)]
        dead = endpoint_arn("GCM", 92013)
        DJANGO.add_token(customer, good[0], "android")
        DJANGO.add_token(customer, good[1], "ios")
        DJANGO.add_token(customer, dead, "android")
        other_good, other_dead = endpoint_arn("GCM", 92111), endpoint_arn("APNS", 92112)
        DJANGO.add_token(other, other_good, "android")
        DJANGO.add_token(other, other_dead, "ios")
        self.fake.add_disabled(dead, other_dead)
        pickup = DJANGO.accepted_pickup(customer)
        before = len(self.fake.received())

        k = self.start_klynaa(AWS_SECRET)
        event = "sns-accepted-%d" % pickup
        with k.client() as c:
            r = c.publish("pickup.accepted", {"pickup_id": pickup, "customer_id": customer, "worker_id": WORKER},
                          id=event)
        self.assertEqual(r["status"], "accepted", r)
        k.wait_outcome("sendPickupNotification", "ok")

        title, body = "Pickup accepted", "A worker accepted your pickup #%d." % pickup
        pubs = self.publishes(event + "#1")
        self.assertEqual(sorted(p["params"]["TargetArn"] for p in pubs), sorted(good + [dead]), pubs)
        for p in pubs:
            self.assertEqual(p["access_key"], AWS_ACCESS_KEY)
            self.assertIn("x-amz-security-token", p["signed_headers"].split(";"))
            self.assertEqual(p["params"]["MessageStructure"], "json")
            m = p["message"]
            self.assertEqual(m["default"], body)
            self.assertEqual(m["GCM"]["notification"], {"title": title, "body": body})
            self.assertEqual(m["GCM"]["data"]["pickup_id"], str(pickup))
            self.assertEqual(m["GCM"]["data"]["notification_type"], "pickup_accepted")
            for apns in ("APNS", "APNS_SANDBOX"):
                self.assertEqual(m[apns]["aps"]["alert"], {"title": title, "body": body})
                self.assertEqual(m[apns]["pickup_id"], str(pickup))
            if p["params"]["TargetArn"] == dead:
                self.assertEqual((p["accepted"], p["status"], p["error"]), (False, 400, "EndpointDisabled"))
            else:
                self.assertEqual((p["accepted"], p["status"]), (True, 200), p)
        # The disabled endpoint's token is gone from Django (its ARN has "/" in it); the others stay.
        self.assertEqual(DJANGO.tokens(customer), set(good))

        with k.client() as c:
            r = c.invoke("sendPickupNotification", {"pickup_id": pickup, "notification_type": "pickup_delivered",
                                                    "user_type": "customer", "user_id": other},
                         id="sns-invoke-%d" % pickup, timeout_ms=30000)
        self.assertEqual(r, {"sent": 1, "failed": 0, "invalid_tokens": 1, "recipients": [other]})
        self.assertEqual(DJANGO.tokens(other), {other_good})

        mine = self.fake.received()[before:]
        self.assertEqual(len(mine), 5)
        self.assertEqual([r for r in mine if not r["accepted"] and r["error"] != "EndpointDisabled"], [])
        self.assert_serving(k)
        self.stop_klynaa(k)

    def test_fake_refuses_wrongly_signed_requests(self):
        arn = endpoint_arn("GCM", 92999)
        message = json.dumps({"default": "hello", "GCM": json.dumps({"data": {"k": "v"}})})
        # botocore's own client, with the right credentials: accepted, and the XML answer parses.
        r = self.botocore_client(AWS_SECRET).publish(TargetArn=arn, Message=message, MessageStructure="json")
        self.assertTrue(r["MessageId"])
        cases = [
            ("a wrong secret", self.botocore_client("not-the-secret"), "SignatureDoesNotMatch", 403),
            ("no session token", self.botocore_client(AWS_SECRET, token=None), "InvalidClientTokenId", 403),
        ]
        cases.append(("another access key", self.botocore_client(AWS_SECRET, access_key="AKIDSOMEONEELSE0000"),
                      "InvalidClientTokenId", 403))
        cases.append(("another region's scope", self.botocore_client(AWS_SECRET, region="us-east-1"),
                      "SignatureDoesNotMatch", 403))
        for name, client, code, status in cases:
            with self.subTest(name):
                with self.assertRaises(ClientError) as cm:
                    client.publish(TargetArn=arn, Message=message, MessageStructure="json")
                err = cm.exception.response
                self.assertEqual((err["Error"]["Code"], err["ResponseMetadata"]["HTTPStatusCode"]), (code, status))
                self.assertEqual(err["Error"]["Type"], "Sender")
                last = self.fake.received()[-1]
                self.assertEqual((last["accepted"], last["error"]), (False, code))

        # A correctly signed request changed after signing (its body) is refused too.
        good = self.botocore_client(AWS_SECRET)
        captured = {}

        def tamper(request, **_):
            captured["sent"] = True
            body = request.body if isinstance(request.body, bytes) else request.body.encode()
            request.body = body.replace(b"hello", b"HELLO")

        good.meta.events.register("before-send.sns.Publish", tamper)
        with self.assertRaises(ClientError) as cm:
            good.publish(TargetArn=arn, Message=message, MessageStructure="json")
        self.assertTrue(captured)
        self.assertEqual(cm.exception.response["Error"]["Code"], "SignatureDoesNotMatch")

        # No Authorization at all.
        c = http.client.HTTPConnection("127.0.0.1", self.fake.port, timeout=10)
        try:
            c.request("POST", "/", body=b"Action=Publish", headers={"Content-Type": "application/x-www-form-urlencoded"})
            resp = c.getresponse()
            text = resp.read().decode()
        finally:
            c.close()
        self.assertEqual(resp.status, 403)
        self.assertIn("<Code>MissingAuthenticationToken</Code>", text)

    def test_klynaa_with_wrong_secret_is_refused_and_the_job_dies(self):
        customer = 9202
        token = endpoint_arn("GCM", 92021)
        DJANGO.add_token(customer, token, "android")
        self.fake.add_disabled(token)  # were it accepted, it would be deleted: it must not be
        pickup = DJANGO.accepted_pickup(customer)
        before = len(self.fake.received())

        k = self.start_klynaa("not-the-" + AWS_SECRET)
        event = "sns-wrong-secret-%d" % pickup
        with k.client() as c:
            self.assertEqual(c.publish("pickup.accepted", {"pickup_id": pickup, "customer_id": customer,
                                                           "worker_id": WORKER}, id=event)["status"], "accepted")
        f = k.wait_outcome("sendPickupNotification", "dead")
        self.assertEqual(f["outcomes"].get("ok", 0), 0, f)

        mine = self.fake.received()[before:]
        self.assertEqual(len(mine), 1, mine)  # 403 is permanent: not retried
        self.assertEqual((mine[0]["accepted"], mine[0]["status"], mine[0]["error"]),
                         (False, 403, "SignatureDoesNotMatch"))
        self.assertEqual(mine[0]["access_key"], AWS_ACCESS_KEY)
        self.assertEqual(DJANGO.tokens(customer), {token})
        self.assertGreaterEqual(k.stats()["dead_letters"], 1)
        out = k.output()
        self.assertIn("SignatureDoesNotMatch", out)
        self.assertNotIn(AWS_SECRET, out)
        self.assert_serving(k)
        self.stop_klynaa(k)


class FakesRunStandaloneTest(unittest.TestCase):
    """Both fakes also run as processes (READY line, /_received)."""

    def run_fake(self, args):
        p = subprocess.Popen(pdeathsig() + [PY] + args, env=clean_env(), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
        try:
            line = p.stdout.readline().decode()
            if not line.startswith("READY http://127.0.0.1:"):
                p.kill()
                self.fail("no READY line: %r\n%s" % (line, p.stderr.read().decode()))
            url = line.split()[1]
            u = urllib.parse.urlsplit(url)
            c = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
            try:
                c.request("GET", "/_received")
                r = c.getresponse()
                self.assertEqual((r.status, json.loads(r.read())), (200, {"requests": []}))
            finally:
                c.close()
        finally:
            p.terminate()
            try:
                self.assertEqual(p.wait(10), 0)
            finally:
                if p.poll() is None:
                    p.kill()
                    p.wait(5)
                p.stdout.close()
                p.stderr.close()

    def test_fcm_fake(self):
        path = os.path.join(TMP, "standalone-sa.json")
        with open(path, "w") as f:
            json.dump({"type": "service_account", "project_id": PROJECT, "private_key": KEYS["good"][0],
                       "client_email": CLIENT_EMAIL}, f)
        self.run_fake([os.path.join(ROOT, "tests", "fakes", "fcm_fake.py"), "--service-account", path])

    def test_sns_fake(self):
        self.run_fake([os.path.join(ROOT, "tests", "fakes", "sns_fake.py"), "--access-key", AWS_ACCESS_KEY,
                       "--secret-key", AWS_SECRET, "--region", AWS_REGION])


if __name__ == "__main__":
    if "--klynaa" in sys.argv:
        i = sys.argv.index("--klynaa")
        KLYNAA = os.path.abspath(sys.argv[i + 1])
        del sys.argv[i:i + 2]
    signal.signal(signal.SIGTERM, on_sigterm)
    unittest.main(verbosity=2)

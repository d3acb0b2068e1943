#!/usr/bin/python3
"""The `firebase` and `sns` push providers end to end, against local fakes that
verify what they receive with independent libraries (docs/events-and-functions.md,
"Push providers" and "Failures and retries"; docs/configuration.md, [notifications]).

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
  the job fails permanently (dead letter: a 4xx that is not 408/429 is permanent,
  docs/events-and-functions.md, "Failures and retries"),
  no token is deleted, and klynaa keeps serving and stops cleanly (exit 0, no
  sanitizer report).
"""
import http.client
import json
import os
import signal
import subprocess
import sys
import time
import unittest
import urllib.parse
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import providers_support as support  # noqa: E402  (puts clients/python and tests/fakes on sys.path)
import botocore.session  # noqa: E402
import jwt  # noqa: E402
from botocore.config import Config  # noqa: E402
from botocore.exceptions import ClientError  # noqa: E402
from fcm_fake import FCM_SCOPE, FcmFake  # noqa: E402
from providers_support import (AWS_ACCESS_KEY, AWS_REGION, AWS_SECRET, AWS_SESSION_TOKEN,  # noqa: E402
                               CLIENT_EMAIL, PROJECT, PY, ROOT, WORKER, Klynaa, clean_env, endpoint_arn,
                               klynaa_config, pdeathsig)
from sns_fake import SnsFake  # noqa: E402

# The module fixture: the reference Django app and the RSA keys, shared by every test.
setUpModule = support.set_up_module
tearDownModule = support.tear_down_module

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
        private, public = support.KEYS["good"]
        cls.fake = FcmFake(public, CLIENT_EMAIL, PROJECT).start()
        cls.addClassCleanup(cls.fake.stop)

    def service_account(self, key):
        path = os.path.join(support.TMP, "service-account-%s.json" % key)
        with open(path, "w") as f:
            json.dump({"type": "service_account", "project_id": PROJECT, "private_key_id": "fake-" + key,
                       "private_key": support.KEYS[key][0], "client_email": CLIENT_EMAIL,
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
        support.DJANGO.add_token(customer, good[0], "android")
        support.DJANGO.add_token(customer, good[1], "ios")
        support.DJANGO.add_token(customer, dead, "android")
        other_good, other_dead = "fcm-9111-ok-%s" % uuid.uuid4().hex, "fcm-9111-dead-%s" % uuid.uuid4().hex
        support.DJANGO.add_token(other, other_good, "android")
        support.DJANGO.add_token(other, other_dead, "ios")
        self.fake.add_unregistered(dead, other_dead)
        pickup = support.DJANGO.accepted_pickup(customer)
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
        self.assertEqual(support.DJANGO.tokens(customer), set(good))

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
        self.assertEqual(support.DJANGO.tokens(other), {other_good})

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
            ("signed with another key", jwt.encode(claims, support.KEYS["wrong"][0], algorithm="RS256"),
             "invalid_grant", "Invalid JWT Signature."),
            ("another audience", jwt.encode(dict(claims, aud="https://oauth2.googleapis.com/token"),
                                            support.KEYS["good"][0], algorithm="RS256"), "invalid_grant", None),
            ("another issuer", jwt.encode(dict(claims, iss="someone@else.iam.gserviceaccount.com"),
                                          support.KEYS["good"][0], algorithm="RS256"), "invalid_grant", None),
            ("expired", jwt.encode(dict(claims, iat=now - 7200, exp=now - 3600), support.KEYS["good"][0], algorithm="RS256"),
             "invalid_grant", None),
            ("a two-hour lifetime", jwt.encode(dict(claims, exp=now + 7200), support.KEYS["good"][0], algorithm="RS256"),
             "invalid_grant", None),
            ("another scope", jwt.encode(dict(claims, scope="https://www.googleapis.com/auth/devstorage.read_only"),
                                         support.KEYS["good"][0], algorithm="RS256"), "invalid_scope", None),
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
        status, body = token_request(jwt.encode(claims, support.KEYS["good"][0], algorithm="RS256"))
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
        support.DJANGO.add_token(customer, token, "android")
        self.fake.add_unregistered(token)  # were it sent, it would be deleted: it must not be
        pickup = support.DJANGO.accepted_pickup(customer)
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
        self.assertEqual(support.DJANGO.tokens(customer), {token})
        self.assertGreaterEqual(k.stats()["dead_letters"], 1)
        out = k.output()
        self.assertIn("refused the service account", out)
        self.assertNotIn(support.KEYS["wrong"][0].splitlines()[1], out)  # the key never reaches the log
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
        support.DJANGO.add_token(customer, good[0], "android")
        support.DJANGO.add_token(customer, good[1], "ios")
        support.DJANGO.add_token(customer, dead, "android")
        other_good, other_dead = endpoint_arn("GCM", 92111), endpoint_arn("APNS", 92112)
        support.DJANGO.add_token(other, other_good, "android")
        support.DJANGO.add_token(other, other_dead, "ios")
        self.fake.add_disabled(dead, other_dead)
        pickup = support.DJANGO.accepted_pickup(customer)
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
        self.assertEqual(support.DJANGO.tokens(customer), set(good))

        with k.client() as c:
            r = c.invoke("sendPickupNotification", {"pickup_id": pickup, "notification_type": "pickup_delivered",
                                                    "user_type": "customer", "user_id": other},
                         id="sns-invoke-%d" % pickup, timeout_ms=30000)
        self.assertEqual(r, {"sent": 1, "failed": 0, "invalid_tokens": 1, "recipients": [other]})
        self.assertEqual(support.DJANGO.tokens(other), {other_good})

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
        support.DJANGO.add_token(customer, token, "android")
        self.fake.add_disabled(token)  # were it accepted, it would be deleted: it must not be
        pickup = support.DJANGO.accepted_pickup(customer)
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
        self.assertEqual(support.DJANGO.tokens(customer), {token})
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
        path = os.path.join(support.TMP, "standalone-sa.json")
        with open(path, "w") as f:
            json.dump({"type": "service_account", "project_id": PROJECT, "private_key": support.KEYS["good"][0],
                       "client_email": CLIENT_EMAIL}, f)
        self.run_fake([os.path.join(ROOT, "tests", "fakes", "fcm_fake.py"), "--service-account", path])

    def test_sns_fake(self):
        self.run_fake([os.path.join(ROOT, "tests", "fakes", "sns_fake.py"), "--access-key", AWS_ACCESS_KEY,
                       "--secret-key", AWS_SECRET, "--region", AWS_REGION])


if __name__ == "__main__":
    if "--klynaa" in sys.argv:
        i = sys.argv.index("--klynaa")
        support.KLYNAA = os.path.abspath(sys.argv[i + 1])
        del sys.argv[i:i + 2]
    signal.signal(signal.SIGTERM, support.on_sigterm)
    unittest.main(verbosity=2)

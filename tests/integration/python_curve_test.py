#!/usr/bin/python3
"""The Python client with CURVE (clients/python/klynaa_client.py, docs/security.md).

    /usr/bin/python3 tests/integration/python_curve_test.py [--klynaa PATH] [unittest args]

PATH defaults to $KLYNAA_BIN, else build/klynaa.  Needs Debian's python3-zmq
(with CURVE: libzmq built with libsodium) and python3-msgpack; only 127.0.0.1.

Generates keys with `klynaa keygen`, starts `klynaa broker` with
ingress.curve = true and an allow list, and checks: a client with a listed key
(given as key files, or as Z85 strings) publishes and gets `accepted`; a client
with the server's key but an unlisted one, or without CURVE, gets
KlynaaUnavailable; the module's CLI reads the keys from the environment;
load_curve_key_file reads keygen's files and pyzmq's own, and rejects bad
ones; bad parameters raise ValueError at construction.  Every process started
is killed and every temp dir removed, also on failure.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import unittest
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "clients", "python"))

import zmq  # noqa: E402
import zmq.auth  # noqa: E402

from klynaa_client import Client, KlynaaUnavailable, load_curve_key_file  # noqa: E402

sys.path.insert(0, os.path.join(ROOT, "tests", "support"))
from testutil import die_with_parent, wait_for  # noqa: E402

PY = "/usr/bin/python3"
KLYNAA = os.environ.get("KLYNAA_BIN", os.path.join(ROOT, "build", "klynaa"))
RUN = uuid.uuid4().hex[:8]
SANITIZER_MARKS = ("AddressSanitizer", "runtime error:", "LeakSanitizer")
LOCATION = {"worker_id": 1, "lat": 6.5, "lng": 3.4, "available": True}


def keygen(directory, name):
    out = subprocess.run([KLYNAA, "keygen", "--out", directory, "--name", name], capture_output=True, text=True,
                         timeout=60)
    if out.returncode != 0:
        raise AssertionError("keygen failed: %s %s" % (out.stdout, out.stderr))
    return out.stdout.split()[0]  # the allow-list line: KEY NAME


class CurveClientTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        if not zmq.has("curve"):
            raise AssertionError("this pyzmq/libzmq has no CURVE: install Debian's python3-zmq (libsodium)")
        cls.tmp = tempfile.mkdtemp(prefix="klynaa-pycurve-")
        cls.keys = os.path.join(cls.tmp, "keys")
        cls.public = {n: keygen(cls.keys, n) for n in ("broker", "django", "rogue")}
        cls.allow = os.path.join(cls.tmp, "clients.allow")
        with open(cls.allow, "w") as f:
            f.write("# Django\n%s django\n" % cls.public["django"])
        data = os.path.join(cls.tmp, "data")
        env = {k: v for k, v in os.environ.items() if not k.startswith("KLYNAA_")}
        env.update({"KLYNAA_ADMIN_BIND": "127.0.0.1:0", "KLYNAA_SHUTDOWN_GRACE_SECONDS": "5",
                    "KLYNAA_INGRESS_CURVE": "true",
                    "KLYNAA_INGRESS_CURVE_SECRET_FILE": cls.key("broker"),
                    "KLYNAA_INGRESS_CURVE_ALLOW_FILE": cls.allow})
        cls.log_path = os.path.join(cls.tmp, "broker.log")
        with open(cls.log_path, "ab") as log:
            cls.proc = subprocess.Popen([KLYNAA, "broker", "--data-dir", data, "--ingress", "tcp://127.0.0.1:*",
                                         "--cluster", "tcp://127.0.0.1:*"], env=env, stdin=subprocess.DEVNULL,
                                        stdout=log, stderr=subprocess.STDOUT, preexec_fn=die_with_parent)
        info = os.path.join(data, "broker.json")

        def up():
            try:
                with open(info) as f:
                    j = json.load(f)
                return j if j.get("pid") == cls.proc.pid else None
            except (OSError, ValueError):
                return None
        if not wait_for(lambda: up() is not None, 30):
            cls.tearDownClass()
            raise AssertionError("broker did not start:\n" + cls.broker_log())
        cls.ingress = up()["ingress"]

    @classmethod
    def tearDownClass(cls):
        proc = getattr(cls, "proc", None)
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        log = cls.broker_log() if hasattr(cls, "log_path") else ""
        shutil.rmtree(cls.tmp, ignore_errors=True)
        for mark in SANITIZER_MARKS:
            if mark in log:
                raise AssertionError("sanitizer report in the broker log:\n" + log[-4000:])

    @classmethod
    def key(cls, name, ext="key"):
        return os.path.join(cls.keys, "%s.%s" % (name, ext))

    @classmethod
    def broker_log(cls):
        try:
            with open(cls.log_path, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def test_listed_client_with_key_files_publishes(self):
        with Client(self.ingress, curve_server_key=self.key("broker", "pub"),
                    curve_key_file=self.key("django")) as c:
            self.assertEqual(c.ping()["status"], "pong")
            r = c.publish("worker.location", LOCATION, id="pycurve-files-" + RUN)
            self.assertEqual(r["status"], "accepted")
            self.assertEqual(c.publish("worker.location", LOCATION, id="pycurve-files-" + RUN)["status"],
                             "duplicate")

    def test_listed_client_with_z85_strings_publishes(self):
        public, secret = load_curve_key_file(self.key("django"))
        with Client(self.ingress, curve_server_key=self.public["broker"],
                    curve_secret_key=secret.decode()) as c:  # the public key is derived
            r = c.publish("worker.location", LOCATION, id="pycurve-z85-" + RUN)
            self.assertEqual(r["status"], "accepted")
        with Client(self.ingress, curve_server_key=self.public["broker"].encode(), curve_public_key=public,
                    curve_secret_key=secret) as c:
            self.assertEqual(c.ping()["status"], "pong")

    def test_unlisted_key_gets_no_reply_and_the_broker_logs_it(self):
        with Client(self.ingress, curve_server_key=self.key("broker", "pub"), curve_key_file=self.key("rogue"),
                    timeout_s=1.5, retries=0) as c:
            with self.assertRaises(KlynaaUnavailable):
                c.publish("worker.location", LOCATION, id="pycurve-rogue-" + RUN)
        prefix = self.public["rogue"][:8]
        self.assertTrue(wait_for(lambda: prefix in self.broker_log(), 5), self.broker_log()[-3000:])
        # It never arrived: the id is new to the broker.
        with Client(self.ingress, curve_server_key=self.key("broker", "pub"),
                    curve_key_file=self.key("django")) as c:
            self.assertEqual(c.publish("worker.location", LOCATION, id="pycurve-rogue-" + RUN)["status"],
                             "accepted")

    def test_plain_client_gets_no_reply(self):
        with Client(self.ingress, timeout_s=1.5, retries=0) as c:
            with self.assertRaises(KlynaaUnavailable):
                c.ping()

    def test_module_cli_reads_the_keys_from_the_environment(self):
        env = dict(os.environ, KLYNAA_INGRESS=self.ingress,
                   KLYNAA_INGRESS_CURVE_SERVER_PUBLIC_FILE=self.key("broker", "pub"),
                   KLYNAA_INGRESS_CURVE_CLIENT_SECRET_FILE=self.key("django"))
        out = subprocess.run([PY, os.path.join(ROOT, "clients", "python", "klynaa_client.py"), "publish",
                              "worker.location", json.dumps(LOCATION), "pycurve-cli-" + RUN],
                             env=env, capture_output=True, text=True, timeout=60)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertEqual(json.loads(out.stdout)["status"], "accepted")
        env["KLYNAA_INGRESS_CURVE_CLIENT_SECRET_FILE"] = self.key("django", "pub")
        out = subprocess.run([PY, os.path.join(ROOT, "clients", "python", "klynaa_client.py"), "ping"],
                             env=env, capture_output=True, text=True, timeout=60)
        self.assertEqual(out.returncode, 2)
        self.assertIn("holds no secret key", out.stderr)

    def test_load_curve_key_file_reads_keygen_and_pyzmq_files(self):
        public, secret = load_curve_key_file(self.key("django"))
        self.assertEqual(public.decode(), self.public["django"])
        self.assertEqual(zmq.curve_public(secret), public)
        self.assertEqual(load_curve_key_file(self.key("django", "pub")), (public, None))
        # pyzmq reads ours ...
        self.assertEqual(zmq.auth.load_certificate(self.key("django")), (public, secret))
        # ... and we read pyzmq's.
        d = tempfile.mkdtemp(dir=self.tmp)
        pub_file, secret_file = zmq.auth.create_certificates(d, "py")
        p, s = load_curve_key_file(secret_file)
        self.assertEqual((p, s), zmq.auth.load_certificate(secret_file))
        self.assertEqual(load_curve_key_file(pub_file), (p, None))

    def test_bad_keys_raise_value_error_naming_the_problem(self):
        d = tempfile.mkdtemp(dir=self.tmp)
        bad = os.path.join(d, "bad.key")
        with open(bad, "w") as f:
            f.write('curve\n    public-key = "short"\n')
        with self.assertRaisesRegex(ValueError, "line 2.*public-key"):
            load_curve_key_file(bad)
        other_pub, other_secret = zmq.curve_keypair()
        mixed = os.path.join(d, "mixed.key")
        with open(mixed, "w") as f:
            f.write('public-key = "%s"\nsecret-key = "%s"\n' % (self.public["django"], other_secret.decode()))
        with self.assertRaisesRegex(ValueError, "does not belong"):
            load_curve_key_file(mixed)
        with self.assertRaisesRegex(ValueError, "holds no secret key"):
            Client(self.ingress, curve_server_key=self.key("broker", "pub"), curve_key_file=self.key("django", "pub"))
        with self.assertRaisesRegex(ValueError, "curve_server_key"):
            Client(self.ingress, curve_key_file=self.key("django"))
        with self.assertRaisesRegex(ValueError, "curve_server_key"):
            Client(self.ingress, curve_server_key=os.path.join(d, "missing.pub"), curve_key_file=self.key("django"))
        with self.assertRaisesRegex(ValueError, "does not belong"):
            Client(self.ingress, curve_server_key=self.public["broker"], curve_public_key=self.public["django"],
                   curve_secret_key=other_secret)
        with self.assertRaisesRegex(ValueError, "not both"):
            Client(self.ingress, curve_server_key=self.public["broker"], curve_key_file=self.key("django"),
                   curve_secret_key=other_secret)


if __name__ == "__main__":
    args = sys.argv[1:]
    if "--klynaa" in args:
        i = args.index("--klynaa")
        KLYNAA = os.path.abspath(args[i + 1])
        del args[i:i + 2]
    unittest.main(argv=[sys.argv[0]] + args, verbosity=2)

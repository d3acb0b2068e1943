#!/usr/bin/python3
"""The Python client as an installed package (clients/python/pyproject.toml, docs/django.md).

    /usr/bin/python3 tests/integration/python_package_test.py [--klynaa PATH] [unittest args]

PATH defaults to $KLYNAA_BIN, else build/klynaa.  Needs Debian's python3-venv,
python3-setuptools, python3-wheel, python3-zmq and python3-msgpack
(scripts/setup.sh); no network: only 127.0.0.1 is used.

Checks that the version in clients/python/pyproject.toml is the one in the top
CMakeLists.txt.  Then does what docs/django.md tells a Django project to do:

    /usr/bin/python3 -m venv --system-site-packages VENV
    VENV/bin/pip install --no-build-isolation --no-index clients/python

in a temp dir, with pip's config files and PIP_* variables ignored and every
HTTP(S) proxy pointing at a closed port, so an attempt to download anything
fails the install.  With VENV/bin/python -I, run from the temp dir (the source
tree is not on sys.path), it checks that klynaa_client is imported from the
venv's site-packages with its metadata (version, pyzmq and msgpack), and,
against a real `klynaa run` on ephemeral ports, that a publish through the
installed client is accepted and the same id again is a duplicate, and that
`python -m klynaa_client ping` answers.  The broker is stopped and the temp
dir removed, also on failure; a build/ or .egg-info this run leaves in
clients/python is removed too.
"""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import tomllib
import unittest
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
CLIENT_DIR = os.path.join(ROOT, "clients", "python")
sys.path.insert(0, os.path.join(ROOT, "tests", "support"))
from testutil import die_with_parent, free_port, wait_for  # noqa: E402

PY = "/usr/bin/python3"
KLYNAA = os.environ.get("KLYNAA_BIN", os.path.join(ROOT, "build", "klynaa"))
RUN = uuid.uuid4().hex[:8]
SANITIZER_MARKS = ("AddressSanitizer", "runtime error:", "LeakSanitizer")
LOCATION = {"worker_id": 1, "lat": 6.5, "lng": 3.4, "available": True}
DEAD_PROXY = "http://127.0.0.1:9"  # discard port: nothing listens, a download fails at once


def cmake_version():
    with open(os.path.join(ROOT, "CMakeLists.txt")) as f:
        m = re.search(r"project\(\s*klynaa\s+VERSION\s+([0-9][0-9.]*)", f.read())
    if not m:
        raise AssertionError("no project(klynaa VERSION x.y.z) in CMakeLists.txt")
    return m.group(1)


def pyproject():
    with open(os.path.join(CLIENT_DIR, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)


class VersionTest(unittest.TestCase):
    def test_pyproject_version_is_the_cmake_version(self):
        self.assertEqual(pyproject()["project"]["version"], cmake_version(),
                         "clients/python/pyproject.toml and CMakeLists.txt disagree on the version")

    def test_pyproject_declares_the_module_and_its_dependencies(self):
        p = pyproject()
        self.assertEqual(p["project"]["name"], "klynaa-client")
        self.assertEqual(p["tool"]["setuptools"]["py-modules"],
                         ["klynaa_client", "klynaa_client_base", "klynaa_client_core", "klynaa_client_curve"])
        deps = [re.split(r"[<>=!~ ;\[]", d, maxsplit=1)[0].lower() for d in p["project"]["dependencies"]]
        self.assertEqual(sorted(deps), ["msgpack", "pyzmq"])
        self.assertEqual(p["build-system"]["build-backend"], "setuptools.build_meta")


class InstalledPackageTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="klynaa-pypkg-")
        cls.proc = None
        cls.log_path = os.path.join(cls.tmp, "klynaa.log")
        cls.leftovers = [p for p in (os.path.join(CLIENT_DIR, "build"),
                                     os.path.join(CLIENT_DIR, "klynaa_client.egg-info"))
                         if not os.path.exists(p)]
        try:
            cls.install()
            cls.start_broker()
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def clean_env(cls, **extra):
        """The environment without PYTHON*, PIP_*, KLYNAA_*, DJANGO_* or proxy settings, plus extra."""
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("PYTHON", "PIP_", "KLYNAA_", "DJANGO_", "VIRTUAL_ENV"))
               and k.lower() not in ("http_proxy", "https_proxy", "all_proxy", "no_proxy")}
        env.update(extra)
        return env

    @classmethod
    def install(cls):
        cls.venv = os.path.join(cls.tmp, "venv")
        cls.python = os.path.join(cls.venv, "bin", "python")
        out = subprocess.run([PY, "-m", "venv", "--system-site-packages", cls.venv], env=cls.clean_env(),
                             cwd=cls.tmp, capture_output=True, text=True, timeout=180)
        if out.returncode != 0:
            raise AssertionError("python3 -m venv failed (python3-venv installed?):\n%s%s" % (out.stdout, out.stderr))
        # setuptools' build/ and .egg-info go to the temp dir, not clients/python
        # (DIST_EXTRA_CONFIG: an extra distutils config file).
        extra_cfg = os.path.join(cls.tmp, "setuptools.cfg")
        with open(extra_cfg, "w") as f:
            f.write("[build]\nbuild_base = %s\n[egg_info]\negg_base = %s\n"
                    % (os.path.join(cls.tmp, "build"), cls.tmp))
        env = cls.clean_env(PIP_CONFIG_FILE=os.devnull, PIP_CACHE_DIR=os.path.join(cls.tmp, "pip-cache"),
                            PIP_NO_INPUT="1", DIST_EXTRA_CONFIG=extra_cfg,
                            http_proxy=DEAD_PROXY, https_proxy=DEAD_PROXY,
                            HTTP_PROXY=DEAD_PROXY, HTTPS_PROXY=DEAD_PROXY)
        out = subprocess.run([os.path.join(cls.venv, "bin", "pip"), "install", "--no-build-isolation", "--no-index",
                              "./clients/python"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
        cls.pip_output = out.stdout + out.stderr
        if out.returncode != 0:
            raise AssertionError("pip install failed:\n" + cls.pip_output)
        for p in cls.leftovers:
            shutil.rmtree(p, ignore_errors=True)

    @classmethod
    def start_broker(cls):
        if not wait_for(lambda: os.access(KLYNAA, os.X_OK), 120, 0.5):
            raise AssertionError("%s is not executable; build it first or pass --klynaa" % KLYNAA)
        data = os.path.join(cls.tmp, "data")
        # Nothing listens on django.url: the jobs of the events published here
        # fail and are retried, which does not change the ingress replies.
        env = cls.clean_env(KLYNAA_ADMIN_BIND="127.0.0.1:0", KLYNAA_SHUTDOWN_GRACE_SECONDS="5",
                            DJANGO_API_URL="http://127.0.0.1:%d" % free_port(), DJANGO_API_KEY="pypkg-test-key")
        with open(cls.log_path, "ab") as log:
            cls.proc = subprocess.Popen([KLYNAA, "run", "--data-dir", data, "--ingress", "tcp://127.0.0.1:*"],
                                        env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                        preexec_fn=die_with_parent)
        info = os.path.join(data, "broker.json")

        def up():
            if cls.proc.poll() is not None:
                return True
            try:
                with open(info) as f:
                    j = json.load(f)
            except (OSError, ValueError):
                return False
            if j.get("pid") != cls.proc.pid:
                return False
            cls.ingress = j["ingress"]
            return True
        if not wait_for(up, 60) or cls.proc.poll() is not None:
            raise AssertionError("klynaa run did not start:\n" + cls.broker_log()[-3000:])

    @classmethod
    def tearDownClass(cls):
        if cls.proc is not None and cls.proc.poll() is None:
            cls.proc.send_signal(signal.SIGTERM)
            try:
                cls.proc.wait(15)
            except subprocess.TimeoutExpired:
                cls.proc.kill()
                cls.proc.wait(5)
        log = cls.broker_log()
        shutil.rmtree(cls.tmp, ignore_errors=True)
        for p in cls.leftovers:
            shutil.rmtree(p, ignore_errors=True)
        if any(m in log for m in SANITIZER_MARKS):
            raise AssertionError("sanitizer report in the broker log:\n" + log[-4000:])

    @classmethod
    def broker_log(cls):
        try:
            with open(cls.log_path, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def venv_python(self, code, *args, env=None):
        """VENV/bin/python -I (no PYTHON* variables, no script dir on sys.path), run in the temp dir."""
        out = subprocess.run([self.python, "-I", "-c", textwrap.dedent(code)] + list(args),
                             env=self.clean_env(**(env or {})), cwd=self.tmp, capture_output=True, text=True,
                             timeout=120)
        self.assertEqual(out.returncode, 0, out.stdout + out.stderr)
        return out.stdout

    def test_1_imported_from_the_venv_with_its_metadata(self):
        self.assertIn("Successfully installed klynaa-client-" + cmake_version(), self.pip_output)
        info = json.loads(self.venv_python("""
            import importlib.metadata, json, sys, sysconfig
            import klynaa_client
            print(json.dumps({"file": klynaa_client.__file__, "purelib": sysconfig.get_paths()["purelib"],
                              "prefix": sys.prefix, "version": importlib.metadata.version("klynaa-client"),
                              "requires": importlib.metadata.requires("klynaa-client")}))
        """))
        purelib = os.path.realpath(info["purelib"])
        self.assertEqual(os.path.realpath(info["prefix"]), os.path.realpath(self.venv))
        self.assertTrue(purelib.startswith(os.path.realpath(self.venv) + os.sep), info)
        self.assertEqual(os.path.realpath(info["file"]), os.path.join(purelib, "klynaa_client.py"))
        self.assertEqual(info["version"], cmake_version())
        names = sorted(re.split(r"[<>=!~ ;(\[]", r, maxsplit=1)[0].lower() for r in info["requires"]
                       if "extra ==" not in r)
        self.assertEqual(names, ["msgpack", "pyzmq"])

    def test_2_publish_through_the_installed_client(self):
        eid = "pypkg-%s" % RUN
        replies = json.loads(self.venv_python("""
            import json, sys
            import klynaa_client
            from klynaa_client import Client
            import klynaa_client_base, klynaa_client_core, klynaa_client_curve
            for m in (klynaa_client, klynaa_client_base, klynaa_client_core, klynaa_client_curve):
                assert "/clients/python/" not in m.__file__, m.__file__
            ingress, eid, data = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
            with Client(ingress, timeout_s=10) as c:
                first = c.publish("worker.location", data, id=eid)
                second = c.publish("worker.location", data, id=eid)
            print(json.dumps([first, second]))
        """, self.ingress, eid, json.dumps(LOCATION)))
        first, second = replies
        self.assertEqual((first["v"], first["id"], first["status"]), (1, eid, "accepted"), first)
        self.assertEqual((second["id"], second["status"]), (eid, "duplicate"), second)
        self.assertEqual(second["jobs"], first["jobs"])

    def test_3_module_cli_from_the_venv(self):
        out = subprocess.run([self.python, "-I", "-m", "klynaa_client", "ping"], cwd=self.tmp,
                             env=self.clean_env(KLYNAA_INGRESS=self.ingress), capture_output=True, text=True,
                             timeout=60)
        self.assertEqual(out.returncode, 0, out.stdout + out.stderr)
        self.assertEqual(json.loads(out.stdout)["status"], "pong")


if __name__ == "__main__":
    args = sys.argv[1:]
    if "--klynaa" in args:
        i = args.index("--klynaa")
        KLYNAA = os.path.abspath(args[i + 1])
        del args[i:i + 2]
    unittest.main(argv=[sys.argv[0]] + args, verbosity=2)

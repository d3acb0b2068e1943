#!/usr/bin/python3
"""The Release tree installs and packages as docs/deployment.md ("Installing")
says: `cmake --install` into a scratch prefix, `cpack -G DEB` into a scratch
folder, the .deb's contents, Depends and conffiles, lintian, the binary run
from the extracted package, and a real install, reinstall and purge with dpkg.

    package_test.py --release-dir build [--source .]

The Release tree must be built first (scripts/build.sh release; scripts/test.sh
does it). The dpkg part needs root (CI runs as root) and refuses to touch a
klynaa-jobs package that was installed before the test. Needs Debian's
python3, dpkg-dev (dpkg-shlibdeps) and lintian.
"""
import argparse
import glob
import gzip
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "support"))
from testutil import free_port  # noqa: E402

ARGS = None
TMP = None
DEB = None
PACKAGE = "klynaa-jobs"


def run(cmd, timeout=300, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)


def project_version():
    with open(os.path.join(ARGS.source, "CMakeLists.txt")) as f:
        return re.search(r"project\(klynaa VERSION (\d+\.\d+\.\d+)", f.read()).group(1)


def release_binary():
    return os.path.join(ARGS.release_dir, "klynaa")


def setUpModule():
    global TMP, DEB
    TMP = tempfile.mkdtemp(prefix="klynaa-package-")
    missing = [p for p in (release_binary(), os.path.join(ARGS.release_dir, "CPackConfig.cmake"))
               if not os.path.exists(p)]
    if missing:
        raise RuntimeError("%s missing: build the Release tree first (bash scripts/build.sh release)"
                           % ", ".join(missing))
    # One package for every test of this file.
    out = os.path.join(TMP, "pkg")
    r = run(["cpack", "-G", "DEB", "-B", out, "--config",
             os.path.join(ARGS.release_dir, "CPackConfig.cmake")], timeout=600)
    if r.returncode != 0:
        raise RuntimeError("cpack failed:\n" + r.stdout + r.stderr)
    debs = glob.glob(os.path.join(out, "*.deb"))
    if len(debs) != 1:
        raise RuntimeError("cpack made %r, not one .deb:\n%s" % (debs, r.stdout))
    DEB = debs[0]


def tearDownModule():
    shutil.rmtree(TMP, ignore_errors=True)


class ReleaseTree(unittest.TestCase):
    def test_the_release_binary_has_no_sanitizer(self):
        r = run(["ldd", release_binary()])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertNotRegex(r.stdout, r"libasan|libubsan|libtsan")
        r = run([release_binary(), "--version"])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertRegex(r.stdout, r"^klynaa %s( \(commit [0-9a-f]{12}\))?\n$" % re.escape(project_version()))


class CmakeInstall(unittest.TestCase):
    def test_install_into_a_scratch_prefix(self):
        prefix = os.path.join(TMP, "prefix")
        r = run(["cmake", "--install", ARGS.release_dir, "--prefix", prefix])
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        exe = os.path.join(prefix, "bin", "klynaa")
        self.assertTrue(os.access(exe, os.X_OK))
        self.assertEqual(run([exe, "--version"]).stdout, run([release_binary(), "--version"]).stdout)
        # the example config is the binary's own
        with open(os.path.join(prefix, "etc", "klynaa", "klynaa.toml")) as f:
            self.assertEqual(f.read(), run([exe, "config", "--example"]).stdout)
        # the units name this prefix's binary and config
        for unit in ("klynaa-broker.service", "klynaa-node@.service"):
            with open(os.path.join(prefix, "lib", "systemd", "system", unit)) as f:
                text = f.read()
            self.assertIn("ExecStart=%s " % exe, text)
            self.assertIn("--config %s/etc/klynaa/klynaa.toml" % prefix, text)
            self.assertNotIn("/usr/bin/klynaa", text)
        docs = os.path.join(prefix, "share", "doc", PACKAGE)
        for name in ("README.md", "deployment.md", "configuration.md", "klynaa.env.example", "copyright",
                     "klynaa.toml.example"):
            self.assertTrue(os.path.isfile(os.path.join(docs, name)), name)
        # installing again keeps an admin's config
        config = os.path.join(prefix, "etc", "klynaa", "klynaa.toml")
        with open(config, "a") as f:
            f.write("\n# edited by the admin\n")
        r = run(["cmake", "--install", ARGS.release_dir, "--prefix", prefix])
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        with open(config) as f:
            self.assertIn("# edited by the admin", f.read())

    def test_a_relative_prefix_is_refused_with_a_message(self):
        r = run(["cmake", "--install", ARGS.release_dir, "--prefix", "relative/dir"], cwd=TMP)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("is not an absolute path", r.stdout + r.stderr)

    def test_an_unwritable_prefix_fails_naming_it(self):
        r = run(["cmake", "--install", ARGS.release_dir, "--prefix", "/proc/klynaa-nowhere"])
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("/proc/klynaa-nowhere", r.stdout + r.stderr)


class Package(unittest.TestCase):
    def test_file_name(self):
        arch = run(["dpkg", "--print-architecture"]).stdout.strip()
        self.assertEqual(os.path.basename(DEB), "%s_%s_%s.deb" % (PACKAGE, project_version(), arch))

    def test_contents(self):
        r = run(["dpkg-deb", "-c", DEB])
        self.assertEqual(r.returncode, 0, r.stderr)
        paths = {line.split()[-1] for line in r.stdout.splitlines()}
        for p in ("./usr/bin/klynaa", "./lib/systemd/system/klynaa-broker.service",
                  "./lib/systemd/system/klynaa-node@.service", "./etc/klynaa/klynaa.toml",
                  "./usr/share/doc/klynaa-jobs/copyright", "./usr/share/doc/klynaa-jobs/changelog.gz",
                  "./usr/share/doc/klynaa-jobs/deployment.md"):
            self.assertIn(p, paths)
        self.assertFalse([p for p in paths if "bench" in p or "/tests/" in p], "only the service ships")

    def test_depends_are_runtime_packages(self):
        depends = run(["dpkg-deb", "-f", DEB, "Depends"]).stdout.strip()
        names = [d.strip().split()[0] for d in depends.split(",")]
        for lib in ("libcaf-core", "libzmq5", "libsqlite3-0", "libcurl4", "libpq5", "libjemalloc2",
                    "adduser"):
            self.assertTrue(any(n.startswith(lib) for n in names), "%s not in Depends: %s" % (lib, depends))
        self.assertFalse([n for n in names if n.endswith("-dev")], depends)
        self.assertFalse([n for n in names if re.match(r"lib(a|ub|t)san", n)], depends)

    def test_conffile_and_maintainer_scripts(self):
        ctl = os.path.join(TMP, "control")
        r = run(["dpkg-deb", "-e", DEB, ctl])
        self.assertEqual(r.returncode, 0, r.stderr)
        with open(os.path.join(ctl, "conffiles")) as f:
            self.assertEqual(f.read().split(), ["/etc/klynaa/klynaa.toml"])
        for script in ("postinst", "prerm", "postrm"):
            path = os.path.join(ctl, script)
            self.assertTrue(os.access(path, os.X_OK), script)
            self.assertEqual(run(["sh", "-n", path]).returncode, 0, script)
        with open(os.path.join(ctl, "postinst")) as f:
            code = [l for l in f.read().splitlines() if not l.lstrip().startswith("#")]
        self.assertFalse([l for l in code if re.search(r"systemctl\s.*\b(enable|start)\b|deb-systemd", l)],
                         "services stay disabled until the admin enables them")

    def test_lintian_reports_no_error(self):
        r = run(["lintian", "--no-tag-display-limit", DEB], timeout=600)
        errors = [l for l in r.stdout.splitlines() if l.startswith("E:")]
        self.assertEqual(errors, [], r.stdout + r.stderr)

    def test_binary_runs_from_the_extracted_package(self):
        root = os.path.join(TMP, "extracted")
        r = run(["dpkg-deb", "-x", DEB, root])
        self.assertEqual(r.returncode, 0, r.stderr)
        exe = os.path.join(root, "usr", "bin", "klynaa")
        version = run([exe, "--version"])
        self.assertEqual(version.returncode, 0, version.stderr)
        self.assertIn(project_version(), version.stdout)
        check = run([exe, "config", "--check", "--config", os.path.join(root, "etc", "klynaa", "klynaa.toml")])
        self.assertEqual(check.returncode, 0, check.stdout + check.stderr)
        # klynaa run from the package: accepts an event, /stats names the version
        data = os.path.join(TMP, "run-data")
        ingress = "tcp://127.0.0.1:%d" % free_port()
        env = dict(os.environ, KLYNAA_ADMIN_BIND="127.0.0.1:0", KLYNAA_CLUSTER_BIND="tcp://127.0.0.1:*",
                   DJANGO_API_URL="http://127.0.0.1:9", DJANGO_API_KEY="k")
        env.pop("KLYNAA_ADMIN_TOKEN", None)
        with open(os.path.join(TMP, "run.log"), "w") as log:
            proc = subprocess.Popen([exe, "run", "--data-dir", data, "--ingress", ingress], env=env,
                                    stdout=log, stderr=log)
        try:
            info = None
            deadline = time.time() + 60
            while time.time() < deadline and proc.poll() is None:
                try:
                    with open(os.path.join(data, "broker.json")) as f:
                        info = json.load(f)
                    break
                except (OSError, ValueError):
                    time.sleep(0.1)
            self.assertIsNotNone(info, "klynaa run from the package did not start")
            pub = run([exe, "publish", "worker.location", "--ingress", ingress, "--id", "pkg-1", "--data",
                       '{"worker_id": 1, "lat": 5.6, "lng": -0.2, "available": true}'], timeout=60)
            self.assertEqual(pub.returncode, 0, pub.stdout + pub.stderr)
            self.assertIn("accepted", pub.stdout)
            with urllib.request.urlopen("http://%s/stats" % info["admin"], timeout=10) as resp:
                stats = json.loads(resp.read())
            self.assertEqual(stats["version"], project_version())
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                self.assertEqual(proc.wait(timeout=40), 0)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                raise


def dpkg_status(pkg):
    r = run(["dpkg-query", "-W", "-f=${Status}", pkg])
    return r.stdout if r.returncode == 0 else ""


class DpkgInstall(unittest.TestCase):
    """Installs the package on this machine, as an admin would, and purges it."""

    def test_install_reinstall_keeps_the_edited_conffile_and_purge(self):
        self.assertEqual(os.geteuid(), 0, "installing a package needs root")
        self.assertNotIn("installed", dpkg_status(PACKAGE),
                         "klynaa-jobs is installed already: remove it (dpkg --purge klynaa-jobs) to run this test")
        try:
            r = run(["dpkg", "-i", DEB], timeout=300)
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            self.assertEqual(dpkg_status(PACKAGE), "install ok installed")
            self.assertEqual(run(["/usr/bin/klynaa", "--version"]).stdout,
                             run([release_binary(), "--version"]).stdout)
            # the system user and its state directory
            user = run(["getent", "passwd", "klynaa"]).stdout
            self.assertTrue(user, "no klynaa user")
            st = os.stat("/var/lib/klynaa")
            self.assertEqual(st.st_uid, int(user.split(":")[2]))
            # the config is readable by klynaa's group, not by everyone
            st = os.stat("/etc/klynaa/klynaa.toml")
            self.assertEqual(st.st_mode & 0o777, 0o640)
            # services are installed but not enabled
            self.assertTrue(os.path.isfile("/lib/systemd/system/klynaa-broker.service"))
            wants = glob.glob("/etc/systemd/system/*.wants/klynaa*")
            self.assertEqual(wants, [], "the package must not enable its services")
            # an admin's edit of the conffile survives a reinstall (an upgrade)
            with open("/etc/klynaa/klynaa.toml", "a") as f:
                f.write("\n# edited by the admin\n")
            r = run(["dpkg", "-i", "--force-confold", DEB], timeout=300)
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            with open("/etc/klynaa/klynaa.toml") as f:
                self.assertIn("# edited by the admin", f.read())
        finally:
            r = run(["dpkg", "--purge", PACKAGE], timeout=300)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertEqual(dpkg_status(PACKAGE), "")
        self.assertFalse(os.path.exists("/usr/bin/klynaa"))
        self.assertFalse(os.path.exists("/etc/klynaa"))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--release-dir", required=True)
    parser.add_argument("--source", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
    ARGS, rest = parser.parse_known_args()
    ARGS.release_dir = os.path.abspath(ARGS.release_dir)
    unittest.main(argv=[sys.argv[0]] + rest, verbosity=2)

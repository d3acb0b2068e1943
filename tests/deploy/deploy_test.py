#!/usr/bin/python3
"""Checks deploy/: compose, k8s, Dockerfile and systemd agree with each other
and with the code's defaults; the systemd units pass `systemd-analyze verify`;
deploy/local-cluster.sh brings up nodes and stops cleanly.

    /usr/bin/python3 tests/deploy/deploy_test.py [--klynaa PATH] [unittest args]

PATH defaults to $KLYNAA_BIN, else build/klynaa. Needs python3-yaml.
"""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
import unittest
import urllib.request

import yaml

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DEPLOY = os.path.join(ROOT, "deploy")
KLYNAA = os.environ.get("KLYNAA_BIN", os.path.join(ROOT, "build", "klynaa"))


def read(*parts):
    with open(os.path.join(DEPLOY, *parts)) as f:
        return f.read()


def load_defaults():
    """The [section] key defaults, from `klynaa config --example` when the
    binary exists, else from the TOML block of docs/configuration.md."""
    if os.access(KLYNAA, os.X_OK):
        text = subprocess.run([KLYNAA, "config", "--example"], check=True,
                              capture_output=True, text=True, timeout=30).stdout
        source = KLYNAA + " config --example"
    else:
        with open(os.path.join(ROOT, "docs", "configuration.md")) as f:
            text = re.search(r"```toml\n(.*?)```", f.read(), re.S).group(1)
        source = "docs/configuration.md"
    return tomllib.loads(text), source


def port_of(endpoint):
    return int(endpoint.rsplit(":", 1)[1])


def flag(args, name):
    return args[args.index(name) + 1]


DEFAULTS, DEFAULTS_SOURCE = load_defaults()
INGRESS_PORT = port_of(DEFAULTS["ingress"]["bind"])
CLUSTER_PORT = port_of(DEFAULTS["cluster"]["bind"])
ADMIN_PORT = port_of(DEFAULTS["admin"]["bind"])
GRACE = DEFAULTS["shutdown"]["grace_seconds"]
PORTS = {INGRESS_PORT, CLUSTER_PORT, ADMIN_PORT}
COMPOSE = yaml.safe_load(read("docker", "compose.yaml"))
K8S_BROKER = {d["kind"]: d for d in yaml.safe_load_all(read("k8s", "broker.yaml"))}
K8S_NODE = {d["kind"]: d for d in yaml.safe_load_all(read("k8s", "node.yaml"))}
DOCKERFILE = read("docker", "Dockerfile")
STOP_GRACE_RE = re.compile(r"^(\d+)s$")


class Defaults(unittest.TestCase):
    def test_ports_are_the_documented_ones(self):
        self.assertEqual((INGRESS_PORT, CLUSTER_PORT, ADMIN_PORT), (5555, 5556, 9464), DEFAULTS_SOURCE)
        self.assertEqual(GRACE, 30, DEFAULTS_SOURCE)


class Dockerfile(unittest.TestCase):
    def stage(self, name):
        m = re.search(rf"(?ms)^FROM \S+ AS {name}\s*$(.*?)(?=^FROM |\Z)", DOCKERFILE)
        self.assertIsNotNone(m, f"no stage {name}")
        return m.group(1)

    def test_build_stage_makes_the_package(self):
        self.assertRegex(DOCKERFILE, r"(?m)^FROM debian:12 AS build\s*$")
        build = self.stage("build")
        self.assertRegex(build, r"(?m)^COPY \. /src")
        self.assertIn("bash scripts/setup.sh", build)
        self.assertIn("bash scripts/build.sh release", build)
        self.assertIn("cpack -G DEB", build)

    def test_runtime_stage_holds_the_package_not_the_toolchain(self):
        self.assertRegex(DOCKERFILE, r"(?m)^FROM debian:12-slim AS runtime\s*$")
        runtime = self.stage("runtime")
        self.assertIn("COPY --from=build /klynaa-jobs.deb", runtime)
        self.assertNotIn("setup.sh", runtime)
        for tool in ("build-essential", "cmake", "-dev"):
            self.assertNotIn(tool, runtime)
        self.assertRegex(DOCKERFILE, r"(?m)^FROM runtime\s*$", "the default target is the klynaa image")

    def test_django_stage(self):
        django = self.stage("django")
        self.assertIn("python3-django", django)
        self.assertRegex(django, r'(?m)^ENTRYPOINT \["/usr/bin/python3", "examples/django/serve.py"\]')

    def test_base_expose_healthcheck_entrypoint(self):
        DOCKERFILE_RUNTIME = self.stage("runtime")
        expose = re.search(r"(?m)^EXPOSE (.*)$", DOCKERFILE_RUNTIME).group(1).split()
        self.assertEqual({int(p) for p in expose}, PORTS)
        health = re.search(r"(?ms)^HEALTHCHECK .*?CMD (.*?)$", DOCKERFILE_RUNTIME).group(1)
        self.assertIn("curl", health)
        self.assertIn(f"127.0.0.1:{ADMIN_PORT}/healthz", health)
        self.assertRegex(DOCKERFILE_RUNTIME, r'(?m)^ENTRYPOINT \["/usr/bin/klynaa"\]')


class Compose(unittest.TestCase):
    def services(self):
        return COMPOSE["services"]

    def test_one_image_everywhere_and_same_as_k8s(self):
        klynaa = {k: s for k, s in self.services().items() if k != "django"}
        images = {s["image"] for s in klynaa.values()}
        self.assertEqual(len(images), 1, images)
        k8s = {K8S_BROKER["StatefulSet"]["spec"]["template"]["spec"]["containers"][0]["image"],
               K8S_NODE["Deployment"]["spec"]["template"]["spec"]["containers"][0]["image"]}
        self.assertEqual(images, k8s)
        self.assertEqual(self.services()["broker"]["build"]["dockerfile"], "deploy/docker/Dockerfile")
        self.assertEqual(self.services()["broker"]["build"]["target"], "runtime")

    def test_broker(self):
        b = self.services()["broker"]
        self.assertEqual(b["command"][0], "broker")
        env = b["environment"]
        self.assertEqual(env["KLYNAA_INGRESS_BIND"], f"tcp://0.0.0.0:{INGRESS_PORT}")
        self.assertEqual(env["KLYNAA_CLUSTER_BIND"], f"tcp://0.0.0.0:{CLUSTER_PORT}")
        self.assertEqual(env["KLYNAA_ADMIN_BIND"], f"0.0.0.0:{ADMIN_PORT}")
        self.assertTrue(env.get("KLYNAA_ADMIN_TOKEN"), "a non-loopback admin bind needs a token")
        published = {int(p.rsplit(":", 1)[1]) for p in b["ports"]} | {int(p) for p in b.get("expose", [])}
        self.assertEqual(published, PORTS)
        test = " ".join(b["healthcheck"]["test"])
        self.assertIn(f"127.0.0.1:{ADMIN_PORT}/healthz", test)
        self.assertIn("Authorization: Bearer", test)
        self.assertGreater(int(STOP_GRACE_RE.match(b["stop_grace_period"]).group(1)), GRACE)
        self.assertIn("/var/lib/klynaa", [v.split(":")[1] for v in b["volumes"]])
        self.assertEqual(flag(b["command"], "--data-dir"), "/var/lib/klynaa")

    def test_three_nodes(self):
        nodes = {k: s for k, s in self.services().items() if s.get("command", [""])[0] == "node"}
        self.assertEqual(len(nodes), 3)
        names = set()
        for key, s in nodes.items():
            cmd = s["command"]
            self.assertEqual(flag(cmd, "--broker"), f"tcp://broker:{CLUSTER_PORT}", key)
            self.assertEqual(set(flag(cmd, "--actors").split(",")), {"notifier", "escrow", "geo", "scheduler"})
            names.add(flag(cmd, "--name"))
            self.assertEqual(s["depends_on"]["broker"]["condition"], "service_healthy")
            self.assertTrue(s["healthcheck"]["disable"])
            self.assertEqual(s["environment"]["DJANGO_API_URL"], "http://django:8000")
            self.assertGreater(int(STOP_GRACE_RE.match(s["stop_grace_period"]).group(1)), GRACE)
        self.assertEqual(len(names), 3, "node names must differ")

    def test_django(self):
        d = self.services()["django"]
        self.assertEqual(d["build"]["target"], "django")
        self.assertNotEqual(d["image"], self.services()["broker"]["image"])
        self.assertTrue(os.path.exists(os.path.join(ROOT, "examples", "django", "serve.py")))
        self.assertEqual(d["command"][0], "0.0.0.0:8000")
        self.assertEqual(d["environment"]["KLYNAA_INGRESS"], f"tcp://broker:{INGRESS_PORT}")


class Kubernetes(unittest.TestCase):
    def broker_pod(self):
        return K8S_BROKER["StatefulSet"]["spec"]["template"]["spec"]

    def test_service_ports(self):
        svc = K8S_BROKER["Service"]
        self.assertEqual({p["port"] for p in svc["spec"]["ports"]}, PORTS)
        self.assertEqual({p["targetPort"] for p in svc["spec"]["ports"]}, PORTS)
        self.assertEqual(svc["spec"]["selector"], K8S_BROKER["StatefulSet"]["spec"]["template"]["metadata"]["labels"])
        self.assertEqual(K8S_BROKER["StatefulSet"]["spec"]["serviceName"], svc["metadata"]["name"])

    def test_broker_statefulset(self):
        sts = K8S_BROKER["StatefulSet"]
        self.assertEqual(sts["spec"]["replicas"], 1)
        c = self.broker_pod()["containers"][0]
        self.assertEqual(c["command"], ["/usr/bin/klynaa"])
        self.assertEqual(c["args"][0], "broker")
        self.assertEqual({p["containerPort"] for p in c["ports"]}, PORTS)
        env = {e["name"]: e for e in c["env"]}
        self.assertEqual(env["KLYNAA_INGRESS_BIND"]["value"], f"tcp://0.0.0.0:{INGRESS_PORT}")
        self.assertEqual(env["KLYNAA_CLUSTER_BIND"]["value"], f"tcp://0.0.0.0:{CLUSTER_PORT}")
        self.assertEqual(env["KLYNAA_ADMIN_BIND"]["value"], f"0.0.0.0:{ADMIN_PORT}")
        self.assertIn("secretKeyRef", env["KLYNAA_ADMIN_TOKEN"]["valueFrom"])
        # readiness: /healthz (503 on a standby); liveness: /livez (200 on any
        # broker that serves), so that a standby is not restarted in a loop
        for probe, path in (("readinessProbe", "/healthz"), ("livenessProbe", "/livez")):
            text = json.dumps(c[probe])
            self.assertIn(f"127.0.0.1:{ADMIN_PORT}{path}", text, probe)
        claim = sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"]
        mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
        self.assertEqual(mounts[claim], flag(c["args"], "--data-dir"))
        self.assertGreater(self.broker_pod()["terminationGracePeriodSeconds"], GRACE)

    def test_node_deployment(self):
        dep = K8S_NODE["Deployment"]
        self.assertEqual(dep["spec"]["replicas"], 3)
        pod = dep["spec"]["template"]["spec"]
        c = pod["containers"][0]
        self.assertEqual(c["command"], ["/usr/bin/klynaa"])
        self.assertEqual(c["args"][0], "node")
        svc = K8S_BROKER["Service"]["metadata"]["name"]
        self.assertEqual(flag(c["args"], "--broker"), f"tcp://{svc}:{CLUSTER_PORT}")
        self.assertEqual(svc, "klynaa-broker")
        self.assertNotIn("ports", c, "a node has no listening port")
        self.assertGreater(pod["terminationGracePeriodSeconds"], GRACE)
        self.assertEqual(dep["spec"]["selector"]["matchLabels"], dep["spec"]["template"]["metadata"]["labels"])


def unit_settings(text):
    out = {}
    for line in text.splitlines():
        if "=" in line and not line.lstrip().startswith(("#", "[")):
            k, v = line.split("=", 1)
            out.setdefault(k.strip(), []).append(v.strip())
    return out


class Systemd(unittest.TestCase):
    UNITS = ("klynaa-broker.service", "klynaa-node@.service")

    def test_unit_settings(self):
        for name in self.UNITS:
            s = unit_settings(read("systemd", name))
            self.assertEqual(s["EnvironmentFile"], ["-/etc/klynaa/klynaa.env"], name)
            self.assertTrue(s["ExecStart"][0].startswith("/usr/bin/klynaa "), name)
            self.assertIn("--config /etc/klynaa/klynaa.toml ", s["ExecStart"][0], name)
            self.assertEqual(s["LimitNOFILE"], ["65536"], name)
            self.assertEqual(s["KillSignal"], ["SIGTERM"], name)
            self.assertGreater(int(s["TimeoutStopSec"][0]), GRACE, name)
            self.assertEqual(s["Restart"], ["on-failure"], name)
            self.assertEqual(s["User"], ["klynaa"], name)
            state = s["StateDirectory"][0]
            self.assertIn(f"--data-dir /var/lib/{state}", s["ExecStart"][0], name)
        node = unit_settings(read("systemd", "klynaa-node@.service"))["ExecStart"][0]
        self.assertIn("--name %i", node)
        self.assertIn("--broker ", node)
        env_default = unit_settings(read("systemd", "klynaa-node@.service"))["Environment"]
        self.assertIn(f"KLYNAA_BROKER=tcp://127.0.0.1:{CLUSTER_PORT}", env_default)

    def test_systemd_analyze_verify(self):
        """Verifies copies whose ExecStart points at an existing executable
        (verify refuses a missing /usr/bin/klynaa)."""
        tool = shutil.which("systemd-analyze")
        if tool is None:
            self.fail("systemd-analyze missing: apt-get install -y systemd")
        with tempfile.TemporaryDirectory() as tmp:
            exe = os.path.join(tmp, "klynaa")
            os.symlink(KLYNAA if os.access(KLYNAA, os.X_OK) else "/bin/true", exe)
            paths = []
            for name in self.UNITS:
                text = read("systemd", name).replace("/usr/bin/klynaa", exe)
                path = os.path.join(tmp, name)
                with open(path, "w") as f:
                    f.write(text)
                paths.append(path)
            r = subprocess.run([tool, "verify", *paths], capture_output=True, text=True, timeout=60)
            ours = [l for l in (r.stdout + r.stderr).splitlines() if "klynaa" in l]
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            self.assertEqual(ours, [], "\n".join(ours))


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is not alive either
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


class LocalCluster(unittest.TestCase):
    def test_two_nodes_up_and_clean_stop(self):
        self.assertTrue(os.access(KLYNAA, os.X_OK),
                        f"{KLYNAA} missing: build first (bash scripts/build.sh release) or pass --klynaa PATH")
        env = dict(os.environ, KLYNAA_BIN=KLYNAA, LC_WAIT_SECONDS="60")
        env.pop("KLYNAA_ADMIN_TOKEN", None)
        with tempfile.TemporaryDirectory() as data:
            p = subprocess.Popen([os.path.join(DEPLOY, "local-cluster.sh"), "2", data], env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            info = None
            try:
                line = p.stdout.readline()
                self.assertTrue(line, "no JSON line; stderr: " + (p.stderr.read() if p.poll() is not None else ""))
                info = json.loads(line)
                self.assertEqual(info["nodes"], 2)
                for key in ("ingress", "cluster"):
                    self.assertTrue(info[key].startswith("tcp://127.0.0.1:"), info)
                self.assertTrue(info["admin"].startswith("http://127.0.0.1:"), info)
                with urllib.request.urlopen(info["admin"] + "/healthz", timeout=5) as r:
                    self.assertEqual(r.status, 200)
                with urllib.request.urlopen(info["admin"] + "/stats", timeout=5) as r:
                    stats = json.load(r)
                self.assertEqual(sorted(n["name"] for n in stats["nodes"]), ["node-1", "node-2"])
                p.send_signal(signal.SIGTERM)
                rc = p.wait(timeout=GRACE * 2 + 30)
                err = p.stderr.read()
                self.assertEqual(rc, 0, err)
                self.assertIn("local-cluster: stopped", err)
                for pid in [info["broker_pid"], *info["node_pids"]]:
                    self.assertFalse(alive(pid), f"pid {pid} still running")
            finally:
                if p.poll() is None:
                    p.kill()
                    p.wait()
                if info:
                    for pid in [info["broker_pid"], *info["node_pids"]]:
                        if alive(pid):
                            os.kill(pid, signal.SIGKILL)
                p.stdout.close()
                p.stderr.close()


if __name__ == "__main__":
    if "--klynaa" in sys.argv:
        i = sys.argv.index("--klynaa")
        KLYNAA = os.path.abspath(sys.argv[i + 1])
        del sys.argv[i:i + 2]
        DEFAULTS, DEFAULTS_SOURCE = load_defaults()
    unittest.main(verbosity=2)

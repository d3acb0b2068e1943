"""What tests/integration/netns_test.py uses around its one test case: the
addresses and names of the two namespaces, the agent (netns_test.py --agent,
which runs agent_main() inside namespace A), `ip netns` and `ss` helpers, the
processes it starts (Proc) and waits within the run's time budget.

KLYNAA (the binary, set from --klynaa) lives here, so the test module reads it
as an attribute of this module.
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

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
PY = "/usr/bin/python3"
IP = shutil.which("ip") or "/usr/sbin/ip"
SS = shutil.which("ss") or "/usr/bin/ss"

PID = os.getpid()
NET = 16 + PID % 224                       # 10.231.NET.0/24
ADDR_A = "10.231.%d.1" % NET
ADDR_B = "10.231.%d.2" % NET
NS_PREFIX = "klynaa-nt-"
NS_A = "%s%d-a" % (NS_PREFIX, PID)
NS_B = "%s%d-b" % (NS_PREFIX, PID)
VETH_A = "knt%da" % PID                    # <= 11 characters (IFNAMSIZ is 16)
VETH_B = "knt%db" % PID
INGRESS = "tcp://%s:5555" % ADDR_A
CLUSTER = "tcp://%s:5556" % ADDR_A
ADMIN = "%s:9464" % ADDR_A
DJANGO = "http://%s:8000" % ADDR_B
ADMIN_TOKEN = "netns-admin-token-%d" % PID
API_KEY = "netns-api-key"
NODES = ("netns-b1", "netns-b2")
LAGOS = (6.5244, 3.3792)
FAR_AWAY = (9.0765, 7.3986)                # Abuja, ~520 km from Lagos
MOVED_WORKER = 250
BUDGET_S = 110       # every wait of the run together; with the stops, under CTest's TIMEOUT (180)
START = time.monotonic()
TMP_PREFIX = "klynaa-netns-test-"

KLYNAA = os.environ.get("KLYNAA_BIN", os.path.join(ROOT, "build", "klynaa"))


# --------------------------------------------------------------------- agent
# Runs inside namespace A: one JSON request per stdin line, one JSON answer per
# stdout line. Keeps the test process itself in the root namespace.

def agent_main():
    import http.client
    import urllib.parse
    sys.path.insert(0, os.path.join(ROOT, "clients", "python"))
    from klynaa_client import Client
    clients = {}
    for line in sys.stdin:
        req = json.loads(line)
        try:
            if req["op"] == "http":
                u = urllib.parse.urlsplit(req["url"])
                c = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
                body = None
                headers = dict(req.get("headers") or {})
                if req.get("body") is not None:
                    body = json.dumps(req["body"]).encode()
                    headers["Content-Type"] = "application/json"
                try:
                    path = u.path + ("?" + u.query if u.query else "")
                    c.request(req.get("method", "GET"), path, body=body, headers=headers)
                    r = c.getresponse()
                    raw = r.read().decode("utf-8", "replace")
                finally:
                    c.close()
                try:
                    parsed = json.loads(raw)
                except ValueError:
                    parsed = None
                out = {"status": r.status, "json": parsed, "text": raw[:2000]}
            elif req["op"] == "publish":
                ep = req["endpoint"]
                if ep not in clients:
                    clients[ep] = Client(ep, timeout_s=5, retries=2)
                out = {"reply": clients[ep].publish(req["type"], req["data"], id=req["id"])}
            else:
                out = {"error": "unknown op %r" % req["op"]}
        except Exception as e:  # reported to the test, which fails with it
            out = {"error": "%s: %s" % (type(e).__name__, e)}
        sys.stdout.write(json.dumps(out) + "\n")
        sys.stdout.flush()
    for c in clients.values():
        c.close()


# ------------------------------------------------------------------- helpers

def run(*args, check=True, timeout=20):
    r = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError("%s failed (exit %d): %s" % (" ".join(args), r.returncode,
                                                          (r.stderr or r.stdout).strip()))
    return r


def netns_list():
    r = run(IP, "netns", "list", check=False)
    return [line.split()[0] for line in r.stdout.splitlines() if line.strip()]


def pid_alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def kill_netns_pids(ns):
    """SIGKILL whatever still runs in namespace `ns` (only ours are there)."""
    r = run(IP, "netns", "pids", ns, check=False)
    for tok in r.stdout.split():
        try:
            os.kill(int(tok), signal.SIGKILL)
        except (ValueError, ProcessLookupError):
            pass


def delete_netns(ns):
    if ns not in netns_list():
        return
    kill_netns_pids(ns)
    for _ in range(50):
        if run(IP, "netns", "del", ns, check=False).returncode == 0 or ns not in netns_list():
            return
        time.sleep(0.1)
    raise AssertionError("could not delete network namespace %s" % ns)


def remove_stale_namespaces():
    """Namespaces (and temp dirs) of an earlier run that died without its
    cleanups, e.g. SIGKILLed by a CTest timeout."""
    for ns in netns_list():
        m = re.fullmatch(re.escape(NS_PREFIX) + r"(\d+)-[ab]", ns)
        if m and int(m.group(1)) != PID and not pid_alive(int(m.group(1))):
            delete_netns(ns)
    tmp = tempfile.gettempdir()
    for name in os.listdir(tmp):
        m = re.fullmatch(re.escape(TMP_PREFIX) + r"(\d+)-\w+", name)
        if m and int(m.group(1)) != PID and not pid_alive(int(m.group(1))):
            shutil.rmtree(os.path.join(tmp, name), ignore_errors=True)


def sanitizer_report(text):
    for marker in ("AddressSanitizer", "LeakSanitizer", "runtime error:"):
        if marker in text:
            return marker
    return None


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("KLYNAA_", "DJANGO_", "NOTIFICATION_"))}
    env.update(extra)
    return env


class Proc:
    """A process started inside a namespace, output to a log file."""

    def __init__(self, name, ns, args, env, logdir, pipes=False):
        self.name = name
        self.log_path = os.path.join(logdir, name + ".log")
        self.log = open(self.log_path, "wb")
        kw = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE} if pipes else \
             {"stdin": subprocess.DEVNULL, "stdout": self.log}
        # `ip netns exec` execs the command: the pid is the command's own.
        self.p = subprocess.Popen([IP, "netns", "exec", ns] + args, env=env, stderr=self.log,
                                  start_new_session=True, **kw)
        self.pid = self.p.pid
        self.terminated = False

    def running(self):
        return self.p.poll() is None

    def text(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def tail(self, n=3000):
        return self.text()[-n:]

    def terminate(self):
        """One SIGTERM only: a second one means "stop now" to klynaa."""
        if self.p.poll() is None and not self.terminated:
            self.terminated = True
            self.p.send_signal(signal.SIGTERM)

    def stop(self, timeout=15):
        """SIGTERM, then SIGKILL after `timeout` s; returns the exit code."""
        self.terminate()
        try:
            self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
        if self.p.poll() is None:
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.p.wait(10)
        for f in (self.p.stdin, self.p.stdout):
            if f:
                f.close()
        self.log.close()
        return self.p.returncode


def wait_for(pred, timeout, what, interval=0.3):
    """Polls `pred` until it returns something true; `timeout` is capped by what
    is left of the run's BUDGET_S, so that a hang fails in time for the cleanups."""
    end = min(time.monotonic() + timeout, START + BUDGET_S)
    last = None
    while time.monotonic() < end:
        last = pred()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError("timed out after %ss waiting for %s (last: %r)" % (timeout, what, last))


def parse_ss(text):
    """`ss -Htuna[p]` lines -> [{proto, state, local, lport, peer, pport, users}]."""
    def split(ep):
        host, _, port = ep.rpartition(":")
        host = host.strip("[]")
        host = host.split("%")[0]            # "*%lo" / "fe80::1%veth"
        if host.startswith("::ffff:"):
            host = host[len("::ffff:"):]
        return host, port
    rows = []
    for line in text.splitlines():
        f = line.split()
        if len(f) < 6:
            continue
        lh, lp = split(f[4])
        ph, pp = split(f[5])
        rows.append({"proto": f[0], "state": f[1], "local": lh, "lport": lp, "peer": ph, "pport": pp,
                     "users": " ".join(f[6:]), "line": line})
    return rows


def node_stats(entry):
    """The NODE_STATS object of one /stats `nodes` entry (its `stats` key)."""
    st = entry.get("stats") or {}
    if isinstance(st, str):
        st = json.loads(st) if st else {}
    return st


def ss_pids(row):
    return {int(x) for x in re.findall(r"pid=(\d+)", row["users"])}

#!/usr/bin/python3
"""A broker and its nodes on two "hosts": Linux network namespaces joined by a
veth pair (issue 5). Proves that nothing in the broker, the nodes, the
reference Django app or the Python client assumes one host.

    /usr/bin/python3 tests/integration/netns_test.py [--klynaa PATH] [unittest args]

PATH defaults to $KLYNAA_BIN, else build/klynaa. Needs root and `ip netns`
(iproute2), Debian's python3-zmq, python3-msgpack, python3-django. It fails,
never skips, when any of these is missing.

Topology (N is derived from this process's pid):

    namespace A  (10.231.N.1/24 on veth kntPIDa, lo up)  -- the "broker host"
        klynaa broker  --ingress tcp://10.231.N.1:5555 --cluster tcp://10.231.N.1:5556
                       admin 10.231.N.1:9464 with a bearer token
        a helper ("agent", this file run with --agent): publishes events with
        clients/python/klynaa_client.py, reads /stats, and calls Django's demo
        API across the veth
    namespace B  (10.231.N.2/24 on veth kntPIDb, lo up)  -- the "worker host"
        examples/django/serve.py 10.231.N.2:8000 (its events go to A's ingress)
        klynaa node --broker tcp://10.231.N.1:5556 --name netns-b1 / netns-b2,
                    DJANGO_API_URL=http://10.231.N.2:8000

The veth pair is created inside the namespaces (`ip -n A link add ... peer
... netns B`), so the root namespace's links, addresses and routes are never
touched; neither namespace has a default route, so a connection to any address
but these two (or the namespace's own loopback) fails instead of leaking.

Every process is killed (SIGTERM, then SIGKILL) and both namespaces deleted
(which deletes the veth pair) in class cleanups that run whatever fails;
namespaces left by an earlier run that was itself SIGKILLed are removed at start.
"""
import json
import os
import select
import shutil
import signal
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import netns_support as support  # noqa: E402
from netns_support import (ADDR_A, ADDR_B, ADMIN, ADMIN_TOKEN, API_KEY, BUDGET_S, CLUSTER, DJANGO,  # noqa: E402
                           FAR_AWAY, INGRESS, IP, LAGOS, MOVED_WORKER, NET, NODES, NS_A, NS_B, PID,
                           PY, Proc, ROOT, SS, START, TMP_PREFIX, VETH_A, VETH_B, agent_main,
                           clean_env, delete_netns, kill_netns_pids, netns_list, node_stats,
                           parse_ss, remove_stale_namespaces, run, sanitizer_report, ss_pids,
                           wait_for)

# ---------------------------------------------------------------------- test

class NetnsCluster(unittest.TestCase):
    """One broker in namespace A; Django and two nodes in namespace B."""

    @classmethod
    def setUpClass(cls):
        cls.procs = []
        if os.geteuid() != 0:
            raise AssertionError("this test needs root for `ip netns` (CI runs as root)")
        if not os.path.exists(IP) or not os.path.exists(SS):
            raise AssertionError("iproute2 (`ip`, `ss`) is missing: apt-get install iproute2")
        if not os.access(support.KLYNAA, os.X_OK):
            raise AssertionError("no klynaa binary at %s (build it, or pass --klynaa)" % support.KLYNAA)
        remove_stale_namespaces()
        cls.root_before = cls.root_network()
        cls.tmp = tempfile.mkdtemp(prefix="%s%d-" % (TMP_PREFIX, PID))
        cls.addClassCleanup(shutil.rmtree, cls.tmp, ignore_errors=True)
        cls.addClassCleanup(cls.teardown_network)   # runs after every process is gone
        cls.setup_network()
        cls.addClassCleanup(cls.stop_all)
        cls.start_broker()
        cls.start_agent()
        cls.start_django()
        # A worker far away: the nodes' geo actors load it from Django at start;
        # a worker.location published in A must then move it in both nodes (B).
        cls.django("POST", "/api/demo/workers/", {"id": MOVED_WORKER, "lat": FAR_AWAY[0], "lng": FAR_AWAY[1],
                                                  "service_radius_km": 5.0})
        cls.django("POST", "/api/demo/tokens/", {"user_id": MOVED_WORKER, "token": "fcm-worker-%d" % MOVED_WORKER,
                                                 "platform": "android"})
        cls.nodes = [cls.start_node(n) for n in NODES]
        def registered():
            cls.check_running()
            return sorted(n.get("name", "") for n in cls.stats().get("nodes", [])) == sorted(NODES)
        cls.wait(registered, 60, "both nodes of namespace B in the broker's /stats")

    # ---------------------------------------------------------- network
    @classmethod
    def setup_network(cls):
        cls.created_ns = []
        for ns in (NS_A, NS_B):
            run(IP, "netns", "add", ns)
            cls.created_ns.append(ns)
        # Created in A with its peer moved straight into B: never in the root namespace.
        run(IP, "-n", NS_A, "link", "add", VETH_A, "type", "veth", "peer", "name", VETH_B, "netns", NS_B)
        run(IP, "-n", NS_A, "addr", "add", ADDR_A + "/24", "dev", VETH_A)
        run(IP, "-n", NS_B, "addr", "add", ADDR_B + "/24", "dev", VETH_B)
        for ns, dev in ((NS_A, VETH_A), (NS_B, VETH_B)):
            run(IP, "-n", ns, "link", "set", "lo", "up")
            run(IP, "-n", ns, "link", "set", dev, "up")

    @classmethod
    def teardown_network(cls):
        for ns in getattr(cls, "created_ns", []):
            delete_netns(ns)
        left = [ns for ns in (NS_A, NS_B) if ns in netns_list()]
        links = run(IP, "-o", "link", "show", check=False).stdout
        if left or VETH_A in links or VETH_B in links:
            raise AssertionError("teardown left namespaces %s or a veth behind:\n%s" % (left, links))

    @staticmethod
    def root_network():
        """What of the root namespace this test could have disturbed."""
        return {"links": sorted(l.split(":")[1].strip().split("@")[0]
                                for l in run(IP, "-o", "link", "show").stdout.splitlines()),
                "addrs": run(IP, "-o", "addr", "show").stdout.count("inet"),
                "routes": sorted(run(IP, "route", "show").stdout.splitlines()),
                "routes6": sorted(l for l in run(IP, "-6", "route", "show").stdout.splitlines()
                                  if "expires" not in l)}

    # -------------------------------------------------------- processes
    @classmethod
    def start(cls, name, ns, args, env, pipes=False):
        p = Proc(name, ns, args, env, cls.tmp, pipes=pipes)
        cls.procs.append(p)
        return p

    @classmethod
    def wait(cls, pred, timeout, what, interval=0.3):
        """wait_for, failing with the tails of every process's log."""
        try:
            return wait_for(pred, timeout, what, interval)
        except AssertionError as e:
            raise AssertionError("%s\n%s" % (e, cls.logs())) from None

    @classmethod
    def check_running(cls):
        """Fails at once when a process exited (instead of waiting for a timeout)."""
        for p in cls.procs:
            if not p.running():
                raise AssertionError("%s exited (%s)" % (p.name, p.p.returncode))

    @classmethod
    def logs(cls, n=2500):
        return "\n".join("---- %s (pid %d):\n%s" % (p.name, p.pid, p.tail(n)) for p in cls.procs)

    @classmethod
    def stop_all(cls):
        # nodes first (they hand back work to the broker), then the rest; each
        # group gets SIGTERM together, then 8 s before SIGKILL
        procs = [p for p in getattr(cls, "procs", []) if not p.log.closed]
        for group in ([p for p in procs if p.name.startswith("netns-b")],
                      [p for p in procs if not p.name.startswith("netns-b")]):
            for p in group:
                p.terminate()
            for p in group:
                try:
                    p.stop(timeout=8)
                except Exception:  # keep going: every process must go
                    pass
        for ns in getattr(cls, "created_ns", []):
            kill_netns_pids(ns)

    @classmethod
    def start_broker(cls):
        data = os.path.join(cls.tmp, "broker")
        env = clean_env(KLYNAA_ADMIN_BIND=ADMIN, KLYNAA_ADMIN_TOKEN=ADMIN_TOKEN,
                        KLYNAA_SHUTDOWN_GRACE_SECONDS="5", KLYNAA_CLUSTER_HEARTBEAT_MS="300",
                        KLYNAA_CLUSTER_NODE_TIMEOUT_MS="3000",
                        KLYNAA_RETRY_BASE_DELAY_MS="100", KLYNAA_RETRY_MAX_DELAY_MS="500")
        cls.broker = cls.start("broker", NS_A, [support.KLYNAA, "broker", "--data-dir", data,
                                                "--ingress", INGRESS, "--cluster", CLUSTER], env)

        def endpoints():
            if not cls.broker.running():
                raise AssertionError("the broker exited (%s):\n%s" % (cls.broker.p.returncode, cls.broker.tail()))
            try:
                with open(os.path.join(data, "broker.json")) as f:
                    j = json.load(f)
            except (OSError, ValueError):
                return None
            return j if j.get("pid") == cls.broker.pid else None
        cls.endpoints = wait_for(endpoints, 30, "the broker's broker.json")

    @classmethod
    def start_agent(cls):
        cls.agent = cls.start("agent-a", NS_A, [PY, os.path.abspath(__file__), "--agent"], clean_env(),
                              pipes=True)

    @classmethod
    def call_agent(cls, req, timeout=20):
        if not cls.agent.running():
            raise AssertionError("the agent in namespace A died:\n" + cls.agent.tail())
        cls.agent.p.stdin.write((json.dumps(req) + "\n").encode())
        cls.agent.p.stdin.flush()
        ready, _, _ = select.select([cls.agent.p.stdout], [], [], timeout)
        if not ready:
            raise AssertionError("no answer from the agent in namespace A to %r" % req)
        line = cls.agent.p.stdout.readline()
        if not line:
            raise AssertionError("the agent in namespace A died:\n" + cls.agent.tail())
        out = json.loads(line)
        if "error" in out:
            dead = [p.name for p in cls.procs if not p.running()]
            raise AssertionError("agent in namespace A, %r: %s%s" % (
                req, out["error"], "\nexited: %s\n%s" % (dead, cls.logs()) if dead else ""))
        return out

    @classmethod
    def http(cls, method, url, body=None, headers=None):
        return cls.call_agent({"op": "http", "method": method, "url": url, "body": body, "headers": headers})

    @classmethod
    def django(cls, method, path, body=None):
        r = cls.http(method, DJANGO + path, body, {"Authorization": "Api-Key " + API_KEY,
                                                   "Accept": "application/json"})
        if r["status"] >= 300:
            raise AssertionError("Django %s %s -> %s %s" % (method, path, r["status"], r["text"]))
        return r["json"]

    @classmethod
    def stats(cls):
        r = cls.http("GET", "http://%s/stats" % ADMIN, headers={"Authorization": "Bearer " + ADMIN_TOKEN})
        if r["status"] != 200:
            raise AssertionError("/stats -> %s %s" % (r["status"], r["text"]))
        return r["json"]

    @classmethod
    def publish(cls, type_, data, id_):
        return cls.call_agent({"op": "publish", "endpoint": INGRESS, "type": type_, "data": data,
                               "id": id_})["reply"]

    @classmethod
    def start_django(cls):
        env = clean_env(DJANGO_API_KEY=API_KEY, KLYNAA_INGRESS=INGRESS, KLYNAA_INGRESS_TIMEOUT_S="5",
                        KLYNAA_DEMO_DB=os.path.join(cls.tmp, "django"))
        cls.django_proc = cls.start("django-b", NS_B, [PY, os.path.join(ROOT, "examples", "django", "serve.py"),
                                                       ADDR_B + ":8000", "--seed", "--quiet"], env)

        def ready():
            if not cls.django_proc.running():
                raise AssertionError("Django exited:\n" + cls.django_proc.tail())
            return "READY %s" % DJANGO in cls.django_proc.text()
        wait_for(ready, 60, "Django in namespace B to print READY")

    @classmethod
    def start_node(cls, name):
        env = clean_env(DJANGO_API_URL=DJANGO, DJANGO_API_KEY=API_KEY, KLYNAA_SHUTDOWN_GRACE_SECONDS="5",
                        KLYNAA_CLUSTER_HEARTBEAT_MS="300",
                        KLYNAA_RETRY_BASE_DELAY_MS="100", KLYNAA_RETRY_MAX_DELAY_MS="500")
        return cls.start(name, NS_B, [support.KLYNAA, "node", "--broker", CLUSTER, "--name", name,
                                      "--data-dir", os.path.join(cls.tmp, name)], env)

    # -------------------------------------------------------- helpers
    def outbox(self, node):
        path = os.path.join(self.tmp, node, "outbox.jsonl")
        try:
            with open(path) as f:
                return [json.loads(l) for l in f if l.strip()]
        except OSError:
            return []

    def ss(self, ns):
        return parse_ss(run(IP, "netns", "exec", ns, SS, "-Htunap").stdout)

    def check_time(self):
        self.assertLess(time.monotonic() - START, BUDGET_S, "the test is over its time budget")

    # -------------------------------------------------------- the test
    def test_1_endpoints_are_the_namespace_addresses(self):
        self.assertEqual(self.endpoints["ingress"], INGRESS)
        self.assertEqual(self.endpoints["cluster"], [CLUSTER])
        self.assertEqual(self.endpoints["admin"], ADMIN)
        # admin beyond loopback: a token is required, /healthz stays open
        self.assertEqual(self.http("GET", "http://%s/stats" % ADMIN)["status"], 401)
        self.assertEqual(self.http("GET", "http://%s/healthz" % ADMIN)["status"], 200)
        # nothing of the broker is reachable on A's loopback
        self.assertEqual(run(IP, "netns", "exec", NS_A, PY, "-c",
                             "import socket,sys\n"
                             "for p in (5555, 5556, 9464):\n"
                             "    s = socket.socket(); s.settimeout(2)\n"
                             "    sys.exit(1) if s.connect_ex(('127.0.0.1', p)) == 0 else s.close()\n",
                             check=False).returncode, 0, "the broker listens on A's loopback too")

    def test_2_jobs_run_on_the_nodes_of_namespace_b(self):
        created, released = self.publish_jobs("nt%d" % PID)
        s = self.wait_settled(released)
        self.check_node_job_counts(s, released)
        self.check_django_effects(released)
        self.check_notifications(created, released)
        self.check_sockets()
        self.check_time()

    # ------------------------------------------------------- test_2's steps
    def publish_jobs(self, ids):
        """Events from A (and one from Django in B) whose jobs run on B's nodes.
        Returns the pickup made for notifyNearbyWorkers and those released."""
        # Delivered pickups in Django (B), created over the veth without events.
        pickups = []
        for i in range(5):
            p = self.django("POST", "/api/demo/pickups/", {
                "customer_id": 101 + i % 3, "lat": LAGOS[0], "lng": LAGOS[1], "price": 1000 + i,
                "status": "delivered", "worker_id": 201, "publish": False})
            pickups.append(p["pickup"]["id"])

        # worker.location from A: a fan-out to the geo actor of both nodes in B.
        r = self.publish("worker.location", {"worker_id": MOVED_WORKER, "lat": LAGOS[0], "lng": LAGOS[1],
                                             "available": True}, ids + "-loc")
        self.assertEqual(r["status"], "accepted", r)
        self.wait(lambda: self.check_running() or self.outcome(self.stats(), "updateWorkerLocation", "ok") >= 1,
                  60, "updateWorkerLocation applied by both geo actors")

        # pickup.confirmed from A for each delivered pickup: escrow releases on B's nodes.
        for i, pid in enumerate(pickups):
            r = self.publish("pickup.confirmed", {"pickup_id": pid, "customer_id": 101 + i % 3},
                             "%s-confirm-%d" % (ids, pid))
            self.assertEqual(r["status"], "accepted", r)
            self.assertEqual(r["jobs"], ["%s-confirm-%d#1" % (ids, pid)])
        # the same id again: duplicate, same jobs
        r = self.publish("pickup.confirmed", {"pickup_id": pickups[0], "customer_id": 101},
                         "%s-confirm-%d" % (ids, pickups[0]))
        self.assertEqual(r["status"], "duplicate", r)

        # pickup.created from A at Lagos: the moved worker is now nearby.
        p = self.django("POST", "/api/demo/pickups/", {"customer_id": 101, "lat": LAGOS[0], "lng": LAGOS[1],
                                                       "publish": False})["pickup"]
        created = p["id"]
        r = self.publish("pickup.created", {"pickup_id": created, "customer_id": 101, "lat": LAGOS[0],
                                            "lng": LAGOS[1], "radius_km": 1.0}, ids + "-created")
        self.assertEqual(r["status"], "accepted", r)

        # One event published by Django itself (B) to the ingress in A.
        p = self.django("POST", "/api/demo/pickups/", {"customer_id": 102, "lat": LAGOS[0], "lng": LAGOS[1],
                                                       "price": 777, "status": "delivered", "worker_id": 202,
                                                       "publish": False})["pickup"]
        by_django = p["id"]
        r = self.django("POST", "/api/demo/pickups/%d/confirm/" % by_django, {})
        self.assertEqual(r["event"]["type"], "pickup.confirmed", r)
        self.assertEqual(r["ingress"]["status"], "accepted", r)
        released = pickups + [by_django]
        return created, released

    def wait_settled(self, released):
        """Waits until every job is done, none dead; returns /stats."""
        def settled():
            self.check_running()
            s = self.stats()
            done = (self.outcome(s, "processEscrowRelease", "ok") == len(released)
                    and self.outcome(s, "notifyNearbyWorkers", "ok") == 1
                    and all(self.unfinished(s, f) == 0 for f in s.get("functions", {}))
                    and s.get("pending", 0) == 0)
            return s if done else None
        s = self.wait(settled, 60, "every job done")
        self.check_time()
        self.assertEqual(s.get("dead_letters"), 0, s)
        for f, v in s["functions"].items():
            self.assertEqual(v.get("outcomes", {}).get("dead", 0), 0, (f, v))
        return s

    def check_node_job_counts(self, s, released):
        """The nodes in /stats are B's two, and their own counts cover the broker's."""
        # Nodes: exactly the two of B, and they ran the jobs (NODE_STATS every 5 s).
        def node_jobs():
            st = self.stats()
            nodes = {n["name"]: node_stats(n) for n in st["nodes"]}
            if sorted(nodes) != sorted(NODES):
                raise AssertionError("nodes in /stats: %s" % sorted(nodes))
            for name, ns in nodes.items():  # NODE_STATS names the node itself
                if ns.get("node", name) != name:
                    raise AssertionError("node %s reports stats as %r" % (name, ns.get("node")))
            per = {name: ns.get("jobs", {}) for name, ns in nodes.items()}
            esc = sum(j.get("processEscrowRelease", {}).get("ok", 0) for j in per.values())
            loc = [j.get("updateWorkerLocation", {}).get("ok", 0) for j in per.values()]
            near = sum(j.get("notifyNearbyWorkers", {}).get("ok", 0) for j in per.values())
            return per if esc >= len(released) and min(loc) >= 1 and near >= 1 else None
        per = self.wait(node_jobs, 20, "the nodes' own job counts in /stats", interval=1.0)
        sys.stderr.write("\n  jobs per node: %s\n  " % json.dumps(
            {n: {f: c.get("ok", 0) for f, c in sorted(j.items())} for n, j in sorted(per.items())}))
        total = {}
        for jobs in per.values():
            for f, c in jobs.items():
                total[f] = total.get(f, 0) + c.get("ok", 0)
        for f, v in s["functions"].items():
            ok = v.get("outcomes", {}).get("ok", 0)
            if f == "updateWorkerLocation":      # fanned out: counted once by the broker, once per node
                self.assertGreaterEqual(total.get(f, 0), ok * len(NODES), (f, per))
            else:
                self.assertGreaterEqual(total.get(f, 0), ok, (f, per))

    def check_django_effects(self, released):
        """Django saw one escrow release per pickup, and the geo load."""
        # Django (B) saw the effects: one release per pickup, each under its idempotency key.
        state = self.django("GET", "/api/demo/state/")
        rel = {}
        for e in state["escrow_releases"]:
            rel.setdefault(e["pickup_id"], []).append(e)
        for pid in released:
            self.assertEqual(len(rel.get(pid, [])), 1, (pid, state["escrow_releases"]))
            self.assertEqual(rel[pid][0]["reason"], "customer_confirmed")
        ok_calls = [c["pickup_id"] for c in state["escrow_calls"] if c["status_code"] == 200]
        self.assertEqual(sorted(ok_calls), sorted(released))
        self.assertIn(("GET", "/api/workers/available/"),
                      {(q.get("method"), q.get("path")) for q in state["requests"]}, "geo loaded workers")

    def check_notifications(self, created, released):
        """The pushes B's nodes wrote to their outboxes."""
        # Notifications written by B's nodes: escrow_released to each customer, and the
        # moved worker notified of the new pickup (the location update reached the geo actors).
        pushes = [dict(x, _node=n) for n in NODES for x in self.outbox(n)]
        notified = {(x["user_id"], x["notification_type"], x["data"].get("pickup_id")) for x in pushes}
        self.assertIn((MOVED_WORKER, "pickup_requested", created), notified, pushes)
        self.assertIn((201, "pickup_requested", created), notified, pushes)
        for pid in released:
            self.assertTrue(any(t == "escrow_released" and p == pid for _, t, p in notified), (pid, notified))

    # ---------------------------------------------------------------- sockets
    def check_sockets(self):
        """Every TCP/UDP socket of both namespaces is between the two namespace
        addresses: nothing listens on 0.0.0.0 or on loopback, nothing (not even a
        process talking to its own namespace) goes through 127.0.0.1."""
        rows_a, rows_b = self.ss(NS_A), self.ss(NS_B)
        self.assertTrue(rows_a and rows_b)
        for ns, rows, own in ((NS_A, rows_a, ADDR_A), (NS_B, rows_b, ADDR_B)):
            for r in rows:
                self.assertEqual(r["local"], own, "%s: %s" % (ns, r["line"]))
                if r["state"] not in ("LISTEN", "UNCONN"):
                    self.assertIn(r["peer"], (ADDR_A, ADDR_B), "%s: %s" % (ns, r["line"]))
        listen_a = {(r["local"], r["lport"]) for r in rows_a if r["state"] == "LISTEN"}
        self.assertEqual(listen_a, {(ADDR_A, "5555"), (ADDR_A, "5556"), (ADDR_A, "9464")}, rows_a)
        self.assertTrue(all(ss_pids(r) == {self.broker.pid} for r in rows_a if r["state"] == "LISTEN"), rows_a)
        listen_b = {(r["local"], r["lport"]) for r in rows_b if r["state"] == "LISTEN"}
        self.assertEqual(listen_b, {(ADDR_B, "8000")}, "only Django listens in B, nodes listen on nothing")
        for node in self.nodes:  # each node: its cluster connection from B to A, Django at B's address
            conns = [r for r in rows_b if node.pid in ss_pids(r) and r["state"] == "ESTAB"]
            self.assertIn((ADDR_A, "5556"), {(r["peer"], r["pport"]) for r in conns}, (node.name, rows_b))
            self.assertTrue({(r["peer"], r["pport"]) for r in conns} <= {(ADDR_A, "5556"), (ADDR_B, "8000")},
                            (node.name, conns))
        # the broker sees the nodes coming from B's address; Django's events too
        from_b = [r for r in rows_a if self.broker.pid in ss_pids(r) and r["state"] == "ESTAB"
                  and r["lport"] == "5556"]
        self.assertEqual({r["peer"] for r in from_b}, {ADDR_B}, rows_a)
        self.assertGreaterEqual(len(from_b), len(NODES))
        self.assertIn((ADDR_A, "5555"), {(r["peer"], r["pport"]) for r in rows_b
                                         if self.django_proc.pid in ss_pids(r)}, rows_b)
        # the traffic crossed the veth pair
        for ns, dev in ((NS_A, VETH_A), (NS_B, VETH_B)):
            st = json.loads(run(IP, "-n", ns, "-s", "-j", "link", "show", dev).stdout)[0]["stats64"]
            self.assertGreater(st["rx"]["bytes"], 10000, (ns, st))
            self.assertGreater(st["tx"]["bytes"], 10000, (ns, st))
        # and the root namespace has nothing of it
        root = run(SS, "-Htuna").stdout
        self.assertNotIn("10.231.%d." % NET, root)
        self.assertEqual(self.root_network(), self.root_before)

    # -------------------------------------------------------- shutdown
    def test_3_everything_stops_cleanly(self):
        for node in self.nodes:
            self.assertTrue(node.running(), node.tail())
        codes = {}
        for p in self.nodes + [self.broker, self.django_proc, self.agent]:
            codes[p.name] = p.stop(timeout=15)
        for p in self.nodes + [self.broker]:
            self.assertEqual(codes[p.name], 0, "%s exit %s:\n%s" % (p.name, codes[p.name], p.tail()))
            self.assertIsNone(sanitizer_report(p.text()), p.tail())
        self.assertEqual(run(IP, "netns", "pids", NS_A).stdout.split(), [])
        self.assertEqual(run(IP, "netns", "pids", NS_B).stdout.split(), [])

    # -------------------------------------------------------- stats helpers
    @staticmethod
    def outcome(stats, function, outcome):
        return stats.get("functions", {}).get(function, {}).get("outcomes", {}).get(outcome, 0)

    @staticmethod
    def unfinished(stats, function):
        f = stats.get("functions", {}).get(function, {})
        return f.get("ready", 0) + f.get("running", 0) + f.get("retry_wait", 0)


def emergency_cleanup():
    c = NetnsCluster
    for step in (c.stop_all, c.teardown_network):
        try:
            step()
        except Exception as e:
            sys.stderr.write("cleanup: %s\n" % e)
    for ns in (NS_A, NS_B):  # created_ns may not be set yet
        try:
            delete_netns(ns)
        except Exception as e:
            sys.stderr.write("cleanup: %s\n" % e)
    if getattr(c, "tmp", None):
        shutil.rmtree(c.tmp, ignore_errors=True)


def main():
    argv = sys.argv[1:]
    if argv[:1] == ["--agent"]:
        agent_main()
        return
    if "--klynaa" in argv:
        i = argv.index("--klynaa")
        support.KLYNAA = os.path.abspath(argv[i + 1])
        del argv[i:i + 2]

    def on_term(signum, frame):
        # CTest's timeout or an operator's kill: class cleanups would not run, so
        # do what they do (processes, namespaces, temp dir) and exit.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        emergency_cleanup()
        os._exit(128 + signum)
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    unittest.main(argv=[sys.argv[0]] + argv, verbosity=2)


if __name__ == "__main__":
    main()

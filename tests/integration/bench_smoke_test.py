#!/usr/bin/python3
"""Smoke test of the benchmark (issue 8): klynaa-bench drives a real `klynaa
run` with a few thousand events and prints one JSON line whose counts add up;
a benchmark that cannot reach a broker, or whose jobs cannot all finish, says
so and exits non-zero without a figure. No timing is asserted here: the
figures belong to bench/compare.sh (docs/performance.md).

    bench_smoke_test.py --bench build/klynaa-bench --klynaa build/klynaa
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "support"))
from testutil import free_port  # noqa: E402

ARGS = None


def run_bench(*extra, timeout=240):
    env = dict(os.environ, KLYNAA_SCHEDULER_MISFIRE_GRACE_SECONDS="0")
    return subprocess.run([ARGS.bench, *extra], capture_output=True, text=True, timeout=timeout, env=env)


class BenchSmokeTest(unittest.TestCase):
    def test_a_short_run_completes_every_job_and_reports_consistent_counts(self):
        with tempfile.TemporaryDirectory() as tmp:
            r = run_bench("--start", "--klynaa", ARGS.klynaa, "--tmp-dir", tmp, "--count", "3000",
                          "--connections", "2", "--window", "64", "--keys", "100", "--e2e-every", "50")
            self.assertEqual(r.returncode, 0, r.stderr[-3000:])
            lines = [l for l in r.stdout.splitlines() if l.startswith("{")]
            self.assertEqual(len(lines), 1, r.stdout)
            out = json.loads(lines[0])
            self.assertEqual(out["count"], 3000)
            self.assertEqual(out["jobs_done"], 3000)  # every job of the waited function finished
            self.assertEqual(out["ack_latency_ms"]["samples"] + out["e2e_latency_ms"]["samples"], 3000)
            self.assertEqual(out["e2e_latency_ms"]["samples"], 60)
            for key in ("ingress_acks_per_s", "e2e_jobs_per_s", "rss_mb"):
                self.assertGreater(out[key], 0, key)
            for key in ("p50", "p99", "p999"):
                self.assertIsNotNone(out["ack_latency_ms"][key], key)
            self.assertLessEqual(out["ack_latency_ms"]["p50"], out["ack_latency_ms"]["p99"])
            # The broker's group commits (/stats "store") carried every request and
            # every job's end (per-commit averages are rounded to 3 decimals).
            sc = out["store_commits"]
            self.assertGreater(sc["commits"], 0)
            self.assertGreaterEqual(sc["requests_per_commit"] * sc["commits"], 3000 - 2)
            self.assertGreaterEqual(sc["updates_per_commit"] * sc["commits"], 3000 - 2)
            self.assertGreater(sc["commit_ms_avg"], 0)
            self.assertEqual(os.listdir(tmp), [])  # its klynaa run's data dir is gone

    def test_broker_only_measures_the_ingress_alone(self):
        with tempfile.TemporaryDirectory() as tmp:
            r = run_bench("--start", "--broker-only", "--klynaa", ARGS.klynaa, "--tmp-dir", tmp, "--count", "2000",
                          "--connections", "2", "--window", "64")
            self.assertEqual(r.returncode, 0, r.stderr[-3000:])
            out = json.loads([l for l in r.stdout.splitlines() if l.startswith("{")][0])
            self.assertEqual(out["ack_latency_ms"]["samples"], 2000)  # every request acknowledged
            self.assertGreater(out["ingress_acks_per_s"], 0)
            self.assertIsNone(out["e2e_jobs_per_s"])  # no node: no job ran, none waited for
            self.assertEqual(os.listdir(tmp), [])
        r = run_bench("--broker-only", "--ingress", "tcp://127.0.0.1:%d" % free_port(), timeout=60)
        self.assertEqual(r.returncode, 2)
        self.assertIn("--broker-only goes with --start", r.stderr)

    def test_no_broker_is_an_error_and_no_figure(self):
        r = run_bench("--ingress", "tcp://127.0.0.1:%d" % free_port(), "--count", "10", "--no-wait", timeout=60)
        self.assertNotEqual(r.returncode, 0)
        self.assertNotIn("{", r.stdout)
        self.assertTrue(r.stderr.strip(), "says why")

    def test_jobs_that_cannot_finish_are_an_error_and_no_figure(self):
        # `klynaa broker` alone: no node runs the jobs, so they never finish
        # within the bound.
        with tempfile.TemporaryDirectory() as tmp:
            env = dict(os.environ, KLYNAA_ADMIN_BIND="127.0.0.1:0", KLYNAA_SCHEDULER_MISFIRE_GRACE_SECONDS="0",
                       KLYNAA_INGRESS_BIND="tcp://127.0.0.1:*", KLYNAA_CLUSTER_BIND="tcp://127.0.0.1:*")
            with open(os.path.join(tmp, "broker.log"), "w") as log:
                broker = subprocess.Popen([ARGS.klynaa, "broker", "--data-dir", tmp], stderr=log, env=env)
            try:
                info = os.path.join(tmp, "broker.json")
                for _ in range(300):
                    if os.path.exists(info) and os.path.getsize(info) > 0:
                        break
                    subprocess.run(["sleep", "0.1"])
                # Publishes only (no invoke sample): every request is accepted,
                # then the wait for the jobs through /stats runs out.
                r = run_bench("--data-dir", tmp, "--count", "50", "--e2e-every", "0", "--timeout", "3", timeout=60)
                self.assertNotEqual(r.returncode, 0)
                self.assertNotIn("{", r.stdout)
                self.assertIn("no figures from an incomplete run", r.stderr)
            finally:
                broker.terminate()
                broker.wait(20)


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--bench", required=True)
    p.add_argument("--klynaa", required=True)
    ARGS, rest = p.parse_known_args()
    unittest.main(argv=[sys.argv[0]] + rest, verbosity=2)

#!/usr/bin/python3
"""The fake upstream of the benchmarks (bench/fake_upstream.cpp, klynaa-upstream):
the Django API answers the node needs, the latency held on timers, the 503s above
--capacity, HTTP/1.1 keep-alive and HTTP/2 with prior knowledge, 400 for
malformed input, the /_stats counters and the final JSON line on SIGTERM.
Correctness only: no throughput is asserted (docs/performance.md has figures).

    fake_upstream_test.py --upstream build/klynaa-upstream

Standard library only, plus /usr/bin/curl for one HTTP/2 request. HTTP/2 over
one connection is driven by a minimal client written here (frames and a few
HPACK literals): Debian 12's curl 7.88.1 cannot reuse a prior-knowledge
connection (curl issue #10634, fixed in 7.89), so `curl --http2-prior-knowledge
URL URL ...` fails from the second URL on, against any server.
"""
import argparse
import http.client
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import unittest

ARGS = None
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


class Upstream:
    """A klynaa-upstream on a free port; stopped (SIGTERM, then SIGKILL) on exit."""

    def __init__(self, *flags):
        self.proc = subprocess.Popen([ARGS.upstream, "--port", "0", *flags], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
        ready, _, _ = select.select([self.proc.stdout], [], [], 10)
        if not ready:
            self.stop()
            raise AssertionError("klynaa-upstream printed nothing within 10 s")
        first = json.loads(self.proc.stdout.readline())
        host, port = first["listening"].rsplit(":", 1)
        self.host, self.port = host, int(port)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        for f in (self.proc.stdout, self.proc.stderr):
            if f:
                f.close()

    def url(self, path):
        return "http://%s:%d%s" % (self.host, self.port, path)

    def request(self, method, path, body=None, headers=None, timeout=10):
        """(status, headers dict, body bytes, seconds) over a new HTTP/1.1 connection."""
        c = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            start = time.monotonic()
            c.request(method, path, body=body, headers=headers or {})
            r = c.getresponse()
            data = r.read()
            return r.status, dict(r.getheaders()), data, time.monotonic() - start
        finally:
            c.close()

    def stats(self):
        status, _, body, _ = self.request("GET", "/_stats")
        assert status == 200, status
        return json.loads(body)

    def raw(self, data, timeout=5):
        """Sends bytes on a new connection; returns everything read until the server closes."""
        with socket.create_connection((self.host, self.port), timeout=timeout) as s:
            s.sendall(data)
            out = b""
            while True:
                b = s.recv(65536)
                if not b:
                    return out
                out += b


# ---- a minimal HTTP/2 client: enough to send GETs and read the answers

def h2_frame(ftype, flags, stream_id, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + struct.pack(">I", stream_id) + payload


def h2_frame_types(data):
    types = []
    while len(data) >= 9:
        types.append(data[3])
        data = data[9 + int.from_bytes(data[:3], "big"):]
    return types


def h2_get_headers(path, authority=b"127.0.0.1"):
    # HPACK: :method GET (static 2), :scheme http (static 6), then :path (name 4)
    # and :authority (name 1) as literals with incremental indexing, not Huffman-coded.
    assert len(path) < 127 and len(authority) < 127
    return bytes([0x82, 0x86, 0x44, len(path)]) + path + bytes([0x41, len(authority)]) + authority


def h2_get_many(host, port, paths, timeout=10):
    """GETs every path on one HTTP/2 connection (streams 1, 3, 5, ... all at once);
    returns {stream_id: (status_byte, body)}, status_byte 0x88 being :status 200."""
    with socket.create_connection((host, port), timeout=timeout) as s:
        out = H2_PREFACE + h2_frame(0x4, 0, 0)  # empty SETTINGS
        ids = []
        for k, path in enumerate(paths):
            sid = 2 * k + 1
            ids.append(sid)
            out += h2_frame(0x1, 0x5, sid, h2_get_headers(path.encode()))  # END_STREAM | END_HEADERS
        s.sendall(out)
        buf, done, status, bodies = b"", set(), {}, {sid: b"" for sid in ids}
        deadline = time.monotonic() + timeout
        while len(done) < len(ids):
            if time.monotonic() > deadline:
                raise AssertionError("HTTP/2 answers missing for streams %s" % sorted(set(ids) - done))
            chunk = s.recv(65536)
            if not chunk:
                raise AssertionError("the server closed the HTTP/2 connection early")
            buf += chunk
            while len(buf) >= 9:
                length = int.from_bytes(buf[:3], "big")
                if len(buf) < 9 + length:
                    break
                ftype, flags = buf[3], buf[4]
                sid = int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF
                payload, buf = buf[9:9 + length], buf[9 + length:]
                if ftype == 0x4 and not flags & 0x1:
                    s.sendall(h2_frame(0x4, 0x1, 0))  # SETTINGS ACK
                elif ftype == 0x7:
                    raise AssertionError("GOAWAY: %r" % payload)
                elif ftype == 0x3:
                    raise AssertionError("RST_STREAM on stream %d" % sid)
                elif ftype == 0x1 and sid in bodies:
                    status[sid] = payload[0]  # nghttp2 sends :status 200 as the indexed 0x88
                elif ftype == 0x0 and sid in bodies:
                    bodies[sid] += payload
                if ftype in (0x0, 0x1) and flags & 0x1 and sid in bodies:
                    done.add(sid)
        return {sid: (status.get(sid), bodies[sid]) for sid in ids}


class FakeUpstreamTest(unittest.TestCase):
    def test_pickup_and_the_other_django_answers_the_node_parses(self):
        with Upstream() as up:
            status, headers, body, _ = up.request("GET", "/api/serverless/pickups/42/",
                                                  headers={"Authorization": "Api-Key k", "Accept": "application/json"})
            self.assertEqual(status, 200)
            self.assertEqual(headers["Content-Type"], "application/json")
            p = json.loads(body)
            self.assertEqual(p["id"], 42)
            self.assertIsInstance(p["customer_id"], int)  # what django_client::get_pickup requires
            self.assertIsInstance(p["worker_id"], int)
            self.assertIsInstance(p["price"], float)
            self.assertEqual(p["currency"], "NGN")

            status, _, body, _ = up.request("GET", "/api/users/%d/tokens/" % p["customer_id"])
            self.assertEqual(status, 200)
            tokens = json.loads(body)["tokens"]
            self.assertEqual(len(tokens), 1)
            self.assertTrue(tokens[0]["token"])
            status, _, body, _ = up.request("GET", "/api/users/admins/")
            self.assertEqual((status, [a["id"] for a in json.loads(body)["admins"]]), (200, [1, 2]))
            self.assertEqual(up.request("DELETE", "/api/users/7/tokens/arn:aws:sns:x/y/")[0], 204)
            status, _, body, _ = up.request("POST", "/api/serverless/escrow/42/release/",
                                            body=b'{"reason": "customer_confirmed"}',
                                            headers={"Content-Type": "application/json",
                                                     "Idempotency-Key": "escrow-release-42"})
            self.assertEqual((status, json.loads(body)["status"]), (200, "released"))
            self.assertEqual(up.request("POST", "/api/serverless/escrow/42/release/", body=b"{}")[0], 400)
            status, _, body, _ = up.request("GET", "/api/workers/available/")
            self.assertEqual((status, len(json.loads(body)["workers"])), (200, 3))
            status, _, body, _ = up.request("GET", "/api/analytics/pickups/?from=2026-01-01T00:00:00Z")
            self.assertEqual((status, json.loads(body)["next"]), (200, None))
            self.assertEqual(up.request("POST", "/api/reports/", body=b'{"kind": "daily"}')[0], 201)
            self.assertEqual(json.loads(up.request("POST", "/api/cleanup/", body=b"{}")[2]), {"deleted": 0})
            # the push providers: webhook, FCM (token and send), SNS
            self.assertEqual(up.request("POST", "/push", body=b'{"token": "t"}')[0], 200)
            self.assertIn("access_token", json.loads(up.request("POST", "/token", body=b"grant_type=x")[2]))
            self.assertEqual(json.loads(up.request("POST", "/v1/projects/p1/messages:send", body=b"{}")[2])["name"][:12],
                             "projects/p1/")
            self.assertIn(b"<MessageId>", up.request("POST", "/", body=b"Action=Publish")[2])
            # unknown route, wrong method
            self.assertEqual(up.request("GET", "/api/nope/")[0], 404)
            status, headers, _, _ = up.request("POST", "/api/serverless/pickups/1/", body=b"{}")
            self.assertEqual((status, headers.get("Allow")), (405, "GET"))

            st = up.stats()
            by_class = st["requests"]["by_class"]
            self.assertEqual(by_class["pickup"], {"200": 1, "405": 1})
            self.assertEqual(by_class["escrow_release"], {"200": 1, "400": 1})
            self.assertEqual(by_class["token_delete"], {"204": 1})
            self.assertEqual(by_class["webhook"], {"200": 1})
            self.assertEqual(by_class["not_found"], {"404": 1})
            self.assertEqual(st["requests"]["total"], 16)  # /_stats itself is not counted
            self.assertEqual(st["requests"]["by_status"], {"200": 11, "201": 1, "204": 1, "400": 1, "404": 1,
                                                           "405": 1})
            self.assertEqual(st["latency_ms"]["count"], 16)
            self.assertEqual(st["connections"]["http1"], 17)  # one per request, and this /_stats
            self.assertEqual(st["connections"]["http2"], 0)
            self.assertEqual((st["in_flight"], st["refused"]), (0, 0))

    def test_api_key_when_required(self):
        with Upstream("--api-key", "s3cret") as up:
            self.assertEqual(up.request("GET", "/api/users/admins/")[0], 401)
            self.assertEqual(up.request("GET", "/api/users/admins/", headers={"Authorization": "Api-Key nope"})[0], 401)
            self.assertEqual(up.request("GET", "/api/users/admins/", headers={"Authorization": "Api-Key s3cret"})[0], 200)
            self.assertEqual(up.request("POST", "/push", body=b"{}")[0], 200)  # not an /api/ route

    def test_latency_is_applied_and_steps(self):
        with Upstream("--latency-ms", "200") as up:
            status, _, _, took = up.request("GET", "/api/serverless/pickups/1/")
            self.assertEqual(status, 200)
            self.assertGreaterEqual(took, 0.2)
            _, _, _, took = up.request("GET", "/_stats")
            self.assertLess(took, 0.2)  # /_stats is answered at once
            st = up.stats()
            self.assertGreaterEqual(st["latency_ms"]["p50"], 199)
            self.assertEqual(st["latency_ms_now"], 200)
        with Upstream("--latency-ms", "0", "--latency-step-ms", "300", "--step-after-s", "0.6") as up:
            started = time.monotonic()
            took = up.request("GET", "/api/users/admins/")[3]
            if time.monotonic() - started < 0.6:  # still before the step (a loaded machine may be late)
                self.assertLess(took, 0.3)
            time.sleep(max(0.0, 0.7 - (time.monotonic() - started)))
            self.assertGreaterEqual(up.request("GET", "/api/users/admins/")[3], 0.3)
            self.assertEqual(up.stats()["latency_ms_now"], 300)

    def test_above_capacity_503_with_retry_after(self):
        with Upstream("--latency-ms", "700", "--capacity", "2", "--retry-after-s", "3") as up:
            results = []
            lock = threading.Lock()

            def one():
                r = up.request("GET", "/api/serverless/pickups/5/")
                with lock:
                    results.append(r)

            threads = [threading.Thread(target=one) for _ in range(5)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=20)
            self.assertEqual(len(results), 5)
            refused = [r for r in results if r[0] == 503]
            served = [r for r in results if r[0] == 200]
            self.assertEqual(len(refused) + len(served), 5)
            self.assertGreaterEqual(len(refused), 1)
            self.assertLessEqual(len(served), 4)
            for status, headers, body, took in refused:
                self.assertEqual(headers.get("Retry-After"), "3")
                self.assertEqual(json.loads(body)["error"], "unavailable")
            st = up.stats()
            self.assertEqual(st["refused"], len(refused))
            self.assertEqual(st["requests"]["by_class"]["pickup"].get("503"), len(refused))
            self.assertLessEqual(st["max_in_flight"], 2)
            self.assertGreaterEqual(st["max_in_flight"], 1)
            self.assertEqual(st["in_flight"], 0)

    def test_http11_keep_alive_serves_many_requests_on_one_connection(self):
        with Upstream() as up:
            c = http.client.HTTPConnection(up.host, up.port, timeout=10)
            for k in range(1, 6):
                c.request("GET", "/api/users/%d/tokens/" % k)
                r = c.getresponse()
                self.assertEqual(json.loads(r.read())["user_id"], k)
            c.close()
            # pipelined: three requests in one write, three answers in order
            out = up.raw(b"GET /api/users/1/tokens/ HTTP/1.1\r\nHost: x\r\n\r\n"
                         b"GET /api/users/2/tokens/ HTTP/1.1\r\nHost: x\r\n\r\n"
                         b"GET /api/users/3/tokens/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            self.assertEqual(out.count(b"HTTP/1.1 200 OK"), 3)
            self.assertLess(out.index(b'"user_id":1'), out.index(b'"user_id":2'))
            self.assertLess(out.index(b'"user_id":2'), out.index(b'"user_id":3'))
            st = up.stats()
            self.assertEqual(st["connections"]["http1"], 3)  # keep-alive, pipelined, this /_stats
            self.assertEqual(st["requests"]["total"], 8)

    def test_http2_prior_knowledge_many_streams_on_one_connection(self):
        with Upstream("--latency-ms", "50") as up:
            paths = ["/api/serverless/pickups/%d/" % k for k in range(1, 6)] + ["/api/users/admins/"]
            answers = h2_get_many(up.host, up.port, paths)
            for k, sid in enumerate(sorted(answers)):
                status, body = answers[sid]
                self.assertEqual(status, 0x88, "stream %d" % sid)
                if k < 5:
                    self.assertEqual(json.loads(body)["id"], k + 1)
                else:
                    self.assertIn("admins", json.loads(body))
            st = up.stats()
            self.assertEqual(st["connections"]["http2"], 1)
            self.assertEqual(st["h2_streams"], 6)
            self.assertEqual(st["requests"]["by_class"]["pickup"], {"200": 5})
            self.assertEqual(st["max_in_flight"], 6)  # all six held at once on one connection
            self.assertEqual(st["h2_protocol_errors"], 0)

            # and curl (libcurl's nghttp2) with prior knowledge, one request
            r = subprocess.run(["curl", "-sS", "--http2-prior-knowledge", "--max-time", "10",
                                "-w", "\n%{http_version} %{http_code}", up.url("/api/serverless/pickups/9/")],
                               capture_output=True, text=True, timeout=20)
            self.assertEqual(r.returncode, 0, r.stderr)
            body, _, tail = r.stdout.rpartition("\n")
            self.assertEqual(tail, "2 200")
            self.assertEqual(json.loads(body)["id"], 9)
            st = up.stats()
            self.assertEqual((st["connections"]["http2"], st["h2_streams"]), (2, 7))

    def test_malformed_input_gets_400_and_a_close(self):
        with Upstream() as up:
            for bad in (b"garbage\r\n\r\n",
                        b"\x00\x01\x02\xff binary",
                        b"GET /x HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
                        b"GET /x HTTP/1.1\r\nBad Header\r\n\r\n",
                        b"GET /x HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
                        b"POST /push HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"):
                out = up.raw(bad)  # returns once the server has closed
                self.assertTrue(out.startswith(b"HTTP/1.1 400 Bad Request\r\n"), (bad, out))
                self.assertIn(b"Connection: close\r\n", out)
            self.assertTrue(up.raw(b"POST /push HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n")
                            .startswith(b"HTTP/1.1 413 "))
            # a broken HTTP/2 connection is ended with GOAWAY, the server stays up
            self.assertIn(0x7, h2_frame_types(up.raw(H2_PREFACE + b"\xff" * 30)))
            st = up.stats()
            self.assertEqual(st["requests"]["by_class"]["malformed"], {"400": 6, "413": 1})
            self.assertEqual(st["h2_protocol_errors"], 1)
            self.assertEqual(st["connections"]["open"], 1)  # only this /_stats connection

    def test_client_vanishing_mid_request_is_counted_and_harmless(self):
        with Upstream("--latency-ms", "300") as up:
            with socket.create_connection((up.host, up.port), timeout=5) as s:
                s.sendall(b"GET /api/users/admins/ HTTP/1.1\r\nHost: x\r\n\r\n")
                time.sleep(0.1)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with RST
            with socket.create_connection((up.host, up.port), timeout=5) as s:
                s.sendall(b"POST /push HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"half")  # then gone
            time.sleep(0.5)
            st = up.stats()
            self.assertEqual((st["abandoned"], st["in_flight"]), (1, 0))
            self.assertEqual(st["connections"]["open"], 1)
            self.assertEqual(up.request("GET", "/api/users/admins/")[0], 200)

    def test_sigterm_prints_the_final_json_and_exits_0(self):
        up = Upstream()
        try:
            self.assertEqual(up.request("GET", "/api/serverless/pickups/3/")[0], 200)
            up.proc.send_signal(signal.SIGTERM)
            out, err = up.proc.communicate(timeout=10)
            self.assertEqual(up.proc.returncode, 0, err)
            final = json.loads(out.decode().strip().splitlines()[-1])
            self.assertIs(final["final"], True)
            self.assertEqual(final["requests"]["by_class"]["pickup"], {"200": 1})
            self.assertEqual(final["listening"], "%s:%d" % (up.host, up.port))
        finally:
            up.stop()

    def test_bad_flags_exit_2(self):
        for flags in (["--latency-ms", "x"], ["--latency-step-ms", "5"], ["--bogus"], ["--bind", "nowhere"]):
            r = subprocess.run([ARGS.upstream, *flags], capture_output=True, text=True, timeout=10)
            self.assertEqual(r.returncode, 2, flags)
            self.assertIn("klynaa-upstream:", r.stderr)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--upstream", required=True)
    ARGS, rest = parser.parse_known_args()
    ARGS.upstream = os.path.abspath(ARGS.upstream)
    unittest.main(argv=[sys.argv[0], *rest], verbosity=2)

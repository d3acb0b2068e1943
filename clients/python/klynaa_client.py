"""Minimal Python client for the Klynaa Jobs ingress (ZeroMQ + msgpack).

The broker binds a ZeroMQ ROUTER socket (default ``tcp://127.0.0.1:5555``).
This client talks to it with a DEALER socket, sending one empty delimiter frame
followed by one msgpack map per request, and matching replies by ``id``.

Dependencies: ``pyzmq`` and ``msgpack`` (Debian: ``python3-zmq``,
``python3-msgpack``).  Nothing else.

Example::

    from klynaa_client import Client, KlynaaUnavailable

    client = Client("tcp://127.0.0.1:5555", timeout_s=5)
    print(client.ping())                       # {'v': 1, 'id': '...', 'status': 'pong'}

    reply = client.publish("pickup.created", {
        "pickup_id": 7, "customer_id": 101, "lat": 6.5244, "lng": 3.3792,
    })
    if reply["status"] in ("accepted", "duplicate"):
        print("jobs:", reply["jobs"])
    elif reply["status"] == "rejected":
        print("rejected:", reply["error"]["code"], reply["error"]["message"])

    reply = client.invoke("cleanupData", {"older_than_days": 90}, timeout_ms=10000)
    # reply["status"] is "ok" (with "result"), "failed" (with "error") or "timeout"

Semantics
---------
* Every method returns the broker's reply as a ``dict`` whatever its
  ``status`` (``accepted``, ``duplicate``, ``rejected``, ``ok``, ``failed``,
  ``timeout``, ``pong``); rejections are *not* raised.
* When no reply arrives within ``timeout_s`` the socket is closed (linger 0),
  a fresh one is connected to the next endpoint of ``endpoints`` (a
  comma-separated list, tried in turn) and the *same* request, with the *same*
  ``id``, is sent again.  This is safe: the broker deduplicates by ``id``.
  After ``retries`` resends without an answer :class:`KlynaaUnavailable` is
  raised.
* For ``invoke`` each attempt waits ``timeout_s`` plus the invoke's own
  ``timeout_ms`` (default 30000 ms, the broker's default), because the broker
  only replies once the job has ended or ``timeout_ms`` has passed.
* ``id`` defaults to ``uuid4().hex``.  Pass your own stable id (e.g. derived
  from a database row) to make resends from your side idempotent as well.
* Thread-safe: a request borrows a socket from a small pool (ZeroMQ sockets
  must not be used by two threads at once), so requests from several threads
  are in flight together; the ZeroMQ context is shared.
"""

import threading
import time
import uuid

import msgpack
import zmq

__all__ = ["Client", "KlynaaUnavailable", "KlynaaError", "PROTOCOL_VERSION"]

PROTOCOL_VERSION = 1
DEFAULT_ENDPOINT = "tcp://127.0.0.1:5555"
DEFAULT_INVOKE_TIMEOUT_MS = 30000


class KlynaaError(Exception):
    """Base class of this module's exceptions."""


class KlynaaUnavailable(KlynaaError):
    """No reply from any ingress endpoint within the timeout, after retries."""

    def __init__(self, message, request_id=None, endpoints=None):
        super().__init__(message)
        self.request_id = request_id
        self.endpoints = endpoints or []


def _new_id():
    return uuid.uuid4().hex


class Client:
    """Client for the Klynaa Jobs ingress.

    :param endpoints: one ZeroMQ endpoint or a comma-separated list (or a list
        of strings); on a timeout the next one is tried.
    :param timeout_s: seconds to wait for a reply per attempt.
    :param retries: how many times a request is resent (on a fresh socket,
        next endpoint) after a timeout before :class:`KlynaaUnavailable`.
        The default ``None`` means ``max(2, len(endpoints))``, i.e. every
        endpoint is tried at least once.
    :param context: optional ``zmq.Context`` to use (default: a private one).
    """

    MAX_IDLE = 16  # idle sockets kept for reuse

    def __init__(self, endpoints=DEFAULT_ENDPOINT, timeout_s=5, retries=None, context=None):
        if isinstance(endpoints, str):
            eps = [e.strip() for e in endpoints.split(",") if e.strip()]
        else:
            eps = [str(e).strip() for e in endpoints if str(e).strip()]
        if not eps:
            raise ValueError("Client needs at least one ingress endpoint, e.g. tcp://127.0.0.1:5555")
        self.endpoints = eps
        self.timeout_s = float(timeout_s)
        self.retries = max(2, len(eps)) if retries is None else max(0, int(retries))
        self._own_context = context is None
        self._ctx = context if context is not None else zmq.Context()
        self._lock = threading.Lock()
        self._sockets = set()   # every open socket
        self._idle = []         # (socket, endpoint) not in use, LIFO
        self._next_endpoint = 0
        self._closed = False

    # ------------------------------------------------------------------ API

    def publish(self, type, data, id=None, ts=None):
        """Publish an event (contract §2, e.g. ``"pickup.created"``).

        :param type: event type.
        :param data: payload map.
        :param id: idempotency key, 1-128 chars of ``[A-Za-z0-9._:-]``
            (default: ``uuid4().hex``).
        :param ts: when it happened: epoch milliseconds (int), or a
            ``datetime`` (converted); default: the broker's receive time.
        :returns: the reply dict (``accepted``/``duplicate`` with ``jobs``,
            or ``rejected`` with ``error``).
        """
        req = {"v": PROTOCOL_VERSION, "op": "publish", "id": id or _new_id(),
               "type": type, "data": data}
        if ts is not None:
            req["ts"] = _ts_ms(ts)
        return self._request(req, self.timeout_s)

    def invoke(self, function, data, id=None, timeout_ms=None):
        """Run a function (contract §2, e.g. ``"generateDailyReport"``) and
        wait for its outcome.

        :returns: the reply dict: ``ok`` with ``result``, ``failed`` with
            ``error``, ``timeout``, or ``rejected``.
        """
        req = {"v": PROTOCOL_VERSION, "op": "invoke", "id": id or _new_id(),
               "type": function, "data": data}
        if timeout_ms is not None:
            req["timeout_ms"] = int(timeout_ms)
        wait_ms = DEFAULT_INVOKE_TIMEOUT_MS if timeout_ms is None else int(timeout_ms)
        return self._request(req, self.timeout_s + wait_ms / 1000.0)

    def ping(self):
        """Ping the broker; returns ``{"v": 1, "id": ..., "status": "pong"}``."""
        return self._request({"v": PROTOCOL_VERSION, "op": "ping", "id": _new_id()}, self.timeout_s)

    def close(self):
        """Close every socket of this client (and its private context)."""
        with self._lock:
            self._closed = True
            socks, self._sockets, self._idle = list(self._sockets), set(), []
        for s in socks:
            try:
                s.close(linger=0)
            except Exception:
                pass
        if self._own_context:
            try:
                self._ctx.term()
            except Exception:
                pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ------------------------------------------------------------ internals

    def _acquire(self):
        """Take an idle socket from the pool, or connect a new one."""
        with self._lock:
            if self._closed:
                raise KlynaaError("client is closed")
            ep = self.endpoints[self._next_endpoint]
            while self._idle:
                sock, sock_ep = self._idle.pop()
                if sock_ep == ep:
                    return sock, ep
                self._sockets.discard(sock)
                sock.close(linger=0)
        sock = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(ep)
        with self._lock:
            self._sockets.add(sock)
        return sock, ep

    def _release(self, sock, ep):
        with self._lock:
            if not self._closed and len(self._idle) < self.MAX_IDLE:
                self._idle.append((sock, ep))
                return
            self._sockets.discard(sock)
        sock.close(linger=0)

    def _discard(self, sock, failed_ep):
        """Close a socket that timed out and move on to the next endpoint."""
        with self._lock:
            self._sockets.discard(sock)
            if self.endpoints[self._next_endpoint] == failed_ep:
                self._next_endpoint = (self._next_endpoint + 1) % len(self.endpoints)
        try:
            sock.close(linger=0)
        except Exception:
            pass

    def _request(self, req, wait_s):
        payload = msgpack.packb(req, use_bin_type=True)
        rid = req.get("id")
        tried = []
        for _attempt in range(self.retries + 1):
            sock, ep = self._acquire()
            tried.append(ep)
            try:
                sock.send_multipart([b"", payload])
                reply = self._await(sock, rid, wait_s)
            except zmq.ZMQError:
                reply = None
            if reply is not None:
                self._release(sock, ep)
                return reply
            # Timeout: the socket may still get a late reply, so drop it and
            # resend the same id on a fresh socket to the next endpoint.
            self._discard(sock, ep)
        raise KlynaaUnavailable(
            "no reply from the Klynaa ingress (%s) within %.1f s after %d attempt(s); "
            "is the broker running?" % (", ".join(dict.fromkeys(tried)), wait_s, len(tried)),
            request_id=rid, endpoints=tried)

    @staticmethod
    def _await(sock, rid, wait_s):
        deadline = time.monotonic() + wait_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            if not sock.poll(int(left * 1000) + 1, zmq.POLLIN):
                continue
            frames = sock.recv_multipart()
            if not frames:
                continue
            try:
                reply = msgpack.unpackb(frames[-1], raw=False, strict_map_key=False)
            except Exception:
                continue
            if not isinstance(reply, dict):
                continue
            rep_id = reply.get("id")
            # A reply whose id is nil (e.g. too_large, where the id is not
            # read) can only be ours: one request is in flight per socket.
            if rep_id == rid or rep_id is None:
                return reply


def _ts_ms(ts):
    if hasattr(ts, "timestamp"):
        return int(round(ts.timestamp() * 1000))
    return int(ts)


if __name__ == "__main__":  # tiny CLI: python3 klynaa_client.py ping|publish TYPE JSON|invoke FN JSON
    import json
    import os
    import sys

    ep = os.environ.get("KLYNAA_INGRESS", DEFAULT_ENDPOINT)
    args = sys.argv[1:]
    if not args or args[0] not in ("ping", "publish", "invoke"):
        print("usage: klynaa_client.py ping | publish TYPE JSON | invoke FUNCTION JSON  (env KLYNAA_INGRESS)",
              file=sys.stderr)
        sys.exit(2)
    with Client(ep) as c:
        try:
            if args[0] == "ping":
                r = c.ping()
            elif args[0] == "publish":
                r = c.publish(args[1], json.loads(args[2]))
            else:
                r = c.invoke(args[1], json.loads(args[2]))
        except KlynaaUnavailable as e:
            print(str(e), file=sys.stderr)
            sys.exit(1)
    print(json.dumps(r, default=str))

"""The :class:`Client` of the Klynaa Jobs Python client: sockets, resends,
failover and the retries of busy answers (the module docstring of
``klynaa_client`` describes them).

Part of :mod:`klynaa_client` (clients/python/klynaa_client.py), which
re-exports :class:`Client`: import it from ``klynaa_client``.
"""

import logging
import threading
import time

import msgpack
import zmq

from klynaa_client_base import (
    BUSY_CODES, DEFAULT_ENDPOINT, DEFAULT_INVOKE_TIMEOUT_MS, DEFAULT_RETRY_AFTER_MS, PROTOCOL_VERSION,
    STANDBY_PAUSE_S, KlynaaError, KlynaaInvokeFailed, KlynaaInvokeTimeout, KlynaaOverloaded,
    KlynaaRejected, KlynaaShuttingDown, KlynaaUnavailable, KlynaaUnexpectedReply,
    _is_standby, _new_id, _ts_ms)
from klynaa_client_curve import _curve_options

log = logging.getLogger("klynaa_client")

# ---------------------------------------------------------------------- client

class Client:
    """Client for the Klynaa Jobs ingress.

    :param endpoints: one ZeroMQ endpoint or a comma-separated list (or a list
        of strings); when one does not answer the next one is tried.
    :param timeout_s: seconds to wait for a reply per attempt (for ``invoke``:
        plus the invoke's ``timeout_ms``).
    :param retries: how many times a request is resent (on a fresh socket, next
        endpoint) after getting no reply, before :class:`KlynaaUnavailable`.
        The default ``None`` means ``max(2, len(endpoints))``, i.e. every
        endpoint is tried at least once.  A call's time budget is
        ``(retries + 1)`` × the per-attempt wait.
    :param retry_busy: retry ``overloaded`` / ``shutting_down`` rejections
        after ``retry_after_ms`` within the time budget (see the module
        docstring); ``False`` raises them at once.
    :param context: optional ``zmq.Context`` to use (default: a private one).
    :param curve_server_key: CURVE: the broker's public key, as a Z85 string
        (or bytes) or the path of its key file (``broker.pub``).
    :param curve_key_file: CURVE: this client's key pair file (``NAME.key``
        from ``klynaa keygen``) ...
    :param curve_public_key, curve_secret_key: ... or its keys as Z85 strings
        (the public key is derived from the secret one when left out).
        Without any ``curve_*`` parameter the connection is plain.  See the
        module docstring; bad keys raise ``ValueError`` here.
    """

    MAX_IDLE = 16  # idle sockets kept for reuse

    def __init__(self, endpoints=DEFAULT_ENDPOINT, timeout_s=5, retries=None, retry_busy=True, context=None,
                 curve_server_key=None, curve_public_key=None, curve_secret_key=None, curve_key_file=None):
        if isinstance(endpoints, str):
            eps = [e.strip() for e in endpoints.split(",") if e.strip()]
        else:
            eps = [str(e).strip() for e in endpoints if str(e).strip()]
        if not eps:
            raise ValueError("Client needs at least one ingress endpoint, e.g. tcp://127.0.0.1:5555")
        if float(timeout_s) <= 0:
            raise ValueError("timeout_s must be positive")
        self.endpoints = eps
        self.timeout_s = float(timeout_s)
        self.retries = max(2, len(eps)) if retries is None else max(0, int(retries))
        self.retry_busy = bool(retry_busy)
        self._curve = _curve_options(curve_server_key, curve_public_key, curve_secret_key, curve_key_file)
        self._own_context = context is None
        self._ctx = context if context is not None else zmq.Context()
        self._lock = threading.Lock()
        self._sockets = set()   # every open socket
        self._idle = []         # (socket, endpoint) not in use, LIFO
        self._next_endpoint = 0
        self._closed = False

    # ------------------------------------------------------------------ API

    def publish(self, type, data, id=None, ts=None):
        """Publish an event (e.g. ``"pickup.created"``; see
        docs/events-and-functions.md).

        :param type: event type.
        :param data: payload map.
        :param id: idempotency key, 1-128 chars of ``[A-Za-z0-9._:-]``
            (default: ``uuid4().hex``).  Sending the same id again is safe.
        :param ts: when it happened: epoch milliseconds (int), or a
            ``datetime`` (converted); default: the broker's receive time.
        :returns: the reply dict, ``status`` ``accepted`` or ``duplicate``,
            with ``jobs``.
        :raises KlynaaRejected: the request is wrong (``code``, ``field``).
        :raises KlynaaUnavailable: no answer in time, or (subclasses)
            overloaded / shutting down beyond the time budget.
        """
        req = {"v": PROTOCOL_VERSION, "op": "publish", "id": id or _new_id(), "type": type, "data": data}
        if ts is not None:
            req["ts"] = _ts_ms(ts)
        reply = self.request(req)
        status = reply.get("status")
        if status in ("accepted", "duplicate"):
            return reply
        self._raise_for(reply, req)

    def invoke(self, function, data, id=None, timeout_ms=None, ts=None):
        """Run a function (e.g. ``"processEscrowRelease"``) and wait for its
        outcome.

        :param timeout_ms: how long the broker waits for the job to end
            (default: the broker's, 30000 ms).
        :returns: the function's result (a dict).
        :raises KlynaaInvokeFailed: the job failed (``code`` ``permanent`` or
            ``exhausted``, ``http_status``).
        :raises KlynaaInvokeTimeout: ``timeout_ms`` passed first; the job keeps running.
        :raises KlynaaRejected, KlynaaUnavailable: as for :meth:`publish`.
        """
        req = {"v": PROTOCOL_VERSION, "op": "invoke", "id": id or _new_id(), "type": function, "data": data}
        if ts is not None:
            req["ts"] = _ts_ms(ts)
        if timeout_ms is not None:
            req["timeout_ms"] = int(timeout_ms)
        wait_ms = DEFAULT_INVOKE_TIMEOUT_MS if timeout_ms is None else int(timeout_ms)
        reply = self.request(req, self.timeout_s + wait_ms / 1000.0)
        status = reply.get("status")
        if status == "ok":
            result = reply.get("result")
            return result if result is not None else {}
        if status == "failed":
            raise KlynaaInvokeFailed(reply, function, request_id=req["id"])
        if status == "timeout":
            raise KlynaaInvokeTimeout(reply, function, wait_ms, request_id=req["id"])
        self._raise_for(reply, req)

    def ping(self):
        """Ping the broker; returns ``{"v": 1, "id": ..., "status": "pong"}``."""
        req = {"v": PROTOCOL_VERSION, "op": "ping", "id": _new_id()}
        reply = self.request(req)
        if reply.get("status") == "pong":
            return reply
        self._raise_for(reply, req)

    def request(self, req, wait_s=None):
        """Send one request map as it is and return the broker's reply dict,
        whatever its ``status`` (the resends, failover and busy retries of the
        module docstring apply).  Raises only :class:`KlynaaUnavailable` when
        no reply came.  ``wait_s`` is the per-attempt wait (default ``timeout_s``)."""
        return self._request(req, self.timeout_s if wait_s is None else float(wait_s))

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

    def _raise_for(self, reply, req):
        rid = req.get("id")
        status = reply.get("status")
        if status == "rejected":
            code = (reply.get("error") or {}).get("code") if isinstance(reply.get("error"), dict) else None
            if code == "overloaded":
                raise KlynaaOverloaded(reply, request_id=rid, endpoints=list(self.endpoints))
            if code == "shutting_down":
                raise KlynaaShuttingDown(reply, request_id=rid, endpoints=list(self.endpoints))
            raise KlynaaRejected(reply, request_id=rid)
        if status == "duplicate" and req.get("op") == "invoke":
            raise KlynaaUnexpectedReply(
                "id %s was first used by a publish, so this invoke started nothing (jobs %s); "
                "use a new id for the invoke" % (rid, reply.get("jobs")), request_id=rid, reply=reply)
        raise KlynaaUnexpectedReply("unexpected reply status %r to %s request %s" % (status, req.get("op"), rid),
                                    request_id=rid, reply=reply)

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
        # A connect()ed DEALER queues while the peer is away, so a send never
        # waits for long; the bound below makes sure it cannot hang regardless.
        sock.setsockopt(zmq.SNDTIMEO, max(1, int(self.timeout_s * 1000)))
        if self._curve is not None:
            server, public, secret = self._curve
            sock.curve_serverkey = server
            sock.curve_publickey = public
            sock.curve_secretkey = secret
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

    def _rotate(self, ep):
        with self._lock:
            if self.endpoints[self._next_endpoint] == ep:
                self._next_endpoint = (self._next_endpoint + 1) % len(self.endpoints)

    def _discard(self, sock, failed_ep):
        """Close a socket that timed out and move on to the next endpoint."""
        with self._lock:
            self._sockets.discard(sock)
        self._rotate(failed_ep)
        try:
            sock.close(linger=0)
        except Exception:
            pass

    def _request(self, req, wait_s):
        payload = msgpack.packb(req, use_bin_type=True)
        rid = req.get("id")
        start = time.monotonic()
        deadline = start + (self.retries + 1) * wait_s
        tried = []
        silent = 0  # attempts that got no reply
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            sock, ep = self._acquire()
            tried.append(ep)
            try:
                sock.send_multipart([b"", payload])
                reply = self._await(sock, rid, min(wait_s, left))
            except zmq.ZMQError:
                reply = None
            if reply is None:
                # The socket may still get a late reply, so drop it and resend
                # the same id on a fresh socket to the next endpoint.
                self._discard(sock, ep)
                silent += 1
                if silent > self.retries:
                    break
                continue
            self._release(sock, ep)
            delay = self._busy_delay(reply, ep)
            if delay is None:
                return reply
            if time.monotonic() + delay + wait_s > deadline:
                return reply  # does not fit: the caller raises KlynaaOverloaded / KlynaaShuttingDown
            log.info("request %s %s by %s; sending it again in %d ms", rid,
                     reply["error"]["code"], ep, int(delay * 1000))
            if delay > 0:
                time.sleep(delay)
        raise KlynaaUnavailable(
            "no reply from the Klynaa ingress (%s) within %.1f s after %d attempt(s); "
            "is the broker running?" % (", ".join(dict.fromkeys(tried)) or self.endpoints[0],
                                        time.monotonic() - start, len(tried)),
            request_id=rid, endpoints=tried)

    def _busy_delay(self, reply, ep):
        """Seconds to wait before resending a busy rejection, or None when the
        reply is final."""
        if not self.retry_busy or reply.get("status") != "rejected":
            return None
        err = reply.get("error")
        code = err.get("code") if isinstance(err, dict) else None
        if code not in BUSY_CODES:
            return None
        if code == "shutting_down" and len(self.endpoints) > 1:
            self._rotate(ep)  # that broker is draining: try the next one now
            return 0.0
        if code == "overloaded" and len(self.endpoints) > 1 and _is_standby(err):
            # A standby broker (another one holds the store's lease): the
            # active one is elsewhere.  A short pause, so that a failover in
            # progress (no broker active yet) is not a busy loop.
            self._rotate(ep)
            return STANDBY_PAUSE_S
        ms = reply.get("retry_after_ms")
        if not isinstance(ms, int) or isinstance(ms, bool) or ms < 0:
            ms = DEFAULT_RETRY_AFTER_MS
        return ms / 1000.0

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

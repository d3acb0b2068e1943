"""Python client for the Klynaa Jobs ingress (ZeroMQ + msgpack, KJIP/1).

The broker binds a ZeroMQ ROUTER socket (default ``tcp://127.0.0.1:5555``).
This client talks to it with DEALER sockets, sending one empty delimiter frame
followed by one msgpack map per request, and matching replies by ``id``.

Dependencies: ``pyzmq`` and ``msgpack`` (Debian: ``python3-zmq``,
``python3-msgpack``).  Django is optional: only :func:`publish_on_commit` and
:func:`django_client` import it.  The module is one file: install it into a
venv with ``pip install --no-build-isolation --no-index clients/python``
(``clients/python/pyproject.toml``, see ``docs/django.md``), or put
``clients/python`` on ``sys.path`` (or copy the file into your project).

Example::

    from klynaa_client import Client, KlynaaRejected, KlynaaUnavailable

    client = Client("tcp://127.0.0.1:5555", timeout_s=5)
    client.ping()                              # {'v': 1, 'id': '...', 'status': 'pong'}

    reply = client.publish("pickup.accepted",
                           {"pickup_id": 7, "customer_id": 101, "worker_id": 201},
                           id="pickup.accepted.7")
    reply["status"], reply["jobs"]             # 'accepted' (or 'duplicate'), ['pickup.accepted.7#1']

    result = client.invoke("processEscrowRelease",
                           {"pickup_id": 7, "release_reason": "admin"}, timeout_ms=10000)
    result["status"]                           # 'released' or 'already_released'

From Django, inside a transaction::

    from django.db import transaction
    from klynaa_client import publish_on_commit

    with transaction.atomic():
        pickup.save()
        publish_on_commit("pickup.accepted", {...}, id="pickup.accepted.%d" % pickup.pk)
    # sent here, after the commit; nothing is sent when the transaction rolls back

What the methods return and raise
---------------------------------
* :meth:`Client.publish` returns the reply ``dict`` when the broker answered
  ``accepted`` or ``duplicate`` (both carry ``jobs``; ``duplicate`` means that
  ``id`` was accepted before and nothing new happens).
* :meth:`Client.invoke` returns the function's ``result`` (a ``dict``) when the
  broker answered ``ok``.  It raises :class:`KlynaaInvokeFailed` on ``failed``
  (``code`` ``permanent`` or ``exhausted``, ``http_status`` when Django
  answered) and :class:`KlynaaInvokeTimeout` on ``timeout`` (the job keeps
  running; invoking the same ``id`` again waits for the same job).
* :meth:`Client.ping` returns the ``pong`` reply.
* ``rejected`` replies raise, for every operation:

  - :class:`KlynaaRejected` (``code``, ``field``, ``message``, ``request_id``)
    for ``malformed``, ``unsupported_version``, ``missing_field``,
    ``invalid_field``, ``unknown_type``, ``too_large`` and ``unauthorized``:
    nothing was stored and sending the same request again will not help; fix it.
  - :class:`KlynaaOverloaded` (``overloaded``) and :class:`KlynaaShuttingDown`
    (``shutting_down``), both with ``retry_after_ms``: nothing was stored and the
    same request may be sent again later.  They are subclasses of
    :class:`KlynaaUnavailable`, so ``except KlynaaUnavailable`` catches every
    "try again later" case.

* :class:`KlynaaUnavailable` itself: no reply from any endpoint within the
  time budget.  The request may or may not have been stored; sending the same
  ``id`` again is always safe (the broker deduplicates).
* Every exception derives from :class:`KlynaaError` and carries
  ``request_id`` and, when the broker answered, the ``reply`` dict.

Timeouts, resends and failover
------------------------------
* A request waits ``timeout_s`` per attempt; for ``invoke`` an attempt waits
  ``timeout_s`` plus the invoke's own ``timeout_ms`` (default 30000 ms, the
  broker's default), because the broker only answers once the job has ended or
  ``timeout_ms`` has passed.
* When no reply arrives, the socket is closed (linger 0), a fresh one is
  connected to the next endpoint of ``endpoints`` (a comma-separated list or a
  list, tried in turn) and the *same* request, with the *same* ``id``, is sent
  again, up to ``retries`` times.  This is safe: the broker deduplicates by
  ``id``.  Later requests stick to the endpoint that answered.
* The time budget of one call is ``(retries + 1)`` × the per-attempt wait; a
  call never takes longer than that.  With the defaults (``timeout_s=5``, one
  endpoint, ``retries=2``) a publish gives up after 15 s.
* Reconnecting is automatic: ZeroMQ reconnects a socket whose broker
  restarted, and a socket that timed out is replaced by a new one, so the same
  :class:`Client` keeps working across broker restarts.

Overloaded and shutting down: the client retries by itself
----------------------------------------------------------
With ``retry_busy=True`` (the default) an ``overloaded`` or ``shutting_down``
rejection is not raised at once.  The client waits ``retry_after_ms`` (1000 ms
when absent) and sends the same request again, as long as the wait plus one
full attempt still fit in the call's time budget; otherwise it raises
:class:`KlynaaOverloaded` / :class:`KlynaaShuttingDown` right away rather than
sleeping in vain.  A ``shutting_down`` answer with more than one endpoint
configured moves to the next endpoint and resends without waiting (that
broker is draining; another one can take the request).  So does an
``overloaded`` answer from a *standby* broker (its message starts with
"standby broker": another broker holds the PostgreSQL store's lease), after a
pause of 0.1 s.  Nothing was stored by
a rejected request, so resending it is safe.  ``retry_busy=False`` raises at
once and leaves the policy to the caller.

CURVE (encryption and an allow-list of client keys)
--------------------------------------------------
When the broker runs with ``ingress.curve = true`` (docs/security.md), pass
its public key and this client's key pair::

    Client("tcp://broker:5555",
           curve_server_key="/etc/klynaa/broker.pub",     # a key file, or the Z85 key itself
           curve_key_file="/etc/klynaa/django.key")       # written by `klynaa keygen --name django`

or the keys as Z85 strings: ``curve_public_key=...`` and ``curve_secret_key=...``
(the public one is derived when left out).  The files are the ones
``klynaa keygen`` writes (also pyzmq's ``zmq.auth`` and czmq's zcert files);
:func:`load_curve_key_file` reads them.  A problem with the keys raises
``ValueError`` at construction.  A broker that does not list this client's
public key in ``ingress.curve_allow_file`` refuses the connection during the
handshake, so every request ends in :class:`KlynaaUnavailable` (no reply);
its log says ``CURVE client refused`` with the key's first characters.

Other notes
-----------
* ``id`` defaults to ``uuid4().hex``.  Pass your own stable id (e.g. derived
  from a database row, see :func:`event_id`) to make resends from your side
  idempotent as well.
* Thread-safe: a request borrows a socket from a small pool (ZeroMQ sockets
  must not be used by two threads at once), so requests from several threads
  are in flight together; the ZeroMQ context is shared.
"""

import hashlib
import logging
import re
import threading
import time
import uuid

import msgpack
import zmq

__all__ = [
    "Client", "PROTOCOL_VERSION", "DEFAULT_ENDPOINT",
    "KlynaaError", "KlynaaUnavailable", "KlynaaOverloaded", "KlynaaShuttingDown", "KlynaaRejected",
    "KlynaaInvokeFailed", "KlynaaInvokeTimeout", "KlynaaUnexpectedReply",
    "event_id", "publish_on_commit", "django_client", "load_curve_key_file",
]

PROTOCOL_VERSION = 1
DEFAULT_ENDPOINT = "tcp://127.0.0.1:5555"
DEFAULT_INVOKE_TIMEOUT_MS = 30000
DEFAULT_RETRY_AFTER_MS = 1000
BUSY_CODES = ("overloaded", "shutting_down")
# A standby broker answers every request but ping with ``overloaded`` and a
# message that starts with this (docs/deployment.md).
STANDBY_PREFIX = "standby broker"
STANDBY_PAUSE_S = 0.1


def _is_standby(err):
    msg = err.get("message") if isinstance(err, dict) else None
    return isinstance(msg, str) and msg.startswith(STANDBY_PREFIX)

log = logging.getLogger("klynaa_client")


# ------------------------------------------------------------------ exceptions

class KlynaaError(Exception):
    """Base class of this module's exceptions.

    :ivar request_id: the ``id`` of the request.
    :ivar reply: the broker's reply ``dict``, or ``None`` when there was none.
    """

    def __init__(self, message, request_id=None, reply=None):
        super().__init__(message)
        self.request_id = request_id
        self.reply = reply


class KlynaaUnavailable(KlynaaError):
    """The request could not be handed over now; sending it again later (same
    ``id``) is safe.  Raised as such when no endpoint answered within the time
    budget (the request may or may not have been stored)."""

    def __init__(self, message, request_id=None, endpoints=None, reply=None):
        super().__init__(message, request_id=request_id, reply=reply)
        self.endpoints = endpoints or []


class _ErrorFields:
    """The ``error`` map of a reply as attributes."""

    def _set_error(self, reply):
        err = (reply or {}).get("error") or {}
        if not isinstance(err, dict):
            err = {}
        self.code = err.get("code")
        self.field = err.get("field")
        self.message = err.get("message")
        self.http_status = err.get("http_status")
        self.retry_after_ms = (reply or {}).get("retry_after_ms")


class KlynaaOverloaded(KlynaaUnavailable, _ErrorFields):
    """``rejected`` with ``overloaded``: the broker has too much pending work or
    cannot write its store.  Nothing was stored; retry after ``retry_after_ms``.
    (The client already retried while its time budget allowed, see the module
    docstring.)"""

    def __init__(self, reply, request_id=None, endpoints=None):
        self._set_error(reply)
        super().__init__(_describe_rejection(reply, request_id), request_id=request_id,
                         endpoints=endpoints, reply=reply)


class KlynaaShuttingDown(KlynaaUnavailable, _ErrorFields):
    """``rejected`` with ``shutting_down``: the broker is draining.  Nothing was
    stored; send again to another broker, or to this one after
    ``retry_after_ms`` (it may have restarted by then)."""

    def __init__(self, reply, request_id=None, endpoints=None):
        self._set_error(reply)
        super().__init__(_describe_rejection(reply, request_id), request_id=request_id,
                         endpoints=endpoints, reply=reply)


class KlynaaRejected(KlynaaError, _ErrorFields):
    """``rejected`` with a code that resending cannot fix: ``malformed``,
    ``unsupported_version``, ``missing_field``, ``invalid_field``,
    ``unknown_type``, ``too_large`` or ``unauthorized``.  Nothing was stored.

    :ivar code: the error code (docs/ingress-protocol.md, "Checks, in order").
    :ivar field: the offending field as a dotted path (e.g. ``data.lat``), or ``None``.
    :ivar message: the broker's sentence saying what to fix.
    """

    def __init__(self, reply, request_id=None):
        self._set_error(reply)
        super().__init__(_describe_rejection(reply, request_id), request_id=request_id, reply=reply)


class KlynaaInvokeFailed(KlynaaError, _ErrorFields):
    """``invoke`` answered ``failed``: the job failed permanently (``code``
    ``permanent``, e.g. Django answered 404) or ran out of retries (``code``
    ``exhausted``).  ``http_status`` is Django's status when it answered.  The
    job is in the dead-letter queue."""

    def __init__(self, reply, function, request_id=None):
        self._set_error(reply)
        self.function = function
        msg = "%s failed (%s%s): %s [request id %s]" % (
            function, self.code, ", HTTP %s" % self.http_status if self.http_status is not None else "",
            self.message, request_id)
        super().__init__(msg, request_id=request_id, reply=reply)


class KlynaaInvokeTimeout(KlynaaError):
    """``invoke`` answered ``timeout``: ``timeout_ms`` passed before the job
    ended.  The job keeps running; invoking again with the same ``id`` waits for
    the same job (nothing new starts)."""

    def __init__(self, reply, function, timeout_ms, request_id=None):
        self.function = function
        self.timeout_ms = timeout_ms
        super().__init__("%s did not end within %d ms; it keeps running (invoke the same id %s again "
                         "to wait for it)" % (function, timeout_ms, request_id),
                         request_id=request_id, reply=reply)


class KlynaaUnexpectedReply(KlynaaError):
    """A reply whose status does not fit the operation, e.g. ``duplicate`` for an
    ``invoke`` whose ``id`` was first used by a publish."""


def _describe_rejection(reply, request_id):
    err = (reply or {}).get("error") or {}
    if not isinstance(err, dict):
        err = {}
    where = " at %s" % err["field"] if err.get("field") else ""
    retry = ""
    if (reply or {}).get("retry_after_ms") is not None:
        retry = " (retry after %s ms)" % reply["retry_after_ms"]
    return "rejected (%s%s): %s%s [request id %s]" % (err.get("code"), where, err.get("message"), retry,
                                                      request_id)


def _new_id():
    return uuid.uuid4().hex


_ID_BAD = re.compile(r"[^A-Za-z0-9._:-]+")


def event_id(*parts):
    """A valid, deterministic request id from ``parts`` (joined with ``.``).

    Characters outside ``[A-Za-z0-9._:-]`` become ``-``; an id longer than 128
    characters is shortened and made unique with a hash.  Choose parts that
    identify one change, e.g. ``event_id("pickup.accepted", pickup.pk)`` or
    ``event_id("worker.location", worker.pk, ts_ms)``: the same change then
    always gets the same id, and the broker runs it once however often it is sent.
    """
    if not parts:
        raise ValueError("event_id needs at least one part")
    raw = ".".join(str(p) for p in parts)
    s = _ID_BAD.sub("-", raw)
    if len(s) > 128:
        s = s[:111] + "." + hashlib.sha1(raw.encode("utf-8")).hexdigest()[:16]
    return s


# ----------------------------------------------------------------------- CURVE

_Z85 = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#"
_Z85_INDEX = {c: i for i, c in enumerate(_Z85)}


def _as_z85_key(value):
    """``value`` (str or bytes) as Z85 key bytes when it is one (40 characters
    of the Z85 alphabet, every 5-character group below 2**32), else None."""
    if isinstance(value, bytes):
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            return None
    if not isinstance(value, str) or len(value) != 40:
        return None
    for g in range(0, 40, 5):
        v = 0
        for c in value[g:g + 5]:
            d = _Z85_INDEX.get(c)
            if d is None:
                return None
            v = v * 85 + d
        if v > 0xFFFFFFFF:
            return None
    return value.encode("ascii")


def load_curve_key_file(path):
    """Read a CURVE key file as ``klynaa keygen`` writes it (``NAME.key``: key
    pair; ``NAME.pub``: public key; ZPL with ``public-key = "..."`` and
    ``secret-key = "..."`` lines, like pyzmq's ``zmq.auth`` and czmq's zcert), or
    a file holding one bare Z85 public key.

    :returns: ``(public_key, secret_key)`` as Z85 ``bytes``; ``secret_key`` is
        ``None`` for a public key file; ``public_key`` is derived from the secret
        key when the file gives only that.
    :raises OSError: the file cannot be read.
    :raises ValueError: a malformed key (naming the line), a key given twice, no
        key at all, or a public key that does not belong to the secret key.
    """
    with open(path, "r", encoding="utf-8", errors="replace") as f:
        lines = f.read().splitlines()
    found = {}
    bare = None
    for n, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line:
            continue
        name, eq, value = line.partition("=")
        name = name.strip()
        if eq and name in ("public-key", "secret-key"):
            value = value.strip()
            if len(value) >= 2 and value[0] in "\"'" and value[-1] == value[0]:
                value = value[1:-1]
            if name in found:
                raise ValueError("%s: line %d: %s is given twice" % (path, n, name))
            key = _as_z85_key(value)
            if key is None:
                raise ValueError("%s: line %d: %s: not a Z85 key of 40 characters" % (path, n, name))
            found[name] = key
            continue
        word = line.split()[0]
        key = _as_z85_key(word)
        if key is not None:
            if bare is not None:
                raise ValueError("%s: line %d: a second bare key; a key file holds one key pair" % (path, n))
            bare = key
    if bare is not None:
        if found:
            raise ValueError("%s: a bare key line beside public-key/secret-key lines" % path)
        found["public-key"] = bare
    if not found:
        raise ValueError("%s: no key found: expected a `public-key = \"...\"` line "
                         "(and `secret-key = \"...\"` in a key pair file)" % path)
    secret = found.get("secret-key")
    public = found.get("public-key")
    if secret is not None:
        derived = zmq.curve_public(secret)
        if public is not None and public != derived:
            raise ValueError("%s: its public-key does not belong to its secret-key" % path)
        public = derived
    return public, secret


def _curve_options(server_key, public_key, secret_key, key_file):
    """The (server, public, secret) Z85 bytes a CURVE client socket needs, or
    None when no CURVE parameter is given."""
    if server_key is None and public_key is None and secret_key is None and key_file is None:
        return None
    if not zmq.has("curve"):
        raise ValueError("CURVE keys given, but this pyzmq/libzmq has no CURVE support (libsodium)")
    if server_key is None:
        raise ValueError("curve_server_key (the broker's public key, or its key file) is required with CURVE")
    server = _as_z85_key(server_key)
    if server is None:
        path = server_key.decode() if isinstance(server_key, bytes) else str(server_key)
        try:
            server, _ = load_curve_key_file(path)
        except OSError as e:
            raise ValueError("curve_server_key: neither a Z85 key nor a readable key file: %s" % e)
    if key_file is not None:
        if public_key is not None or secret_key is not None:
            raise ValueError("give either curve_key_file or curve_public_key/curve_secret_key, not both")
        try:
            public, secret = load_curve_key_file(key_file)
        except OSError as e:
            raise ValueError("curve_key_file: %s" % e)
        if secret is None:
            raise ValueError("curve_key_file: %s holds no secret key: it is a public key file; "
                             "pass the key pair file (NAME.key)" % key_file)
        return server, public, secret
    if secret_key is None:
        raise ValueError("this client's key pair is required with CURVE: curve_key_file, or curve_secret_key")
    secret = _as_z85_key(secret_key)
    if secret is None:
        raise ValueError("curve_secret_key: not a Z85 key of 40 characters")
    derived = zmq.curve_public(secret)
    if public_key is not None:
        public = _as_z85_key(public_key)
        if public is None:
            raise ValueError("curve_public_key: not a Z85 key of 40 characters")
        if public != derived:
            raise ValueError("curve_public_key does not belong to curve_secret_key")
    return server, derived, secret


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


def _ts_ms(ts):
    if hasattr(ts, "timestamp"):
        return int(round(ts.timestamp() * 1000))
    return int(ts)


# ---------------------------------------------------------------------- Django

_django_clients = {}
_django_lock = threading.Lock()


def django_client():
    """The process-wide :class:`Client` configured by Django settings:

    * ``KLYNAA_INGRESS``: endpoint or comma-separated list (default ``tcp://127.0.0.1:5555``);
    * ``KLYNAA_INGRESS_TIMEOUT_S``: per-attempt timeout (default 5);
    * ``KLYNAA_INGRESS_RETRIES``: resends after no reply (default: ``max(2, endpoints)``);
    * ``KLYNAA_INGRESS_RETRY_BUSY``: retry overloaded / shutting_down (default ``True``);
    * ``KLYNAA_INGRESS_CURVE_SERVER_PUBLIC_FILE``: CURVE: the broker's public key
      file (or the Z85 key); ``KLYNAA_INGRESS_CURVE_CLIENT_SECRET_FILE``: this
      site's key pair file.  The same names as the config keys
      ``ingress.curve_server_public_file`` / ``curve_client_secret_file``.

    One client per distinct configuration, created on first use; it is
    thread-safe, so every request thread shares it.
    """
    from django.conf import settings
    key = (getattr(settings, "KLYNAA_INGRESS", DEFAULT_ENDPOINT),
           float(getattr(settings, "KLYNAA_INGRESS_TIMEOUT_S", 5)),
           getattr(settings, "KLYNAA_INGRESS_RETRIES", None),
           bool(getattr(settings, "KLYNAA_INGRESS_RETRY_BUSY", True)),
           getattr(settings, "KLYNAA_INGRESS_CURVE_SERVER_PUBLIC_FILE", None) or None,
           getattr(settings, "KLYNAA_INGRESS_CURVE_CLIENT_SECRET_FILE", None) or None)
    with _django_lock:
        c = _django_clients.get(key)
        if c is None or c._closed:
            c = Client(key[0], timeout_s=key[1], retries=key[2], retry_busy=key[3],
                       curve_server_key=key[4], curve_key_file=key[5])
            _django_clients[key] = c
        return c


def publish_on_commit(type, data, id=None, ts=None, client=None, using=None, on_reply=None, on_error=None,
                      runner=None):
    """Publish an event once the current Django transaction commits.

    Call it inside ``transaction.atomic()`` next to the change the event
    describes.  When the transaction commits the event is published; when it
    rolls back nothing is sent.  Outside a transaction (autocommit) it is
    published at once, like ``transaction.on_commit``.

    :param type, data: the event, as for :meth:`Client.publish`.  ``data`` is
        encoded (and so checked and copied) now: a value msgpack cannot encode
        raises ``TypeError`` inside the transaction, and later changes to the
        dict do not affect what is sent.
    :param id: the event's idempotency key.  Pass a stable one (e.g.
        ``event_id("pickup.accepted", pickup.pk)`` or an id stored in an outbox
        row) so a resend after a lost reply is a ``duplicate``, not a new event.
        Default: ``uuid4().hex``, fixed now.
    :param ts: when it happened (epoch ms or ``datetime``); default: now, i.e.
        the time of the change rather than of the send.
    :param client: the :class:`Client` to use (default :func:`django_client`).
    :param using: the database alias whose transaction counts (default ``"default"``).
    :param on_reply: called with the reply dict (``accepted``/``duplicate``).
    :param on_error: called with the :class:`KlynaaError` when the publish
        failed (rejected, unavailable, ...).  Without it the error is logged
        (logger ``klynaa_client``) and not raised: the transaction has already
        committed, so raising would only turn a saved change into an error page.
        Keep the event (an outbox row) if it must not be lost.
    :param runner: called with the zero-argument function that sends, instead
        of sending in the commit hook; e.g. ``executor.submit`` to send in the
        background, or ``list.append`` to send later (after releasing a lock).
        The send function returns the reply dict, or ``None`` after an error.
    :returns: the event id.
    """
    from django.db import transaction

    eid = id or _new_id()
    ts_ms = _ts_ms(ts) if ts is not None else int(time.time() * 1000)
    frozen = msgpack.unpackb(msgpack.packb(data, use_bin_type=True), raw=False, strict_map_key=False)

    def send():
        c = client if client is not None else django_client()
        try:
            reply = c.publish(type, frozen, id=eid, ts=ts_ms)
        except KlynaaError as e:
            if on_error is not None:
                on_error(e)
            else:
                log.error("event %s (%s) not published after commit: %s", eid, type, e)
            return None
        if on_reply is not None:
            on_reply(reply)
        return reply

    if runner is None:
        transaction.on_commit(send, using=using)
    else:
        transaction.on_commit(lambda: runner(send), using=using)
    return eid


# ------------------------------------------------------------------------- CLI

def _main(argv):
    """python3 klynaa_client.py ping | publish TYPE JSON [ID] | invoke FUNCTION JSON [TIMEOUT_MS]

    Exit codes like `klynaa publish|invoke`: 0 success, 1 failed / timeout / no
    answer / overloaded, 2 rejected.  Prints the reply as JSON."""
    import json
    import os
    import sys

    ep = os.environ.get("KLYNAA_INGRESS", DEFAULT_ENDPOINT)
    if not argv or argv[0] not in ("ping", "publish", "invoke") or (argv[0] != "ping" and len(argv) < 3):
        print("usage: klynaa_client.py ping | publish TYPE JSON [ID] | invoke FUNCTION JSON [TIMEOUT_MS]"
              "  (env KLYNAA_INGRESS; for CURVE KLYNAA_INGRESS_CURVE_SERVER_PUBLIC_FILE and"
              " KLYNAA_INGRESS_CURVE_CLIENT_SECRET_FILE)", file=sys.stderr)
        return 2
    try:
        client = Client(ep, curve_server_key=os.environ.get("KLYNAA_INGRESS_CURVE_SERVER_PUBLIC_FILE") or None,
                        curve_key_file=os.environ.get("KLYNAA_INGRESS_CURVE_CLIENT_SECRET_FILE") or None)
    except ValueError as e:
        print(str(e), file=sys.stderr)
        return 2
    with client as c:
        try:
            if argv[0] == "ping":
                r = c.ping()
            elif argv[0] == "publish":
                r = c.publish(argv[1], json.loads(argv[2]), id=argv[3] if len(argv) > 3 else None)
            else:
                tmo = int(argv[3]) if len(argv) > 3 else None
                r = c.invoke(argv[1], json.loads(argv[2]), timeout_ms=tmo)
        except KlynaaRejected as e:
            print(json.dumps(e.reply, default=str))
            print(str(e), file=sys.stderr)
            return 2
        except KlynaaError as e:
            if e.reply is not None:
                print(json.dumps(e.reply, default=str))
            print(str(e), file=sys.stderr)
            return 1
    print(json.dumps(r, default=str))
    return 0


if __name__ == "__main__":
    import sys as _sys
    _sys.exit(_main(_sys.argv[1:]))

"""Constants, exceptions and request ids of the Klynaa Jobs Python client.

Part of :mod:`klynaa_client` (clients/python/klynaa_client.py), which
re-exports everything public here: import from ``klynaa_client``, not from this
module.  The replies and their exceptions: docs/django.md, "Exceptions", and
docs/ingress-protocol.md, "Reply".
"""

import hashlib
import re
import uuid

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

    :ivar code: the rejection code (docs/events-and-functions.md, "Rejection codes").
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

def _ts_ms(ts):
    if hasattr(ts, "timestamp"):
        return int(round(ts.timestamp() * 1000))
    return int(ts)

"""In-memory fault injection for the routes the job system calls
(docs/events-and-functions.md, "The Django API"), plus a request log.

State lives in module globals behind a lock: the demo runs as one process.
"""
import threading
from collections import deque

import datetime as dt

from .util import ApiError

MODES = ("none", "down", "slow", "429", "garbage")

_lock = threading.Lock()
_state = {"mode": "none", "count": 0, "path_prefix": None, "delay_ms": 1000, "retry_after": 1,
          "applied": 0}
_log = deque(maxlen=5000)
_seq = [0]


def configure(body):
    mode = body.get("mode", "none")
    if mode not in MODES:
        raise ApiError(400, "invalid_field", "mode must be one of %s." % ", ".join(MODES), "mode")
    count = body.get("count", -1)
    if isinstance(count, bool) or not isinstance(count, int) or count < -1:
        raise ApiError(400, "invalid_field", "count must be an integer >= -1 (-1: until reset).", "count")
    prefix = body.get("path_prefix")
    if prefix is not None and not isinstance(prefix, str):
        raise ApiError(400, "invalid_field", "path_prefix must be a string such as /api/serverless/.",
                       "path_prefix")
    delay_ms = body.get("delay_ms", body.get("ms", 1000))
    if isinstance(delay_ms, bool) or not isinstance(delay_ms, (int, float)) or delay_ms < 0:
        raise ApiError(400, "invalid_field", "delay_ms must be a non-negative number.", "delay_ms")
    retry_after = body.get("retry_after", 1 if mode == "429" else None)
    if retry_after is not None and (isinstance(retry_after, bool) or not isinstance(retry_after, int)
                                    or retry_after < 0):
        raise ApiError(400, "invalid_field", "retry_after must be a non-negative integer (seconds).",
                       "retry_after")
    with _lock:
        _state.update({"mode": mode, "count": 0 if mode == "none" else count, "path_prefix": prefix or None,
                       "delay_ms": delay_ms, "retry_after": retry_after, "applied": 0})
        return dict(_state)


def snapshot():
    with _lock:
        return dict(_state)


def take(path):
    """The fault to apply to this request (a dict), or None; consumes one count."""
    with _lock:
        s = _state
        if s["mode"] == "none" or s["count"] == 0:
            return None
        if s["path_prefix"] and not path.startswith(s["path_prefix"]):
            return None
        if s["count"] > 0:
            s["count"] -= 1
        s["applied"] += 1
        return dict(s)


def log_request(method, path, status, fault, received_at, idempotency_key=None):
    with _lock:
        _seq[0] += 1
        _log.append({"seq": _seq[0], "method": method, "path": path, "status": status, "fault": fault,
                     "idempotency_key": idempotency_key,
                     "at": received_at.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"})


def requests_log():
    with _lock:
        return list(_log)


def reset():
    with _lock:
        _state.update({"mode": "none", "count": 0, "path_prefix": None, "delay_ms": 1000,
                       "retry_after": 1, "applied": 0})
        _log.clear()

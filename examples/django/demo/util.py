"""Small helpers: JSON responses, validation, time formatting."""
import datetime as dt
import json
import math
import threading
from decimal import Decimal, InvalidOperation

from django.http import HttpResponse
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime

# SQLite allows one writer; Django 3.2 has no BEGIN IMMEDIATE, so concurrent
# read-then-write transactions could fail with "database is locked".  The demo
# runs in one process, so every write transaction takes this lock.
WRITE_LOCK = threading.RLock()


class ApiError(Exception):
    def __init__(self, status, code, message, field=None, extra=None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.extra = extra or {}

    def response(self):
        body = {"error": self.code, "message": self.message}
        if self.field:
            body["field"] = self.field
        body.update(self.extra)
        return json_response(body, status=self.status)


def json_response(obj, status=200, headers=None):
    if status == 204:
        resp = HttpResponse(status=204)
    else:
        resp = HttpResponse(json.dumps(obj, separators=(",", ":"), default=_default),
                            status=status, content_type="application/json")
    for k, v in (headers or {}).items():
        resp[k] = v
    return resp


def _default(o):
    if isinstance(o, Decimal):
        return money(o)
    if isinstance(o, (dt.datetime, dt.date)):
        return iso(o) if isinstance(o, dt.datetime) else o.isoformat()
    raise TypeError("not JSON serializable: %r" % type(o))


def money(d):
    """Decimal -> JSON number with at most 2 decimals."""
    if d is None:
        return None
    return float(Decimal(d).quantize(Decimal("0.01")))


def iso(t):
    """datetime -> '2026-11-27T10:00:00Z' (UTC, whole seconds) or None."""
    if t is None:
        return None
    if timezone.is_naive(t):
        t = timezone.make_aware(t, dt.timezone.utc)
    return t.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def now():
    return timezone.now().replace(microsecond=0)


def parse_body(request):
    if not request.body:
        return {}
    try:
        body = json.loads(request.body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise ApiError(400, "malformed", "The request body is not valid JSON.")
    if not isinstance(body, dict):
        raise ApiError(400, "malformed", "The request body must be a JSON object.")
    return body


def parse_time(value, field, required=False):
    if value is None or value == "":
        if required:
            raise ApiError(400, "missing_field", "%s is required (ISO 8601 UTC, e.g. 2026-11-27T10:00:00Z)." % field,
                           field)
        return None
    if not isinstance(value, str):
        raise ApiError(400, "invalid_field", "%s must be an ISO 8601 string." % field, field)
    v = value.strip()
    if "T" in v and " " in v:  # a '+' of an offset decoded as a space in a query string
        v = v.replace(" ", "+")
    t = None
    try:
        t = parse_datetime(v)
        if t is None:
            d = parse_date(v)
            if d is not None:
                t = dt.datetime(d.year, d.month, d.day)
    except ValueError:
        t = None
    if t is None:
        raise ApiError(400, "invalid_field",
                       "%s=%r is not an ISO 8601 time such as 2026-11-27T10:00:00Z." % (field, value), field)
    if timezone.is_naive(t):
        t = timezone.make_aware(t, dt.timezone.utc)
    return t.astimezone(dt.timezone.utc)


def get_int(body, key, required=True, default=None, positive=True, minimum=None):
    v = body.get(key)
    if v is None:
        if required:
            raise ApiError(400, "missing_field", "%s is required." % key, key)
        return default
    if isinstance(v, bool) or not isinstance(v, int):
        if isinstance(v, str) and v.strip().lstrip("-").isdigit():
            v = int(v)
        else:
            raise ApiError(400, "invalid_field", "%s must be an integer." % key, key)
    if positive and v <= 0:
        raise ApiError(400, "invalid_field", "%s must be a positive integer." % key, key)
    if minimum is not None and v < minimum:
        raise ApiError(400, "invalid_field", "%s must be at least %d." % (key, minimum), key)
    return v


def get_num(body, key, required=True, default=None, lo=None, hi=None):
    v = body.get(key)
    if v is None:
        if required:
            raise ApiError(400, "missing_field", "%s is required." % key, key)
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ApiError(400, "invalid_field", "%s must be a number." % key, key)
    v = float(v)
    if not math.isfinite(v) or (lo is not None and v < lo) or (hi is not None and v > hi):
        raise ApiError(400, "invalid_field", "%s must be a finite number in [%s, %s]." % (key, lo, hi), key)
    return v


def get_bool(body, key, required=True, default=None):
    v = body.get(key)
    if v is None:
        if required:
            raise ApiError(400, "missing_field", "%s is required." % key, key)
        return default
    if not isinstance(v, bool):
        raise ApiError(400, "invalid_field", "%s must be true or false." % key, key)
    return v


def get_str(body, key, required=True, default=None, choices=None, max_len=512):
    v = body.get(key)
    if v is None or v == "":
        if required:
            raise ApiError(400, "missing_field", "%s is required." % key, key)
        return default
    if not isinstance(v, str) or len(v) > max_len:
        raise ApiError(400, "invalid_field", "%s must be a string of at most %d characters." % (key, max_len), key)
    if choices is not None and v not in choices:
        raise ApiError(400, "invalid_field", "%s must be one of %s." % (key, ", ".join(choices)), key)
    return v


def get_money(body, key, default=None):
    v = body.get(key)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        raise ApiError(400, "invalid_field", "%s must be a number." % key, key)
    try:
        d = Decimal(str(v))
    except InvalidOperation:
        raise ApiError(400, "invalid_field", "%s must be a number." % key, key)
    if not d.is_finite() or d < 0:
        raise ApiError(400, "invalid_field", "%s must be a non-negative number." % key, key)
    return d.quantize(Decimal("0.01"))

"""Views: the API the job system calls (docs/events-and-functions.md, "The Django
API"), and /api/demo/ helpers."""
import base64
import datetime as dt
import functools
import json
import logging

from django.conf import settings
from django.db import IntegrityError, transaction

from . import faults, services
from .models import AdminUser, DeviceToken, EscrowCall, EscrowRelease, OutboxEvent, Pickup, Report, Worker
from .services import pickup_json, worker_json
from .util import (WRITE_LOCK, ApiError, get_bool, get_int, get_money, get_num, get_str, iso, json_response,
                   money, now, parse_body, parse_time)

log = logging.getLogger("demo")

RELEASE_REASONS = ["customer_confirmed", "auto_release", "admin"]


def api(*methods):
    """JSON view: method check (405), ApiError -> JSON error, unexpected -> JSON 500."""
    def deco(fn):
        @functools.wraps(fn)
        def wrapper(request, *args, **kwargs):
            if request.method not in methods:
                return json_response({"error": "method_not_allowed",
                                      "message": "Use %s for %s." % (" or ".join(methods), request.path)},
                                     status=405, headers={"Allow": ", ".join(methods)})
            try:
                return fn(request, *args, **kwargs)
            except ApiError as e:
                return e.response()
        wrapper.csrf_exempt = True
        return wrapper
    return deco


def not_found(request, exception=None):
    return json_response({"error": "not_found", "message": "No route %s %s." % (request.method, request.path)},
                         status=404)


def server_error(request):
    return json_response({"error": "internal", "message": "Internal server error."}, status=500)


# ===================================== the Django API (docs/events-and-functions.md)

@api("GET")
def serverless_pickup(request, pickup_id):
    try:
        return json_response(pickup_json(Pickup.objects.get(pk=pickup_id)))
    except Pickup.DoesNotExist:
        raise ApiError(404, "not_found", "Pickup %d does not exist." % pickup_id)


@api("GET")
def user_tokens(request, user_id):
    tokens = [{"token": t.token, "platform": t.platform} for t in DeviceToken.objects.filter(user_id=user_id)]
    return json_response({"user_id": user_id, "tokens": tokens})


@api("DELETE")
def user_token_delete(request, user_id, token):
    # Idempotent: deleting a token that is already gone is also 204.
    with WRITE_LOCK:
        DeviceToken.objects.filter(user_id=user_id, token=token).delete()
    return json_response(None, status=204)


@api("GET")
def admins(request):
    return json_response({"admins": [{"id": a.id, "email": a.email} for a in AdminUser.objects.all()]})


@api("GET")
def workers_available(request):
    return json_response({"workers": [worker_json(w) for w in Worker.objects.filter(available=True)]})


@api("POST")
def escrow_release(request, pickup_id):
    body = parse_body(request)
    reason = get_str(body, "reason", choices=RELEASE_REASONS)
    idem = request.META.get("HTTP_IDEMPOTENCY_KEY") or None
    with WRITE_LOCK:
        with transaction.atomic():
            try:
                p = Pickup.objects.select_for_update().get(pk=pickup_id)
            except Pickup.DoesNotExist:
                raise ApiError(404, "not_found", "Pickup %d does not exist." % pickup_id)
            if EscrowRelease.objects.filter(pickup=p).exists():
                return json_response({"status": "already_released"}, status=409)
            if p.status == "disputed":
                return json_response({"status": "disputed"}, status=409)
            if p.status == "cancelled":
                return json_response({"status": "cancelled"}, status=409)
            try:
                with transaction.atomic():
                    rel = EscrowRelease.objects.create(pickup=p, amount=p.price, currency=p.currency,
                                                       reason=reason, idempotency_key=idem, created_at=now())
            except IntegrityError:
                return json_response({"status": "already_released"}, status=409)
    return json_response({"pickup_id": p.id, "status": "released", "amount": money(rel.amount),
                          "currency": rel.currency})


def _encode_cursor(last_id):
    return base64.urlsafe_b64encode(json.dumps({"after": last_id}).encode()).decode().rstrip("=")


def _decode_cursor(c):
    try:
        raw = base64.urlsafe_b64decode(c + "=" * (-len(c) % 4))
        after = json.loads(raw)["after"]
        if isinstance(after, bool) or not isinstance(after, int):
            raise ValueError
        return after
    except Exception:
        raise ApiError(400, "invalid_field", "cursor is not one this server returned in `next`.", "cursor")


@api("GET")
def analytics_pickups(request):
    q = request.GET
    start = parse_time(q.get("from"), "from")
    end = parse_time(q.get("to"), "to")
    qs = Pickup.objects.all().order_by("id")
    if start is not None:
        qs = qs.filter(created_at__gte=start)
    if end is not None:
        qs = qs.filter(created_at__lt=end)
    if q.get("cursor"):
        qs = qs.filter(id__gt=_decode_cursor(q["cursor"]))
    size = settings.KLYNAA_DEMO_PAGE_SIZE
    rows = list(qs[:size + 1])
    nxt = _encode_cursor(rows[size - 1].id) if len(rows) > size else None
    return json_response({"pickups": [pickup_json(p) for p in rows[:size]], "next": nxt})


@api("POST")
def reports(request):
    body = parse_body(request)
    kind = get_str(body, "kind", max_len=32)
    start = parse_time(body.get("period_start"), "period_start")
    end = parse_time(body.get("period_end"), "period_end")
    summary = body.get("summary", {})
    if not isinstance(summary, dict):
        raise ApiError(400, "invalid_field", "summary must be a JSON object.", "summary")
    idem = request.META.get("HTTP_IDEMPOTENCY_KEY") or None
    with WRITE_LOCK:
        if idem:
            existing = Report.objects.filter(idempotency_key=idem).first()
            if existing:
                return json_response({"id": existing.id}, status=201)
        r = Report.objects.create(kind=kind, period_start=start, period_end=end, summary=summary,
                                  idempotency_key=idem, created_at=now())
    return json_response({"id": r.id}, status=201)


@api("POST")
def cleanup(request):
    body = parse_body(request)
    days = get_int(body, "older_than_days", required=False, default=90, positive=False, minimum=0)
    cutoff = now() - dt.timedelta(days=days)
    with WRITE_LOCK:
        deleted, _ = Report.objects.filter(created_at__lt=cutoff).delete()
    return json_response({"deleted": deleted})


# ================================================================ /api/demo/

def _action_response(result, events, key, serializer, status=200):
    body = {key: serializer(result)}
    if events:
        ev, reply = events[0]
        body["event"] = ev
        body["ingress"] = reply
    else:
        body["event"] = None
        body["ingress"] = None
    return json_response(body, status=status)


@api("POST")
def demo_pickups(request):
    b = parse_body(request)
    status = get_str(b, "status", required=False, default="requested",
                     choices=["requested", "accepted", "delivered", "confirmed", "disputed", "cancelled"])
    p, events = services.create_pickup(
        customer_id=get_int(b, "customer_id"),
        lat=get_num(b, "lat", lo=-90, hi=90), lng=get_num(b, "lng", lo=-180, hi=180),
        price=get_money(b, "price", default=get_money({"p": "1500.00"}, "p")),
        currency=get_str(b, "currency", required=False, default="NGN", max_len=3),
        waste_type=get_str(b, "waste_type", required=False, default="", max_len=32),
        radius_km=get_num(b, "radius_km", required=False, lo=0, hi=20000),
        publish=get_bool(b, "publish", required=False, default=True),
        status=status, worker_id=get_int(b, "worker_id", required=False),
        created_at=parse_time(b.get("created_at"), "created_at"),
        accepted_at=parse_time(b.get("accepted_at"), "accepted_at"),
        delivered_at=parse_time(b.get("delivered_at"), "delivered_at"))
    return _action_response(p, events, "pickup", pickup_json, status=201)


@api("POST")
def demo_accept(request, pickup_id):
    b = parse_body(request)
    p, events = services.accept_pickup(pickup_id, get_int(b, "worker_id"))
    return _action_response(p, events, "pickup", pickup_json)


@api("POST")
def demo_deliver(request, pickup_id):
    parse_body(request)
    p, events = services.deliver_pickup(pickup_id)
    return _action_response(p, events, "pickup", pickup_json)


@api("POST")
def demo_confirm(request, pickup_id):
    parse_body(request)
    p, events = services.confirm_pickup(pickup_id)
    return _action_response(p, events, "pickup", pickup_json)


@api("POST")
def demo_dispute(request, pickup_id):
    b = parse_body(request)
    p, events = services.dispute_pickup(pickup_id, get_str(b, "reason", required=False, max_len=2000))
    return _action_response(p, events, "pickup", pickup_json)


@api("POST")
def demo_cancel(request, pickup_id):
    parse_body(request)
    p, events = services.cancel_pickup(pickup_id)
    return _action_response(p, events, "pickup", pickup_json)


@api("POST")
def demo_worker_location(request, worker_id):
    b = parse_body(request)
    w, events = services.update_worker_location(
        worker_id, get_num(b, "lat", lo=-90, hi=90), get_num(b, "lng", lo=-180, hi=180),
        get_bool(b, "available", required=False, default=True),
        get_num(b, "service_radius_km", required=False, lo=0, hi=20000))
    return _action_response(w, events, "worker", lambda w: dict(worker_json(w), available=w.available))


@api("POST")
def demo_workers(request):
    """Create or update a worker without publishing anything."""
    b = parse_body(request)
    wid = get_int(b, "id")
    vals = {"lat": get_num(b, "lat", lo=-90, hi=90), "lng": get_num(b, "lng", lo=-180, hi=180),
            "service_radius_km": get_num(b, "service_radius_km", required=False, default=5.0, lo=0, hi=20000),
            "available": get_bool(b, "available", required=False, default=True)}
    with WRITE_LOCK:
        w, _ = Worker.objects.update_or_create(pk=wid, defaults=vals)
    return json_response({"worker": dict(worker_json(w), available=w.available)}, status=201)


@api("POST")
def demo_tokens(request):
    b = parse_body(request)
    uid = get_int(b, "user_id")
    token = get_str(b, "token")
    platform = get_str(b, "platform", required=False, default="android", max_len=16)
    with WRITE_LOCK:
        DeviceToken.objects.update_or_create(user_id=uid, token=token, defaults={"platform": platform})
    return json_response({"user_id": uid, "token": token, "platform": platform}, status=201)


@api("POST")
def demo_admins(request):
    b = parse_body(request)
    with WRITE_LOCK:
        a, _ = AdminUser.objects.update_or_create(pk=get_int(b, "id"), defaults={"email": get_str(b, "email")})
    return json_response({"id": a.id, "email": a.email}, status=201)


@api("POST")
def demo_reports(request):
    """Insert a report with a chosen created_at (to exercise cleanup)."""
    b = parse_body(request)
    with WRITE_LOCK:
        r = Report.objects.create(kind=get_str(b, "kind", required=False, default="daily", max_len=32),
                                  period_start=parse_time(b.get("period_start"), "period_start"),
                                  period_end=parse_time(b.get("period_end"), "period_end"),
                                  summary=b.get("summary") if isinstance(b.get("summary"), dict) else {},
                                  created_at=parse_time(b.get("created_at"), "created_at") or now())
    return json_response(report_json(r), status=201)


@api("POST")
def demo_seed(request):
    b = parse_body(request)
    return json_response(services.seed(pickups=get_bool(b, "pickups", required=False, default=True)))


@api("POST")
def demo_reset(request):
    """Delete every row and reset faults and the request log; {"seed": true} seeds again."""
    b = parse_body(request)
    with WRITE_LOCK:
        with transaction.atomic():
            for m in (EscrowCall, EscrowRelease, Report, OutboxEvent, DeviceToken, AdminUser, Worker, Pickup):
                m.objects.all().delete()
            from django.db import connection
            with connection.cursor() as cur:  # restart autoincrement ids at 1
                cur.execute("DELETE FROM sqlite_sequence")
    faults.reset()
    out = {"reset": True}
    if get_bool(b, "seed", required=False, default=False):
        out["seed"] = services.seed()
    return json_response(out)


@api("POST")
def demo_outbox_flush(request):
    return json_response({"replies": services.flush_outbox()})


@api("GET", "POST")
def demo_faults(request):
    if request.method == "GET":
        return json_response(faults.snapshot())
    return json_response(faults.configure(parse_body(request)))


def report_json(r):
    return {"id": r.id, "kind": r.kind, "period_start": iso(r.period_start), "period_end": iso(r.period_end),
            "summary": r.summary, "created_at": iso(r.created_at)}


@api("GET")
def demo_state(request):
    return json_response({
        "pickups": [dict(pickup_json(p), waste_type=p.waste_type, dispute_reason=p.dispute_reason,
                         confirmed_at=iso(p.confirmed_at)) for p in Pickup.objects.all()],
        "workers": [dict(worker_json(w), available=w.available) for w in Worker.objects.all()],
        "admins": [{"id": a.id, "email": a.email} for a in AdminUser.objects.all()],
        "tokens": [{"user_id": t.user_id, "token": t.token, "platform": t.platform}
                   for t in DeviceToken.objects.all()],
        "escrow_releases": [{"pickup_id": e.pickup_id, "amount": money(e.amount), "currency": e.currency,
                             "reason": e.reason, "idempotency_key": e.idempotency_key,
                             "created_at": iso(e.created_at)} for e in EscrowRelease.objects.all()],
        "escrow_calls": [{"id": c.id, "pickup_id": c.pickup_id, "idempotency_key": c.idempotency_key,
                          "reason": c.reason, "status_code": c.status_code, "status": c.status, "fault": c.fault,
                          "received_at": iso(c.received_at), "answered_at": iso(c.answered_at)}
                         for c in EscrowCall.objects.all()],
        "reports": [report_json(r) for r in Report.objects.all()],
        "outbox": [{"id": e.event_id, "type": e.type, "data": e.data, "ts": e.ts, "status": e.status,
                    "attempts": e.attempts, "reply": e.reply} for e in OutboxEvent.objects.all()],
        "requests": faults.requests_log(),
        "faults": faults.snapshot(),
    })

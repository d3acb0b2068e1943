"""Domain actions of the demo shop, each publishing its event after commit.

Pattern (transactional outbox):
  1. inside the domain transaction an OutboxEvent row is written next to the
     change, with a fresh event id;
  2. the Python client's `publish_on_commit` (clients/python/klynaa_client.py)
     registers the publish with `transaction.on_commit`, so an event is only
     ever sent for a change that was committed, under the row's stable id;
  3. `run_action` lets the send run after the commit *and* outside the write
     lock (its `runner` collects the send instead of running it inside the
     commit hook); the row keeps the broker's reply.
  An event that got no answer (or an `overloaded` / `shutting_down` rejection)
  stays `pending`; `manage.py flush_outbox` resends it with the same id, which
  the broker deduplicates.
"""
import functools
import logging
import uuid

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from klynaa_client import KlynaaError, KlynaaRejected, django_client, publish_on_commit

from .models import AdminUser, DeviceToken, OutboxEvent, Pickup, Worker
from .util import WRITE_LOCK, ApiError, iso, money, now

log = logging.getLogger("demo")


def client():
    """The shared ingress client, configured by settings.KLYNAA_INGRESS*."""
    return django_client()


# ---------------------------------------------------------------- serializers

def pickup_json(p):
    return {
        "id": p.id, "status": p.status, "customer_id": p.customer_id, "worker_id": p.worker_id,
        "lat": p.lat, "lng": p.lng, "price": money(p.price), "currency": p.currency,
        "created_at": iso(p.created_at), "accepted_at": iso(p.accepted_at), "delivered_at": iso(p.delivered_at),
    }


def worker_json(w):
    return {"id": w.id, "lat": w.lat, "lng": w.lng, "service_radius_km": w.service_radius_km}


# ------------------------------------------------------------------- outbox

def _emit(committed, type_, data, key):
    """Write an outbox row in the current transaction; publish it after commit.

    The send is appended to `committed` as (row pk, send) when the transaction
    commits; run_action runs it once the write lock is released.
    """
    at = timezone.now()  # ms precision for `ts` (worker.location staleness compares it)
    ev = OutboxEvent.objects.create(event_id="%s.%s.%s" % (type_, key, uuid.uuid4().hex[:12]), type=type_,
                                    data=data, ts=int(at.timestamp() * 1000), created_at=at)
    publish_on_commit(type_, data, id=ev.event_id, ts=ev.ts, client=client(),
                      on_reply=functools.partial(_record_reply, ev.pk),
                      on_error=functools.partial(_record_error, ev.pk),
                      runner=lambda send, pk=ev.pk: committed.append((pk, send)))
    return ev


def _record_reply(pk, reply):
    """Store the broker's reply (accepted / duplicate) on the outbox row."""
    status = reply.get("status")
    new_status = status if status in ("accepted", "duplicate") else "pending"
    with WRITE_LOCK:
        OutboxEvent.objects.filter(pk=pk).update(status=new_status, reply=_jsonable(reply),
                                                 attempts=F("attempts") + 1)
    return _jsonable(reply)


def _record_error(pk, exc):
    """A rejection is final (`rejected`); anything else leaves the row `pending`."""
    if isinstance(exc, KlynaaRejected):
        reply, new_status = exc.reply, "rejected"
        log.error("event %s rejected: %s", exc.request_id, exc)
    else:
        reply = {"status": "unavailable", "id": exc.request_id,
                 "error": {"code": getattr(exc, "code", None) or "unavailable", "message": str(exc)}}
        if getattr(exc, "retry_after_ms", None) is not None:
            reply["retry_after_ms"] = exc.retry_after_ms
        new_status = "pending"
        log.warning("event %s not published: %s", exc.request_id, exc)
    with WRITE_LOCK:
        OutboxEvent.objects.filter(pk=pk).update(status=new_status, reply=_jsonable(reply),
                                                 attempts=F("attempts") + 1)
    return _jsonable(reply)


def publish_outbox(pk):
    """Publish one outbox event now (same id); returns the reply or an `unavailable` pseudo-reply."""
    ev = OutboxEvent.objects.get(pk=pk)
    if ev.status in ("accepted", "duplicate", "rejected"):
        return ev.reply
    try:
        reply = client().publish(ev.type, ev.data, id=ev.event_id, ts=ev.ts)
    except KlynaaError as e:
        return _record_error(pk, e)
    return _record_reply(pk, reply)


def flush_outbox():
    pks = list(OutboxEvent.objects.filter(status="pending").values_list("pk", flat=True))
    return [publish_outbox(pk) for pk in pks]


def _jsonable(v):
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return v


def run_action(fn):
    """Run fn(committed) in a write transaction, then publish what it emitted.

    Returns (fn's result, [(event, reply), ...]); reply is None for an event
    whose transaction did not commit.
    """
    committed = []
    with WRITE_LOCK:
        with transaction.atomic():
            result, events = fn(committed)
    # Committed, and the write lock is free: send now (publish_on_commit's runner
    # put the sends here instead of running them inside the lock).
    for _pk, send in committed:
        send()
    sent = {pk for pk, _ in committed}
    out = []
    for ev in events:
        reply = OutboxEvent.objects.values_list("reply", flat=True).get(pk=ev.pk) if ev.pk in sent else None
        out.append(({"id": ev.event_id, "type": ev.type, "data": ev.data, "ts": ev.ts}, reply))
    return result, out


# ------------------------------------------------------------------ actions

def _get_pickup(pickup_id):
    try:
        return Pickup.objects.select_for_update().get(pk=pickup_id)
    except Pickup.DoesNotExist:
        raise ApiError(404, "not_found", "Pickup %s does not exist." % pickup_id)


def _require(p, allowed, action):
    if p.status not in allowed:
        raise ApiError(409, "invalid_transition",
                       "Cannot %s pickup %d: its status is %s (needs %s)." % (action, p.id, p.status,
                                                                            " or ".join(allowed)),
                       extra={"pickup_status": p.status})


def create_pickup(customer_id, lat, lng, price, currency="NGN", waste_type="", radius_km=None, publish=True,
                  status="requested", worker_id=None, created_at=None, accepted_at=None, delivered_at=None):
    def fn(committed):
        p = Pickup.objects.create(customer_id=customer_id, lat=lat, lng=lng, price=price, currency=currency,
                                  waste_type=waste_type or "", status=status, worker_id=worker_id,
                                  created_at=created_at or now(), accepted_at=accepted_at,
                                  delivered_at=delivered_at)
        events = []
        if publish:
            data = {"pickup_id": p.id, "customer_id": customer_id, "lat": lat, "lng": lng}
            if waste_type:
                data["waste_type"] = waste_type
            if radius_km is not None:
                data["radius_km"] = radius_km
            events.append(_emit(committed, "pickup.created", data, p.id))
        return p, events
    return run_action(fn)


def accept_pickup(pickup_id, worker_id):
    def fn(committed):
        p = _get_pickup(pickup_id)
        _require(p, ["requested"], "accept")
        p.status, p.worker_id, p.accepted_at = "accepted", worker_id, now()
        p.save()
        return p, [_emit(committed, "pickup.accepted",
                         {"pickup_id": p.id, "customer_id": p.customer_id, "worker_id": worker_id}, p.id)]
    return run_action(fn)


def deliver_pickup(pickup_id):
    def fn(committed):
        p = _get_pickup(pickup_id)
        _require(p, ["accepted"], "deliver")
        p.status, p.delivered_at = "delivered", now()
        p.save()
        return p, [_emit(committed, "pickup.delivered",
                         {"pickup_id": p.id, "customer_id": p.customer_id, "worker_id": p.worker_id}, p.id)]
    return run_action(fn)


def confirm_pickup(pickup_id):
    def fn(committed):
        p = _get_pickup(pickup_id)
        _require(p, ["delivered"], "confirm")
        p.status, p.confirmed_at = "confirmed", now()
        p.save()
        return p, [_emit(committed, "pickup.confirmed", {"pickup_id": p.id, "customer_id": p.customer_id},
                         p.id)]
    return run_action(fn)


def dispute_pickup(pickup_id, reason=None):
    def fn(committed):
        p = _get_pickup(pickup_id)
        _require(p, ["requested", "accepted", "delivered"], "dispute")
        p.status, p.dispute_reason = "disputed", reason or ""
        p.save()
        data = {"pickup_id": p.id}
        if reason:
            data["reason"] = reason
        return p, [_emit(committed, "pickup.disputed", data, p.id)]
    return run_action(fn)


def cancel_pickup(pickup_id):
    def fn(committed):
        p = _get_pickup(pickup_id)
        _require(p, ["requested", "accepted"], "cancel")
        p.status = "cancelled"
        p.save()
        return p, []
    return run_action(fn)


def update_worker_location(worker_id, lat, lng, available, service_radius_km=None):
    def fn(committed):
        w, created = Worker.objects.get_or_create(
            pk=worker_id, defaults={"lat": lat, "lng": lng, "available": available,
                                    "service_radius_km": service_radius_km or 5.0})
        if not created:
            w.lat, w.lng, w.available = lat, lng, available
            if service_radius_km is not None:
                w.service_radius_km = service_radius_km
            w.save()
        return w, [_emit(committed, "worker.location",
                         {"worker_id": worker_id, "lat": lat, "lng": lng, "available": available}, worker_id)]
    return run_action(fn)


# --------------------------------------------------------------------- seed

LAGOS = (6.5244, 3.3792)
SEED_CUSTOMERS = [101, 102, 103]
SEED_ADMINS = [(1, "ops@klynaa.example"), (2, "finance@klynaa.example"), (3, "support@klynaa.example")]
# (id, dlat, dlng, service_radius_km): a few km around Lagos
SEED_WORKERS = [(201, 0.005, 0.004, 5.0), (202, -0.010, 0.012, 8.0), (203, 0.020, -0.015, 5.0),
                (204, -0.030, -0.025, 10.0), (205, 0.060, 0.050, 3.0)]


def seed(pickups=True):
    """Idempotently create demo customers' tokens, 3 admins, 5 workers near Lagos, 2 pickups."""
    from decimal import Decimal
    with WRITE_LOCK:
        with transaction.atomic():
            for uid in SEED_CUSTOMERS:
                DeviceToken.objects.get_or_create(user_id=uid, token="fcm-customer-%d" % uid,
                                                  defaults={"platform": "android"})
                DeviceToken.objects.get_or_create(user_id=uid, token="apns-customer-%d" % uid,
                                                  defaults={"platform": "ios"})
            for aid, email in SEED_ADMINS:
                AdminUser.objects.get_or_create(pk=aid, defaults={"email": email})
                DeviceToken.objects.get_or_create(user_id=aid, token="fcm-admin-%d" % aid,
                                                  defaults={"platform": "web"})
            for wid, dlat, dlng, radius in SEED_WORKERS:
                Worker.objects.get_or_create(pk=wid, defaults={"lat": round(LAGOS[0] + dlat, 6),
                                                               "lng": round(LAGOS[1] + dlng, 6),
                                                               "service_radius_km": radius, "available": True})
                DeviceToken.objects.get_or_create(user_id=wid, token="fcm-worker-%d" % wid,
                                                  defaults={"platform": "android"})
            created = 0
            if pickups and not Pickup.objects.exists():
                Pickup.objects.create(customer_id=101, lat=round(LAGOS[0] + 0.001, 6), lng=round(LAGOS[1] + 0.002, 6),
                                      price=Decimal("2500.00"), currency="NGN", waste_type="plastic",
                                      created_at=now())
                Pickup.objects.create(customer_id=102, lat=round(LAGOS[0] - 0.004, 6), lng=round(LAGOS[1] + 0.003, 6),
                                      price=Decimal("1800.50"), currency="NGN", waste_type="organic",
                                      created_at=now())
                created = 2
    return {"customers": SEED_CUSTOMERS, "admins": [a for a, _ in SEED_ADMINS],
            "workers": [w[0] for w in SEED_WORKERS], "pickups_created": created}

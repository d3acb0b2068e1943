from django.db import models

PICKUP_STATUSES = ["requested", "accepted", "delivered", "confirmed", "disputed", "cancelled"]


class Pickup(models.Model):
    status = models.CharField(max_length=16, default="requested",
                              choices=[(s, s) for s in PICKUP_STATUSES])
    customer_id = models.PositiveIntegerField()
    worker_id = models.PositiveIntegerField(null=True, blank=True)
    lat = models.FloatField()
    lng = models.FloatField()
    price = models.DecimalField(max_digits=12, decimal_places=2, default=0)
    currency = models.CharField(max_length=3, default="NGN")
    waste_type = models.CharField(max_length=32, blank=True, default="")
    dispute_reason = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(db_index=True)
    accepted_at = models.DateTimeField(null=True, blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)
    confirmed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["id"]


class Worker(models.Model):
    id = models.PositiveIntegerField(primary_key=True)
    lat = models.FloatField()
    lng = models.FloatField()
    service_radius_km = models.FloatField(default=5.0)
    available = models.BooleanField(default=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["id"]


class DeviceToken(models.Model):
    user_id = models.PositiveIntegerField(db_index=True)
    token = models.CharField(max_length=512)
    platform = models.CharField(max_length=16, default="android")

    class Meta:
        ordering = ["id"]
        constraints = [models.UniqueConstraint(fields=["user_id", "token"], name="uniq_user_token")]


class AdminUser(models.Model):
    id = models.PositiveIntegerField(primary_key=True)
    email = models.CharField(max_length=254)

    class Meta:
        ordering = ["id"]


class Report(models.Model):
    kind = models.CharField(max_length=32)
    period_start = models.DateTimeField(null=True, blank=True)
    period_end = models.DateTimeField(null=True, blank=True)
    summary = models.JSONField(default=dict)
    idempotency_key = models.CharField(max_length=200, null=True, blank=True, unique=True)
    created_at = models.DateTimeField(db_index=True)

    class Meta:
        ordering = ["id"]


class EscrowRelease(models.Model):
    pickup = models.OneToOneField(Pickup, on_delete=models.CASCADE, related_name="escrow_release")
    amount = models.DecimalField(max_digits=12, decimal_places=2)
    currency = models.CharField(max_length=3)
    reason = models.CharField(max_length=32)
    idempotency_key = models.CharField(max_length=200, null=True, blank=True)
    created_at = models.DateTimeField()

    class Meta:
        ordering = ["id"]


class EscrowCall(models.Model):
    """Every request that reached POST /api/serverless/escrow/{id}/release/."""
    pickup_id = models.PositiveIntegerField(null=True)
    idempotency_key = models.CharField(max_length=200, null=True, blank=True)
    reason = models.CharField(max_length=64, null=True, blank=True)
    status_code = models.PositiveIntegerField()
    status = models.CharField(max_length=32, null=True, blank=True)  # body "status" if any
    fault = models.CharField(max_length=16, null=True, blank=True)   # injected fault, if any
    received_at = models.DateTimeField()
    answered_at = models.DateTimeField()

    class Meta:
        ordering = ["id"]


class OutboxEvent(models.Model):
    """Transactional outbox: written in the domain transaction, published on commit.

    An event whose publish got no answer stays `pending` and is resent with the
    same id by `manage.py flush_outbox` (or POST /api/demo/outbox/flush/);
    the broker deduplicates by id.
    """
    event_id = models.CharField(max_length=128, unique=True)
    type = models.CharField(max_length=64)
    data = models.JSONField(default=dict)
    ts = models.BigIntegerField()
    status = models.CharField(max_length=16, default="pending")  # pending | accepted | duplicate | rejected
    reply = models.JSONField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField()

    class Meta:
        ordering = ["id"]

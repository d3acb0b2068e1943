import json
from decimal import Decimal

from django.conf import settings
from django.core.management.base import BaseCommand

from demo import services


class Command(BaseCommand):
    help = ("Seed demo data, then walk one pickup through created -> accepted -> delivered -> confirmed, "
            "publishing each event to the Klynaa ingress (KLYNAA_INGRESS).")

    def add_arguments(self, parser):
        parser.add_argument("--customer", type=int, default=101)
        parser.add_argument("--worker", type=int, default=201)

    def handle(self, *args, **opts):
        self.stdout.write("ingress: %s" % settings.KLYNAA_INGRESS)
        services.seed(pickups=False)
        lat, lng = services.LAGOS
        w, ev = services.update_worker_location(opts["worker"], round(lat + 0.003, 6), round(lng + 0.002, 6), True)
        self._show("worker.location", ev)
        p, ev = services.create_pickup(opts["customer"], lat, lng, Decimal("2500.00"), "NGN", "plastic")
        self._show("pickup.created", ev)
        p, ev = services.accept_pickup(p.id, opts["worker"])
        self._show("pickup.accepted", ev)
        p, ev = services.deliver_pickup(p.id)
        self._show("pickup.delivered", ev)
        p, ev = services.confirm_pickup(p.id)
        self._show("pickup.confirmed", ev)
        self.stdout.write("pickup %d is now %s" % (p.id, p.status))

    def _show(self, label, events):
        for ev, reply in events:
            self.stdout.write("%-17s id=%s -> %s" % (label, ev["id"], json.dumps(reply, default=str)))

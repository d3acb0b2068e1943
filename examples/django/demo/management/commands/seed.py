from django.core.management.base import BaseCommand

from demo.services import seed


class Command(BaseCommand):
    help = "Create demo data (idempotent): customers' device tokens, 3 admins, 5 workers near Lagos, 2 pickups."

    def add_arguments(self, parser):
        parser.add_argument("--no-pickups", action="store_true", help="do not create the two demo pickups")

    def handle(self, *args, **opts):
        out = seed(pickups=not opts["no_pickups"])
        self.stdout.write("seeded: customers %s, admins %s, workers %s, %d new pickup(s)" % (
            out["customers"], out["admins"], out["workers"], out["pickups_created"]))

from django.core.management.base import BaseCommand

from demo.services import flush_outbox


class Command(BaseCommand):
    help = "Publish (again, same ids) every outbox event that has no answer from the ingress yet."

    def handle(self, *args, **opts):
        replies = flush_outbox()
        for r in replies:
            self.stdout.write("%s %s" % ((r or {}).get("id"), (r or {}).get("status")))
        self.stdout.write("%d event(s) flushed" % len(replies))

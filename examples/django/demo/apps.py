from django.apps import AppConfig
from django.db.backends.signals import connection_created


def _sqlite_pragmas(sender, connection, **kwargs):
    if connection.vendor == "sqlite":
        with connection.cursor() as cur:
            cur.execute("PRAGMA journal_mode=WAL;")
            cur.execute("PRAGMA synchronous=NORMAL;")
            cur.execute("PRAGMA busy_timeout=30000;")


class DemoConfig(AppConfig):
    name = "demo"
    verbose_name = "Klynaa demo"

    def ready(self):
        connection_created.connect(_sqlite_pragmas)

#!/usr/bin/python3
"""Django's command-line utility for the Klynaa Jobs reference app.

Any command other than the migration ones first applies the shipped
migrations (silently), so a fresh checkout needs no manual step:

    /usr/bin/python3 examples/django/manage.py runserver 127.0.0.1:8000 --noreload
"""
import os
import sys

NO_AUTO_MIGRATE = {"migrate", "makemigrations", "sqlmigrate", "showmigrations", "squashmigrations", "help",
                   "version", "--help", "-h", "--version", "check", "shell"}


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    if here not in sys.path:
        sys.path.insert(0, here)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "klynaa_site.settings")
    import django
    from django.core.management import call_command, execute_from_command_line
    if len(sys.argv) > 1 and sys.argv[1] not in NO_AUTO_MIGRATE:
        django.setup()
        call_command("migrate", interactive=False, verbosity=0)
    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()

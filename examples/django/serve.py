#!/usr/bin/python3
"""Start the Klynaa reference Django app with a threaded WSGI server.

    /usr/bin/python3 examples/django/serve.py [HOST:]PORT      (default 127.0.0.1:8000)

Applies migrations first (a fresh DB is created automatically), optionally seeds
(--seed), then serves with Django's threaded HTTP/1.1 server (keep-alive, one
thread per connection).  Prints "READY http://HOST:PORT" on stdout when it
accepts connections.  Stop it with SIGTERM or SIGINT.
"""
import argparse
import os
import signal
import sys


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    if here not in sys.path:
        sys.path.insert(0, here)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "klynaa_site.settings")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("addr", nargs="?", default="127.0.0.1:8000", help="[HOST:]PORT (default 127.0.0.1:8000)")
    ap.add_argument("--seed", action="store_true", help="seed demo data before serving")
    ap.add_argument("--quiet", action="store_true", help="no access log")
    args = ap.parse_args()
    host, _, port = args.addr.rpartition(":")
    host = host or "127.0.0.1"
    if args.quiet:
        os.environ["KLYNAA_DEMO_ACCESS_LOG"] = "WARNING"

    import django
    django.setup()
    from django.core.management import call_command
    from django.core.servers.basehttp import ThreadedWSGIServer, WSGIRequestHandler
    from django.core.wsgi import get_wsgi_application

    call_command("migrate", interactive=False, verbosity=0)
    if args.seed:
        from demo.services import seed
        seed()

    httpd = ThreadedWSGIServer((host, int(port)), WSGIRequestHandler, ipv6=False)
    httpd.set_app(get_wsgi_application())

    def stop(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    print("READY http://%s:%s" % (host, httpd.server_address[1]), flush=True)
    try:
        httpd.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        httpd.server_close()


if __name__ == "__main__":
    main()

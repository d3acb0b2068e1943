"""Python client for the Klynaa Jobs ingress (ZeroMQ + msgpack, KJIP/1).

The broker binds a ZeroMQ ROUTER socket (default ``tcp://127.0.0.1:5555``).
This client talks to it with DEALER sockets, sending one empty delimiter frame
followed by one msgpack map per request, and matching replies by ``id``.

Dependencies: ``pyzmq`` and ``msgpack`` (Debian: ``python3-zmq``,
``python3-msgpack``).  Django is optional: only :func:`publish_on_commit` and
:func:`django_client` import it.  Import everything from this module; its
parts live in sibling modules it imports (``klynaa_client_base``: constants,
exceptions and ids; ``klynaa_client_curve``: CURVE keys; ``klynaa_client_core``:
:class:`Client`).  Install them into a venv with ``pip install
--no-build-isolation --no-index clients/python`` (``clients/python/pyproject.toml``,
see ``docs/django.md``), or put ``clients/python`` on ``sys.path`` (or copy its
four ``klynaa_client*.py`` files into your project).

Example::

    from klynaa_client import Client, KlynaaRejected, KlynaaUnavailable

    client = Client("tcp://127.0.0.1:5555", timeout_s=5)
    client.ping()                              # {'v': 1, 'id': '...', 'status': 'pong'}

    reply = client.publish("pickup.accepted",
                           {"pickup_id": 7, "customer_id": 101, "worker_id": 201},
                           id="pickup.accepted.7")
    reply["status"], reply["jobs"]             # 'accepted' (or 'duplicate'), ['pickup.accepted.7#1']

    result = client.invoke("processEscrowRelease",
                           {"pickup_id": 7, "release_reason": "admin"}, timeout_ms=10000)
    result["status"]                           # 'released' or 'already_released'

From Django, inside a transaction::

    from django.db import transaction
    from klynaa_client import publish_on_commit

    with transaction.atomic():
        pickup.save()
        publish_on_commit("pickup.accepted", {...}, id="pickup.accepted.%d" % pickup.pk)
    # sent here, after the commit; nothing is sent when the transaction rolls back

What the methods return and raise
---------------------------------
* :meth:`Client.publish` returns the reply ``dict`` when the broker answered
  ``accepted`` or ``duplicate`` (both carry ``jobs``; ``duplicate`` means that
  ``id`` was accepted before and nothing new happens).
* :meth:`Client.invoke` returns the function's ``result`` (a ``dict``) when the
  broker answered ``ok``.  It raises :class:`KlynaaInvokeFailed` on ``failed``
  (``code`` ``permanent`` or ``exhausted``, ``http_status`` when Django
  answered) and :class:`KlynaaInvokeTimeout` on ``timeout`` (the job keeps
  running; invoking the same ``id`` again waits for the same job).
* :meth:`Client.ping` returns the ``pong`` reply.
* ``rejected`` replies raise, for every operation:

  - :class:`KlynaaRejected` (``code``, ``field``, ``message``, ``request_id``)
    for ``malformed``, ``unsupported_version``, ``missing_field``,
    ``invalid_field``, ``unknown_type``, ``too_large`` and ``unauthorized``:
    nothing was stored and sending the same request again will not help; fix it.
  - :class:`KlynaaOverloaded` (``overloaded``) and :class:`KlynaaShuttingDown`
    (``shutting_down``), both with ``retry_after_ms``: nothing was stored and the
    same request may be sent again later.  They are subclasses of
    :class:`KlynaaUnavailable`, so ``except KlynaaUnavailable`` catches every
    "try again later" case.

* :class:`KlynaaUnavailable` itself: no reply from any endpoint within the
  time budget.  The request may or may not have been stored; sending the same
  ``id`` again is always safe (the broker deduplicates).
* Every exception derives from :class:`KlynaaError` and carries
  ``request_id`` and, when the broker answered, the ``reply`` dict.

Timeouts, resends and failover
------------------------------
* A request waits ``timeout_s`` per attempt; for ``invoke`` an attempt waits
  ``timeout_s`` plus the invoke's own ``timeout_ms`` (default 30000 ms, the
  broker's default), because the broker only answers once the job has ended or
  ``timeout_ms`` has passed.
* When no reply arrives, the socket is closed (linger 0), a fresh one is
  connected to the next endpoint of ``endpoints`` (a comma-separated list or a
  list, tried in turn) and the *same* request, with the *same* ``id``, is sent
  again, up to ``retries`` times.  This is safe: the broker deduplicates by
  ``id``.  Later requests stick to the endpoint that answered.
* The time budget of one call is ``(retries + 1)`` × the per-attempt wait; a
  call never takes longer than that.  With the defaults (``timeout_s=5``, one
  endpoint, ``retries=2``) a publish gives up after 15 s.
* Reconnecting is automatic: ZeroMQ reconnects a socket whose broker
  restarted, and a socket that timed out is replaced by a new one, so the same
  :class:`Client` keeps working across broker restarts.

Overloaded and shutting down: the client retries by itself
----------------------------------------------------------
With ``retry_busy=True`` (the default) an ``overloaded`` or ``shutting_down``
rejection is not raised at once.  The client waits ``retry_after_ms`` (1000 ms
when absent) and sends the same request again, as long as the wait plus one
full attempt still fit in the call's time budget; otherwise it raises
:class:`KlynaaOverloaded` / :class:`KlynaaShuttingDown` right away rather than
sleeping in vain.  A ``shutting_down`` answer with more than one endpoint
configured moves to the next endpoint and resends without waiting (that
broker is draining; another one can take the request).  So does an
``overloaded`` answer from a *standby* broker (its message starts with
"standby broker": another broker holds the PostgreSQL store's lease), after a
pause of 0.1 s.  Nothing was stored by
a rejected request, so resending it is safe.  ``retry_busy=False`` raises at
once and leaves the policy to the caller.

CURVE (encryption and an allow-list of client keys)
--------------------------------------------------
When the broker runs with ``ingress.curve = true`` (docs/security.md), pass
its public key and this client's key pair::

    Client("tcp://broker:5555",
           curve_server_key="/etc/klynaa/broker.pub",     # a key file, or the Z85 key itself
           curve_key_file="/etc/klynaa/django.key")       # written by `klynaa keygen --name django`

or the keys as Z85 strings: ``curve_public_key=...`` and ``curve_secret_key=...``
(the public one is derived when left out).  The files are the ones
``klynaa keygen`` writes (also pyzmq's ``zmq.auth`` and czmq's zcert files);
:func:`load_curve_key_file` reads them.  A problem with the keys raises
``ValueError`` at construction.  A broker that does not list this client's
public key in ``ingress.curve_allow_file`` refuses the connection during the
handshake, so every request ends in :class:`KlynaaUnavailable` (no reply);
its log says ``CURVE client refused`` with the key's first characters.

Other notes
-----------
* ``id`` defaults to ``uuid4().hex``.  Pass your own stable id (e.g. derived
  from a database row, see :func:`event_id`) to make resends from your side
  idempotent as well.
* Thread-safe: a request borrows a socket from a small pool (ZeroMQ sockets
  must not be used by two threads at once), so requests from several threads
  are in flight together; the ZeroMQ context is shared.
"""

import logging
import threading
import time

import msgpack

from klynaa_client_base import (  # noqa: F401  (re-exported)
    BUSY_CODES, DEFAULT_ENDPOINT, DEFAULT_INVOKE_TIMEOUT_MS, DEFAULT_RETRY_AFTER_MS, PROTOCOL_VERSION,
    STANDBY_PAUSE_S, STANDBY_PREFIX, KlynaaError, KlynaaInvokeFailed, KlynaaInvokeTimeout,
    KlynaaOverloaded, KlynaaRejected, KlynaaShuttingDown, KlynaaUnavailable, KlynaaUnexpectedReply,
    _new_id, _ts_ms, event_id)
from klynaa_client_core import Client  # noqa: F401  (re-exported)
from klynaa_client_curve import load_curve_key_file  # noqa: F401  (re-exported)

__all__ = [
    "Client", "PROTOCOL_VERSION", "DEFAULT_ENDPOINT",
    "KlynaaError", "KlynaaUnavailable", "KlynaaOverloaded", "KlynaaShuttingDown", "KlynaaRejected",
    "KlynaaInvokeFailed", "KlynaaInvokeTimeout", "KlynaaUnexpectedReply",
    "event_id", "publish_on_commit", "django_client", "load_curve_key_file",
]

# The public classes say they are klynaa_client's, as when it was one file
# (reprs, tracebacks, pickles name the module to import).
for _cls in (Client, KlynaaError, KlynaaUnavailable, KlynaaOverloaded, KlynaaShuttingDown, KlynaaRejected,
             KlynaaInvokeFailed, KlynaaInvokeTimeout, KlynaaUnexpectedReply):
    _cls.__module__ = "klynaa_client"
del _cls

log = logging.getLogger("klynaa_client")


# ---------------------------------------------------------------------- Django

_django_clients = {}
_django_lock = threading.Lock()


def django_client():
    """The process-wide :class:`Client` configured by Django settings:

    * ``KLYNAA_INGRESS``: endpoint or comma-separated list (default ``tcp://127.0.0.1:5555``);
    * ``KLYNAA_INGRESS_TIMEOUT_S``: per-attempt timeout (default 5);
    * ``KLYNAA_INGRESS_RETRIES``: resends after no reply (default: ``max(2, endpoints)``);
    * ``KLYNAA_INGRESS_RETRY_BUSY``: retry overloaded / shutting_down (default ``True``);
    * ``KLYNAA_INGRESS_CURVE_SERVER_PUBLIC_FILE``: CURVE: the broker's public key
      file (or the Z85 key); ``KLYNAA_INGRESS_CURVE_CLIENT_SECRET_FILE``: this
      site's key pair file.  The same names as the config keys
      ``ingress.curve_server_public_file`` / ``curve_client_secret_file``.

    One client per distinct configuration, created on first use; it is
    thread-safe, so every request thread shares it.
    """
    from django.conf import settings
    key = (getattr(settings, "KLYNAA_INGRESS", DEFAULT_ENDPOINT),
           float(getattr(settings, "KLYNAA_INGRESS_TIMEOUT_S", 5)),
           getattr(settings, "KLYNAA_INGRESS_RETRIES", None),
           bool(getattr(settings, "KLYNAA_INGRESS_RETRY_BUSY", True)),
           getattr(settings, "KLYNAA_INGRESS_CURVE_SERVER_PUBLIC_FILE", None) or None,
           getattr(settings, "KLYNAA_INGRESS_CURVE_CLIENT_SECRET_FILE", None) or None)
    with _django_lock:
        c = _django_clients.get(key)
        if c is None or c._closed:
            c = Client(key[0], timeout_s=key[1], retries=key[2], retry_busy=key[3],
                       curve_server_key=key[4], curve_key_file=key[5])
            _django_clients[key] = c
        return c


def publish_on_commit(type, data, id=None, ts=None, client=None, using=None, on_reply=None, on_error=None,
                      runner=None):
    """Publish an event once the current Django transaction commits.

    Call it inside ``transaction.atomic()`` next to the change the event
    describes.  When the transaction commits the event is published; when it
    rolls back nothing is sent.  Outside a transaction (autocommit) it is
    published at once, like ``transaction.on_commit``.

    :param type, data: the event, as for :meth:`Client.publish`.  ``data`` is
        encoded (and so checked and copied) now: a value msgpack cannot encode
        raises ``TypeError`` inside the transaction, and later changes to the
        dict do not affect what is sent.
    :param id: the event's idempotency key.  Pass a stable one (e.g.
        ``event_id("pickup.accepted", pickup.pk)`` or an id stored in an outbox
        row) so a resend after a lost reply is a ``duplicate``, not a new event.
        Default: ``uuid4().hex``, fixed now.
    :param ts: when it happened (epoch ms or ``datetime``); default: now, i.e.
        the time of the change rather than of the send.
    :param client: the :class:`Client` to use (default :func:`django_client`).
    :param using: the database alias whose transaction counts (default ``"default"``).
    :param on_reply: called with the reply dict (``accepted``/``duplicate``).
    :param on_error: called with the :class:`KlynaaError` when the publish
        failed (rejected, unavailable, ...).  Without it the error is logged
        (logger ``klynaa_client``) and not raised: the transaction has already
        committed, so raising would only turn a saved change into an error page.
        Keep the event (an outbox row) if it must not be lost.
    :param runner: called with the zero-argument function that sends, instead
        of sending in the commit hook; e.g. ``executor.submit`` to send in the
        background, or ``list.append`` to send later (after releasing a lock).
        The send function returns the reply dict, or ``None`` after an error.
    :returns: the event id.
    """
    from django.db import transaction

    eid = id or _new_id()
    ts_ms = _ts_ms(ts) if ts is not None else int(time.time() * 1000)
    frozen = msgpack.unpackb(msgpack.packb(data, use_bin_type=True), raw=False, strict_map_key=False)

    def send():
        c = client if client is not None else django_client()
        try:
            reply = c.publish(type, frozen, id=eid, ts=ts_ms)
        except KlynaaError as e:
            if on_error is not None:
                on_error(e)
            else:
                log.error("event %s (%s) not published after commit: %s", eid, type, e)
            return None
        if on_reply is not None:
            on_reply(reply)
        return reply

    if runner is None:
        transaction.on_commit(send, using=using)
    else:
        transaction.on_commit(lambda: runner(send), using=using)
    return eid


# ------------------------------------------------------------------------- CLI

def _main(argv):
    """python3 klynaa_client.py ping | publish TYPE JSON [ID] | invoke FUNCTION JSON [TIMEOUT_MS]

    Exit codes like `klynaa publish|invoke`: 0 success, 1 failed / timeout / no
    answer / overloaded, 2 rejected.  Prints the reply as JSON."""
    import json
    import os
    import sys

    ep = os.environ.get("KLYNAA_INGRESS", DEFAULT_ENDPOINT)
    if not argv or argv[0] not in ("ping", "publish", "invoke") or (argv[0] != "ping" and len(argv) < 3):
        print("usage: klynaa_client.py ping | publish TYPE JSON [ID] | invoke FUNCTION JSON [TIMEOUT_MS]"
              "  (env KLYNAA_INGRESS; for CURVE KLYNAA_INGRESS_CURVE_SERVER_PUBLIC_FILE and"
              " KLYNAA_INGRESS_CURVE_CLIENT_SECRET_FILE)", file=sys.stderr)
        return 2
    try:
        client = Client(ep, curve_server_key=os.environ.get("KLYNAA_INGRESS_CURVE_SERVER_PUBLIC_FILE") or None,
                        curve_key_file=os.environ.get("KLYNAA_INGRESS_CURVE_CLIENT_SECRET_FILE") or None)
    except ValueError as e:
        print(str(e), file=sys.stderr)
        return 2
    with client as c:
        try:
            if argv[0] == "ping":
                r = c.ping()
            elif argv[0] == "publish":
                r = c.publish(argv[1], json.loads(argv[2]), id=argv[3] if len(argv) > 3 else None)
            else:
                tmo = int(argv[3]) if len(argv) > 3 else None
                r = c.invoke(argv[1], json.loads(argv[2]), timeout_ms=tmo)
        except KlynaaRejected as e:
            print(json.dumps(e.reply, default=str))
            print(str(e), file=sys.stderr)
            return 2
        except KlynaaError as e:
            if e.reply is not None:
                print(json.dumps(e.reply, default=str))
            print(str(e), file=sys.stderr)
            return 1
    print(json.dumps(r, default=str))
    return 0


if __name__ == "__main__":
    import sys as _sys
    _sys.exit(_main(_sys.argv[1:]))

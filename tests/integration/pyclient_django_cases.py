"""Part of tests/integration/python_client_test.py: publish_on_commit in a
Django transaction and the reference app publishing through it.  The test
cases are mixins; python_client_test.py makes them unittest.TestCase classes,
so they run under its module fixture (pyclient_support.set_up_module).
"""
import os
import urllib.error

import pyclient_support as support
from pyclient_support import RUN, ensure_main_broker, uid, wait_for
from klynaa_client import (Client, KlynaaRejected, KlynaaUnavailable, django_client, event_id,
                           publish_on_commit)
from testutil import free_port


class PublishOnCommitCases:
    """klynaa_client.publish_on_commit in a Django transaction (in this process)."""

    @classmethod
    def setUpClass(cls):
        ensure_main_broker()
        import django
        from django.conf import settings
        if not settings.configured:
            settings.configure(
                DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3",
                                       "NAME": os.path.join(support.TMP, "shop.sqlite3")}},
                INSTALLED_APPS=[], USE_TZ=True,
                KLYNAA_INGRESS=support.BROKER.endpoint, KLYNAA_INGRESS_TIMEOUT_S=2, KLYNAA_INGRESS_RETRIES=1)
            django.setup()
        from django.db import connection
        with connection.cursor() as cur:
            cur.execute("CREATE TABLE IF NOT EXISTS shop_pickup (id INTEGER PRIMARY KEY, status TEXT)")

    def setUp(self):
        ensure_main_broker()

    def insert(self, status):
        from django.db import connection
        with connection.cursor() as cur:
            cur.execute("INSERT INTO shop_pickup (status) VALUES (%s)", [status])
            return cur.lastrowid

    def exists(self, pk):
        from django.db import connection
        with connection.cursor() as cur:
            cur.execute("SELECT COUNT(*) FROM shop_pickup WHERE id = %s", [pk])
            return cur.fetchone()[0] == 1

    def test_published_after_commit_with_stable_id(self):
        from django.db import transaction
        replies = []
        before = support.BROKER.ingress_count("accepted")
        with transaction.atomic():
            pk = self.insert("accepted")
            eid = publish_on_commit("pickup.accepted", {"pickup_id": pk, "customer_id": 101, "worker_id": 201},
                                    id=event_id("pickup.accepted", RUN, pk), on_reply=replies.append)
            self.assertEqual(eid, "pickup.accepted.%s.%d" % (RUN, pk))
            # not sent yet: the broker accepted nothing while the transaction is open
            self.assertEqual(support.BROKER.ingress_count("accepted"), before)
            self.assertEqual(replies, [])
        self.assertEqual(replies, [{"v": 1, "id": eid, "status": "accepted", "jobs": [eid + "#1"]}])
        self.assertTrue(wait_for(lambda: support.BROKER.ingress_count("accepted") == before + 1, 5))
        # the id is stable: sending the same event again is a duplicate
        r = django_client().publish("pickup.accepted", {"pickup_id": pk, "customer_id": 101, "worker_id": 201},
                                    id=eid)
        self.assertEqual((r["status"], r["jobs"]), ("duplicate", [eid + "#1"]))

    def test_rollback_publishes_nothing(self):
        from django.db import transaction
        replies, errors = [], []
        before = support.BROKER.ingress_count("accepted")
        with self.assertRaises(RuntimeError):
            with transaction.atomic():
                pk = self.insert("accepted")
                eid = publish_on_commit("pickup.accepted",
                                        {"pickup_id": pk, "customer_id": 101, "worker_id": 201},
                                        id=event_id("pickup.accepted", "rollback", RUN, pk),
                                        on_reply=replies.append, on_error=errors.append)
                raise RuntimeError("the view failed")
        self.assertFalse(self.exists(pk))
        self.assertEqual((replies, errors), ([], []))
        self.assertEqual(support.BROKER.ingress_count("accepted"), before)
        # the broker never saw the id: it is new
        r = django_client().publish("pickup.accepted", {"pickup_id": pk, "customer_id": 101, "worker_id": 201},
                                    id=eid)
        self.assertEqual(r["status"], "accepted")

    def test_savepoint_rollback_drops_only_its_events(self):
        from django.db import transaction
        sent = []
        with transaction.atomic():
            outer = publish_on_commit("pickup.confirmed", {"pickup_id": 21, "customer_id": 101},
                                      id=uid("outer"), on_reply=sent.append)
            try:
                with transaction.atomic():
                    publish_on_commit("pickup.confirmed", {"pickup_id": 22, "customer_id": 101},
                                      id=uid("inner"), on_reply=sent.append)
                    raise ValueError("inner block fails")
            except ValueError:
                pass
        self.assertEqual([r["id"] for r in sent], [outer])

    def test_default_id_and_ts(self):
        from django.db import transaction
        sent = []
        with transaction.atomic():
            eid = publish_on_commit("worker.location", {"worker_id": 9003, "lat": 10, "lng": 10, "available": False},
                                    on_reply=sent.append)
        self.assertRegex(eid, r"^[0-9a-f]{32}$")
        self.assertEqual((sent[0]["id"], sent[0]["status"]), (eid, "accepted"))

    def test_data_is_checked_now_and_frozen(self):
        from django.db import transaction
        with self.assertRaises(TypeError):
            with transaction.atomic():
                pk = self.insert("accepted")
                publish_on_commit("pickup.accepted", {"pickup_id": pk, "customer_id": object()}, id=uid("bad"))
        self.assertFalse(self.exists(pk))  # the error surfaced inside the transaction: rolled back
        sent = []
        data = {"pickup_id": 23, "customer_id": 101, "worker_id": 201}
        with transaction.atomic():
            publish_on_commit("pickup.accepted", data, id=uid("frozen"), on_reply=sent.append)
            data["worker_id"] = "changed later"  # would be invalid_field if it were sent
        self.assertEqual(sent[0]["status"], "accepted")

    def test_errors_after_commit_are_reported_not_raised(self):
        from django.db import transaction
        errors = []
        with transaction.atomic():
            pk = self.insert("accepted")
            eid = publish_on_commit("pickup.accepted", {"pickup_id": pk, "customer_id": 101}, id=uid("nofield"),
                                    on_error=errors.append)
        self.assertTrue(self.exists(pk))
        self.assertEqual(len(errors), 1)
        self.assertIsInstance(errors[0], KlynaaRejected)
        self.assertEqual((errors[0].code, errors[0].field, errors[0].request_id),
                         ("missing_field", "data.worker_id", eid))
        # without on_error: logged on "klynaa_client", the commit stands
        with self.assertLogs("klynaa_client", "ERROR") as logs:
            with transaction.atomic():
                pk = self.insert("accepted")
                publish_on_commit("pickup.teleported", {"pickup_id": pk}, id=uid("unknown"))
        self.assertTrue(self.exists(pk))
        self.assertIn("unknown_type", "\n".join(logs.output))
        # no broker answering: on_error gets KlynaaUnavailable
        dead = Client("tcp://127.0.0.1:%d" % free_port(), timeout_s=0.3, retries=0)
        try:
            with transaction.atomic():
                publish_on_commit("pickup.confirmed", {"pickup_id": 24, "customer_id": 101}, id=uid("dead"),
                                  client=dead, on_error=errors.append)
        finally:
            dead.close()
        self.assertIsInstance(errors[-1], KlynaaUnavailable)

    def test_runner_defers_the_send(self):
        from django.db import transaction
        later = []
        with transaction.atomic():
            eid = publish_on_commit("pickup.confirmed", {"pickup_id": 25, "customer_id": 101}, id=uid("later"),
                                    runner=later.append)
        self.assertEqual(len(later), 1)  # committed, handed to the runner, not sent yet
        r = later[0]()
        self.assertEqual((r["id"], r["status"]), (eid, "accepted"))


class ReferenceAppCases:
    """examples/django publishes its events through publish_on_commit to the broker."""

    def setUp(self):
        ensure_main_broker()

    def test_demo_action_publishes_after_commit(self):
        b = support.DJANGO.call("POST", "/api/demo/pickups/", {"customer_id": 102, "lat": 6.53, "lng": 3.38})
        ev, reply = b["event"], b["ingress"]
        self.assertEqual(ev["type"], "pickup.created")
        self.assertEqual(reply, {"v": 1, "id": ev["id"], "status": "accepted", "jobs": [ev["id"] + "#1"]})
        with Client(support.BROKER.endpoint) as c:
            self.assertEqual(c.publish(ev["type"], ev["data"], id=ev["id"])["status"], "duplicate")
        # an invalid transition commits nothing and publishes nothing
        with self.assertRaises(urllib.error.HTTPError) as cm:
            support.DJANGO.call("POST", "/api/demo/pickups/%d/deliver/" % b["pickup"]["id"], {})
        self.assertEqual(cm.exception.code, 409)

    def test_outbox_resends_the_same_id(self):
        p = support.DJANGO.pickup()
        support.BROKER.pause()
        try:
            b = support.DJANGO.call("POST", "/api/demo/pickups/%d/accept/" % p["id"], {"worker_id": 201})
        finally:
            support.BROKER.resume()
        self.assertEqual(b["pickup"]["status"], "accepted")  # the change committed anyway
        self.assertEqual(b["ingress"]["status"], "unavailable")
        ev_id = b["event"]["id"]
        state = support.DJANGO.call("GET", "/api/demo/state/")
        self.assertEqual([e["status"] for e in state["outbox"] if e["id"] == ev_id], ["pending"])
        replies = support.DJANGO.call("POST", "/api/demo/outbox/flush/", {})["replies"]
        mine = [r for r in replies if r.get("id") == ev_id]
        self.assertEqual(len(mine), 1)
        # the paused broker may have taken the first sends when it resumed
        self.assertIn(mine[0]["status"], ("accepted", "duplicate"))
        self.assertEqual(mine[0]["jobs"], [ev_id + "#1"])

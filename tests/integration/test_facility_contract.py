"""Issue 11 item 1 on the emulators: facility groups and facilities reach the product only through
contract facility-changed.v1 (function on_facility_changed) and are read by the forms through the
admin API's list endpoints. Idempotent, order-safe upserts; removal as a tombstone."""
from __future__ import annotations

import json
import random
import threading
import time
from datetime import datetime, timezone

import pytest

from shared.domain.errors import TransientError
from shared.domain.messages import exam_status_changed
from shared.domain.rules import TimeoutPolicy
from shared.services.archive_trigger import ArchiveTriggerService
from shared.services.facilities import FacilitySyncService
from tests.support import (assert_matches_openapi, cloud_event_headers, exam_event, facility_event, load_app,
                           pubsub_envelope)

BASE = "/v1/facility-groups/fg-1"
DEST = {"name": "Enterprise VNA", "type": "DICOM_SCP", "host": "10.20.0.31", "port": 104,
        "called_ae_title": "VNA_ENT", "calling_ae_title": "GW_SCU", "auto_archive": True, "trigger_status": "COMPLETED"}


@pytest.fixture
def world(stack, admin_env):
    stack.topic("archsync-gateway-dead-letter")
    events, admin = load_app("on_facility_changed"), load_app("admin_api")

    class World:
        n = 0

        def publish(self, payload, raw=None):
            """Deliver like the push subscription does; answers the HTTP status."""
            self.n += 1
            r = events.post("/", data=json.dumps(pubsub_envelope(payload, raw=raw, message_id=f"m-{self.n}")),
                            headers=cloud_event_headers("archsync-facility-changed", stack.project, ce_id=f"ce-{self.n}"))
            return r.status_code

        def api(self, method, path, body=None, groups=("fg-1",)):
            return admin.open(path, method=method, data=json.dumps(body) if body is not None else None,
                              headers={**admin_env.headers(groups), "Content-Type": "application/json"})

        def facilities(self, fg="fg-1"):
            r = self.api("GET", f"/v1/facility-groups/{fg}/facilities", groups=(fg,))
            assert r.status_code == 200, r.json
            assert_matches_openapi(r.json, "/v1/facility-groups/{facility_group_id}/facilities", "get")
            return {f["id"]: (f["name"], f["send_adt"]) for f in r.json["facilities"]}

    w = World()
    w.stack = stack
    return w


def seed(world):
    for e in (facility_event(None, name="North Valley Imaging"),
              facility_event("fac-a", name="Main Hospital", send_adt=True),
              facility_event("fac-b", name="East Clinic"),
              facility_event(None, fg="fg-2", name="Other group"),
              facility_event("fac-x", fg="fg-2", name="Theirs")):
        assert world.publish(e) == 200


def test_groups_and_facilities_arrive_through_the_event_and_the_forms_list_them(world):
    seed(world)
    r = world.api("GET", "/v1/facility-groups")
    assert r.status_code == 200
    assert_matches_openapi(r.json, "/v1/facility-groups", "get")
    assert r.json == {"facility_groups": [{"id": "fg-1", "name": "North Valley Imaging"}]}  # only the caller's
    r = world.api("GET", "/v1/facility-groups", groups=("fg-1", "fg-2", "fg-unknown"))
    assert [g["id"] for g in r.json["facility_groups"]] == ["fg-1", "fg-2"]  # by name; unknown ones absent
    assert world.facilities() == {"fac-a": ("Main Hospital", True), "fac-b": ("East Clinic", False)}
    # A gateway and a destination can now be scoped to them (they were refused with no facility data).
    gw = world.api("POST", f"{BASE}/gateways", {"name": "Main", "facility_ids": ["fac-a", "fac-b"]})
    assert gw.status_code == 201 and gw.json["facilities"] == "Main Hospital, East Clinic"
    d = world.api("POST", f"{BASE}/destinations", {**DEST, "gateway_id": gw.json["id"], "facility_ids": ["fac-b"]})
    assert d.status_code == 201 and d.json["facilities"] == "East Clinic"
    assert world.stack.store.facilities_with_adt("fg-1") == {"fac-a": True, "fac-b": False}


def test_tenant_isolation_of_the_facility_list(world):
    seed(world)
    r = world.api("GET", "/v1/facility-groups/fg-2/facilities")  # the caller administers fg-1 only
    assert r.status_code == 404 and r.json["error"]["code"] == "not_found"
    assert world.api("GET", "/v1/facility-groups", groups=()).json == {"facility_groups": []}
    assert world.api("POST", "/v1/facility-groups").status_code == 405  # read-only: the platform owns them
    assert world.api("POST", f"{BASE}/facilities", {"id": "fac-z"}).status_code == 405
    assert load_app("admin_api").get(f"{BASE}/facilities").status_code == 401


def test_upserts_are_idempotent_and_an_older_version_never_overwrites_a_newer_one(world):
    v3 = facility_event("fac-a", version=3, name="Main Hospital (new wing)", send_adt=True)
    v2 = facility_event("fac-a", version=2, name="Main Hospital", send_adt=False)
    for e in (v3, v3, v2, v3):  # duplicate, then a late older version, then a redelivery
        assert world.publish(e) == 200
    assert world.facilities() == {"fac-a": ("Main Hospital (new wing)", True)}
    doc = world.stack.db.document("facility_groups/fg-1/facilities/fac-a").get().to_dict()
    assert (doc["version"], doc["removed"]) == (3, False)
    assert world.publish(facility_event("fac-a", version=4, name="Main Hospital", send_adt=False)) == 200
    assert world.facilities() == {"fac-a": ("Main Hospital", False)}


def test_concurrent_deliveries_of_several_versions_end_with_the_highest(world):
    service = FacilitySyncService(world.stack.store)
    versions = list(range(1, 7))
    failures = []

    def deliver(v):
        # Contention is transient: Pub/Sub would redeliver. The emulator's pessimistic locks make
        # contended transactions slow on a loaded machine, hence a generous deadline, not a count.
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            try:
                return service.handle(facility_event("fac-a", version=v, name=f"Name v{v}", send_adt=v % 2 == 0))
            except TransientError:
                time.sleep(random.uniform(0.05, 0.5))
            except Exception as e:  # anything else would be a 500 in production
                failures.append(e)
                return None
        failures.append(AssertionError(f"version {v} never applied"))

    threads = [threading.Thread(target=deliver, args=(v,)) for v in reversed(versions)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    assert world.facilities() == {"fac-a": ("Name v6", True)}


def test_removing_a_facility_in_use_keeps_it_as_a_tombstone_and_never_widens_a_scope(world):
    seed(world)
    gw = world.api("POST", f"{BASE}/gateways", {"name": "East", "facility_ids": ["fac-b"]}).json
    d = world.api("POST", f"{BASE}/destinations", {**DEST, "gateway_id": gw["id"], "facility_ids": ["fac-b"]}).json
    assert world.publish(facility_event("fac-b", version=2, removed=True)) == 200

    assert world.facilities() == {"fac-a": ("Main Hospital", True)}  # no longer offered
    # The scopes still name it (removing it from a list could empty it, and empty means "all").
    gw_now = world.api("GET", f"{BASE}/gateways/{gw['id']}").json
    d_now = world.api("GET", f"{BASE}/destinations/{d['id']}").json
    assert (gw_now["facility_ids"], d_now["facility_ids"]) == (["fac-b"], ["fac-b"])
    assert (gw_now["facilities"], d_now["facilities"]) == ("East Clinic (removed)", "East Clinic (removed)")
    # It cannot be chosen anew, but unrelated edits of a scope that holds it still work.
    r = world.api("POST", f"{BASE}/gateways", {"name": "New", "facility_ids": ["fac-b"]})
    assert r.status_code == 422 and set(r.json["error"]["fields"]) == {"facility_ids"}
    r = world.api("PATCH", f"{BASE}/destinations/{d['id']}", {"port": 11112})
    assert r.status_code == 200 and r.json["facility_ids"] == ["fac-b"]
    r = world.api("PATCH", f"{BASE}/gateways/{gw['id']}", {"facility_ids": ["fac-b", "fac-a"]})
    assert r.status_code == 200
    # An exam of the removed facility is still archived where its scope says (its data must reach
    # the archive), and its patients' updates still follow its last Send ADT setting.
    now = datetime.now(timezone.utc)
    st = world.stack
    out = ArchiveTriggerService(st.store, st.store, st.job_publisher, st.clock, TimeoutPolicy()).handle(
        exam_status_changed(exam_event("COMPLETED", facility="fac-b", first_reached=now, event_time=now)))
    assert [o.destination_id for o in out] == [d["id"]]
    assert st.store.facilities_with_adt("fg-1")["fac-b"] is False

    # A late, older upsert does not bring it back; a newer one (re-added at the platform) does.
    assert world.publish(facility_event("fac-b", version=1, name="East Clinic")) == 200
    assert "fac-b" not in world.facilities()
    assert world.publish(facility_event("fac-b", version=3, name="East Clinic", send_adt=True)) == 200
    assert world.facilities()["fac-b"] == ("East Clinic", True)


def test_removing_a_facility_keeps_its_send_adt_setting_for_its_patients(world):
    seed(world)
    assert world.publish(facility_event("fac-a", version=2, removed=True)) == 200
    assert world.stack.store.facilities_with_adt("fg-1") == {"fac-a": True, "fac-b": False}
    # A removal that overtakes the creation leaves a tombstone: the late creation cannot revive it.
    assert world.publish(facility_event("fac-c", version=5, removed=True)) == 200
    assert world.publish(facility_event("fac-c", version=4, name="Ghost clinic")) == 200
    assert "fac-c" not in world.facilities()


def test_removing_a_group_hides_it_from_the_group_list(world):
    seed(world)
    assert world.publish(facility_event(None, version=2, removed=True)) == 200
    assert world.api("GET", "/v1/facility-groups").json == {"facility_groups": []}
    doc = world.stack.db.document("facility_groups/fg-1").get().to_dict()
    assert (doc["removed"], doc["name"]) == (True, "North Valley Imaging")


@pytest.mark.parametrize("payload,reason", [
    ({**facility_event("fac-a"), "facility_id": None}, "facility_id"),
    ({k: v for k, v in facility_event("fac-a").items() if k != "facility_id"}, "facility_id"),
    ({k: v for k, v in facility_event("fac-a").items() if k != "name"}, "name"),
    ({k: v for k, v in facility_event("fac-a").items() if k != "send_adt"}, "send_adt"),
    ({**facility_event(None), "send_adt": True}, "(root)"),
    ({**facility_event("fac-a"), "version": -1}, "version"),
    ({**facility_event("fac-a"), "name": "   "}, "name"),
    ({**facility_event("fac-a"), "facility_id": "a/b"}, "facility_id"),
    ({**facility_event("fac-a"), "event_time": "2026-11-01T08:00:00"}, "event_time"),
])
def test_malformed_events_are_dead_lettered_with_their_reason_and_write_nothing(world, payload, reason):
    assert world.publish(payload) == 200  # acknowledged: parked, never retried forever
    [dl] = world.stack.pull("dead-letter-audit", expect=1)
    assert reason in dl.attributes["reason"] and dl.attributes["function"] == "on_facility_changed"
    assert list(world.stack.db.collection("facility_groups").stream()) == []
    assert list(world.stack.db.collection_group("facilities").stream()) == []

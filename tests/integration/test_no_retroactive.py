"""Issue 11 item 6 on the emulators: "no retroactive archiving" does not depend on when a message is
processed. Configuration changes go through the admin API (which records their instants); exam
events are delivered late, after the changes, and again (redelivery)."""
from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

from shared.domain.messages import exam_status_changed
from shared.domain.models import Facility, FacilityGroup
from shared.domain.rules import TimeoutPolicy
from shared.services.archive_trigger import ArchiveTriggerService
from tests.support import exam_event, load_app

BASE = "/v1/facility-groups/fg-1"
DEST = {"name": "Enterprise VNA", "type": "DICOM_SCP", "host": "10.20.0.31", "port": 104,
        "called_ae_title": "VNA_ENT", "calling_ae_title": "GW_SCU", "auto_archive": True, "trigger_status": "COMPLETED"}


@pytest.fixture
def world(stack, admin_env):
    stack.store.save_facility_group(FacilityGroup("fg-1", "Group 1"))  # not about the facility contract
    for f in ("fac-a", "fac-b"):
        stack.store.save_facility(Facility(f, "fg-1", f"Facility {f}"))
    stack.topic("archsync-gateway-dead-letter")
    client = load_app("admin_api")

    class World:
        def call(self, method, path, body=None):
            r = client.open(BASE + path, method=method, data=json.dumps(body) if body is not None else None,
                            headers={**admin_env.headers(("fg-1",)), "Content-Type": "application/json"})
            assert r.status_code in (200, 201), r.json
            return r.json

        def reached(self, exam, facility="fac-a"):
            """An exam first reaches Completed now; its event is delivered later (``deliver``)."""
            at = datetime.now(timezone.utc)
            return exam_event("COMPLETED", exam_id=exam, facility=facility, first_reached=at, event_time=at,
                              event_id=f"evt-{exam}")

        def deliver(self, payload):
            service = ArchiveTriggerService(stack.store, stack.store, stack.job_publisher, stack.clock, TimeoutPolicy())
            return {o.destination_id for o in service.handle(exam_status_changed(payload))}

        def jobs(self):
            coll = stack.db.collection("facility_groups").document("fg-1").collection("jobs")
            return sorted((d.get("exam_id"), d.get("destination_id")) for d in coll.stream())

    return World()


def test_deactivating_and_reactivating_a_destination_is_not_retroactive_whenever_events_arrive(world):
    gw = world.call("POST", "/gateways", {"name": "Main"})
    d = world.call("POST", "/destinations", {**DEST, "gateway_id": gw["id"]})["id"]
    e1 = world.reached("exam-1")  # active
    world.call("POST", f"/destinations/{d}/deactivate")
    e2 = world.reached("exam-2")  # inactive
    world.call("POST", f"/destinations/{d}/activate")
    e3 = world.reached("exam-3")  # active again
    world.call("POST", f"/destinations/{d}/deactivate")  # and inactive while the events are processed

    # Every event is processed after all the changes: the instants the exams reached the status decide.
    assert [world.deliver(e) for e in (e1, e2, e3)] == [{d}, set(), {d}]
    assert world.jobs() == [("exam-1", d), ("exam-3", d)]
    # Redeliveries, after yet another change, get the same answer.
    world.call("POST", f"/destinations/{d}/activate")
    assert [world.deliver(e) for e in (e3, e2, e1)] == [{d}, set(), {d}]
    assert world.jobs() == [("exam-1", d), ("exam-3", d)]


def test_reactivating_a_gateway_is_not_retroactive(world):
    gw = world.call("POST", "/gateways", {"name": "Main"})["id"]
    d = world.call("POST", "/destinations", {**DEST, "gateway_id": gw})["id"]
    world.call("PATCH", f"/gateways/{gw}", {"active": False})
    during = world.reached("exam-1")
    world.call("PATCH", f"/gateways/{gw}", {"active": True})
    after = world.reached("exam-2")
    assert world.deliver(during) == set() and world.deliver(after) == {d}
    assert world.deliver(during) == set()  # redelivered
    assert world.jobs() == [("exam-2", d)]


def test_widening_a_destination_or_gateway_scope_is_not_retroactive(world):
    gw = world.call("POST", "/gateways", {"name": "East", "facility_ids": ["fac-a"]})["id"]
    d_all = world.call("POST", "/destinations", {**DEST, "name": "All the gateway serves", "gateway_id": gw})["id"]
    early = world.reached("exam-1", "fac-b")  # fac-b is served by nobody yet
    world.call("PATCH", f"/gateways/{gw}", {"facility_ids": ["fac-a", "fac-b"]})
    d_a = world.call("POST", "/destinations", {**DEST, "name": "fac-a only", "gateway_id": gw,
                                               "facility_ids": ["fac-a"]})["id"]
    middle = world.reached("exam-2", "fac-b")
    world.call("PATCH", f"/destinations/{d_a}", {"facility_ids": ["fac-a", "fac-b"]})
    late = world.reached("exam-3", "fac-b")

    assert world.deliver(late) == {d_all, d_a}
    assert world.deliver(middle) == {d_all}  # d_a served fac-a only then
    assert world.deliver(early) == set()  # the gateway served fac-a only then
    assert [world.deliver(e) for e in (early, middle, late)] == [set(), {d_all}, {d_all, d_a}]  # redelivered
    assert world.jobs() == sorted([("exam-2", d_all), ("exam-3", d_all), ("exam-3", d_a)])


def test_a_destination_inactive_now_still_archives_what_reached_the_status_while_it_was_active(world):
    """The first delivery is late: the destination was deactivated in between. It is found (its
    history says it archived at Completed) and judged as of the exam's instant."""
    gw = world.call("POST", "/gateways", {"name": "Main"})["id"]
    d = world.call("POST", "/destinations", {**DEST, "gateway_id": gw})["id"]
    e = world.reached("exam-1")
    world.call("PATCH", f"/destinations/{d}", {"auto_archive": False, "trigger_status": None, "active": False})
    assert world.deliver(e) == {d}
    assert world.jobs() == [("exam-1", d)]

"""on_exam_status_changed against the emulators: seed 000 "Configure Auto Archive", Troubleshooting
row 1, and rules 1-3 of ARCHITECTURE.md."""
from __future__ import annotations

import json
import threading
from datetime import timedelta

import pytest

from shared import contracts
from shared.domain.errors import PermanentError, TransientError
from shared.domain.messages import exam_status_changed
from shared.domain.models import JobState
from shared.domain.rules import TimeoutPolicy, archive_job_id
from shared.services.archive_trigger import ArchiveTriggerService
from tests.support import T0, destination, exam_event, gateway


@pytest.fixture
def world(stack):
    """One group: gateway gw-1 (all facilities) and gw-2 (fac-b only); destinations per trigger."""
    gw1, gw2 = gateway("gw-1"), gateway("gw-2", facility_ids=("fac-b",))
    stack.add_gateway(gw1)
    stack.add_gateway(gw2)
    stack.gw = {"gw-1": gw1, "gw-2": gw2}
    return stack


def service(stack, publisher=None) -> ArchiveTriggerService:
    return ArchiveTriggerService(stack.store, stack.store, publisher or stack.job_publisher, stack.clock, TimeoutPolicy())


def deliver(stack, payload, publisher=None):
    return service(stack, publisher).handle(exam_status_changed(payload))


def jobs(stack, fg="fg-1"):
    return [d.to_dict() for d in stack.db.collection("facility_groups").document(fg).collection("jobs").stream()]


def test_job_created_at_trigger_status_with_message_for_its_gateway(world):
    world.store.save_destination(destination("dst-1", trigger="COMPLETED", max_retries=5, retry_timeout_seconds=30,
                                             transfer_syntax_uid="1.2.840.10008.1.2.1"))
    out = deliver(world, exam_event("COMPLETED"))
    assert [o.outcome for o in out] == ["created"]

    [job] = jobs(world)
    assert job["id"] == archive_job_id("fg-1", "exam-1", "dst-1")
    assert (job["type"], job["state"], job["published"], job["lock_held"]) == ("ARCHIVE", "QUEUED", True, False)
    assert (job["mrn"], job["accession_number"], job["study_instance_uid"]) == ("MRN-777", "ACC-0001", "1.2.826.0.1.3680043.8.498.1")

    [msg] = world.pull(world.gw["gw-1"].subscription_id, expect=1)
    body = json.loads(msg.data)
    contracts.validate(contracts.JOB_MESSAGE, body)
    assert msg.attributes["job_type"] == "ARCHIVE" and msg.attributes["destination_id"] == "dst-1"
    assert body["job_id"] == job["id"] and body["attempt"] == 1
    assert body["destination"]["retry"] == {"max_retries": 5, "retry_timeout_seconds": 30}
    assert body["destination"]["transfer_syntax_uid"] == "1.2.840.10008.1.2.1"
    assert "MRN-777" not in msg.data.decode() and "DOE" not in msg.data.decode()  # no demographics to the gateway


@pytest.mark.parametrize("trigger,locks", [("PENDING", True), ("INFLIGHT", True), ("COMPLETED", False)])
def test_order_lock_taken_only_for_pending_and_inflight_triggers(world, trigger, locks):
    world.store.save_destination(destination("dst-1", trigger=trigger))
    deliver(world, exam_event(trigger))
    [job] = jobs(world)
    assert job["lock_held"] is locks
    assert len(world.store.lock_holders("fg-1", "exam-1")) == (1 if locks else 0)


def test_only_the_configured_status_triggers(world):
    world.store.save_destination(destination("dst-1", trigger="COMPLETED"))
    for status in ("SCHEDULED", "PENDING", "INFLIGHT"):
        assert deliver(world, exam_event(status)) == []
    assert jobs(world) == []
    assert world.pull(world.gw["gw-1"].subscription_id, wait=0.5) == []


def test_repeat_transition_completed_inflight_completed_creates_one_job(world):
    world.store.save_destination(destination("dst-1", trigger="COMPLETED"))
    first = T0
    deliver(world, exam_event("COMPLETED", event_time=first))
    deliver(world, exam_event("INFLIGHT", event_time=first + timedelta(hours=1)))
    # The second Completed says the exam first reached Completed at ``first``.
    deliver(world, exam_event("COMPLETED", event_time=first + timedelta(hours=2), first_reached=first))
    assert len(jobs(world)) == 1
    assert len(world.pull(world.gw["gw-1"].subscription_id, expect=1)) == 1


def test_no_retroactive_archiving_for_exams_already_in_status(world):
    """Troubleshooting row 1: exams that reached the status before configuration are not archived,
    not even when they reach it again later."""
    world.store.save_destination(destination("dst-1", trigger="COMPLETED", since=T0))
    before = T0 - timedelta(minutes=5)
    assert deliver(world, exam_event("COMPLETED", event_time=T0 + timedelta(hours=1), first_reached=before)) == []
    assert jobs(world) == []


@pytest.mark.parametrize("change,why", [
    (dict(active=False), "destination inactive"),
    (dict(auto_archive=False), "auto archive off"),
    (dict(facility_ids=("fac-b",)), "facility out of scope"),
])
def test_destination_conditions_create_nothing(world, change, why):
    world.store.save_destination(destination("dst-1", trigger="COMPLETED", **change))
    assert deliver(world, exam_event("COMPLETED", facility="fac-a")) == []
    assert jobs(world) == []
    assert world.pull(world.gw["gw-1"].subscription_id, wait=0.5) == []


def test_inactive_gateway_creates_nothing(world):
    world.store.save_gateway(gateway("gw-1", active=False))
    world.store.save_destination(destination("dst-1", trigger="COMPLETED"))
    assert deliver(world, exam_event("COMPLETED")) == []
    assert jobs(world) == []


def test_gateway_facility_scope_applies_when_destination_has_none(world):
    world.store.save_destination(destination("dst-2", gateway_id="gw-2", trigger="COMPLETED"))  # gw-2 serves fac-b
    assert deliver(world, exam_event("COMPLETED", facility="fac-a")) == []
    assert [o.destination_id for o in deliver(world, exam_event("COMPLETED", facility="fac-b", exam_id="exam-2"))] == ["dst-2"]


def test_each_destination_independently_and_routed_to_its_gateway(world):
    world.store.save_destination(destination("dst-c1", trigger="COMPLETED"))
    world.store.save_destination(destination("dst-c2", gateway_id="gw-2", trigger="COMPLETED"))
    world.store.save_destination(destination("dst-p", trigger="PENDING"))
    world.store.save_destination(destination("dst-off", trigger="COMPLETED", active=False))
    out = deliver(world, exam_event("COMPLETED", facility="fac-b"))
    assert sorted(o.destination_id for o in out) == ["dst-c1", "dst-c2"]
    [m1] = world.pull(world.gw["gw-1"].subscription_id, expect=1)
    [m2] = world.pull(world.gw["gw-2"].subscription_id, expect=1)
    assert (m1.attributes["destination_id"], m2.attributes["destination_id"]) == ("dst-c1", "dst-c2")


def test_out_of_order_delivery_still_one_job(world):
    world.store.save_destination(destination("dst-1", trigger="COMPLETED"))
    # Second Completed (a repeat) arrives before the first one.
    deliver(world, exam_event("COMPLETED", event_time=T0 + timedelta(hours=2), first_reached=T0))
    deliver(world, exam_event("INFLIGHT", event_time=T0 + timedelta(hours=1)))
    deliver(world, exam_event("COMPLETED", event_time=T0))
    assert len(jobs(world)) == 1
    assert len(world.pull(world.gw["gw-1"].subscription_id, expect=1)) == 1


def test_same_event_twenty_times_concurrently_gives_one_job_and_one_message(world):
    world.store.save_destination(destination("dst-1", trigger="INFLIGHT"))
    payload = exam_event("INFLIGHT")
    errors, outcomes = [], []

    def run():
        try:
            outcomes.extend(deliver(world, payload))
        except TransientError as e:  # Pub/Sub would redeliver: do that below
            errors.append(e)

    threads = [threading.Thread(target=run) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for _ in errors:  # redeliveries of the ones that asked to be retried
        outcomes.extend(deliver(world, payload))
    assert sorted(o.outcome for o in outcomes).count("created") == 1
    assert len(jobs(world)) == 1
    assert len(world.pull(world.gw["gw-1"].subscription_id, expect=1, wait=2)) == 1
    assert len(world.bus.published) == 1


def test_publish_failure_after_job_exists_is_published_on_redelivery(world):
    world.store.save_destination(destination("dst-1", trigger="PENDING"))
    world.bus.fail_first = 1
    payload = exam_event("PENDING")
    with pytest.raises(TransientError):
        deliver(world, payload)
    [job] = jobs(world)
    assert (job["state"], job["published"]) == ("QUEUED", False)

    # Redelivered while the first attempt's lease still runs: no second publisher, retry later.
    with pytest.raises(TransientError):
        deliver(world, payload)
    assert world.pull(world.gw["gw-1"].subscription_id, wait=0.5) == []

    world.clock.advance(seconds=61)  # the crashed publisher's lease ran out
    [out] = deliver(world, payload)
    assert out.outcome == "republished"
    assert jobs(world)[0]["published"] is True
    assert len(world.pull(world.gw["gw-1"].subscription_id, expect=1)) == 1
    [out] = deliver(world, payload)  # and once published, redelivery is a no-op
    assert out.outcome == "exists"
    assert len(jobs(world)) == 1


def test_missing_gateway_topic_fails_the_job_and_releases_the_lock(stack):
    gw = gateway("gw-x")
    stack.store.save_gateway(gw)  # record without its topic
    stack.store.save_destination(destination("dst-1", gateway_id="gw-x", trigger="PENDING"))
    deliver(stack, exam_event("PENDING"))
    [job] = jobs(stack)
    assert job["state"] == JobState.FAILED.value and job["lock_held"] is False
    assert "could not be delivered" in job["failure_reason"]
    assert stack.store.archive_states("fg-1", "exam-1") == []  # archive state only from gateway results


def test_other_facility_group_destinations_are_not_touched(world):
    world.store.save_destination(destination("dst-1", trigger="COMPLETED"))
    assert deliver(world, exam_event("COMPLETED", fg="fg-2")) == []
    assert jobs(world, "fg-2") == [] and jobs(world) == []


# -- issue 11 item 4: one destination's configuration never blocks another's job ----------------

def test_absurd_stored_retry_settings_do_not_stop_another_destinations_job(world):
    """Written directly, as if saved before the bounds existed: max_retries=10**12 made the deadline
    arithmetic overflow and stopped the jobs of every destination of the group."""
    world.store.save_destination(destination("dst-a-absurd", trigger="COMPLETED", max_retries=10**12))
    world.store.save_destination(destination("dst-b-fine", trigger="COMPLETED"))
    with pytest.raises(PermanentError) as e:  # dead-lettered with the destination's id, not its values
        deliver(world, exam_event("COMPLETED"))
    assert "dst-a-absurd" in str(e.value) and "max_retries" in str(e.value) and "10000" not in str(e.value)
    [job] = jobs(world)
    assert job["destination_id"] == "dst-b-fine" and job["published"] is True
    [msg] = world.pull(world.gw["gw-1"].subscription_id, expect=1)
    assert msg.attributes["destination_id"] == "dst-b-fine"


def test_absurd_destination_event_is_dead_lettered_by_the_function_and_replay_after_fix_creates_only_the_missing_job(
        world, function_env):
    from tests.support import cloud_event_headers, load_app, pubsub_envelope

    world.store.save_destination(destination("dst-a-absurd", trigger="COMPLETED", retry_timeout_seconds=10**15))
    world.store.save_destination(destination("dst-b-fine", trigger="COMPLETED"))
    payload = exam_event("COMPLETED")
    client = load_app("on_exam_status_changed")
    r = client.post("/", json=pubsub_envelope(payload), headers=cloud_event_headers())
    assert r.status_code == 200  # acknowledged: parked in the dead-letter topic, not retried forever
    [dead] = world.pull("dead-letter-audit", expect=1)
    assert "dst-a-absurd" in dead.attributes["reason"] and json.loads(dead.data) == payload
    assert [j["destination_id"] for j in jobs(world)] == ["dst-b-fine"]
    # The administrator fixes the destination; the operator replays the parked event.
    world.store.save_destination(destination("dst-a-absurd", trigger="COMPLETED", retry_timeout_seconds=30))
    r = client.post("/", json=pubsub_envelope(payload, message_id="m-2"), headers=cloud_event_headers(ce_id="ce-2"))
    assert r.status_code == 200
    assert sorted(j["destination_id"] for j in jobs(world)) == ["dst-a-absurd", "dst-b-fine"]
    assert world.pull("dead-letter-audit", wait=0.5) == []


def test_a_transient_failure_of_one_destination_does_not_stop_another_and_redelivery_completes_it(world):
    world.store.save_destination(destination("dst-a", trigger="COMPLETED"))
    world.store.save_destination(destination("dst-b", gateway_id="gw-2", trigger="COMPLETED", facility_ids=("fac-b",)))
    world.bus.fail_first = 1  # dst-a's publish fails (it comes first)
    payload = exam_event("COMPLETED", facility="fac-b")
    with pytest.raises(TransientError) as e:  # so Pub/Sub redelivers the event
        deliver(world, payload)
    assert "dst-a" in str(e.value) and "dst-b" not in str(e.value)
    assert {j["destination_id"]: j["published"] for j in jobs(world)} == {"dst-a": False, "dst-b": True}
    assert len(world.pull(world.gw["gw-2"].subscription_id, expect=1)) == 1
    world.clock.advance(seconds=61)  # the failed publisher's lease ran out
    out = deliver(world, payload)
    assert sorted((o.destination_id, o.outcome) for o in out) == [("dst-a", "republished"), ("dst-b", "exists")]
    assert len(world.pull(world.gw["gw-1"].subscription_id, expect=1)) == 1

"""Follow-up jobs against the emulators (issue 11 items 3, 10, 11, 15 and 17): deferred late images
(completion race, timed-out archive jobs), retries of held rejection notes, routing of retries to
the destination's current gateway, held jobs whose awaited job can never complete, and failure
reasons across attempts."""
from __future__ import annotations

import dataclasses
import threading
import time

import pytest

from shared.domain.errors import NotFound, TransientError
from shared.domain.jobs import Transition
from shared.domain.models import JobState
from shared.signing import sign_headers
from shared.services.sweeper import SweepService
from tests.integration.test_study_changed import (
    SPLIT_TARGET, UID, _archive_running, event, handle, inst, jobs, listed, messages, post, set_state, study_world)
from tests.support import RESULT_KEY, assert_matches_openapi, destination, load_app, result_body

RETRY = "/v1/facility-groups/{facility_group_id}/jobs/{job_id}/retry"


@pytest.fixture
def world(stack):
    w = study_world(stack)
    w.secrets.save_result_key("fg-1", "gw-2", RESULT_KEY)
    return w


@pytest.fixture
def admin(world, admin_env):
    client = load_app("admin_api")

    def retry(job_id: str):
        return client.post(f"/v1/facility-groups/fg-1/jobs/{job_id}/retry", headers=admin_env.headers())

    def rows():
        return {r["id"]: r for r in client.get("/v1/facility-groups/fg-1/jobs", headers=admin_env.headers()).json["jobs"]}

    world.retry, world.rows = retry, rows
    return world


def sweep(world):
    return SweepService(world.store, world.store, world.job_publisher, world.clock, followups=world.followups).run()


def post_now(world, job_id: str, state: str, gw: str = "gw-1", **kw):
    """A result reported at the (fake) current time."""
    body = result_body(job_id, state, time=world.clock.now(), **kw)
    return world.results.handle(sign_headers(RESULT_KEY, "fg-1", gw, body, int(time.time())), body)


def pushed(world) -> dict[str, list[str]]:
    """Instances of every DICOM push job, by job id."""
    return {j["id"]: listed(world, j) for j in jobs(world, "DICOM")}


# -- item 3: deferrals never lose a late image ------------------------------------------------

def test_no_late_image_is_lost_when_images_arrive_while_the_archive_job_completes(world):
    """Deferrals race with the archive job's COMPLETED. Every event has already seen the exam not
    archived and the job open; then half the deferral transactions run at once with the result's
    transaction, the other half right after it committed, while its follow-ups list the deferrals.
    Each image ends in exactly one push job: deferred (pushed by the follow-up) or pushed directly
    by a deferral whose transaction saw COMPLETED."""
    archive_id = _archive_running(world)
    n = 24
    with_result = threading.Barrier(n // 2 + 1, timeout=60)
    committed = threading.Event()
    real_defer, real_transact = world.store.defer, world.store.transact_job

    def gated_defer(fg, job_id, deferral, accepts):
        k = int(deferral.id.split("-")[1])
        if k % 2:
            with_result.wait()
        else:
            assert committed.wait(timeout=60)
        return real_defer(fg, job_id, deferral, accepts)

    def gated_transact(fg, job_id, decide):
        if job_id != archive_id or committed.is_set():
            return real_transact(fg, job_id, decide)
        with_result.wait()
        try:
            return real_transact(fg, job_id, decide)
        finally:
            committed.set()  # the follow-ups (listing the deferrals) run from here on

    world.store.defer, world.store.transact_job = gated_defer, gated_transact
    outcomes, errors = {}, []

    def run(fn, *args) -> None:
        try:
            fn(*args)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    def add(k: int) -> None:
        outcomes[k] = handle(world, event("INSTANCES_ADDED", [inst(1000 + k)], event_id=f"late-{k}"))["run"].action

    threads = [threading.Thread(target=run, args=(add, k)) for k in range(n)]
    threads.append(threading.Thread(target=run, args=(post, world, archive_id, "COMPLETED")))
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors and len(outcomes) == n
    assert {outcomes[k] for k in range(0, n, 2)} == {"push"}  # saw COMPLETED in their transaction
    assert set(outcomes.values()) <= {"deferred", "push"}
    sent = [u for uids in pushed(world).values() for u in uids]
    assert sorted(sent) == sorted(f"{UID}.20.{1000 + k}" for k in range(n))  # every image, once
    deferred = {d.id for d in world.store.deferrals("fg-1", archive_id)}
    assert deferred == {f"late-{k}" for k, a in outcomes.items() if a == "deferred"}


def test_deferrals_from_several_events_go_in_one_push_without_duplicates(world):
    archive_id = _archive_running(world)
    for k, items in enumerate(([inst(7)], [inst(7), inst(8)], [inst(9)])):
        assert handle(world, event("INSTANCES_ADDED", items, event_id=f"e{k}"))["run"].action == "deferred"
    post(world, archive_id, "COMPLETED")
    post(world, archive_id, "COMPLETED")  # a repeat: the same batch, no second job
    assert list(pushed(world).values()) == [[f"{UID}.20.7", f"{UID}.20.8", f"{UID}.20.9"]]
    assert len(messages(world, expect=1)) == 1


# -- item 11: images added while the archive job is UNKNOWN -------------------------------------

def test_images_added_after_the_archive_job_timed_out_are_pushed_by_its_late_completed(world):
    archive_id = _archive_running(world)
    world.clock.advance(days=1)
    assert archive_id in sweep(world).timed_out  # archive state UNKNOWN
    out = handle(world, event("INSTANCES_ADDED", [inst(7)], event_id="late"))
    assert out["run"].action == "deferred" and "timed out" in out["run"].reason
    assert jobs(world, "DICOM") == []
    post(world, archive_id, "COMPLETED")  # the gateway's result, late
    assert list(pushed(world).values()) == [[f"{UID}.20.7"]]
    [msg] = messages(world, expect=1)
    assert msg["job_type"] == "DICOM" and msg["instance_count"] == 1


def test_images_deferred_on_a_timed_out_job_that_then_fails_are_not_pushed(world):
    archive_id = _archive_running(world)
    world.clock.advance(days=1)
    sweep(world)
    handle(world, event("INSTANCES_ADDED", [inst(7)], event_id="late"))
    post(world, archive_id, "FAILED", reason="association rejected")
    assert jobs(world, "DICOM") == []  # a retry of the archive job sends the whole study, late images included
    assert handle(world, event("INSTANCES_ADDED", [inst(8)], event_id="later"))["run"].action == "skipped"


# -- item 10: a held rejection note is not retried without its copies ----------------------------

def test_retry_of_a_rejection_note_whose_copies_were_not_stored_is_409_naming_the_copy_job(admin):
    world = admin
    world.store.save_destination(destination("iocm"))
    set_state(world, "iocm", "ARCHIVED")
    handle(world, event("STUDY_SPLIT", target=SPLIT_TARGET))
    [copy] = jobs(world, "DICOM")
    [note] = jobs(world, "IOCM")
    messages(world, expect=1)
    post(world, copy["id"], "FAILED", reason="C-STORE status 0xA700")
    assert world.store.get_job("fg-1", note["id"]).state.value == "FAILED"

    r = world.retry(note["id"])
    assert r.status_code == 409 and copy["id"] in r.json["error"]["message"], r.json
    assert_matches_openapi(r.json, RETRY, "post", "409")
    assert world.store.get_job("fg-1", note["id"]).attempt == 1 and messages(world) == []

    assert world.retry(copy["id"]).status_code == 200  # the copies first
    assert [m["job_id"] for m in messages(world, expect=1)] == [copy["id"]]
    assert world.retry(note["id"]).status_code == 409  # still not stored
    post(world, copy["id"], "COMPLETED", attempt=2)
    r = world.retry(note["id"])
    assert r.status_code == 200 and r.json["attempt"] == 2
    [msg] = messages(world, expect=1)
    assert (msg["job_id"], msg["job_type"], msg["attempt"]) == (note["id"], "IOCM", 2)


# -- item 15: routing of retries and results ---------------------------------------------------

@pytest.mark.parametrize("change", ["INSTANCES_DELETED", "INSTANCES_ADDED"])
def test_a_retry_goes_to_the_destinations_current_gateway_with_its_objects(admin, change):
    world = admin
    world.store.save_destination(destination("d", gateway_id="gw-1"))
    set_state(world, "d", "ARCHIVED")
    handle(world, event(change, [inst(1), inst(2)]))
    [job] = jobs(world)
    uri_field = "object_uri" if change == "INSTANCES_DELETED" else "instances_uri"
    assert "/gateways/gw-1/" in job[uri_field]
    messages(world, "gw-1", expect=1)
    post(world, job["id"], "FAILED", gw="gw-1", reason="association rejected")

    world.store.save_destination(destination("d", gateway_id="gw-2"))  # the archive moved to another gateway
    r = world.retry(job["id"])
    assert r.status_code == 200, r.json
    retried = world.store.get_job("fg-1", job["id"])
    assert retried.gateway_id == "gw-2"
    moved = getattr(retried, uri_field)
    assert moved == job[uri_field].replace("/gateways/gw-1/", "/gateways/gw-2/")  # gw-2 may read only its prefix
    assert world.objects.get(moved) == world.objects.get(job[uri_field])
    [msg] = messages(world, "gw-2", expect=1)
    assert (msg["job_id"], msg["attempt"], msg["gateway_id"], msg[uri_field]) == (job["id"], 2, "gw-2", moved)
    assert messages(world, "gw-1") == []

    with pytest.raises(NotFound):  # the old gateway no longer reports on it
        post(world, job["id"], "COMPLETED", gw="gw-1", attempt=2)
    assert post(world, job["id"], "COMPLETED", gw="gw-2", attempt=2).outcome == "applied"
    assert world.store.get_job("fg-1", job["id"]).state.value == "COMPLETED"


def test_a_held_note_whose_copy_job_was_never_created_is_failed_by_the_sweeper(world):
    """The handler died between the held note and its copy job, and the event was not redelivered
    (dead-lettered): the note used to stay QUEUED forever and block deleting the destination."""
    world.store.save_destination(destination("iocm"))
    set_state(world, "iocm", "ARCHIVED")
    real = world.followups.push_instances

    def dies(*a, **kw):
        raise TransientError("function instance died")

    world.followups.push_instances = dies
    with pytest.raises(TransientError):
        handle(world, event("STUDY_SPLIT", target=SPLIT_TARGET))
    world.followups.push_instances = real
    [note] = jobs(world)
    assert note["type"] == "IOCM" and note["held"] and jobs(world, "DICOM") == []
    assert world.store.has_open_jobs("fg-1", "destination_id", "iocm")

    assert sweep(world).held_failed == []  # not before its check time
    world.clock.advance(days=1)
    report = sweep(world)
    assert report.held_failed == [note["id"]] and report.timed_out == []
    failed = world.store.get_job("fg-1", note["id"])
    assert failed.state.value == "FAILED" and note["waits_for"] in failed.failure_reason
    assert "never created" in failed.failure_reason and not failed.held
    assert not world.store.has_open_jobs("fg-1", "destination_id", "iocm")  # deletion no longer blocked
    assert messages(world) == []


def test_a_held_note_whose_copy_job_ended_without_its_follow_up_is_failed_by_the_sweeper(world):
    world.store.save_destination(destination("iocm"))
    set_state(world, "iocm", "ARCHIVED")
    handle(world, event("STUDY_SPLIT", target=SPLIT_TARGET))
    [copy] = jobs(world, "DICOM")
    [note] = jobs(world, "IOCM")
    messages(world, expect=1)
    # The copy job failed, but the function died before failing the note that waits for it.
    world.store.transact_job("fg-1", copy["id"], lambda j: Transition("applied", dataclasses.replace(
        j, state=JobState.FAILED, failure_reason="C-STORE status 0xA700")))
    world.clock.advance(days=1)
    assert sweep(world).held_failed == [note["id"]]
    failed = world.store.get_job("fg-1", note["id"])
    assert failed.state.value == "FAILED" and f"job {copy['id']} ended FAILED" in failed.failure_reason


def test_a_held_note_waits_while_its_copy_job_runs_then_is_released(world):
    world.store.save_destination(destination("iocm"))
    set_state(world, "iocm", "ARCHIVED")
    handle(world, event("STUDY_SPLIT", target=SPLIT_TARGET))
    [copy] = jobs(world, "DICOM")
    [note] = jobs(world, "IOCM")
    messages(world, expect=1)
    note_check = world.store.get_job("fg-1", note["id"]).deadline
    world.clock.t = note_check - (note_check - world.clock.t) / 2
    post_now(world, copy["id"], "IN_PROGRESS")  # restarts the copy's window past the note's check time
    world.clock.t = note_check
    report = sweep(world)
    assert report.held_failed == [] and report.timed_out == []
    held = world.store.get_job("fg-1", note["id"])
    assert held.held and held.state.value == "QUEUED" and held.deadline > world.store.get_job("fg-1", copy["id"]).deadline
    post(world, copy["id"], "COMPLETED")
    [released] = messages(world, expect=1)
    assert released["job_id"] == note["id"]


# -- item 17: failure reasons across attempts -------------------------------------------------

def test_the_reason_names_every_distinct_failure_across_retries(admin):
    world = admin
    archive_id = _archive_running(world)
    post(world, archive_id, "FAILED", reason="Association rejected: called AE title not recognised")
    assert world.retry(archive_id).status_code == 200
    post(world, archive_id, "FAILED", reason="Cannot connect to VNA: timed out", attempt=2)
    job = world.store.get_job("fg-1", archive_id)
    assert job.failure_reason == ("attempt 1: Association rejected: called AE title not recognised; "
                                  "attempt 2: Cannot connect to VNA: timed out")
    assert world.retry(archive_id).status_code == 200
    assert world.rows()[archive_id]["reason"] is None  # running again
    post(world, archive_id, "FAILED", reason="Association rejected: called AE title not recognised", attempt=3)
    assert world.rows()[archive_id]["reason"] == ("attempts 1, 3: Association rejected: called AE title not recognised; "
                                                  "attempt 2: Cannot connect to VNA: timed out")

"""sweep_jobs (timeouts, outbox recovery) and the lock status endpoint, against the emulators."""
from __future__ import annotations

from datetime import timedelta

import pytest

from shared.domain.errors import TransientError
from shared.domain.messages import exam_status_changed
from shared.domain.models import LOCK_MESSAGE
from shared.domain.rules import TimeoutPolicy
from shared.services.archive_trigger import ArchiveTriggerService
from shared.services.sweeper import SweepService
from tests.support import RESULT_KEY, assert_matches_openapi, destination, exam_event, gateway, load_app, post_result, result_body

LOCK_PATH = "/v1/facility-groups/{facility_group_id}/exams/{exam_id}/lock"
POLICY = TimeoutPolicy(dispatch_grace_seconds=600, attempt_allowance_seconds=300)


@pytest.fixture
def world(stack):
    stack.add_gateway(gateway("gw-1"))
    stack.secrets.save_result_key("fg-1", "gw-1", RESULT_KEY)
    stack.store.save_destination(destination("dst-p", trigger="PENDING", max_retries=2, retry_timeout_seconds=30))
    stack.store.save_destination(destination("dst-c", trigger="COMPLETED", max_retries=2, retry_timeout_seconds=30))
    return stack


def trigger(stack, status, exam_id="exam-1", publisher=None):
    svc = ArchiveTriggerService(stack.store, stack.store, publisher or stack.job_publisher, stack.clock, POLICY)
    return svc.handle(exam_status_changed(exam_event(status, exam_id=exam_id)))


def sweep(stack):
    return SweepService(stack.store, stack.store, stack.job_publisher, stack.clock).run()


def test_deadline_follows_the_documented_formula(world):
    [out] = trigger(world, "PENDING")
    job = world.store.get_job("fg-1", out.job_id)
    # grace + (max_retries + 1) * allowance + max_retries * retry_timeout
    assert job.deadline - job.queued_at == timedelta(seconds=600 + 3 * 300 + 2 * 30)


def test_timeout_fails_job_sets_unknown_and_releases_lock(world):
    [out] = trigger(world, "PENDING")
    assert world.store.lock_holders("fg-1", "exam-1")
    world.clock.advance(seconds=600 + 900 + 60 - 1)
    assert sweep(world).timed_out == []  # not yet
    world.clock.advance(seconds=1)
    assert sweep(world).timed_out == [out.job_id]
    job = world.store.get_job("fg-1", out.job_id)
    assert job.state.value == "FAILED" and job.timed_out and "No result from the gateway" in job.failure_reason
    assert [a.state.value for a in world.store.archive_states("fg-1", "exam-1")] == ["UNKNOWN"]
    assert world.store.lock_holders("fg-1", "exam-1") == []
    assert sweep(world).timed_out == []  # idempotent


def test_in_progress_restarts_the_window_from_the_start_time(world, function_env):
    [out] = trigger(world, "COMPLETED")
    app = load_app("on_job_result")
    assert post_result(app, result_body(out.job_id, "IN_PROGRESS")).status_code == 200
    job = world.store.get_job("fg-1", out.job_id)
    assert job.deadline - job.started_at == timedelta(seconds=3 * 900 + 2 * 30)  # function's default policy


def test_completed_and_failed_jobs_are_never_timed_out(world, function_env):
    [out] = trigger(world, "PENDING")
    assert post_result(load_app("on_job_result"), result_body(out.job_id, "COMPLETED")).status_code == 200
    world.clock.advance(days=30)
    assert sweep(world).timed_out == []
    assert world.store.get_job("fg-1", out.job_id).state.value == "COMPLETED"


def test_late_final_result_resolves_an_unknown_archive_state(world, function_env):
    [out] = trigger(world, "PENDING")
    world.clock.advance(days=1)
    sweep(world)
    r = post_result(load_app("on_job_result"), result_body(out.job_id, "COMPLETED"))
    assert r.status_code == 200 and r.json["job_state"] == "COMPLETED"
    assert [a.state.value for a in world.store.archive_states("fg-1", "exam-1")] == ["ARCHIVED"]
    assert world.store.lock_holders("fg-1", "exam-1") == []  # and the lock stays released


def test_sweeper_publishes_a_job_whose_message_was_never_sent(world):
    world.bus.fail_first = 1
    with pytest.raises(TransientError):
        trigger(world, "COMPLETED")  # publisher "dies": job exists, no message
    assert world.pull(gateway("gw-1").subscription_id, wait=0.3) == []
    assert sweep(world).republished == []  # lease still held
    world.clock.advance(seconds=61)
    report = sweep(world)
    assert len(report.republished) == 1
    assert world.store.get_job("fg-1", report.republished[0]).published
    assert len(world.pull(gateway("gw-1").subscription_id, expect=1)) == 1
    assert sweep(world).republished == []


def test_sweep_endpoint(world, function_env, monkeypatch):
    monkeypatch.setenv("ARCHSYNC_DISPATCH_GRACE_SECONDS", "0")
    app = load_app("sweep_jobs")
    assert app.get("/").status_code == 405
    r = app.post("/")
    assert r.status_code == 200 and r.json == {"timed_out": [], "held_failed": [], "republished": [], "gateways_finished": [],
                                               "errors": 0}
    assert_matches_openapi(r.json, "/sweeps", "post")


# -- lock status ----------------------------------------------------------------------------

def test_lock_status_endpoint_held_then_released(world, function_env):
    lock = load_app("lock_status")
    results = load_app("on_job_result")
    r = lock.get("/v1/facility-groups/fg-1/exams/exam-1/lock")
    assert r.status_code == 200 and r.json["locked"] is False and r.json["message"] is None

    [out] = trigger(world, "PENDING")
    r = lock.get("/v1/facility-groups/fg-1/exams/exam-1/lock")
    assert r.json["locked"] is True
    assert r.json["message"] == "Archiving in progress — edits are not permitted until the archive job is complete."
    assert r.json["message"] == LOCK_MESSAGE
    assert [j["job_id"] for j in r.json["jobs"]] == [out.job_id]
    assert r.json["jobs"][0]["destination_id"] == "dst-p" and r.json["jobs"][0]["trigger_status"] == "PENDING"
    assert set(r.json["blocked_actions"]) == {"DICOM_SEND", "EXAM_SHARING", "REPORTING_AND_DICTATION", "METADATA_CHANGES"}
    assert_matches_openapi(r.json, LOCK_PATH, "get")

    post_result(results, result_body(out.job_id, "IN_PROGRESS"))
    assert lock.get("/v1/facility-groups/fg-1/exams/exam-1/lock").json["locked"] is True
    post_result(results, result_body(out.job_id, "FAILED", reason="C-STORE status 0xA700 (out of resources)"))
    r = lock.get("/v1/facility-groups/fg-1/exams/exam-1/lock")
    assert r.json["locked"] is False
    assert_matches_openapi(r.json, LOCK_PATH, "get")


def test_lock_is_per_exam_and_per_group(world, function_env):
    lock = load_app("lock_status")
    trigger(world, "INFLIGHT")  # no INFLIGHT destination: nothing
    trigger(world, "PENDING", exam_id="exam-2")
    assert lock.get("/v1/facility-groups/fg-1/exams/exam-1/lock").json["locked"] is False
    assert lock.get("/v1/facility-groups/fg-1/exams/exam-2/lock").json["locked"] is True
    assert lock.get("/v1/facility-groups/fg-2/exams/exam-2/lock").json["locked"] is False


@pytest.mark.parametrize("path", ["/", "/v1/facility-groups/fg-1/exams/exam-1", "/v1/facility-groups/a%2Fb/exams/e/lock",
                                  "/v1/facility-groups/__x__/exams/e/lock"])
def test_lock_status_bad_path_is_400(function_env, path):
    r = load_app("lock_status").get(path)
    assert r.status_code == 400
    assert_matches_openapi(r.json, LOCK_PATH, "get", "400")


def test_lock_status_wrong_method(function_env):
    assert load_app("lock_status").post("/v1/facility-groups/fg-1/exams/exam-1/lock").status_code == 405


def test_progress_keeps_a_long_send_open_until_it_stops_then_it_times_out(world):
    """Issue 13 item 3: a big study on a slow link is not declared UNKNOWN, nor its order lock
    released, while the gateway reports progress; once progress stops it times out one window
    (from the start time, 3 * 300 + 2 * 30 s here) after the last report."""
    from shared.services.results import ResultService
    from shared.signing import sign_headers

    [out] = trigger(world, "PENDING")
    results = ResultService(world.store, world.secrets, world.clock, POLICY, 300)

    def post(state, at, counts=None):
        body = result_body(out.job_id, state, time=at, **({"counts": counts} if counts else {}))
        return results.handle(sign_headers(RESULT_KEY, "fg-1", "gw-1", body, int(world.clock.now().timestamp())), body)

    started = world.clock.now()
    assert post("IN_PROGRESS", started).outcome == "applied"
    window = timedelta(seconds=3 * 300 + 2 * 30)
    assert world.store.get_job("fg-1", out.job_id).deadline == started + window
    for minute in range(1, 40):  # 39 minutes of data flowing, a report a minute: twice the window
        world.clock.advance(seconds=60)
        t = post("IN_PROGRESS", world.clock.now(), {"total": 2000, "fetched": 2000, "sent": minute * 50})
        assert t.outcome == "extended"
        assert sweep(world).timed_out == []
    last = world.clock.now()
    job = world.store.get_job("fg-1", out.job_id)
    assert job.state.value == "IN_PROGRESS" and job.deadline == last + window
    assert job.counts == {"total": 2000, "fetched": 2000, "sent": 1950}
    assert world.store.lock_holders("fg-1", "exam-1")
    # A delayed older report neither shortens the window nor rolls the counts back.
    assert post("IN_PROGRESS", last - timedelta(minutes=5), {"total": 2000, "sent": 10}).outcome == "duplicate"
    assert world.store.get_job("fg-1", out.job_id).counts["sent"] == 1950
    world.clock.advance(seconds=window.total_seconds() - 1)
    assert sweep(world).timed_out == [] and world.store.lock_holders("fg-1", "exam-1")
    world.clock.advance(seconds=1)
    assert sweep(world).timed_out == [out.job_id]
    assert [a.state.value for a in world.store.archive_states("fg-1", "exam-1")] == ["UNKNOWN"]
    assert world.store.lock_holders("fg-1", "exam-1") == []
    # A report after the timeout changes nothing: UNKNOWN stays, the lock is not taken again.
    assert post("IN_PROGRESS", world.clock.now(), {"total": 2000, "sent": 1999}).outcome == "ignored"
    assert world.store.get_job("fg-1", out.job_id).state.value == "FAILED"
    assert world.store.lock_holders("fg-1", "exam-1") == []

"""Pure rules: which destinations an event triggers, job ids, timeout windows, result transitions."""
from __future__ import annotations

import itertools
from datetime import timedelta

import pytest

from shared.domain.jobs import GatewayResult, apply_result, time_out
from shared.domain.messages import exam_status_changed
from shared.domain.models import Job, JobState, JobType
from shared.domain.rules import TimeoutPolicy, archive_job_id, decide, decide_all
from tests.support import T0, destination, exam_event, gateway

EVENT = exam_status_changed(exam_event("COMPLETED", facility="fac-a"))


@pytest.mark.parametrize("dest,gw,reason", [
    (destination(), gateway(), "eligible"),
    (destination(active=False), gateway(), "destination inactive"),
    (destination(trigger=None), gateway(), "auto archive off"),
    (destination(trigger="PENDING"), gateway(), "trigger status differs"),
    (destination(), gateway(active=False), "gateway inactive"),
    (destination(), gateway(provisioning_state="PROVISIONING"), "gateway inactive"),
    (destination(), None, "gateway missing"),
    (destination(), gateway(fg="fg-2"), "gateway missing"),
    (destination(fg="fg-2"), gateway(), "other facility group"),
    (destination(facility_ids=("fac-b",)), gateway(), "facility out of scope"),
    (destination(facility_ids=("fac-a",)), gateway(facility_ids=("fac-a", "fac-b")), "eligible"),
    (destination(), gateway(facility_ids=("fac-b",)), "facility out of scope"),
    (destination(since=T0 + timedelta(seconds=1)), gateway(), "exam reached the status before auto archive was configured"),
    (destination(since=T0), gateway(), "eligible"),
])
def test_decide(dest, gw, reason):
    d = decide(EVENT, dest, gw)
    assert d.reason == reason and d.archive is (reason == "eligible")


def test_decide_all_maps_gateways():
    out = decide_all(EVENT, [destination("a"), destination("b", gateway_id="gw-2")], {"gw-1": gateway()})
    assert [(d.destination.id, d.archive) for d in out] == [("a", True), ("b", False)]


def test_job_ids_are_deterministic_and_distinct():
    a = archive_job_id("fg-1", "exam-1", "dst-1")
    assert a == archive_job_id("fg-1", "exam-1", "dst-1") and a.startswith("archive-") and len(a) == 40
    assert len({a, archive_job_id("fg-1", "exam-1", "dst-2"), archive_job_id("fg-1", "exam-2", "dst-1"),
                archive_job_id("fg-2", "exam-1", "dst-1")}) == 4


def test_timeout_windows():
    p = TimeoutPolicy(dispatch_grace_seconds=100, attempt_allowance_seconds=10)
    assert p.deadline_from_queued(T0, 3, 5) == T0 + timedelta(seconds=100 + 4 * 10 + 3 * 5)
    assert p.deadline_from_started(T0, 0, 5) == T0 + timedelta(seconds=10)


def job(**kw) -> Job:
    base = dict(id="archive-" + "a" * 32, facility_group_id="fg-1", type=JobType.ARCHIVE, state=JobState.QUEUED,
                destination_id="dst-1", destination_name="VNA", gateway_id="gw-1", exam_id="exam-1", accession_number="A",
                mrn="M", patient_name="P", study_instance_uid="1.2.3", facility_id="fac-a", queued_at=T0,
                deadline=T0 + timedelta(hours=1), lock_held=True)
    base.update(kw)
    return Job(**base)


POLICY = TimeoutPolicy()
NOW = T0 + timedelta(minutes=10)


def run(j: Job, states, attempt=1):
    archive = None
    for i, s in enumerate(states):
        t = apply_result(j, GatewayResult(j.id, attempt, JobState(s), T0 + timedelta(minutes=i + 1), reason="r"),
                         now=NOW, policy=POLICY)
        if t.job is not None:
            j = t.job
        if t.archive_state is not None:
            archive = t.archive_state.state.value
    return j, archive


@pytest.mark.parametrize("seq", [p for n in (1, 2, 3) for p in itertools.product(["IN_PROGRESS", "COMPLETED", "FAILED"], repeat=n)])
def test_every_sequence_of_callbacks(seq):
    """Final state = the first final result; IN_PROGRESS alone keeps it running; the lock is
    released exactly when a final result arrives; nothing moves backwards."""
    j, archive = run(job(), seq)
    finals = [s for s in seq if s != "IN_PROGRESS"]
    if finals:
        assert j.state.value == finals[0]
        assert archive == {"COMPLETED": "ARCHIVED", "FAILED": "FAILED"}[finals[0]]
        assert j.lock_held is False and j.completed_at is not None
    else:
        assert (j.state, archive, j.lock_held) == (JobState.IN_PROGRESS, None, True)
    assert j.started_at is not None


def test_states_never_go_backwards_step_by_step():
    for seq in itertools.product(["IN_PROGRESS", "COMPLETED", "FAILED"], repeat=3):
        j = job()
        for s in seq:
            before = j.state.rank
            j, _ = run(j, [s])
            assert j.state.rank >= before


def test_stale_attempt_ignored_and_times_clamped():
    j = job(attempt=2)
    assert apply_result(j, GatewayResult(j.id, 1, JobState.COMPLETED, T0), now=NOW, policy=POLICY).outcome == "stale"
    t = apply_result(j, GatewayResult(j.id, 2, JobState.COMPLETED, T0 + timedelta(days=9)), now=NOW, policy=POLICY)
    assert t.job.completed_at == NOW  # a gateway clock in the future is clamped to receipt time
    t = apply_result(j, GatewayResult(j.id, 2, JobState.IN_PROGRESS, T0 - timedelta(days=9)), now=NOW, policy=POLICY)
    assert t.job.started_at == T0  # and never before queueing


def test_failed_without_reason_gets_one():
    j = job()
    t = apply_result(j, GatewayResult(j.id, 1, JobState.FAILED, T0, reason="  "), now=NOW, policy=POLICY)
    assert t.job.failure_reason


def test_time_out_only_past_deadline_and_only_open_jobs():
    j = job()
    assert time_out(j, now=j.deadline - timedelta(seconds=1)).outcome == "ignored"
    t = time_out(j, now=j.deadline)
    assert t.job.state is JobState.FAILED and t.archive_state.state.value == "UNKNOWN" and t.lock_released
    assert time_out(t.job, now=j.deadline + timedelta(days=1)).outcome == "ignored"
    # A late final result from the gateway replaces UNKNOWN with what happened.
    late = apply_result(t.job, GatewayResult(j.id, 1, JobState.FAILED, NOW, reason="C-STORE 0xA700"), now=NOW, policy=POLICY)
    assert late.job.failure_reason == "C-STORE 0xA700" and late.archive_state.state.value == "FAILED"
    assert not late.lock_released  # the lock went with the timeout


def test_only_archive_jobs_set_archive_state():
    j = job(type=JobType.DICOM)
    t = apply_result(j, GatewayResult(j.id, 1, JobState.COMPLETED, T0), now=NOW, policy=POLICY)
    assert t.archive_state is None


# -- progress extends the result window (issue 13 item 3) ------------------------------------

def _progress(j: Job, minutes: float, now_minutes: float, policy: TimeoutPolicy, counts=None):
    return apply_result(j, GatewayResult(j.id, j.attempt, JobState.IN_PROGRESS, T0 + timedelta(minutes=minutes), counts=counts),
                        now=T0 + timedelta(minutes=now_minutes), policy=policy)


def test_progress_extends_the_window_and_never_shortens_it():
    p = TimeoutPolicy(dispatch_grace_seconds=600, attempt_allowance_seconds=900, max_window_seconds=6 * 3600)
    j = job(max_retries=1, retry_timeout_seconds=60)
    j = _progress(j, 1, 1, p).job  # started: window(started) = 2 * 900 + 60 s
    assert j.state is JobState.IN_PROGRESS and j.deadline == T0 + timedelta(minutes=1, seconds=1860)
    t = _progress(j, 30, 30, p, counts={"total": 200, "sent": 40})
    assert t.outcome == "extended" and t.job.deadline == T0 + timedelta(minutes=30, seconds=1860)
    assert t.job.counts == {"total": 200, "sent": 40} and t.job.lock_held
    j = t.job
    # An older post arriving late, a repeat, or one less than a minute later writes nothing.
    for minutes in (10, 30, 30.5):
        assert _progress(j, minutes, 31, p, counts={"total": 200, "sent": 1}).outcome == "duplicate"
    # A gateway clock ahead of ours is clamped to receipt time.
    assert _progress(j, 500, 40, p).job.deadline == T0 + timedelta(minutes=40, seconds=1860)
    # Bounded: never beyond started + max window, however long progress keeps coming.
    t = _progress(j, 5 * 60 + 50, 5 * 60 + 50, p)
    assert t.job.deadline == j.started_at + timedelta(hours=6)
    assert _progress(t.job, 5 * 60 + 59, 5 * 60 + 59, p).outcome == "duplicate"


def test_progress_after_a_final_result_changes_nothing():
    j, _ = run(job(), ["IN_PROGRESS", "COMPLETED"])
    t = _progress(j, 50, 50, POLICY, counts={"total": 2, "sent": 1})
    assert t.outcome == "ignored" and t.job is None
    timed_out = time_out(run(job(), ["IN_PROGRESS"])[0], now=T0 + timedelta(days=1)).job
    assert _progress(timed_out, 60 * 23, 60 * 24, POLICY).outcome == "ignored"  # UNKNOWN stays; the lock is gone

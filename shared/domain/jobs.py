"""Job state transitions driven by gateway results and the sweeper (rule 4 of ARCHITECTURE.md).

The order is one-way: QUEUED -> IN_PROGRESS -> COMPLETED | FAILED. A result for another attempt,
a repeat, or a state lower than the current one changes nothing. The single exception is a job
the *sweeper* failed for want of a result (archive state UNKNOWN): the gateway's own final result,
arriving late, replaces "unknown" with what really happened. That is information, not a step back.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime
from typing import Optional

from .models import ArchiveState, ArchiveStateValue, Job, JobState, JobType
from .rules import TimeoutPolicy


@dataclass(frozen=True)
class GatewayResult:
    job_id: str
    attempt: int
    state: JobState
    time: datetime
    reason: Optional[str] = None
    counts: Optional[dict] = None


@dataclass(frozen=True)
class Transition:
    """Outcome of applying a result: ``job`` is the new job (None = nothing to write)."""

    outcome: str  # applied | extended | duplicate | stale | ignored (or a caller's own word when nothing is written)
    job: Optional[Job] = None
    archive_state: Optional[ArchiveState] = None
    lock_released: bool = False


def _archive_state(job: Job, value: ArchiveStateValue, at: datetime) -> Optional[ArchiveState]:
    # Only the initial archive job decides whether an exam is archived at a destination.
    if job.type is not JobType.ARCHIVE:
        return None
    return ArchiveState(job.facility_group_id, job.exam_id, job.destination_id, value, job.id, at)


# Failure reasons (issue 11 item 17): a job's reason names every distinct failure of its attempts.
REASON_MAX = 2000  # one attempt's reason: job-result.v1 "reason" maxLength
FAILURE_REASON_MAX = 4000  # the combined reason shown in the Jobs tab
FAILURE_HISTORY_MAX = 20  # distinct reasons kept on the job (the first and the latest ones)


def record_failure(history: list, attempt: int, reason: str) -> list:
    """``history`` with ``attempt`` failed for ``reason``: distinct reasons in the order first seen,
    each with the attempts it ended; a new reason for the same attempt (the gateway's own result
    after a timeout) replaces the old one."""
    reason = (reason or "").strip()[:REASON_MAX] or "No reason given."
    out = [{"reason": e["reason"], "attempts": [a for a in e["attempts"] if a != attempt]} for e in history]
    out = [e for e in out if e["attempts"]]
    same = next((e for e in out if e["reason"] == reason), None)
    if same is not None:
        same["attempts"] = sorted({*same["attempts"], attempt})
    else:
        out.append({"reason": reason, "attempts": [attempt]})
    if len(out) > FAILURE_HISTORY_MAX:  # keep the first failure and the latest ones
        out = out[:1] + out[-(FAILURE_HISTORY_MAX - 1):]
    return out


def forget_attempt(history: list, attempt: int) -> list:
    """``history`` without ``attempt`` (it did not fail after all: a late COMPLETED after a timeout)."""
    out = [{"reason": e["reason"], "attempts": [a for a in e["attempts"] if a != attempt]} for e in history]
    return [e for e in out if e["attempts"]]


def render_failures(history: list) -> Optional[str]:
    """One attempt, one reason: the reason itself. Otherwise "attempt 1: A; attempts 2, 3: B",
    bounded by dropping middle entries (the first and the latest stay)."""
    if not history:
        return None
    if len(history) == 1 and len(history[0]["attempts"]) == 1:
        return history[0]["reason"]
    parts = [f"attempt{'s' if len(e['attempts']) > 1 else ''} {', '.join(map(str, e['attempts']))}: {e['reason']}"
             for e in history]
    text = "; ".join(parts)
    if len(text) > FAILURE_REASON_MAX:
        first, rest = parts[0], parts[1:]
        budget = FAILURE_REASON_MAX - len(first) - len("; (99 more reasons omitted)")
        kept: list[str] = []
        for part in reversed(rest):  # the latest ones that fit; the last one always
            if kept and len(part) + 2 > budget:
                break
            kept.insert(0, part)
            budget -= len(part) + 2
        omitted = len(rest) - len(kept)
        text = "; ".join([first, *([f"({omitted} more reason{'s' if omitted > 1 else ''} omitted)"] if omitted else []), *kept])
    return text if len(text) <= FAILURE_REASON_MAX else text[:FAILURE_REASON_MAX - 1] + "…"


def failure(job: Job, reason: str) -> dict:
    """The fields that record the current attempt's failure on ``job`` (dataclasses.replace)."""
    history = record_failure(job.failure_history, job.attempt, reason)
    return {"failure_history": history, "failure_reason": render_failures(history)}


def accepts_deferrals(job: Job) -> bool:
    """Whether instances added now wait for this ARCHIVE job's outcome: while it runs, and after it
    timed out (archive state UNKNOWN), because the gateway's late COMPLETED may still come and seed
    000 promises "Images will not be missed" (issue 11 item 11). Not after a gateway FAILED: a
    retry sends the whole study, late images included."""
    if job.type is not JobType.ARCHIVE:
        return False
    return not job.state.is_final or (job.state is JobState.FAILED and job.timed_out)


def _clamp(t: datetime, lo: datetime, hi: datetime) -> datetime:
    # Gateway clocks drift: keep reported times between queueing and receipt.
    return max(lo, min(t, hi))


def apply_result(
    job: Job,
    result: GatewayResult,
    *,
    now: datetime,
    policy: TimeoutPolicy,
) -> Transition:
    if result.attempt != job.attempt:
        return Transition("stale")
    at = _clamp(result.time, job.queued_at, now)

    if result.state is JobState.IN_PROGRESS:
        if job.state is JobState.QUEUED:
            new = dataclasses.replace(
                job,
                state=JobState.IN_PROGRESS,
                started_at=at,
                deadline=policy.deadline_from_started(at, job.max_retries, job.retry_timeout_seconds),
            )
            return Transition("applied", new)
        if job.started_at is None and job.state.is_final:
            # A late IN_PROGRESS only fills in the missing started time; the state stays.
            return Transition("applied", dataclasses.replace(job, started_at=min(at, job.completed_at or at)))
        if job.state is JobState.IN_PROGRESS and job.started_at is not None:
            # Progress while data flows extends the result window (TimeoutPolicy); an older or
            # repeated post, or one within progress_step of the last, writes nothing.
            deadline = policy.deadline_after_progress(job.deadline, job.started_at, at, job.max_retries,
                                                      job.retry_timeout_seconds)
            if (deadline - job.deadline).total_seconds() < policy.progress_step_seconds:
                return Transition("duplicate")
            counts = dict(result.counts) if result.counts else job.counts
            return Transition("extended", dataclasses.replace(job, deadline=deadline, counts=counts))
        return Transition("duplicate" if job.state is JobState.IN_PROGRESS else "ignored")

    if not result.state.is_final:
        return Transition("ignored")
    if job.state.is_final and not job.timed_out:
        return Transition("duplicate" if job.state is result.state else "ignored")

    value = ArchiveStateValue.ARCHIVED if result.state is JobState.COMPLETED else ArchiveStateValue.FAILED
    if result.state is JobState.FAILED:
        reasons = failure(job, (result.reason or "").strip() or "The gateway reported a failure without a reason.")
    else:  # this attempt did not fail (a timeout's "unknown" included); earlier attempts' reasons stay
        reasons = {"failure_history": forget_attempt(job.failure_history, job.attempt), "failure_reason": None}
    new = dataclasses.replace(
        job,
        state=result.state,
        started_at=job.started_at or at,
        completed_at=at,
        counts=dict(result.counts or {}),
        lock_held=False,
        timed_out=False,
        **reasons,
    )
    return Transition("applied", new, _archive_state(job, value, now), lock_released=job.lock_held)


def time_out(job: Job, *, now: datetime) -> Transition:
    """The sweeper's transition for a job past its deadline with no final result."""
    if job.state.is_final or job.deadline > now or job.held:  # a held job's deadline is its next check
        return Transition("ignored")
    reason = (
        "No result from the gateway within the timeout window "
        f"(deadline {job.deadline.isoformat(timespec='seconds')}); last state {job.state.value}."
    )
    new = dataclasses.replace(
        job, state=JobState.FAILED, completed_at=now, lock_held=False, timed_out=True, **failure(job, reason)
    )
    return Transition("applied", new, _archive_state(job, ArchiveStateValue.UNKNOWN, now), lock_released=job.lock_held)

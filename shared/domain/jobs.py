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

    outcome: str  # applied | duplicate | stale | ignored (or a caller's own word when nothing is written)
    job: Optional[Job] = None
    archive_state: Optional[ArchiveState] = None
    lock_released: bool = False


def _archive_state(job: Job, value: ArchiveStateValue, at: datetime) -> Optional[ArchiveState]:
    # Only the initial archive job decides whether an exam is archived at a destination.
    if job.type is not JobType.ARCHIVE:
        return None
    return ArchiveState(job.facility_group_id, job.exam_id, job.destination_id, value, job.id, at)


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
        return Transition("duplicate" if job.state is JobState.IN_PROGRESS else "ignored")

    if not result.state.is_final:
        return Transition("ignored")
    if job.state.is_final and not job.timed_out:
        return Transition("duplicate" if job.state is result.state else "ignored")

    value = ArchiveStateValue.ARCHIVED if result.state is JobState.COMPLETED else ArchiveStateValue.FAILED
    reason = None
    if result.state is JobState.FAILED:
        reason = (result.reason or "").strip() or "The gateway reported a failure without a reason."
    new = dataclasses.replace(
        job,
        state=result.state,
        started_at=job.started_at or at,
        completed_at=at,
        failure_reason=reason,
        counts=dict(result.counts or {}),
        lock_held=False,
        timed_out=False,
    )
    return Transition("applied", new, _archive_state(job, value, now), lock_released=job.lock_held)


def time_out(job: Job, *, now: datetime) -> Transition:
    """The sweeper's transition for a job past its deadline with no final result."""
    if job.state.is_final or job.deadline > now:
        return Transition("ignored")
    reason = (
        "No result from the gateway within the timeout window "
        f"(deadline {job.deadline.isoformat(timespec='seconds')}); last state {job.state.value}."
    )
    new = dataclasses.replace(
        job, state=JobState.FAILED, completed_at=now, failure_reason=reason, lock_held=False, timed_out=True
    )
    return Transition("applied", new, _archive_state(job, ArchiveStateValue.UNKNOWN, now), lock_released=job.lock_held)

"""Which destinations an exam status event triggers (rule 1 of ARCHITECTURE.md; seed 000
"Configure Auto Archive" and Troubleshooting row 1), deterministic job ids, and the timeout window.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Iterable, Mapping, Optional

from .models import Destination, ExamStatusChanged, Gateway, JobType


@dataclass(frozen=True)
class TriggerDecision:
    destination: Destination
    gateway: Optional[Gateway]
    archive: bool
    reason: str  # why not, for logs; "eligible" when archive is True


def decide(event: ExamStatusChanged, destination: Destination, gateway: Optional[Gateway]) -> TriggerDecision:
    def no(reason: str) -> TriggerDecision:
        return TriggerDecision(destination, gateway, False, reason)

    if destination.facility_group_id != event.facility_group_id:
        return no("other facility group")
    if not destination.active:
        return no("destination inactive")
    if not destination.auto_archive or destination.trigger_status is None:
        return no("auto archive off")
    if destination.trigger_status.value != event.status:
        return no("trigger status differs")
    if gateway is None or gateway.facility_group_id != event.facility_group_id:
        return no("gateway missing")
    if not gateway.active or gateway.provisioning_state != "READY":
        return no("gateway inactive")
    # Facility scope: the destination's list, or (empty) every facility its gateway serves.
    if destination.facility_ids:
        if event.facility_id not in destination.facility_ids:
            return no("facility out of scope")
    elif not gateway.serves(event.facility_id):
        return no("facility out of scope")
    # "Each destination archives only on the first time the exam reaches the configured status",
    # and exams that reached it before auto archive was configured are not archived
    # retroactively. The platform states when the exam *first* reached the status, so this holds
    # whatever order events arrive in; repeats are then stopped by the deterministic job id.
    if destination.auto_archive_since is None or event.status_first_reached_at < destination.auto_archive_since:
        return no("exam reached the status before auto archive was configured")
    return TriggerDecision(destination, gateway, True, "eligible")


def decide_all(
    event: ExamStatusChanged, destinations: Iterable[Destination], gateways: Mapping[str, Gateway]
) -> list[TriggerDecision]:
    return [decide(event, d, gateways.get(d.gateway_id)) for d in destinations]


def job_id(job_type: JobType, facility_group_id: str, *parts: str) -> str:
    """Deterministic job id: the same (type, group, parts) always gives the same id, so creating
    the job document is the idempotency check (rule 1, rule 2)."""
    key = "\x1f".join((job_type.value, facility_group_id, *parts))
    return f"{job_type.value.lower()}-{hashlib.sha256(key.encode()).hexdigest()[:32]}"


def archive_job_id(facility_group_id: str, exam_id: str, destination_id: str) -> str:
    return job_id(JobType.ARCHIVE, facility_group_id, exam_id, destination_id)


@dataclass(frozen=True)
class TimeoutPolicy:
    """How long a job may go without a final result before it is declared FAILED with archive
    state UNKNOWN (seed 000 "Archive States": "No callback received from Gateway within the
    timeout window").

    window(queued)  = dispatch_grace + attempts * attempt_allowance + max_retries * retry_timeout
    window(started) =                  attempts * attempt_allowance + max_retries * retry_timeout
    where attempts = max_retries + 1: the gateway makes one try plus ``max_retries`` retries,
    waiting ``retry_timeout_seconds`` between them, before it must report FAILED.
    ``dispatch_grace`` covers a gateway pulling the job late; ``attempt_allowance`` bounds one
    whole-study send. The deadline counts from the queued time, and is recomputed from the
    started time when the gateway reports IN_PROGRESS.
    """

    dispatch_grace_seconds: int = 1800
    attempt_allowance_seconds: int = 900

    def _work(self, max_retries: int, retry_timeout_seconds: int) -> int:
        return (max_retries + 1) * self.attempt_allowance_seconds + max_retries * retry_timeout_seconds

    def deadline_from_queued(self, queued_at: datetime, max_retries: int, retry_timeout_seconds: int) -> datetime:
        seconds = self.dispatch_grace_seconds + self._work(max_retries, retry_timeout_seconds)
        return queued_at + timedelta(seconds=seconds)

    def deadline_from_started(self, started_at: datetime, max_retries: int, retry_timeout_seconds: int) -> datetime:
        return started_at + timedelta(seconds=self._work(max_retries, retry_timeout_seconds))

"""Which destinations an exam status event triggers (rule 1 of ARCHITECTURE.md; seed 000
"Configure Auto Archive" and Troubleshooting row 1), deterministic job ids, and the timeout window.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Iterable, Mapping, Optional

from . import history
from .models import Destination, ExamStatus, ExamStatusChanged, Gateway, JobType


@dataclass(frozen=True)
class TriggerDecision:
    destination: Destination
    gateway: Optional[Gateway]
    archive: bool
    reason: str  # why not, for logs; "eligible" when archive is True
    # The trigger status in effect when the exam first reached it (the destination's current
    # one may differ since): the job records it and it decides the order lock.
    trigger_status: Optional[ExamStatus] = None


def decide(event: ExamStatusChanged, destination: Destination, gateway: Optional[Gateway],
           gateways: Optional[Mapping[str, Gateway]] = None) -> TriggerDecision:
    """Whether ``destination`` archives the exam of ``event``. ``gateway`` is the destination's
    gateway now (where the job would go); ``gateways`` holds any other gateway the destination was
    linked to when the exam first reached the status.

    Everything that decides eligibility is judged *as of* ``status_first_reached_at`` (rule 1;
    issue 11 item 6; shared/domain/history.py), so the answer does not depend on when the message is
    processed: reactivating or widening later is never retroactive, and a redelivery gets the same
    answer. Only where the job goes is "now": a gateway that no longer exists or is being deleted
    cannot take it."""
    def no(reason: str) -> TriggerDecision:
        return TriggerDecision(destination, gateway, False, reason)

    fg, t = event.facility_group_id, event.status_first_reached_at
    if destination.facility_group_id != fg:
        return no("other facility group")
    # "Each destination archives only on the first time the exam reaches the configured status",
    # and exams that reached it before auto archive was configured are not archived
    # retroactively: the destination's settings at that first instant decide. Repeats are then
    # stopped by the deterministic job id.
    then = history.as_of(history.destination_history(destination), t)
    if then is None:
        return no("exam reached the status before auto archive was configured")
    if not then.active:
        return no("destination inactive")
    if not then.auto_archive or then.trigger_status is None:
        return no("auto archive off")
    if then.trigger_status.value != event.status:
        return no("trigger status differs")
    if gateway is None or gateway.facility_group_id != fg or gateway.id != destination.gateway_id:
        return no("gateway missing")
    if gateway.provisioning_state != "READY":
        return no("gateway inactive")  # being deleted: its topic is going away
    gateway_then = gateway if then.gateway_id == gateway.id else (gateways or {}).get(then.gateway_id)
    if gateway_then is None or gateway_then.facility_group_id != fg:
        return no("gateway missing")
    gw = history.as_of(history.gateway_history(gateway_then), t)
    if gw is None:
        return no("exam reached the status before the gateway existed")
    if not gw.active:
        return no("gateway inactive")
    # Facility scope at that instant: the destination's list, or (empty) every facility its
    # gateway served.
    if then.facility_ids:
        if event.facility_id not in then.facility_ids:
            return no("facility out of scope")
    elif gw.facility_ids and event.facility_id not in gw.facility_ids:
        return no("facility out of scope")
    return TriggerDecision(destination, gateway, True, "eligible", then.trigger_status)


def gateway_ids_to_read(event: ExamStatusChanged, destinations: Iterable[Destination]) -> list[str]:
    """The gateways ``decide`` needs: each destination's current one and the one it was linked to
    when the exam first reached the status."""
    ids = []
    for d in destinations:
        ids.append(d.gateway_id)
        then = history.as_of(history.destination_history(d), event.status_first_reached_at)
        if then is not None:
            ids.append(then.gateway_id)
    return list(dict.fromkeys(ids))


def decide_all(
    event: ExamStatusChanged, destinations: Iterable[Destination], gateways: Mapping[str, Gateway]
) -> list[TriggerDecision]:
    return [decide(event, d, gateways.get(d.gateway_id), gateways) for d in destinations]


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

    Progress (issue 13 item 3): while data flows the gateway posts IN_PROGRESS again, with counts
    (at most once a minute by default). Each such post moves the deadline to
        min(progress time + window(started), started + max_window)
    and never back: a large study on a slow link is not declared UNKNOWN (nor its order lock
    released) while it is still being sent, and a gateway that stops reporting is still timed out
    one whole window after its last sign of life. ``max_window`` bounds a job whose gateway keeps
    reporting forever (a stuck loop): it must exceed the agent's Pub/Sub lease maximum
    (docs/gateway-agent.md), after which the message would be redelivered anyway.
    """

    dispatch_grace_seconds: int = 1800
    attempt_allowance_seconds: int = 900
    max_window_seconds: int = 12 * 3600
    # A progress post that moves the deadline by less than this writes nothing: at most one job
    # write a minute per job whatever a gateway sends (Firestore: ~1 write/s per document).
    progress_step_seconds: int = 60

    def _work(self, max_retries: int, retry_timeout_seconds: int) -> int:
        return (max_retries + 1) * self.attempt_allowance_seconds + max_retries * retry_timeout_seconds

    def deadline_from_queued(self, queued_at: datetime, max_retries: int, retry_timeout_seconds: int) -> datetime:
        seconds = self.dispatch_grace_seconds + self._work(max_retries, retry_timeout_seconds)
        return queued_at + timedelta(seconds=seconds)

    def deadline_from_started(self, started_at: datetime, max_retries: int, retry_timeout_seconds: int) -> datetime:
        return started_at + timedelta(seconds=self._work(max_retries, retry_timeout_seconds))

    def deadline_after_progress(self, deadline: datetime, started_at: datetime, progress_at: datetime,
                                max_retries: int, retry_timeout_seconds: int) -> datetime:
        """The deadline once the gateway reported progress at ``progress_at``: later, or unchanged
        (an older or repeated post never shortens it)."""
        cap = started_at + timedelta(seconds=self.max_window_seconds)
        return max(deadline, min(self.deadline_from_started(progress_at, max_retries, retry_timeout_seconds), cap))

"""Log records that feed the log-based metrics of infra/monitoring.tf (issue 15 item 1;
docs/operations.md "Metrics").

Each record is an ordinary structured log line (shared/logs.py) with an ``event`` field naming it
(``archsync.<what>``): the metric filters of infra/monitoring.tf select on that field, their labels
and values are extracted from the other fields named here. tests/integration/test_metric_logs.py
runs the real code paths and checks every metric's filter matches what they write.

Labels carry ids of configuration (facility group, destination, gateway), job types, outcomes and
reason codes: never patient data (no MRN, name, accession, exam or study id), keys or secrets.
"""
from __future__ import annotations

from datetime import datetime
from typing import Optional

from . import logs
from .domain.jobs import Transition
from .domain.models import Job, JobState

JOB_CREATED = "archsync.job_created"
JOB_FINISHED = "archsync.job_finished"
LOCK_RELEASED = "archsync.lock_released"
LOCK_OVERDUE = "archsync.lock_overdue"
DEAD_LETTERED = "archsync.dead_lettered"
PROVISIONING_FAILED = "archsync.provisioning_failed"
PROVISIONING_ROLLED_BACK = "archsync.provisioning_rolled_back"
RESULT_SIGNATURE_FAILED = "archsync.result_signature_failed"
GATEWAY_SILENT = "archsync.gateway_silent"

# job_finished outcomes: COMPLETED and FAILED as the job ended; TIMED_OUT when the sweeper gave up
# waiting for a result (archive state UNKNOWN). A gateway's late result after a timeout is another
# job_finished record (COMPLETED or FAILED, after_timeout=true): the timeout was counted as it happened.
TIMED_OUT = "TIMED_OUT"


def _seconds(later: Optional[datetime], earlier: Optional[datetime]) -> Optional[float]:
    if later is None or earlier is None:
        return None
    return round(max((later - earlier).total_seconds(), 0.0), 3)


def job_created(job: Job) -> None:
    """A new job document was created (not a redelivery finding it, not a manual retry)."""
    logs.info("job created", event=JOB_CREATED, job_id=job.id, job_type=job.type.value,
              destination_id=job.destination_id, gateway_id=job.gateway_id, facility_group_id=job.facility_group_id,
              held=job.held)


def job_transition(before: Optional[Job], transition: Optional[Transition], now: datetime) -> None:
    """The records a written job transition implies: the job finished (its outcome and the queued
    -> final latency) and/or its order lock was released (how long it was held). ``before`` is the
    job the transition was decided on; nothing is logged for a transition that wrote nothing."""
    if transition is None or transition.outcome != "applied" or transition.job is None:
        return
    job = transition.job
    newly_final = job.state.is_final and (before is None or not before.state.is_final or
                                          (before.timed_out and not job.timed_out))
    if newly_final:
        outcome = TIMED_OUT if job.timed_out else job.state.value
        logs.log("WARNING" if job.state is JobState.FAILED else "INFO", "job finished", event=JOB_FINISHED,
                 job_id=job.id, job_type=job.type.value, outcome=outcome, attempt=job.attempt,
                 destination_id=job.destination_id, gateway_id=job.gateway_id, facility_group_id=job.facility_group_id,
                 after_timeout=bool(before is not None and before.timed_out),
                 queued_to_completed_seconds=_seconds(job.completed_at, job.queued_at))
    if transition.lock_released:
        # The lock is taken when the job is (re)queued (seed 000 "Recommended Auto Archive Status"):
        # held from queued_at until now.
        logs.info("order lock released", event=LOCK_RELEASED, job_id=job.id, job_type=job.type.value,
                  destination_id=job.destination_id, facility_group_id=job.facility_group_id,
                  held_seconds=_seconds(now, job.queued_at))


def lock_overdue(job: Job, now: datetime) -> None:
    """A job still holds its exam's order lock longer than the configured limit (sweeper)."""
    logs.warning("order lock held too long", event=LOCK_OVERDUE, job_id=job.id, job_type=job.type.value,
                 state=job.state.value, destination_id=job.destination_id, gateway_id=job.gateway_id,
                 facility_group_id=job.facility_group_id, held_seconds=_seconds(now, job.queued_at))


def dead_lettered(function: str, reason_code: str, message_id: str, reason: str) -> None:
    logs.error("message dead-lettered", event=DEAD_LETTERED, function=function, reason_code=reason_code,
               message_id=message_id, reason=reason)


def provisioning_failed(facility_group_id: str, gateway_id: str, operation: str, step: Optional[str], why: str) -> None:
    logs.error("gateway provisioning failed; rolling back", event=PROVISIONING_FAILED, operation=operation,
               step=step or "none", gateway_id=gateway_id, facility_group_id=facility_group_id, why=why)


def provisioning_rolled_back(facility_group_id: str, gateway_id: str, by: str, complete: bool, why: str = "") -> None:
    """``by``: request (the failing call rolled back itself) or sweeper (a dead call's half-done
    work). ``complete`` false: the rollback stopped half-way and the sweeper finishes it later."""
    logs.log("WARNING" if complete else "ERROR",
             "gateway provisioning rolled back" if complete else "rollback incomplete; the sweeper will finish it",
             event=PROVISIONING_ROLLED_BACK, by=by, result="complete" if complete else "incomplete",
             gateway_id=gateway_id, facility_group_id=facility_group_id, why=why or None)


def result_signature_failed(reason_code: str, facility_group_id: str, gateway_id: str) -> None:
    """A Result Endpoint request that failed authentication. The ids are what the caller claimed
    (unauthenticated): logged for investigation, never used as metric labels (an attacker could
    mint any number of them)."""
    logs.warning("result endpoint authentication failed", event=RESULT_SIGNATURE_FAILED, reason_code=reason_code,
                 claimed_facility_group_id=facility_group_id, claimed_gateway_id=gateway_id)


def gateway_silent(facility_group_id: str, gateway_id: str, last_contact_at: Optional[datetime],
                   oldest_queued_at: datetime, now: datetime) -> None:
    """A gateway with jobs waiting for it has not been in contact for longer than the "silent"
    threshold (sweeper, once a minute). ``silent_seconds``: since its last contact, or, for one
    never heard from, since the oldest job waiting for it was queued."""
    logs.warning("gateway silent with queued jobs", event=GATEWAY_SILENT, gateway_id=gateway_id,
                 facility_group_id=facility_group_id, never_contacted=last_contact_at is None,
                 silent_seconds=_seconds(now, last_contact_at or oldest_queued_at),
                 oldest_queued_seconds=_seconds(now, oldest_queued_at))

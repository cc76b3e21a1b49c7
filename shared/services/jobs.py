"""The Jobs tab (issue 5; seed 000 "Monitoring Archive Jobs", "Archive States", "Retrying Failed
Jobs"): paged, filtered job lists, manual retry of a failed job, and an exam's archive state at
every destination of the group."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Optional

from .. import logs
from ..auth import Caller
from ..clock import iso
from ..domain import job_query
from ..domain.errors import Conflict, MalformedInput, NotFound, PermanentError
from ..domain.jobs import Transition
from ..domain.models import LOCKING_TRIGGERS, NOT_ARCHIVED, ExamStatus, Job, JobState, JobType
from ..domain.rules import TimeoutPolicy
from ..domain.validation import is_valid_id
from ..ports import Clock, ObjectStore
from .routing import rehome

ARCHIVE_STATE_LABELS = {  # seed 000 "Archive States"
    "ARCHIVED": ("Archived", "IOCM messages are generated for subsequent changes."),
    "FAILED": ("Failed", "IOCM suppressed. Retry the job or investigate the failure reason."),
    "UNKNOWN": ("Unknown", "IOCM suppressed."),
    NOT_ARCHIVED: ("Not Archived", "IOCM suppressed."),
}


def _zone(name: Optional[str]):
    if not name:
        return None
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise MalformedInput("tz: an IANA time zone name, e.g. America/New_York") from None


def job_row(job: Job, facility_names: Mapping[str, str], tz: Any = None) -> dict:
    """Every column of the seed's Jobs table; dates as ISO 8601 and in the seed's display form."""
    row = {
        "id": job.id, "mrn": job.mrn, "accession": job.accession_number, "patient_name": job.patient_name,
        "type": job.type.value, "type_label": job_query.TYPE_LABELS[job.type.value],
        "study_instance_uid": job.study_instance_uid, "exam_id": job.exam_id,
        "facility_id": job.facility_id, "facility": facility_names.get(job.facility_id, job.facility_id),
        "destination_id": job.destination_id, "destination": job.destination_name,
        "state": job.state.value, "state_label": job_query.STATE_LABELS[job.state.value],
        "reason": job.failure_reason, "attempt": job.attempt, "retryable": job.state is JobState.FAILED,
    }
    for name in ("queued", "started", "completed"):
        t = getattr(job, f"{name}_at")
        row[f"{name}_at"] = iso(t)
        row[f"{name}_date"] = job_query.display_date(t, tz)
    return row


class JobsService:
    def __init__(self, store: Any, publisher: Callable[[], Any], clock: Clock, policy: TimeoutPolicy,
                 objects: Callable[[], ObjectStore]):
        """``publisher`` builds the JobPublisher on first need (only a retry publishes);
        ``objects`` the ObjectStore (only a retry that re-routes a job copies its objects)."""
        self._store, self._publisher, self._clock, self._policy = store, publisher, clock, policy
        self._objects = objects

    def list(self, caller: Caller, fg: str, params: Mapping[str, str]) -> dict:
        caller.require_group(fg)
        query = job_query.parse(params)
        tz = _zone(params.get("tz"))
        after = job_query.decode_cursor(params["cursor"], fg, query) if params.get("cursor") else None
        jobs = self._store.query_jobs(fg, query, after)
        names = self._store.facilities(fg)
        next_cursor = None
        if len(jobs) == query.page_size:  # possibly more: the next page may turn out empty
            last = jobs[-1]
            values = {f: (last.patient_name.lower() if f == job_query.NAME_FIELD else getattr(last, f)) for f, _ in query.order}
            next_cursor = job_query.encode_cursor(fg, query, values, last.id)
        return {"jobs": [job_row(j, names, tz) for j in jobs], "next_cursor": next_cursor}

    def retry(self, caller: Caller, fg: str, job_id: str) -> dict:
        """Seed 000 "Retrying Failed Jobs": the same job, attempt + 1, back to QUEUED and published
        again with the destination's *current* max retries and retry timeout, through the
        destination's *current* gateway (issue 11 item 15). Earlier attempts' failure reasons are
        kept (item 17). A rejection note that waits for the copies of moved instances is retried
        only once those are stored (item 10)."""
        caller.require_group(fg)
        job = self._store.get_job(fg, job_id) if is_valid_id(job_id) else None
        if job is None:
            raise NotFound("job not found")
        destination = self._store.get_destination(fg, job.destination_id)
        gateway = self._store.get_gateway(fg, destination.gateway_id) if destination else None
        if destination is None or gateway is None or gateway.provisioning_state != "READY":
            raise Conflict("The job's destination or gateway no longer exists: it cannot be retried.")
        if job.waits_for:
            # IHE IOCM (digest A5): reject originals only once their copies are stored. Sent alone,
            # this note would hide the originals from an archive that never got the copies.
            copy = self._store.get_job(fg, job.waits_for)
            if copy is None or copy.state is not JobState.COMPLETED:
                state = job_query.STATE_LABELS[copy.state.value] if copy else "missing"
                raise Conflict(f"This rejection note waits for job {job.waits_for}, which stores the copies of the "
                               f"moved instances and is {state}: retry that job first; the note can be retried once it "
                               "is Completed.")
        moved: dict = {}
        if gateway.id != job.gateway_id and job.state is JobState.FAILED:
            try:  # copies under the new gateway's prefix, before the job names them
                moved = rehome(self._objects(), job, gateway.id) if job.object_uri or job.instances_uri else {
                    "gateway_id": gateway.id}
            except PermanentError:
                raise Conflict("The job's generated object no longer exists (retention): it cannot be retried.") from None
        now = self._clock.now()
        lease = self._publisher().lease

        def requeue(j: Job) -> Transition:
            if j.state is not JobState.FAILED:
                raise Conflict(f"Only a failed job can be retried; this one is {job_query.STATE_LABELS[j.state.value]}.")
            if j.gateway_id != job.gateway_id:
                raise Conflict("The job changed while it was being retried: try again.")
            trigger = ExamStatus(j.trigger_status) if j.trigger_status else None
            return Transition("applied", dataclasses.replace(
                j, state=JobState.QUEUED, attempt=j.attempt + 1, queued_at=now, started_at=None, completed_at=None,
                failure_reason=None, counts={}, timed_out=False, held=False,
                max_retries=destination.max_retries, retry_timeout_seconds=destination.retry_timeout_seconds,
                deadline=self._policy.deadline_from_queued(now, destination.max_retries, destination.retry_timeout_seconds),
                published=False, published_at=None, publish_lease_until=now + lease,
                # An archive job triggered at Pending/Inflight locks the order again while it runs.
                lock_held=j.type is JobType.ARCHIVE and trigger in LOCKING_TRIGGERS, **moved))

        t = self._store.transact_job(fg, job.id, requeue)
        self._store.audit(fg, caller.label, "job.retry", "job", job.id, now,
                          fields=["attempt", *(["gateway_id"] if moved else [])])
        self._publisher().publish(t.job, destination, gateway)
        logs.info("job retried", job_id=job.id, attempt=t.job.attempt, gateway_id=gateway.id,
                  rerouted_from=job.gateway_id if moved else None, facility_group_id=fg)
        return job_row(t.job, self._store.facilities(fg))

    def exam_archive_states(self, caller: Caller, fg: str, exam_id: str) -> dict:
        caller.require_group(fg)
        if not is_valid_id(exam_id):
            raise NotFound("exam not found")
        states = {a.destination_id: a for a in self._store.archive_states(fg, exam_id)}
        rows = []
        for d in self._store.list_destinations(fg):
            a = states.get(d.id)
            value = a.state.value if a else NOT_ARCHIVED
            label, iocm = ARCHIVE_STATE_LABELS[value]
            rows.append({"destination_id": d.id, "destination": d.name, "state": value, "label": label,
                         "iocm": iocm, "job_id": a.job_id if a else None, "updated_at": iso(a.updated_at) if a else None})
        return {"exam_id": exam_id, "destinations": rows}

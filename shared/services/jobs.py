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
from ..domain.errors import Conflict, MalformedInput, NotFound, PermanentError, ValidationFailed
from ..domain.jobs import Transition
from ..domain.models import LOCKED_ACTIONS, LOCKING_TRIGGERS, NOT_ARCHIVED, ExamStatus, Job, JobState, JobType
from ..domain.rules import TimeoutPolicy
from ..domain.validation import is_valid_id
from ..ports import Clock, ObjectStore
from .locks import LockService
from .routing import rehome

# A bulk retry requeues at most this many failed jobs per request: each is one transaction and one
# publish, and the whole must fit the admin function's 120 s timeout on a slow day. The answer
# says how many failed jobs still match, so the console can offer to run it again.
MAX_BULK_RETRY = 100
BULK_FIELDS = frozenset({"filters", "request_id"})

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

    # -- the console's Jobs tab (issue 14) ---------------------------------------------------
    def get(self, caller: Caller, fg: str, job_id: str, tz_name: Optional[str] = None) -> dict:
        """One job by id, as a row of the Jobs table (what the console refreshes after a retry)."""
        caller.require_group(fg)
        tz = _zone(tz_name)
        job = self._store.get_job(fg, job_id) if is_valid_id(job_id) else None
        if job is None:
            raise NotFound("job not found")
        return job_row(job, self._store.facilities(fg), tz)

    def counts(self, caller: Caller, fg: str, params: Mapping[str, str]) -> dict:
        """How many jobs of each state match the filter (the list's filters, without paging): one
        count() aggregation per state, on the list's own indexes."""
        caller.require_group(fg)
        query = job_query.parse({k: v for k, v in params.items() if k not in ("page_size", "cursor", "tz")})
        only = job_query.state_of(query)
        counts = {s: (self._store.count_jobs(fg, job_query.with_state(query, s)) if only in (None, s) else 0)
                  for s in job_query.STATES}
        return {"counts": counts, "total": sum(counts.values())}

    def per_day(self, caller: Caller, fg: str, params: Mapping[str, str]) -> dict:
        """Jobs per day (by queued date, in the viewer's time zone) and state, for the last ``days``
        days including today, under the filter's equality filters: days x 4 count() aggregations."""
        from datetime import timedelta, timezone

        caller.require_group(fg)
        query, days = job_query.chart_query(params)
        tz = _zone(params.get("tz")) or timezone.utc
        today = self._clock.now().astimezone(tz).date()
        rows = []
        for n in range(days - 1, -1, -1):
            day = today - timedelta(days=n)
            start = datetime_at(day, tz)
            end = datetime_at(day + timedelta(days=1), tz)
            counts = {}
            for s in job_query.STATES:
                narrowed = job_query.with_state(job_query.day_range(query, start, end), s)
                only = job_query.state_of(query)
                counts[s] = self._store.count_jobs(fg, narrowed, below=end) if only in (None, s) else 0
            rows.append({"day": day.isoformat(), "counts": counts})
        return {"days": rows}

    def bulk_retry(self, caller: Caller, fg: str, data: Any) -> dict:
        """Retry every FAILED job matching ``filters`` (the Jobs tab's filter), at most
        MAX_BULK_RETRY per request. Idempotent: the client names the request (``request_id``); a
        replay of a finished request returns its stored answer and retries nothing, and each job's
        retry is itself conditional (a job already retried is no longer FAILED: skipped). Audited:
        one record per bulk action (who, filter, count, job ids) plus each job's own retry entry.
        Logs carry counts and filter names only, never filter values (an MRN or a name is patient data)."""
        caller.require_group(fg)
        filters, request_id = _bulk_body(data)
        done = self._store.get_bulk_action(fg, request_id)
        if done is not None:
            return {**done["result"], "replayed": True}
        try:
            query = job_query.parse({**filters, "state": "FAILED", "page_size": str(MAX_BULK_RETRY)})
        except MalformedInput as e:
            raise ValidationFailed({"filters": str(e)}) from None
        retried, skipped = [], []
        for job in self._store.query_jobs(fg, query):
            try:
                self.retry(caller, fg, job.id)
                retried.append(job.id)
            except Conflict:  # retried meanwhile, or its destination/gateway is gone: left as it is
                skipped.append(job.id)
        remaining = self._store.count_jobs(fg, query)
        result = {"retried": len(retried), "skipped": len(skipped), "remaining_failed": remaining,
                  "job_ids": retried, "skipped_job_ids": skipped}
        now = self._clock.now()
        record = {"request_id": request_id, "actor": caller.label, "actor_id": caller.user_id, "at": now,
                  "filters": dict(filters), "result": result}
        earlier = self._store.record_bulk_action(fg, request_id, record, actor=caller.label, at=now)
        if earlier is not None:  # a concurrent replay finished first: its answer is the answer
            return {**earlier["result"], "replayed": True}
        logs.info("bulk retry", facility_group_id=fg, request_id=request_id, retried=len(retried),
                  skipped=len(skipped), remaining_failed=remaining, filter_fields=sorted(filters))
        return {**result, "replayed": False}

    def exam(self, caller: Caller, fg: str, exam_id: str) -> dict:
        """The console's exam view: archive state at every destination (seed 000 "Archive States")
        and the order lock with the seed's message ("Important - Recommended Auto Archive Status")."""
        states = self.exam_archive_states(caller, fg, exam_id)
        lock = LockService(self._store).status(fg, exam_id)
        known = self._store.get_exam(fg, exam_id) or {}  # what the exam's status events said (archive_trigger)
        return {
            **states,
            "accession": known.get("accession_number"), "mrn": known.get("mrn"), "patient_name": known.get("patient_name"),
            "study_instance_uid": known.get("study_instance_uid"),
            "lock": {"locked": lock.locked, "message": lock.message,
                     "blocked_actions": list(LOCKED_ACTIONS) if lock.locked else [],
                     "jobs": [{"job_id": h.job_id, "destination_id": h.destination_id, "destination": h.destination_name,
                               "trigger_status": h.trigger_status, "state": h.state.value,
                               "queued_at": iso(h.queued_at)} for h in lock.holders]},
        }


def datetime_at(day: Any, tz: Any) -> Any:
    """Midnight starting ``day`` in ``tz`` (a DST change shifts it, never the day it belongs to)."""
    from datetime import datetime, time

    return datetime.combine(day, time(0, 0), tzinfo=tz)


def _bulk_body(data: Any) -> tuple[dict, str]:
    if not isinstance(data, Mapping):
        raise ValidationFailed({"(body)": "must be a JSON object"})
    errors = {k: "is not a known field" for k in data if k not in BULK_FIELDS}
    request_id = data.get("request_id")
    if not (isinstance(request_id, str) and 8 <= len(request_id) <= 64 and is_valid_id(request_id)):
        errors["request_id"] = "required: 8-64 letters, digits, '-', '_', '.' or ':' naming this request (a new one per action)"
    filters = data.get("filters", {})
    if not isinstance(filters, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in filters.items()):
        errors["filters"] = "an object of the Jobs list's filter parameters (strings)"
    else:
        unknown = sorted(k for k in filters if k not in job_query.FILTER_PARAMS)
        if unknown:
            errors["filters"] = f"unknown filter(s): {', '.join(unknown)}"
        elif filters.get("state") not in (None, "FAILED", "Failed", "failed"):
            errors["filters"] = "only failed jobs can be retried: leave out state, or set it to FAILED"
    if errors:
        raise ValidationFailed(errors)
    return {k: v for k, v in filters.items() if k != "state"}, request_id

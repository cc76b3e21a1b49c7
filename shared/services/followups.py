"""What a job's final state sets in motion (rule 5 and IHE IOCM ordering), and the DICOM push jobs
that carry instances to an archive:

- an ARCHIVE job that COMPLETED pushes the instances deferred on it (added while it ran, or after
  it timed out: issue 11 item 11), so no late image is missed (seed 000: "the system will push any
  new images to the archive once the initial job finishes");
- a job others wait for (copies of split/merged instances) releases them when it COMPLETED, and
  fails them otherwise: originals are rejected only once their copies are stored;
- a held job whose waited-for job can never complete (missing, final and not COMPLETED) is failed
  by the sweeper (``check_held``, issue 11 item 15) instead of staying open and blocking deletions.

Runs after every final result, repeats included, so a crash between the result and its
follow-ups is mended by the gateway's retry or the sweeper; deterministic ids make it idempotent.
New and released jobs go to the destination's *current* gateway (issue 11 item 15)."""
from __future__ import annotations

import dataclasses
import hashlib
from datetime import datetime, timedelta, timezone
from typing import Callable, Optional, Sequence, Union

from .. import logs, metrics
from ..domain import instance_lists
from ..domain.errors import PermanentError
from ..domain.jobs import Transition, failure
from ..domain.models import Deferral, Destination, Gateway, Job, JobState, JobType
from ..domain.rules import TimeoutPolicy, job_id
from ..ports import Clock, ConfigStore, JobStore, ObjectStore
from .publisher import JobPublisher
from .routing import rehome

# A held job's publish lease: far in the future, so the outbox sweep leaves it alone until released.
HELD_UNTIL = datetime(9999, 1, 1, tzinfo=timezone.utc)
# A held job's deadline is when the sweeper next looks at the job it waits for (check_held): the
# waited-for job's own deadline, plus this margin so that job is timed out first.
HELD_CHECK_MARGIN = timedelta(minutes=5)

Instances = Union[Sequence[dict], Callable[[], Sequence[dict]]]


def _dependent_reason(waited: Job) -> str:
    return (f"Not sent: the copies of the moved instances were not stored (job {waited.id} ended "
            f"{waited.state.value}), so the originals are not rejected.")


class FollowUps:
    def __init__(self, config: ConfigStore, jobs: JobStore, publisher: JobPublisher, clock: Clock, policy: TimeoutPolicy,
                 *, objects: ObjectStore):
        self._config, self._jobs, self._publisher, self._clock, self._policy = config, jobs, publisher, clock, policy
        self._objects = objects

    def after_final(self, job: Job) -> None:
        if not job.state.is_final:
            return
        if job.type is JobType.ARCHIVE and job.state is JobState.COMPLETED:
            self._push_deferred(job)
        for dependent_id in job.dependents:
            if job.state is JobState.COMPLETED:
                self._release(job.facility_group_id, dependent_id)
            else:
                self.fail_held(job.facility_group_id, dependent_id, _dependent_reason(job))

    def route(self, fg: str, destination_id: str) -> tuple[Optional[Destination], Optional[Gateway]]:
        """The destination and its current gateway (None for whichever is gone)."""
        destination = self._config.get_destination(fg, destination_id)
        if destination is None:
            return None, None
        return destination, self._config.get_gateways(fg, [destination.gateway_id]).get(destination.gateway_id)

    def push_instances(self, base: Job, key: str, *, instances: Optional[Instances] = None, instances_uri: str = "",
                       instance_count: int = 0, storage_uri: str = "", study_uid: str = "", exam_id: str = "",
                       held_dependents: Sequence[str] = ()) -> Optional[Job]:
        """Create (once: the id derives from ``key``) and publish a DICOM job sending ``instances``
        (a list, or a function giving it, called only if the job is new) or the instance list
        already at ``instances_uri`` to ``base``'s destination, through its current gateway. The
        list is written to Cloud Storage before the job exists, so a job never names a missing
        list; a redelivery rewrites the same bytes."""
        fg = base.facility_group_id
        destination, gateway = self.route(fg, base.destination_id)
        if destination is None or gateway is None:
            logs.warning("instances not pushed: destination or gateway gone", job_id=base.id, facility_group_id=fg)
            return None
        exam = exam_id or base.exam_id
        jid = job_id(JobType.DICOM, fg, exam, destination.id, key)
        existing = self._jobs.get_job(fg, jid)
        if existing is not None:  # a redelivery: do not rewrite a list that may hold 50,000 entries
            self._publisher.ensure_published(existing, destination, gateway)
            return existing
        study = study_uid or base.study_instance_uid
        name = instance_lists.object_name(gateway.id, jid)
        written = instances is not None
        if instances is not None:
            items = instances() if callable(instances) else instances
            uri = self._objects.put(name, instance_lists.encode(study, items), "application/json")
            count = len(items)
        elif instance_lists.gateway_of(instances_uri) != gateway.id:  # readable only by its own gateway
            uri, count, written = self._objects.copy(instances_uri, name), instance_count, True
        else:
            uri, count = instances_uri, instance_count
        now = self._clock.now()
        job = Job(
            id=jid, facility_group_id=fg, type=JobType.DICOM, state=JobState.QUEUED, destination_id=destination.id,
            destination_name=destination.name, gateway_id=gateway.id, exam_id=exam, accession_number=base.accession_number,
            mrn=base.mrn, patient_name=base.patient_name, study_instance_uid=study, facility_id=base.facility_id,
            queued_at=now, deadline=self._policy.deadline_from_queued(now, destination.max_retries, destination.retry_timeout_seconds),
            max_retries=destination.max_retries, retry_timeout_seconds=destination.retry_timeout_seconds,
            publish_lease_until=now + self._publisher.lease, source_event_id=base.source_event_id,
            study_storage_uri=storage_uri or base.study_storage_uri, instances_uri=uri, instance_count=count,
            dependents=list(held_dependents))
        try:
            created = self._jobs.create_job(job)
        except PermanentError:
            if written and self._jobs.get_job(fg, jid) is None:
                self._objects.delete(uri)  # no job will ever name it: leave no orphan behind
            raise
        if created:
            metrics.job_created(job)
            self._publisher.publish(job, destination, gateway)
        else:
            latest = self._jobs.get_job(fg, jid)
            if latest is not None:
                self._publisher.ensure_published(latest, destination, gateway)
        return job

    def _push_deferred(self, job: Job) -> None:
        """One DICOM job per batch of deferrals (up to the contract's 50,000 instances, no instance
        twice). The set is frozen once the job COMPLETED (a deferral that sees COMPLETED pushes on
        its own), so a repeat builds the same batches and the same job ids."""
        deferrals = self._jobs.deferrals(job.facility_group_id, job.id)
        for batch in _batches(deferrals):
            digest = hashlib.sha256("\n".join(d.id for d in batch).encode()).hexdigest()[:32]
            key = f"deferred:{job.id}:{digest}"
            if len(batch) == 1:  # its list is already in the bucket: reuse it
                self.push_instances(job, key, instances_uri=batch[0].instances_uri, instance_count=batch[0].instance_count)
            else:
                self.push_instances(job, key, instances=lambda batch=batch: self._merged(batch))

    def _merged(self, batch: Sequence[Deferral]) -> list[dict]:
        lists = []
        for d in batch:
            try:
                lists.append(instance_lists.decode(self._objects.get(d.instances_uri))[1])
            except PermanentError as e:  # gone (retention) or corrupt: the others still go
                logs.error("deferred instance list unreadable", job_id=d.job_id, deferral_id=d.id, error=str(e),
                           facility_group_id=d.facility_group_id)
        return instance_lists.merge(lists)

    def _release(self, fg: str, dependent_id: str) -> None:
        job = self._jobs.get_job(fg, dependent_id)
        if job is None or job.state.is_final:
            return
        destination, gateway = self.route(fg, job.destination_id)
        if job.held:
            now = self._clock.now()
            # Released to the destination's current gateway, with copies of its objects under that
            # gateway's prefix (written before the job names them).
            moved = rehome(self._objects, job, gateway.id) if gateway is not None and gateway.id != job.gateway_id else {}

            def release(j: Job) -> Transition:
                if not j.held or j.state.is_final:
                    return Transition("ignored")
                return Transition("applied", dataclasses.replace(
                    j, held=False, publish_lease_until=now + self._publisher.lease, queued_at=now,
                    deadline=self._policy.deadline_from_queued(now, j.max_retries, j.retry_timeout_seconds), **moved))

            t = self._jobs.transact_job(fg, dependent_id, release)
            if t is not None and t.outcome == "applied":
                if destination is not None and gateway is not None:
                    self._publisher.publish(t.job, destination, gateway)
                return
            job = self._jobs.get_job(fg, dependent_id)
            if job is None or job.held or job.state.is_final:
                return
        if not job.published and destination is not None and gateway is not None and gateway.id == job.gateway_id:
            self._publisher.ensure_published(job, destination, gateway)

    def fail_held(self, fg: str, dependent_id: str, reason: str) -> bool:
        """Fail a job that waits for another (not yet sent); True if this call failed it."""
        now = self._clock.now()

        seen: list[Job] = []

        def fail(j: Job) -> Transition:
            seen.append(j)
            if j.state.is_final or not j.held:  # a released job is the gateway's now
                return Transition("ignored")
            return Transition("applied", dataclasses.replace(j, state=JobState.FAILED, held=False, completed_at=now,
                                                             **failure(j, reason)))

        t = self._jobs.transact_job(fg, dependent_id, fail)
        metrics.job_transition(seen[-1] if seen else None, t, now)
        if t is not None and t.outcome == "applied":
            logs.warning("held job failed", job_id=dependent_id, reason=reason, facility_group_id=fg)
            return True
        return False

    def check_held(self, job: Job) -> str:
        """The sweeper's look at a held job whose check time (its deadline) came: released if the
        job it waits for COMPLETED (a missed release), failed if that job is missing (never
        created: e.g. its destination or gateway went away before it was, or the event was
        dead-lettered half-way) or ended otherwise, else checked again after that job's deadline.
        Returns released | failed | waiting | ignored."""
        fg = job.facility_group_id
        waited = self._jobs.get_job(fg, job.waits_for) if job.waits_for else None
        if waited is not None and waited.state is JobState.COMPLETED:
            self._release(fg, job.id)
            return "released"
        if waited is None:
            reason = (f"Not sent: the job that stores the copies of the moved instances ({job.waits_for or 'none'}) "
                      "was never created (its destination or gateway may be gone), so the originals are not rejected.")
        elif waited.state.is_final:
            reason = _dependent_reason(waited)
        else:
            now = self._clock.now()
            next_check = max(waited.deadline, now) + HELD_CHECK_MARGIN

            def later(j: Job) -> Transition:
                if not j.held or j.state.is_final:
                    return Transition("ignored")
                return Transition("applied", dataclasses.replace(j, deadline=next_check))

            t = self._jobs.transact_job(fg, job.id, later)
            return "waiting" if t is not None and t.outcome == "applied" else "ignored"
        return "failed" if self.fail_held(fg, job.id, reason) else "ignored"


def _batches(deferrals: Sequence[Deferral]) -> list[list[Deferral]]:
    """Consecutive deferrals (id order) whose counts sum to at most the contract's maximum."""
    out: list[list[Deferral]] = []
    total = 0
    for d in deferrals:
        if not out or total + d.instance_count > instance_lists.MAX_INSTANCES:
            out.append([])
            total = 0
        out[-1].append(d)
        total += d.instance_count
    return out

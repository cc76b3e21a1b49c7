"""What a job's final state sets in motion (rule 5 and IHE IOCM ordering):

- an ARCHIVE job that COMPLETED pushes the instances added while it ran (a DICOM job), so no late
  image is missed (seed 000: "the system will push any new images to the archive once the
  initial job finishes");
- a job others wait for (copies of split/merged instances) releases them when it COMPLETED, and
  fails them otherwise: originals are rejected only once their copies are stored.

Runs after every final result, repeats included, so a crash between the result and its
follow-ups is mended by the gateway's retry or the sweeper; deterministic ids make it idempotent."""
from __future__ import annotations

import dataclasses
from datetime import datetime, timezone

from .. import logs
from ..domain.jobs import Transition
from ..domain.models import Job, JobState, JobType
from ..domain.rules import job_id
from ..ports import Clock
from .publisher import JobPublisher

# A held job's publish lease: far in the future, so the outbox sweep leaves it alone until released.
HELD_UNTIL = datetime(9999, 1, 1, tzinfo=timezone.utc)


class FollowUps:
    def __init__(self, config, jobs, publisher: JobPublisher, clock: Clock, policy):
        self._config, self._jobs, self._publisher, self._clock, self._policy = config, jobs, publisher, clock, policy

    def after_final(self, job: Job) -> None:
        if not job.state.is_final:
            return
        if job.type is JobType.ARCHIVE and job.state is JobState.COMPLETED and job.deferred_instances:
            self.push_instances(job, job.deferred_instances, f"deferred:{job.id}")
        for dependent_id in job.dependents:
            if job.state is JobState.COMPLETED:
                self._release(job.facility_group_id, dependent_id)
            else:
                self._fail_dependent(job, dependent_id)

    def push_instances(self, base: Job, instances: list, key: str, *, storage_uri: str = "", study_uid: str = "",
                       exam_id: str = "", held_dependents: tuple = ()) -> Job | None:
        """Create (once) and publish a DICOM job sending ``instances`` to ``base``'s destination."""
        destination = self._config.get_destination(base.facility_group_id, base.destination_id)
        gateway = self._config.get_gateways(base.facility_group_id, [base.gateway_id]).get(base.gateway_id)
        if destination is None or gateway is None:
            logs.warning("instances not pushed: destination or gateway gone", job_id=base.id,
                         facility_group_id=base.facility_group_id)
            return None
        now = self._clock.now()
        job = dataclasses.replace(
            base, id=job_id(JobType.DICOM, base.facility_group_id, exam_id or base.exam_id, base.destination_id, key),
            type=JobType.DICOM, state=JobState.QUEUED, exam_id=exam_id or base.exam_id,
            study_instance_uid=study_uid or base.study_instance_uid, study_storage_uri=storage_uri or base.study_storage_uri,
            instances=list(instances), queued_at=now, started_at=None, completed_at=None, failure_reason=None,
            attempt=1, lock_held=False, published=False, published_at=None, timed_out=False, counts={},
            max_retries=destination.max_retries, retry_timeout_seconds=destination.retry_timeout_seconds,
            deadline=self._policy.deadline_from_queued(now, destination.max_retries, destination.retry_timeout_seconds),
            publish_lease_until=now + self._publisher.lease, object_uri="", waits_for="", held=False,
            dependents=list(held_dependents), deferred_instances=[], trigger_status=None)
        if self._jobs.create_job(job):
            self._publisher.publish(job, destination, gateway)
        else:
            existing = self._jobs.get_job(job.facility_group_id, job.id)
            if existing is not None:
                self._publisher.ensure_published(existing, destination, gateway)
        return job

    def _release(self, fg: str, dependent_id: str) -> None:
        now = self._clock.now()

        def release(j: Job) -> Transition:
            if not j.held or j.state.is_final:
                return Transition("ignored")
            return Transition("applied", dataclasses.replace(
                j, held=False, publish_lease_until=now + self._publisher.lease, queued_at=now,
                deadline=self._policy.deadline_from_queued(now, j.max_retries, j.retry_timeout_seconds)))

        t = self._jobs.transact_job(fg, dependent_id, release)
        if t is None or t.outcome != "applied":
            job = self._jobs.get_job(fg, dependent_id)
            if job is None or job.held or job.published or job.state.is_final:
                return
        else:
            job = t.job
        destination = self._config.get_destination(fg, job.destination_id)
        gateway = self._config.get_gateways(fg, [job.gateway_id]).get(job.gateway_id)
        if destination is not None and gateway is not None:
            if t is not None and t.outcome == "applied":
                self._publisher.publish(job, destination, gateway)
            else:
                self._publisher.ensure_published(job, destination, gateway)

    def _fail_dependent(self, job: Job, dependent_id: str) -> None:
        now = self._clock.now()
        reason = (f"Not sent: the copies of the moved instances were not stored (job {job.id} ended "
                  f"{job.state.value}), so the originals are not rejected.")

        def fail(j: Job) -> Transition:
            if j.state.is_final:
                return Transition("ignored")
            return Transition("applied", dataclasses.replace(j, state=JobState.FAILED, held=False, completed_at=now,
                                                             failure_reason=reason))

        self._jobs.transact_job(job.facility_group_id, dependent_id, fail)


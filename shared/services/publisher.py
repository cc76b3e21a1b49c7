"""Publishing job messages so that a job and its message never diverge (issue 2, item 4).

The job document is the outbox: it is created with ``published=False`` and a short publish lease
held by its creator. Whoever holds the lease publishes, then marks the job published. If that
caller dies between the two, the lease runs out and the next delivery of the event (or the
sweeper) takes it over and publishes again. Concurrent deliveries never publish while another
holds the lease, so in the normal case there is exactly one message; after a crash there may be
two, which the gateway dedupes by (job_id, attempt) — at-least-once, never zero.
"""
from __future__ import annotations

import dataclasses
import time
from datetime import timedelta

from .. import logs, metrics
from ..domain.errors import PermanentError, TransientError
from ..domain.jobs import Transition, failure
from ..domain.messages import job_message
from ..domain.models import Destination, Gateway, Job, JobState
from ..ports import Clock, JobStore, MessageBus


class JobPublisher:
    def __init__(self, jobs: JobStore, bus: MessageBus, clock: Clock, lease_seconds: int = 60,
                 wait_seconds: float = 5.0, poll_seconds: float = 0.1):
        self._jobs = jobs
        self._bus = bus
        self._clock = clock
        self.lease = timedelta(seconds=lease_seconds)
        self._wait = wait_seconds
        self._poll = poll_seconds

    def publish(self, job: Job, destination: Destination, gateway: Gateway) -> None:
        """Publish a job whose lease the caller holds, then record it as published."""
        data, attributes = job_message(job, destination)
        try:
            self._bus.publish(gateway.topic_id, data, attributes)
        except PermanentError as e:
            # The gateway's topic is gone: the job can never be delivered. Fail it (and release
            # any lock) instead of retrying forever. No archive state: none came from a gateway.
            self._fail_undeliverable(job, str(e))
            return
        self._jobs.mark_published(job.facility_group_id, job.id, self._clock.now())
        logs.info("job published", job_id=job.id, job_type=job.type.value, attempt=job.attempt,
                  destination_id=destination.id, gateway_id=gateway.id, facility_group_id=job.facility_group_id)

    def ensure_published(self, job: Job, destination: Destination, gateway: Gateway) -> str:
        """For a job that already existed: return once it is published, publishing it ourselves
        if its lease ran out. Raise TransientError if another caller still holds the lease after
        the wait, so Pub/Sub redelivers and we look again."""
        give_up = time.monotonic() + self._wait
        while True:
            if job.published or job.state.is_final:
                return "exists"
            now = self._clock.now()
            if job.publish_lease_until is None or job.publish_lease_until <= now:
                claimed = self._jobs.claim_publish(job.facility_group_id, job.id, now, now + self.lease)
                if claimed is not None:
                    self.publish(claimed, destination, gateway)
                    return "republished"
            if time.monotonic() >= give_up:
                raise TransientError(f"job {job.id} is being published by another delivery")
            time.sleep(self._poll)
            latest = self._jobs.get_job(job.facility_group_id, job.id)
            if latest is None:
                raise TransientError(f"job {job.id} vanished while waiting for its publication")
            job = latest

    def _fail_undeliverable(self, job: Job, why: str) -> None:
        now = self._clock.now()

        seen: list[Job] = []

        def fail(current: Job) -> Transition:
            seen.append(current)
            if current.state.is_final:
                return Transition("ignored")
            return Transition("applied", dataclasses.replace(
                current, state=JobState.FAILED, completed_at=now, lock_held=False,
                **failure(current, f"Job could not be delivered to the gateway: {why}.")))

        t = self._jobs.transact_job(job.facility_group_id, job.id, fail)
        metrics.job_transition(seen[-1] if seen else None, t, now)
        logs.error("job undeliverable", job_id=job.id, reason=why, facility_group_id=job.facility_group_id)

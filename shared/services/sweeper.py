"""``sweep_jobs``: time out jobs without a final result (archive state UNKNOWN, lock released),
look at held jobs whose check time came (released, failed if what they wait for can never
complete, or checked again later: FollowUps.check_held), and publish any job whose message was
never sent (the outbox's safety net)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from .. import logs
from ..domain.errors import ArchSyncError
from ..domain.jobs import time_out
from ..ports import Clock, ConfigStore, JobStore
from .publisher import JobPublisher


@dataclass
class SweepReport:
    timed_out: list[str] = field(default_factory=list)
    held_failed: list[str] = field(default_factory=list)  # held jobs whose awaited job can never complete
    republished: list[str] = field(default_factory=list)
    gateways_finished: list[str] = field(default_factory=list)  # abandoned provisioning/deletions
    errors: int = 0


class SweepService:
    def __init__(self, config: ConfigStore, jobs: JobStore, publisher: JobPublisher, clock: Clock, batch_size: int = 200,
                 provisioner: Optional[Any] = None, followups: Optional[Any] = None):
        self._provisioner, self._followups = provisioner, followups
        self._config = config
        self._jobs = jobs
        self._publisher = publisher
        self._clock = clock
        self._batch = batch_size

    def run(self) -> SweepReport:
        report = SweepReport()
        now = self._clock.now()
        for job in self._jobs.expired_jobs(now, self._batch):
            if job.held:  # its deadline is when to look at the job it waits for, not a timeout
                if self._followups is not None and self._followups.check_held(job) == "failed":
                    report.held_failed.append(job.id)
                continue
            t = self._jobs.transact_job(job.facility_group_id, job.id, lambda j: time_out(j, now=self._clock.now()))
            if t is not None and t.outcome == "applied":
                report.timed_out.append(job.id)
                if self._followups is not None and t.job.dependents:
                    self._followups.after_final(t.job)  # what waited for it fails
                logs.warning("job timed out", job_id=job.id, lock_released=t.lock_released, facility_group_id=job.facility_group_id)
        for job in self._jobs.unpublished_jobs(now, self._batch):
            try:
                if self._republish(job):
                    report.republished.append(job.id)
            except ArchSyncError as e:  # one bad job must not stop the sweep of the others
                report.errors += 1
                logs.error("republish failed", job_id=job.id, error=str(e), facility_group_id=job.facility_group_id)
        if self._provisioner is not None:
            report.gateways_finished = self._provisioner.finish_stale()
        return report

    def _republish(self, job) -> bool:
        destination = self._config.get_destination(job.facility_group_id, job.destination_id)
        gateway = self._config.get_gateways(job.facility_group_id, [job.gateway_id]).get(job.gateway_id)
        if destination is None or gateway is None:
            logs.error("cannot republish: destination or gateway gone", job_id=job.id, facility_group_id=job.facility_group_id)
            return False
        return self._publisher.ensure_published(job, destination, gateway) == "republished"

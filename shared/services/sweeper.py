"""``sweep_jobs``: time out jobs without a final result (archive state UNKNOWN, lock released),
look at held jobs whose check time came (released, failed if what they wait for can never
complete, or checked again later: FollowUps.check_held), and publish any job whose message was
never sent (the outbox's safety net)."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Optional

from .. import logs, metrics
from ..domain.errors import ArchSyncError
from ..domain.jobs import Transition, time_out
from ..domain.models import Job
from ..ports import Clock, ConfigStore, HealthStore, JobStore
from .publisher import JobPublisher


@dataclass
class SweepReport:
    timed_out: list[str] = field(default_factory=list)
    held_failed: list[str] = field(default_factory=list)  # held jobs whose awaited job can never complete
    republished: list[str] = field(default_factory=list)
    gateways_finished: list[str] = field(default_factory=list)  # abandoned provisioning/deletions
    silent_gateways: list[str] = field(default_factory=list)  # "<fg>/<gateway>": silent with queued jobs
    overdue_locks: list[str] = field(default_factory=list)  # jobs holding an order lock too long
    errors: int = 0


class SweepService:
    def __init__(self, config: ConfigStore, jobs: JobStore, publisher: JobPublisher, clock: Clock, batch_size: int = 200,
                 provisioner: Optional[Any] = None, followups: Optional[Any] = None, health: Optional[HealthStore] = None,
                 gateway_silent_seconds: int = 900, lock_overdue_seconds: int = 7200, monitor_scan_limit: int = 1000):
        """``health``: with it, each sweep also reports (metric log records, infra/monitoring.tf)
        the gateways silent for more than ``gateway_silent_seconds`` while published jobs have
        waited for them as long, and the order locks held for more than ``lock_overdue_seconds``."""
        self._provisioner, self._followups = provisioner, followups
        self._health, self._silent, self._lock_limit = health, gateway_silent_seconds, lock_overdue_seconds
        self._scan = monitor_scan_limit
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
            seen: list[Job] = []

            def decide(j: Job) -> Transition:
                seen.append(j)
                return time_out(j, now=self._clock.now())

            t = self._jobs.transact_job(job.facility_group_id, job.id, decide)
            metrics.job_transition(seen[-1] if seen else None, t, now)
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
        if self._health is not None:
            try:
                report.silent_gateways = self._silent_gateways(now)
                report.overdue_locks = self._overdue_locks(now)
            except ArchSyncError as e:  # monitoring must not fail the sweep's real work
                report.errors += 1
                logs.error("monitoring sweep failed", error=str(e))
        return report

    def _silent_gateways(self, now: datetime) -> list[str]:
        """One record per gateway that has had no contact for the "silent" threshold while at least
        one of its published jobs has been QUEUED (not taken) as long (metrics.gateway_silent).
        Reads the oldest such jobs, at most ``monitor_scan_limit`` of them: a long outage of one
        gateway with more queued jobs than that hides another's until its jobs time out
        (docs/operations.md)."""
        cutoff = now - timedelta(seconds=self._silent)
        oldest: dict[tuple[str, str], datetime] = {}
        for job in self._health.stale_queued_jobs(cutoff, self._scan):
            key = (job.facility_group_id, job.gateway_id)
            oldest[key] = min(oldest.get(key, job.queued_at), job.queued_at)
        health = self._health.gateway_health(list(oldest))
        silent = []
        for (fg, gw), queued_at in sorted(oldest.items()):
            h = health.get((fg, gw))
            last = h.last_contact_at if h is not None else None
            if last is None or last <= cutoff:
                metrics.gateway_silent(fg, gw, last, queued_at, now)
                silent.append(f"{fg}/{gw}")
        return silent

    def _overdue_locks(self, now: datetime) -> list[str]:
        """One record per job holding its exam's order lock for more than ``lock_overdue_seconds``
        (seed 000: the lock blocks edits, sharing and reporting of the exam)."""
        jobs = self._health.overdue_locks(now - timedelta(seconds=self._lock_limit), self._batch)
        for job in jobs:
            metrics.lock_overdue(job, now)
        return [j.id for j in jobs]

    def _republish(self, job) -> bool:
        destination = self._config.get_destination(job.facility_group_id, job.destination_id)
        gateway = self._config.get_gateways(job.facility_group_id, [job.gateway_id]).get(job.gateway_id)
        if destination is None or gateway is None:
            logs.error("cannot republish: destination or gateway gone", job_id=job.id, facility_group_id=job.facility_group_id)
            return False
        return self._publisher.ensure_published(job, destination, gateway) == "republished"

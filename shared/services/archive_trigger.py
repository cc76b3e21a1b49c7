"""``on_exam_status_changed``: create the ARCHIVE job of each destination the event triggers and
hand it to that destination's gateway (rule 1 and 3 of ARCHITECTURE.md)."""
from __future__ import annotations

from dataclasses import dataclass

from .. import logs, metrics
from ..domain.errors import ArchSyncError, PermanentError, TransientError
from ..domain.models import LOCKING_TRIGGERS, Destination, ExamStatus, ExamStatusChanged, Gateway, Job, JobState, JobType
from ..domain.rules import TimeoutPolicy, archive_job_id, decide, gateway_ids_to_read
from ..domain.validation import retry_settings_problems
from ..ports import Clock, ConfigStore, JobStore
from .publisher import JobPublisher


@dataclass(frozen=True)
class ArchiveOutcome:
    destination_id: str
    job_id: str
    outcome: str  # created | exists | republished


class ArchiveTriggerService:
    def __init__(self, config: ConfigStore, jobs: JobStore, publisher: JobPublisher, clock: Clock, policy: TimeoutPolicy):
        self._config = config
        self._jobs = jobs
        self._publisher = publisher
        self._clock = clock
        self._policy = policy

    def handle(self, event: ExamStatusChanged) -> list[ArchiveOutcome]:
        self._jobs.record_exam(event.facility_group_id, {
            "exam_id": event.exam_id, "study_instance_uid": event.study_instance_uid, "facility_id": event.facility_id,
            "accession_number": event.accession_number, "mrn": event.patient.mrn, "patient_name": event.patient.name})
        if event.status not in ExamStatus.__members__:
            return []  # statuses other than Pending/Inflight/Completed trigger nothing
        destinations = self._config.archiving_destinations(event.facility_group_id, event.status)
        gateways = self._config.get_gateways(event.facility_group_id, gateway_ids_to_read(event, destinations))
        outcomes: list[ArchiveOutcome] = []
        transient: list[str] = []
        permanent: list[str] = []
        # Each destination's job is computed on its own (issue 11 item 4): one destination's bad
        # configuration or failing gateway topic never stops another destination's job.
        for destination in destinations:
            try:
                decision = decide(event, destination, gateways.get(destination.gateway_id), gateways)
                if not decision.archive:
                    logs.info("destination not triggered", event_id=event.event_id, destination_id=destination.id,
                              why=decision.reason, facility_group_id=event.facility_group_id)
                    continue
                outcomes.append(self._ensure_job(event, destination, decision.gateway, decision.trigger_status))
            except TransientError as e:
                logs.warning("archive job not settled for this destination; the event will be redelivered",
                             event_id=event.event_id, destination_id=destination.id, why=str(e),
                             facility_group_id=event.facility_group_id)
                transient.append(destination.id)
            except Exception as e:  # any other failure stays with its destination
                why = str(e) if isinstance(e, ArchSyncError) else type(e).__name__
                logs.error("no archive job for this destination", event_id=event.event_id, destination_id=destination.id,
                           why=why, facility_group_id=event.facility_group_id)
                permanent.append(f"{destination.id} ({why})")
        if transient:
            # Redelivery is safe: jobs already created are found by their deterministic ids.
            raise TransientError("archive jobs pending for destinations " + ", ".join(transient))
        if permanent:
            # Dead-lettered with the destination ids (never values): after the configuration is
            # fixed, replaying the event creates only the missing jobs.
            raise PermanentError("no archive job for destinations " + "; ".join(permanent))
        return outcomes

    def _ensure_job(self, event: ExamStatusChanged, destination: Destination, gateway: Gateway,
                   trigger: ExamStatus) -> ArchiveOutcome:
        problems = retry_settings_problems(destination.max_retries, destination.retry_timeout_seconds)
        if problems:  # stored before the bounds existed (issue 11 item 4): refuse it, by name, not by value
            raise PermanentError("stored retry settings out of range (" + ", ".join(sorted(problems))
                                 + "); edit the destination")
        now = self._clock.now()
        job = Job(
            id=archive_job_id(event.facility_group_id, event.exam_id, destination.id),
            facility_group_id=event.facility_group_id,
            type=JobType.ARCHIVE,
            state=JobState.QUEUED,
            destination_id=destination.id,
            destination_name=destination.name,
            gateway_id=gateway.id,
            exam_id=event.exam_id,
            accession_number=event.accession_number,
            mrn=event.patient.mrn,
            patient_name=event.patient.name,
            study_instance_uid=event.study_instance_uid,
            study_storage_uri=event.study_storage_uri,
            facility_id=event.facility_id,
            queued_at=now,
            deadline=self._policy.deadline_from_queued(now, destination.max_retries, destination.retry_timeout_seconds),
            max_retries=destination.max_retries,
            retry_timeout_seconds=destination.retry_timeout_seconds,
            trigger_status=trigger.value,
            # Seed 000: archiving at Pending or Inflight locks the order until the job ends.
            lock_held=trigger in LOCKING_TRIGGERS,
            publish_lease_until=now + self._publisher.lease,
            source_event_id=event.event_id,
        )
        if self._jobs.create_job(job):
            metrics.job_created(job)
            logs.info("archive job queued", job_id=job.id, event_id=event.event_id, destination_id=destination.id,
                      lock=job.lock_held, facility_group_id=job.facility_group_id)
            self._publisher.publish(job, destination, gateway)
            return ArchiveOutcome(destination.id, job.id, "created")
        existing = self._jobs.get_job(job.facility_group_id, job.id)
        if existing is None:  # deleted between create() and get(): let Pub/Sub redeliver
            raise TransientError(f"job {job.id} disappeared")
        return ArchiveOutcome(destination.id, job.id, self._publisher.ensure_published(existing, destination, gateway))

"""``on_study_changed``: keep archives right after a study changed (rule 5; seed 000 "How IOCM
Works"; IHE IOCM as summarised in ../shared/IOCM_HL7_DIGEST.md Part A).

Per destination, independently:
- deletions (instances or series): a rejection note, only if the destination is active, supports
  IOCM and the exam's archive state there is ARCHIVED (seed 000 "IOCM Suppression Rules");
- split/merge: where the original was ARCHIVED, the moved instances' copies (new UIDs, target
  study) are pushed first; the rejection note for the originals (IOCM-capable destinations only)
  is held until that push completed, and failed if it did not (digest A5);
- added instances: pushed where the exam is ARCHIVED (a plain store: no IOCM support needed); if
  the archive job is still running, or timed out (UNKNOWN: its late result may still come), they
  are deferred on it and pushed when it completes (FollowUps).

Instance lists never enter a job document or message (issue 11 item 3): a DICOM job's list is an
instance-list.v1 object in Cloud Storage under the gateway's prefix, an IOCM job's list is its
rejection note; the job holds the URI and a count. Objects are written before the job that names
them, under names derived from the job's deterministic id."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional

from .. import logs, metrics
from ..domain import instance_lists
from ..domain.errors import MalformedInput, PermanentError
from ..domain.jobs import accepts_deferrals
from ..domain.models import (
    ArchiveStateValue,
    Deferral,
    Destination,
    Gateway,
    Job,
    JobState,
    JobType,
    StudyChange,
    StudyChanged,
)
from ..domain.rules import TimeoutPolicy, archive_job_id, job_id
from ..ports import Clock, ObjectStore
from .followups import HELD_UNTIL, FollowUps
from .publisher import JobPublisher

DELETIONS = (StudyChange.INSTANCES_DELETED, StudyChange.SERIES_DELETED)
MOVES = (StudyChange.STUDY_SPLIT, StudyChange.STUDY_MERGED)


@dataclass(frozen=True)
class StudyOutcome:
    destination_id: str
    action: str  # rejection_note | push | push_then_rejection_note | deferred | skipped
    reason: str = ""
    job_ids: tuple[str, ...] = ()


class StudyChangeService:
    def __init__(self, config: Any, jobs: Any, publisher: JobPublisher, followups: FollowUps, objects: ObjectStore,
                 clock: Clock, policy: TimeoutPolicy):
        self._config, self._jobs, self._publisher, self._followups = config, jobs, publisher, followups
        self._objects, self._clock, self._policy = objects, clock, policy

    def handle(self, event: StudyChanged) -> list[StudyOutcome]:
        fg = event.facility_group_id
        exam = self._jobs.get_exam(fg, event.exam_id)
        if exam is None:
            raise MalformedInput("study-changed.v1: unknown exam")
        if exam.get("study_instance_uid") != event.study_instance_uid:
            raise MalformedInput("study-changed.v1: the study is not the exam's study")
        states = {a.destination_id: a.state for a in self._jobs.archive_states(fg, event.exam_id)}
        destinations = self._config.list_destinations(fg)
        gateways = self._config.get_gateways(fg, [d.gateway_id for d in destinations])
        note: Optional[bytes] = None
        outcomes = []
        for d in destinations:
            gw = gateways.get(d.gateway_id)
            why = self._unreachable(d, gw)
            archived = states.get(d.id) is ArchiveStateValue.ARCHIVED
            if why is None and not archived and event.change is not StudyChange.INSTANCES_ADDED:
                why = f"archive state {states[d.id].value}" if d.id in states else "never archived here"
            if why is None and event.change in DELETIONS and not d.support_iocm:
                why = "destination does not support IOCM"
            if why is not None:
                outcomes.append(StudyOutcome(d.id, "skipped", why))
                logs.info("study change not sent", event_id=event.event_id, destination_id=d.id, why=why, facility_group_id=fg)
                continue
            template = self._template(event, exam, d, gw)
            if event.change is StudyChange.INSTANCES_ADDED:
                outcomes.append(self._added(event, template, archived))
            elif event.change in DELETIONS:
                note = note or self._note(event)
                outcomes.append(StudyOutcome(d.id, "rejection_note", "", (self._rejection_job(event, template, d, gw, note).id,)))
            else:
                if d.support_iocm and note is None:
                    note = self._note(event)
                outcomes.append(self._moved(event, template, d, gw, note if d.support_iocm else None))
        return outcomes

    # -- per change ----------------------------------------------------------------------
    @staticmethod
    def _unreachable(d: Destination, gw: Optional[Gateway]) -> Optional[str]:
        if not d.active:
            return "destination inactive"
        if gw is None or not gw.active or gw.provisioning_state != "READY":
            return "gateway inactive"
        return None

    def _added(self, event: StudyChanged, template: Job, archived: bool) -> StudyOutcome:
        instances = [i.as_dict() for i in event.instances]
        d_id = template.destination_id
        if archived:
            return self._pushed(d_id, self._followups.push_instances(template, event.event_id, instances=instances))
        # Not archived (yet): if its archive job runs, or timed out and may still complete, the
        # images wait for its outcome (rule 5; issue 11 item 11).
        fg, archive_id = event.facility_group_id, archive_job_id(event.facility_group_id, event.exam_id, d_id)
        archive = self._jobs.get_job(fg, archive_id)
        if archive is None:
            return StudyOutcome(d_id, "skipped", "never archived here")
        if archive.state is not JobState.COMPLETED and not accepts_deferrals(archive):
            return StudyOutcome(d_id, "skipped", "archive job failed: retrying it sends the whole study")
        # The list goes to the bucket first, named like the push job it becomes if sent alone.
        push_id = job_id(JobType.DICOM, fg, event.exam_id, d_id, event.event_id)
        uri = self._objects.put(instance_lists.object_name(template.gateway_id, push_id),
                                instance_lists.encode(event.study_instance_uid, instances), "application/json")
        deferral = Deferral(event.event_id, fg, archive_id, uri, len(instances), self._clock.now())
        t = self._jobs.defer(fg, archive_id, deferral, accepts_deferrals)
        if t is None:
            return StudyOutcome(d_id, "skipped", "never archived here")
        job, deferred = t
        if deferred:
            return StudyOutcome(d_id, "deferred", "archive job running" if not job.state.is_final else
                                "archive job timed out: waiting for its late result", (archive_id,))
        if job.state is JobState.COMPLETED:  # finished in the meantime: the exam is archived there now
            return self._pushed(d_id, self._followups.push_instances(template, event.event_id, instances_uri=uri,
                                                                     instance_count=len(instances)))
        # The list is left to the bucket's retention rule: a concurrent redelivery may still use it.
        return StudyOutcome(d_id, "skipped", "archive job failed: retrying it sends the whole study")

    @staticmethod
    def _pushed(destination_id: str, job: Optional[Job]) -> StudyOutcome:
        return StudyOutcome(destination_id, "push", "", (job.id,) if job else ())

    def _moved(self, event: StudyChanged, template: Job, d: Destination, gw: Gateway, note: Optional[bytes]) -> StudyOutcome:
        target = event.target
        copy_id = job_id(JobType.DICOM, event.facility_group_id, target.exam_id, d.id, event.event_id)
        dependents: tuple[str, ...] = ()
        if note is not None:  # the held note exists before the push that releases it
            dependents = (self._rejection_job(event, template, d, gw, note, waits_for=copy_id).id,)
        copy = self._followups.push_instances(template, event.event_id, instances=[i.as_dict() for i in target.instances],
                                              storage_uri=target.storage_uri, study_uid=target.study_instance_uid,
                                              exam_id=target.exam_id, held_dependents=dependents)
        if copy is None:  # destination or gateway went away meanwhile: the note can never be released
            for dependent in dependents:
                self._followups.fail_held(event.facility_group_id, dependent, (
                    "Not sent: the copies of the moved instances could not be queued (destination or gateway gone), "
                    "so the originals are not rejected."))
        return StudyOutcome(d.id, "push_then_rejection_note" if dependents else "push", "",
                            tuple(x for x in ((copy.id if copy else None), *dependents) if x))

    # -- rejection notes -----------------------------------------------------------------
    def _note(self, event: StudyChanged) -> bytes:
        from ..iocm.kos import PatientInfo, RejectionReason, StudyInfo, build_rejection_note, to_part10_bytes
        from pydicom.uid import generate_uid

        default = "WRONG_WORKLIST" if event.change in MOVES else "QUALITY"
        reason = RejectionReason[event.rejection_reason or default]
        p, s = event.patient, event.study
        # Deterministic UIDs: a redelivered event rebuilds a byte-identical note, which archives
        # ignore as a duplicate instead of refusing it (digest A4, dcm4chee 0xA770).
        seed = [event.facility_group_id, event.event_id, event.study_instance_uid]
        ds = build_rejection_note(
            PatientInfo(p["patient_id"], p.get("name", ""), p.get("issuer", ""), p.get("issuer_oid", ""),
                        p.get("birth_date", ""), p.get("sex", "")),
            StudyInfo(s["study_instance_uid"], s.get("accession_number", ""), s.get("study_date", ""), s.get("study_time", ""),
                      s.get("study_id", ""), s.get("referring_physician_name", "")),
            list(event.instances),
            reason, now=event.event_time,
            sop_instance_uid=generate_uid(entropy_srcs=seed + ["sop"]),
            series_instance_uid=generate_uid(entropy_srcs=seed + ["series"]))
        return to_part10_bytes(ds)

    def _rejection_job(self, event: StudyChanged, template: Job, d: Destination, gw: Gateway, note: bytes,
                       waits_for: str = "") -> Job:
        fg = event.facility_group_id
        jid = job_id(JobType.IOCM, fg, event.exam_id, d.id, event.event_id)
        uri = self._objects.put(f"gateways/{gw.id}/iocm/{jid}.dcm", note, "application/dicom")
        now = self._clock.now()
        # The note is the list of rejected instances: the job holds its URI and a count only.
        job = dataclasses.replace(
            template, id=jid, type=JobType.IOCM, object_uri=uri, instance_count=len(event.instances),
            held=bool(waits_for), waits_for=waits_for,
            # A held job is not published by the outbox sweep until released; its deadline is when
            # the sweeper checks the job it waits for (FollowUps.check_held), never a timeout.
            publish_lease_until=HELD_UNTIL if waits_for else now + self._publisher.lease)
        try:
            created = self._jobs.create_job(job)
        except PermanentError:
            if self._jobs.get_job(fg, jid) is None:
                self._objects.delete(uri)  # no job will ever name it: leave no orphan note behind
            raise
        if created:
            metrics.job_created(job)
            if not waits_for:
                self._publisher.publish(job, d, gw)
        else:
            existing = self._jobs.get_job(fg, jid)
            if existing is not None and not existing.held:
                self._publisher.ensure_published(existing, d, gw)
        logs.info("rejection note queued", job_id=jid, destination_id=d.id, waits_for=waits_for, facility_group_id=fg)
        return job

    def _template(self, event: StudyChanged, exam: dict, d: Destination, gw: Gateway) -> Job:
        now = self._clock.now()
        return Job(
            id="", facility_group_id=event.facility_group_id, type=JobType.DICOM, state=JobState.QUEUED,
            destination_id=d.id, destination_name=d.name, gateway_id=gw.id, exam_id=event.exam_id,
            accession_number=exam.get("accession_number", ""), mrn=exam.get("mrn", ""),
            patient_name=exam.get("patient_name", ""), study_instance_uid=event.study_instance_uid,
            study_storage_uri=event.study.get("storage_uri", ""), facility_id=exam.get("facility_id", event.facility_id),
            queued_at=now, deadline=self._policy.deadline_from_queued(now, d.max_retries, d.retry_timeout_seconds),
            max_retries=d.max_retries, retry_timeout_seconds=d.retry_timeout_seconds, source_event_id=event.event_id)

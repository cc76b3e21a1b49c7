"""Domain models (seed 000 and ../shared/ARCHITECTURE.md "Domain"), all scoped to a facility group."""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Optional


class ExamStatus(str, enum.Enum):
    """Exam statuses that can trigger auto archive (seed 000 "Select the trigger status")."""

    PENDING = "PENDING"
    INFLIGHT = "INFLIGHT"
    COMPLETED = "COMPLETED"

    @property
    def label(self) -> str:
        return self.value.capitalize()


# Seed 000 "Important - Recommended Auto Archive Status": archiving triggered at Pending or
# Inflight locks the order for the duration of the job.
LOCKING_TRIGGERS = frozenset({ExamStatus.PENDING, ExamStatus.INFLIGHT})

LOCK_MESSAGE = "Archiving in progress — edits are not permitted until the archive job is complete."
# What the lock blocks (seed 000): reported with the lock status so the platform need not hard-code it.
LOCKED_ACTIONS = ("DICOM_SEND", "EXAM_SHARING", "REPORTING_AND_DICTATION", "METADATA_CHANGES")


class JobType(str, enum.Enum):
    ARCHIVE = "ARCHIVE"
    DICOM = "DICOM"
    IOCM = "IOCM"
    KOS = "KOS"
    ADT = "ADT"


class JobState(str, enum.Enum):
    QUEUED = "QUEUED"
    IN_PROGRESS = "IN_PROGRESS"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"

    @property
    def rank(self) -> int:
        """Position in the one-way order QUEUED < IN_PROGRESS < final (rule 4: never backwards)."""
        return {"QUEUED": 0, "IN_PROGRESS": 1}.get(self.value, 2)

    @property
    def is_final(self) -> bool:
        return self.rank == 2


OPEN_JOB_STATES = (JobState.QUEUED, JobState.IN_PROGRESS)


class ArchiveStateValue(str, enum.Enum):
    """Seed 000 "Archive States". No record at all means NOT ARCHIVED."""

    ARCHIVED = "ARCHIVED"
    FAILED = "FAILED"
    UNKNOWN = "UNKNOWN"


NOT_ARCHIVED = "NOT_ARCHIVED"


@dataclass(frozen=True)
class FacilityGroup:
    """Platform master data, received through contract facility-changed.v1 (docs/facilities.md)."""

    id: str
    name: str
    version: int = 0  # the platform's version of this state; only a higher one replaces it
    removed: bool = False  # a tombstone: removed at the platform
    updated_at: Optional[datetime] = None  # event_time of the event that set this state


@dataclass(frozen=True)
class Facility:
    """Platform master data, received through contract facility-changed.v1 (docs/facilities.md)."""

    id: str
    facility_group_id: str
    name: str
    send_adt: bool = False
    version: int = 0
    removed: bool = False
    updated_at: Optional[datetime] = None


@dataclass(frozen=True)
class GatewayInterval:
    """A gateway's eligibility-relevant settings from ``since`` until the next interval."""

    since: datetime
    active: bool
    facility_ids: tuple[str, ...]  # empty = every facility of the group


@dataclass(frozen=True)
class DestinationInterval:
    """A destination's eligibility-relevant settings from ``since`` until the next interval: an exam
    that first reached a status at instant T is judged by the interval in effect at T (rule 1)."""

    since: datetime
    active: bool
    auto_archive: bool
    trigger_status: Optional[ExamStatus]
    gateway_id: str
    facility_ids: tuple[str, ...]  # empty = every facility its gateway served at that instant


@dataclass(frozen=True)
class Gateway:
    id: str
    facility_group_id: str
    name: str
    topic_id: str
    subscription_id: str
    description: str = ""
    facility_ids: tuple[str, ...] = ()  # empty = every facility of the group (seed 000 Step 1)
    active: bool = True
    service_account_email: str = ""
    service_account_key_id: str = ""  # resource name of the current JSON key (not secret)
    provisioning_state: str = "READY"
    created_by: str = ""
    created_at: Optional[datetime] = None
    updated_by: str = ""
    updated_at: Optional[datetime] = None
    # Since when it was active and which facilities it served (issue 11 item 6; shared/domain/history.py).
    history: tuple["GatewayInterval", ...] = ()

    def serves(self, facility_id: str) -> bool:
        return not self.facility_ids or facility_id in self.facility_ids


@dataclass(frozen=True)
class Destination:
    id: str
    facility_group_id: str
    name: str
    host: str
    port: int
    called_ae_title: str
    calling_ae_title: str
    gateway_id: str
    type: str = "DICOM_SCP"
    moving_ae_title: Optional[str] = None
    facility_ids: tuple[str, ...] = ()  # empty = every facility the gateway serves
    max_retries: int = 3
    retry_timeout_seconds: int = 10
    transfer_syntax_uid: Optional[str] = None
    excluded_sop_class_uids: tuple[str, ...] = ()
    auto_archive: bool = False
    trigger_status: Optional[ExamStatus] = None
    # When auto archive was last switched on with the current trigger status (shown for
    # information; the rule uses ``history``, which also records activation and scope changes).
    auto_archive_since: Optional[datetime] = None
    support_iocm: bool = False
    allow_prefetch: bool = False
    # Beyond the seeds (issue 6): request Storage Commitment (PS3.4 Annex J) after sending.
    storage_commitment: bool = False
    active: bool = True
    # Optional HL7 v2 (MLLP) endpoint of the archive, for ADT A08/A40 (issue 4; seed 001).
    hl7_host: Optional[str] = None
    hl7_port: Optional[int] = None
    hl7_receiving_application: str = ""
    hl7_receiving_facility: str = ""
    created_by: str = ""
    created_at: Optional[datetime] = None
    updated_by: str = ""
    updated_at: Optional[datetime] = None
    # The instants that decide "no retroactive archiving" (issue 11 item 6; shared/domain/history.py).
    history: tuple["DestinationInterval", ...] = ()

    @property
    def archive_text(self) -> str:
        """The Destinations table "Archive" column (seed 000 "Destinations Table Reference")."""
        if self.auto_archive and self.trigger_status is not None:
            return f"Yes ({self.trigger_status.label})"
        return "No"


@dataclass(frozen=True)
class Patient:
    mrn: str
    name: str = ""


@dataclass(frozen=True)
class ExamStatusChanged:
    """Inbound platform event, contract ``exam-status-changed.v1.schema.json``."""

    event_id: str
    event_time: datetime
    facility_group_id: str
    facility_id: str
    exam_id: str
    accession_number: str
    status: str
    status_first_reached_at: datetime
    study_instance_uid: str
    patient: Patient
    study_storage_uri: str = ""
    previous_status: Optional[str] = None


@dataclass
class Job:
    id: str
    facility_group_id: str
    type: JobType
    state: JobState
    destination_id: str
    destination_name: str
    gateway_id: str
    exam_id: str
    accession_number: str
    mrn: str
    patient_name: str
    study_instance_uid: str
    facility_id: str
    queued_at: datetime
    deadline: datetime
    attempt: int = 1
    # The destination's retry policy when the job was (re)queued: sent to the gateway and used for
    # the timeout window, so later edits of the destination do not change a running job.
    max_retries: int = 3
    retry_timeout_seconds: int = 10
    started_at: Optional[datetime] = None
    completed_at: Optional[datetime] = None
    failure_reason: Optional[str] = None
    trigger_status: Optional[str] = None
    lock_held: bool = False
    published: bool = False
    published_at: Optional[datetime] = None
    publish_lease_until: Optional[datetime] = None
    timed_out: bool = False
    counts: dict = field(default_factory=dict)
    source_event_id: str = ""
    study_storage_uri: str = ""
    # DICOM jobs: the instances to send, as a JSON object (contract instance-list.v1) in Cloud
    # Storage under the gateway's own prefix, never inline: a study change may name 50,000
    # instances and a Firestore document holds 1 MiB (issue 11 item 3; docs/iocm-hl7.md).
    instances_uri: str = ""
    # How many instances the job is about: DICOM, the list at instances_uri; IOCM, the note's references.
    instance_count: int = 0
    # IOCM jobs: the generated rejection note (gs:// URI under the gateway's own prefix).
    object_uri: str = ""
    # Ordering (IHE IOCM: store the copies before rejecting the originals): a held job is published
    # only when the job it waits for completes, and fails if that one fails.
    waits_for: str = ""
    held: bool = False
    dependents: list = field(default_factory=list)
    # ADT jobs: {"host", "port", "message" (ER7), "control_id"}.
    hl7: dict = field(default_factory=dict)
    # Every distinct failure reason of this job's attempts, oldest first, bounded
    # ({"reason", "attempts"}; shared/domain/jobs.py record_failure): a manual retry keeps them.
    failure_history: list = field(default_factory=list)


@dataclass(frozen=True)
class Deferral:
    """Instances added while an ARCHIVE job was open or timed out (rule 5; seed 000: "Images will
    not be missed"): one record per study-changed event beside the job (never in its document: a
    burst of late images would make it large and hot), pushed by a DICOM job once it COMPLETED."""

    id: str  # the study-changed event id
    facility_group_id: str
    job_id: str  # the ARCHIVE job
    instances_uri: str  # instance-list.v1 object under the gateway's prefix
    instance_count: int
    created_at: datetime


@dataclass(frozen=True)
class InstanceRef:
    series_instance_uid: str
    sop_class_uid: str
    sop_instance_uid: str

    def as_dict(self) -> dict:
        return {"series_instance_uid": self.series_instance_uid, "sop_class_uid": self.sop_class_uid,
                "sop_instance_uid": self.sop_instance_uid}


class StudyChange(str, enum.Enum):
    INSTANCES_DELETED = "INSTANCES_DELETED"
    SERIES_DELETED = "SERIES_DELETED"
    STUDY_SPLIT = "STUDY_SPLIT"
    STUDY_MERGED = "STUDY_MERGED"
    INSTANCES_ADDED = "INSTANCES_ADDED"


@dataclass(frozen=True)
class StudyTarget:
    """Where moved instances went (split/merge): the target exam and the copies' new UIDs."""

    exam_id: str
    study_instance_uid: str
    storage_uri: str
    instances: tuple[InstanceRef, ...]


@dataclass(frozen=True)
class StudyChanged:
    """Inbound platform event, contract ``study-changed.v1.schema.json``."""

    event_id: str
    event_time: datetime
    facility_group_id: str
    facility_id: str
    change: StudyChange
    exam_id: str
    study_instance_uid: str
    instances: tuple[InstanceRef, ...]
    patient: dict
    study: dict
    rejection_reason: Optional[str] = None
    target: Optional[StudyTarget] = None


@dataclass(frozen=True)
class ArchiveState:
    facility_group_id: str
    exam_id: str
    destination_id: str
    state: ArchiveStateValue
    job_id: str
    updated_at: datetime


@dataclass(frozen=True)
class LockHolder:
    job_id: str
    destination_id: str
    destination_name: str
    trigger_status: Optional[str]
    state: JobState
    queued_at: datetime


@dataclass(frozen=True)
class LockStatus:
    facility_group_id: str
    exam_id: str
    holders: tuple[LockHolder, ...]

    @property
    def locked(self) -> bool:
        return bool(self.holders)

    @property
    def message(self) -> Optional[str]:
        return LOCK_MESSAGE if self.locked else None

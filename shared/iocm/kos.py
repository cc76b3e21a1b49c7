"""IHE IOCM Rejection Note: a DICOM Key Object Selection Document (PS3.3 A.35.4, TID 2010).

Pure: plain dataclasses in, a pydicom ``Dataset`` (or Part-10 bytes) out; no I/O, no clock unless
``now`` is omitted. pydicom is imported inside the functions that need it, so importing this
module (or ``shared``) does not load it. The rules follow the IOCM digest, Part A (A1-A7).

The caller groups rejected instances by study: one note per affected study (digest A4), whose
Patient and Study attributes are copied from the rejected instances.
"""
from __future__ import annotations

import copy
import enum
import io
import re
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Optional, Sequence

from ..domain.models import InstanceRef
from ..domain.validation import (is_valid_date, is_valid_dicom_text, is_valid_dicom_time, is_valid_person_name,
                                 is_valid_uid)

if TYPE_CHECKING:  # pragma: no cover
    from pydicom.dataset import Dataset, FileMetaDataset

KEY_OBJECT_SELECTION_DOCUMENT_STORAGE = "1.2.840.10008.5.1.4.1.1.88.59"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
# (0002,0013) SH, at most 16 characters. A constant (not the pydicom version) so that the file
# of a re-built note does not change when the library is upgraded.
IMPLEMENTATION_VERSION_NAME = "ARCHSYNC_KOS_1"


class RejectionNoteError(ValueError):
    """Invalid input for a rejection note. The message names the field, never its value."""


class RejectionReason(enum.Enum):
    """Document titles of CID 7010 (scheme DCM) used by IOCM (digest A1)."""

    QUALITY = ("113001", "Rejected for Quality Reasons")
    PATIENT_SAFETY = ("113037", "Rejected for Patient Safety Reasons")
    WRONG_WORKLIST = ("113038", "Incorrect Modality Worklist Entry")
    RETENTION_EXPIRED = ("113039", "Data Retention Policy Expired")

    @property
    def code(self) -> str:
        return self.value[0]

    @property
    def meaning(self) -> str:
        return self.value[1]


@dataclass(frozen=True)
class PatientInfo:
    """Patient module (PS3.3 C.7.1.1), copied from the rejected instances (digest A4)."""

    patient_id: str
    name: str = ""  # PN, DICOM form: Family^Given^Middle^Prefix^Suffix
    issuer: str = ""  # (0010,0021)
    issuer_oid: str = ""  # (0010,0024) > (0040,0032) with (0040,0033) "ISO"
    birth_date: str = ""  # YYYYMMDD
    sex: str = ""  # M, F, O or empty


@dataclass(frozen=True)
class StudyInfo:
    """General Study module (PS3.3 C.7.2.1), copied from the rejected instances (digest A4)."""

    study_instance_uid: str
    accession_number: str = ""
    study_date: str = ""  # YYYYMMDD
    study_time: str = ""  # HHMMSS[.FFFFFF]
    study_id: str = ""
    referring_physician_name: str = ""


# One rejected instance is the domain's InstanceRef: every UID must be exact, the SOP class too
# (digest A4, 0xA772/0xA773).
# --- TID 2010 value type of a referenced instance (digest A3) -----------------------------------

_STORAGE = "1.2.840.10008.5.1.4.1.1"  # root of the composite Storage SOP classes (PS3.4 B.5)
# Waveform storage classes are the descendants of .9 (.9 itself is the retired Standalone Curve),
# except the retired trial class .9.1, which dcmtk does not accept as a waveform.
_WAVEFORM = _STORAGE + ".9."
_WAVEFORM_TRIAL = _STORAGE + ".9.1"
# Classes under the storage root that are not images; each entry also covers its children.
_NON_IMAGE = tuple(f"{_STORAGE}.{suffix}" for suffix in (
    "4.2",  # MR Spectroscopy
    "8", "9", "10", "11",  # retired standalone overlay, curve and LUTs; .11.x presentation states
    "66",  # raw data, registrations, fiducials, surface segmentation, tractography
    "67", "68",  # real world value mapping, surface scans
    "77.1.5.3",  # stereometric relationship
    "78", "79", "80",  # ophthalmic measurements and SR-based reports
    "88",  # structured reports, including key object selection
    "90", "91",  # content assessment results, bulk annotations
    "104",  # encapsulated PDF, CDA, STL, OBJ, MTL
    "129", "131",  # retired PET curve, basic structured display
    "200", "201",  # procedure protocols, inventories
    "481",  # radiotherapy objects, RT dose included (not an image class for dcmtk either)
    "501.3", "501.4", "501.5", "501.6",  # DICOS threat report, AIT 2D/3D, quadrupole resonance
))
# Image classes inside the families above.
_IMAGE_EXCEPTIONS = tuple(f"{_STORAGE}.{suffix}" for suffix in (
    "66.4", "66.7",  # segmentation, label map segmentation
    "481.1", "481.23", "481.24",  # RT image, enhanced (continuous) RT image
))


def _in_family(uid: str, roots: tuple[str, ...]) -> bool:
    return any(uid == root or uid.startswith(root + ".") for root in roots)


def content_value_type(sop_class_uid: str) -> str:
    """IMAGE, WAVEFORM or COMPOSITE: the TID 2010 value type for an instance of this SOP class.

    Classes outside the standard storage root (private ones included) are COMPOSITE, the value
    type for other composite objects, which readers accept for any class. Cross-checked against
    dcmtk 3.6.7 (dsrdump), which refuses IMAGE or WAVEFORM for a class it does not know as such;
    it predates a few newer classes (photoacoustic, confocal microscopy, enhanced RT image,
    32-bit ECG), which follow the standard here.
    """
    if sop_class_uid.startswith(_WAVEFORM) and sop_class_uid != _WAVEFORM_TRIAL:
        return "WAVEFORM"
    if _in_family(sop_class_uid, _IMAGE_EXCEPTIONS):
        return "IMAGE"
    if _in_family(sop_class_uid, _NON_IMAGE):
        return "COMPOSITE"
    if sop_class_uid.startswith(_STORAGE + "."):
        return "IMAGE"
    return "COMPOSITE"


# --- Validation (errors name the field, never the value: it may be patient data) ---------------

_TEXT_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1a\x1c-\x1f\x7f]")  # UT allows TAB LF FF CR ESC
_MAX_REPORTED = 10
_INT32_MAX = 2**31 - 1


# The rules are those of shared/domain/validation.py, which the study-changed mapping applies
# before anything is written: an event the builder would refuse is refused up front.
def _check_string(problems: list[str], field: str, value: str, max_len: int) -> None:
    # LO/SH (PS3.5 6.2): single-valued, so no backslash; no control characters.
    if not isinstance(value, str):
        problems.append(f"{field} must be a string")
    elif not is_valid_dicom_text(value, max_len):
        problems.append(f"{field} must be at most {max_len} characters, without backslash or control characters")


def _check_name(problems: list[str], field: str, value: str) -> None:
    # PN (PS3.5 6.2.1): up to 3 component groups of up to 5 components, 64 characters each.
    if not isinstance(value, str):
        problems.append(f"{field} must be a string")
        return
    if not is_valid_person_name(value):
        problems.append(f"{field} is not a valid DICOM person name (PS3.5 6.2.1)")


def _check_date(problems: list[str], field: str, value: str) -> None:
    if value != "" and not is_valid_date(value):
        problems.append(f"{field} must be a date YYYYMMDD or empty")


def _check_int(problems: list[str], field: str, value: int) -> None:
    # IS (PS3.5 6.2), type 1: a positive number.
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= _INT32_MAX:
        problems.append(f"{field} must be an integer from 1 to {_INT32_MAX}")


def _validate(
    patient: PatientInfo,
    study: StudyInfo,
    instances: Sequence[InstanceRef],
    reason: RejectionReason,
    description: str,
    manufacturer: str,
    series_number: int,
    instance_number: int,
    sop_instance_uid: Optional[str],
    series_instance_uid: Optional[str],
    uid_prefix: Optional[str],
) -> None:
    problems: list[str] = []
    if not isinstance(reason, RejectionReason):
        problems.append("reason must be a RejectionReason")
    if not isinstance(patient, PatientInfo):
        raise RejectionNoteError("patient must be a PatientInfo")
    if not isinstance(study, StudyInfo):
        raise RejectionNoteError("study must be a StudyInfo")

    _check_string(problems, "patient.patient_id", patient.patient_id, 64)
    _check_name(problems, "patient.name", patient.name)
    _check_string(problems, "patient.issuer", patient.issuer, 64)
    if patient.issuer_oid and not is_valid_uid(patient.issuer_oid):
        problems.append("patient.issuer_oid must be an ISO OID (PS3.5 9.1)")
    _check_date(problems, "patient.birth_date", patient.birth_date)
    if patient.sex not in ("", "M", "F", "O"):
        problems.append("patient.sex must be M, F, O or empty")

    if not is_valid_uid(study.study_instance_uid):
        problems.append("study.study_instance_uid is not a valid DICOM UID (PS3.5 9.1)")
    _check_string(problems, "study.accession_number", study.accession_number, 16)
    _check_date(problems, "study.study_date", study.study_date)
    if study.study_time and not is_valid_dicom_time(study.study_time):
        problems.append("study.study_time must be a time HHMMSS[.FFFFFF] or empty")
    _check_string(problems, "study.study_id", study.study_id, 16)
    _check_name(problems, "study.referring_physician_name", study.referring_physician_name)

    if not isinstance(description, str) or _TEXT_CONTROL.search(description):
        problems.append("description must be text without control characters other than TAB, CR, LF, FF, ESC")
    _check_string(problems, "manufacturer", manufacturer, 64)
    _check_int(problems, "series_number", series_number)
    _check_int(problems, "instance_number", instance_number)

    if isinstance(instances, (str, bytes)) or not isinstance(instances, Sequence) or len(instances) == 0:
        problems.append("instances must be a non-empty list of InstanceRef")
        instances = ()
    first_seen: dict[str, int] = {}
    series_uids: set[str] = set()
    instance_problems: list[str] = []
    for i, ref in enumerate(instances):
        if not isinstance(ref, InstanceRef):
            instance_problems.append(f"instances[{i}] is not an InstanceRef")
            continue
        for name in ("series_instance_uid", "sop_class_uid", "sop_instance_uid"):
            if not is_valid_uid(getattr(ref, name)):
                instance_problems.append(f"instances[{i}].{name} is not a valid DICOM UID (PS3.5 9.1)")
        j = first_seen.setdefault(ref.sop_instance_uid, i)
        if j != i:
            instance_problems.append(f"instances[{i}] repeats the SOP Instance UID of instances[{j}]")
        series_uids.add(ref.series_instance_uid)
    if len(instance_problems) > _MAX_REPORTED:
        more = len(instance_problems) - _MAX_REPORTED
        instance_problems = instance_problems[:_MAX_REPORTED] + [f"{more} more problems in instances"]
    problems += instance_problems

    # The note gets its own, new series and instance (digest A2 "always a new KO-only series", A4).
    referenced = series_uids | set(first_seen) | {study.study_instance_uid}
    for name, uid in (("sop_instance_uid", sop_instance_uid), ("series_instance_uid", series_instance_uid)):
        if uid is None:
            continue
        if not is_valid_uid(uid):
            problems.append(f"{name} is not a valid DICOM UID (PS3.5 9.1)")
        elif uid in referenced:
            problems.append(f"{name} must be new: it equals a study, series or instance UID it references")
    if sop_instance_uid is not None and sop_instance_uid == series_instance_uid:
        problems.append("sop_instance_uid and series_instance_uid must differ")
    if uid_prefix is not None and not (isinstance(uid_prefix, str) and uid_prefix.endswith(".")
                                       and is_valid_uid(uid_prefix[:-1])):
        problems.append("uid_prefix must be a UID root followed by '.' (PS3.5 9.1)")

    if problems:
        raise RejectionNoteError("; ".join(problems))


def _is_ascii(*values: str) -> bool:
    return all(v.isascii() for v in values)


# --- Building -----------------------------------------------------------------------------------


def build_rejection_note(
    patient: PatientInfo,
    study: StudyInfo,
    instances: Sequence[InstanceRef],
    reason: RejectionReason = RejectionReason.QUALITY,
    *,
    description: str = "",
    manufacturer: str = "Archive Synchronization",
    series_number: int = 999,
    instance_number: int = 1,
    now: Optional[datetime] = None,
    sop_instance_uid: Optional[str] = None,
    series_instance_uid: Optional[str] = None,
    uid_prefix: Optional[str] = None,
) -> "Dataset":
    """The rejection note for ``instances``, which must all belong to ``study``.

    New SOP Instance and Series UIDs come from ``pydicom.uid.generate_uid`` (under ``uid_prefix``,
    or UUID-derived 2.25 UIDs) unless given. Give both UIDs and ``now`` to rebuild a note
    byte-identically: a re-sent note is only ignored when it is identical (digest A4, #1426).
    An aware ``now`` also sets Timezone Offset From UTC (0008,0201).
    The returned dataset carries its file meta, so ``save_as(..., enforce_file_format=True)`` works.
    Raises ``RejectionNoteError`` (a ``ValueError``) for invalid input.
    """
    _validate(patient, study, instances, reason, description, manufacturer, series_number, instance_number,
              sop_instance_uid, series_instance_uid, uid_prefix)

    from pydicom.dataset import Dataset
    from pydicom.uid import generate_uid

    when = now if now is not None else datetime.now().astimezone()
    sop_uid = sop_instance_uid or generate_uid(prefix=uid_prefix)
    series_uid = series_instance_uid or generate_uid(prefix=uid_prefix)

    ds = Dataset()
    # SOP Common (PS3.3 C.12.1); UTF-8 only when some text needs it.
    texts = (patient.patient_id, patient.name, patient.issuer, study.accession_number, study.study_id,
             study.referring_physician_name, description, manufacturer)
    if not _is_ascii(*texts):
        ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = KEY_OBJECT_SELECTION_DOCUMENT_STORAGE
    ds.SOPInstanceUID = sop_uid
    if when.utcoffset() is not None:
        ds.TimezoneOffsetFromUTC = when.strftime("%z")[:5]

    # Patient (C.7.1.1): type 2 attributes are present even when empty.
    ds.PatientName = patient.name
    ds.PatientID = patient.patient_id
    if patient.issuer:
        ds.IssuerOfPatientID = patient.issuer
    if patient.issuer_oid:
        qualifiers = Dataset()
        qualifiers.UniversalEntityID = patient.issuer_oid
        qualifiers.UniversalEntityIDType = "ISO"
        ds.IssuerOfPatientIDQualifiersSequence = [qualifiers]
    ds.PatientBirthDate = patient.birth_date
    ds.PatientSex = patient.sex

    # General Study (C.7.2.1).
    ds.StudyInstanceUID = study.study_instance_uid
    ds.StudyDate = study.study_date
    ds.StudyTime = study.study_time
    ds.ReferringPhysicianName = study.referring_physician_name
    ds.StudyID = study.study_id
    ds.AccessionNumber = study.accession_number

    # Key Object Document Series (C.17.6.1): a new KO-only series.
    ds.Modality = "KO"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = series_number
    ds.ReferencedPerformedProcedureStepSequence = []

    # General Equipment (C.7.5.1).
    ds.Manufacturer = manufacturer

    # Key Object Document (C.17.6.2).
    ds.InstanceNumber = instance_number
    ds.ContentDate = when.strftime("%Y%m%d")
    ds.ContentTime = when.strftime("%H%M%S")
    by_series = _group_by_series(instances)
    ds.CurrentRequestedProcedureEvidenceSequence = [_evidence(Dataset, study.study_instance_uid, by_series)]

    # SR Document Content (C.17.3), root of TID 2010 (digest A3).
    ds.ValueType = "CONTAINER"
    ds.ConceptNameCodeSequence = [_code(Dataset, reason.code, reason.meaning)]
    ds.ContinuityOfContent = "SEPARATE"
    template = Dataset()
    template.MappingResource = "DCMR"
    template.TemplateIdentifier = "2010"
    ds.ContentTemplateSequence = [template]
    content = []
    if description:
        text = Dataset()
        text.RelationshipType = "CONTAINS"
        text.ValueType = "TEXT"
        text.ConceptNameCodeSequence = [_code(Dataset, "113012", "Key Object Description")]
        text.TextValue = description
        content.append(text)
    value_types: dict[str, str] = {}  # per SOP class: a study has few classes, many instances
    for refs in by_series.values():
        for ref in refs:
            value_type = value_types.get(ref.sop_class_uid)
            if value_type is None:
                value_type = value_types[ref.sop_class_uid] = content_value_type(ref.sop_class_uid)
            item = Dataset()
            item.RelationshipType = "CONTAINS"
            item.ValueType = value_type
            item.ReferencedSOPSequence = [_sop_ref(Dataset, ref)]
            content.append(item)
    ds.ContentSequence = content

    ds.file_meta = _file_meta(ds)
    return ds


def _group_by_series(instances: Sequence[InstanceRef]) -> dict[str, list[InstanceRef]]:
    # Series in order of first appearance, instances in input order: deterministic output.
    by_series: dict[str, list[InstanceRef]] = {}
    for ref in instances:
        by_series.setdefault(ref.series_instance_uid, []).append(ref)
    return by_series


def _code(dataset: type, value: str, meaning: str) -> "Dataset":
    # Basic code sequence macro (PS3.3 8.8); no Coding Scheme Version (digest A1, dcm4chee #1293).
    code = dataset()
    code.CodeValue = value
    code.CodingSchemeDesignator = "DCM"
    code.CodeMeaning = meaning
    return code


def _sop_ref(dataset: type, ref: InstanceRef) -> "Dataset":
    item = dataset()
    item.ReferencedSOPClassUID = ref.sop_class_uid
    item.ReferencedSOPInstanceUID = ref.sop_instance_uid
    return item


def _evidence(dataset: type, study_uid: str, by_series: dict[str, list[InstanceRef]]) -> "Dataset":
    # Hierarchical SOP Instance Reference macro (PS3.3 C.17-3): study > series > SOP.
    series_items = []
    for series_uid, refs in by_series.items():
        series = dataset()
        series.SeriesInstanceUID = series_uid
        series.ReferencedSOPSequence = [_sop_ref(dataset, ref) for ref in refs]
        series_items.append(series)
    item = dataset()
    item.StudyInstanceUID = study_uid
    item.ReferencedSeriesSequence = series_items
    return item


def _file_meta(ds: "Dataset") -> "FileMetaDataset":
    # File Meta Information (PS3.10 7.1), digest A7 step 5.
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = EXPLICIT_VR_LITTLE_ENDIAN
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    return meta


def to_part10_bytes(ds: "Dataset") -> bytes:
    """A DICOM Part-10 file (preamble, "DICM", file meta, Explicit VR Little Endian data set).

    The file meta is rebuilt from the data set's SOP Class and Instance UIDs; ``ds`` is not changed.
    """
    from pydicom.filewriter import dcmwrite

    out = copy.copy(ds)  # shallow: shares the elements, gets its own file_meta
    out.file_meta = _file_meta(ds)
    buffer = io.BytesIO()
    dcmwrite(buffer, out, enforce_file_format=True)
    return buffer.getvalue()

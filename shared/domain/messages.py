"""Payload mapping for the contracts in ``shared/contracts`` (pure: dicts in, models out)."""
from __future__ import annotations

import json
from typing import Any, Callable, Mapping

from ..clock import iso, parse_time
from .errors import MalformedInput
from .jobs import GatewayResult
from .models import (Destination, ExamStatusChanged, InstanceRef, Job, JobState, Patient, StudyChange, StudyChanged,
                     StudyTarget)
from .validation import (HL7_NAMESPACE_MAX, is_valid_date, is_valid_dicom_text, is_valid_dicom_time,
                         is_valid_hl7_text, is_valid_hl7_type_code, is_valid_oid, is_valid_person_name, study_prefix)

SCHEMA_VERSION = "1"
MAX_INTEGER = 2**31 - 1
STUDY_CHANGED = "study-changed.v1"
PATIENT_UPDATED = "patient-updated.v1"


def _study_prefix(schema: str, where: str, uri: str) -> str:
    """The storage URI as the study's folder (trailing '/' added): docs/auto-archive.md "Study
    storage URIs"."""
    try:
        return study_prefix(uri)
    except ValueError as e:
        raise MalformedInput(f"{schema}: {where}: {e}") from None


def exam_status_changed(payload: Mapping[str, Any]) -> ExamStatusChanged:
    """Map a payload already validated against exam-status-changed.v1."""
    exam = payload["exam"]
    uri = exam.get("study_storage_uri", "")
    if uri:
        uri = _study_prefix("exam-status-changed.v1", "exam/study_storage_uri", uri)
    try:
        return ExamStatusChanged(
            event_id=payload["event_id"],
            event_time=parse_time(payload["event_time"]),
            facility_group_id=payload["facility_group_id"],
            facility_id=payload["facility_id"],
            exam_id=exam["exam_id"],
            accession_number=exam["accession_number"],
            status=exam["status"],
            previous_status=exam.get("previous_status"),
            status_first_reached_at=parse_time(exam["status_first_reached_at"]),
            study_instance_uid=exam["study_instance_uid"],
            study_storage_uri=uri,
            patient=Patient(mrn=exam["patient"]["mrn"], name=exam["patient"].get("name", "")),
        )
    except ValueError:
        raise MalformedInput("exam-status-changed.v1: a time lacks a UTC offset or is not a date-time") from None


def job_message(job: Job, destination: Destination) -> tuple[bytes, dict[str, str]]:
    """The job message of contract job-message.v1 and its Pub/Sub attributes. It carries no
    patient demographics: the gateway needs only the study and the destination."""
    body = {
        "schema_version": SCHEMA_VERSION,
        "job_id": job.id,
        "job_type": job.type.value,
        "attempt": job.attempt,
        "facility_group_id": job.facility_group_id,
        "gateway_id": job.gateway_id,
        "queued_at": iso(job.queued_at),
        "result_deadline": iso(job.deadline),
        "destination": {
            "id": destination.id,
            "name": destination.name,
            "type": destination.type,
            "host": destination.host,
            "port": destination.port,
            "called_ae_title": destination.called_ae_title,
            "calling_ae_title": destination.calling_ae_title,
            "moving_ae_title": destination.moving_ae_title,
            "transfer_syntax_uid": destination.transfer_syntax_uid,
            "excluded_sop_class_uids": list(destination.excluded_sop_class_uids),
            "storage_commitment": destination.storage_commitment,
            "retry": {"max_retries": job.max_retries, "retry_timeout_seconds": job.retry_timeout_seconds},
        },
    }
    if job.study_instance_uid:
        body["study"] = {"exam_id": job.exam_id, "facility_id": job.facility_id,
                         "study_instance_uid": job.study_instance_uid}
        if job.study_storage_uri:  # none for an exam whose event named no storage: the gateway says so
            body["study"]["storage_uri"] = job.study_storage_uri
    if job.hl7:
        body["hl7"] = dict(job.hl7)
    if job.instances_uri:  # the list itself stays in Cloud Storage: the message stays small
        body["instances_uri"] = job.instances_uri
    if job.instance_count:
        body["instance_count"] = job.instance_count
    if job.object_uri:
        body["object_uri"] = job.object_uri
    attributes = {
        "schema_version": SCHEMA_VERSION,
        "job_type": job.type.value,
        "job_id": job.id,
        "attempt": str(job.attempt),
        "destination_id": destination.id,
        "facility_group_id": job.facility_group_id,
    }
    return json.dumps(body, separators=(",", ":")).encode(), attributes


def gateway_result(payload: Mapping[str, Any]) -> GatewayResult:
    """Map a payload already validated against job-result.v1."""
    try:
        time = parse_time(payload["time"])
    except ValueError:
        raise MalformedInput("job-result.v1: time lacks a UTC offset") from None
    # Firestore stores 64-bit integers; a larger count or attempt could not be written (a 500 in
    # the transaction) and is no real count anyway (issue 11 item 13).
    if payload["attempt"] > MAX_INTEGER or any(v > MAX_INTEGER for v in (payload.get("counts") or {}).values()):
        raise MalformedInput("job-result.v1: attempt or counts: too large")
    return GatewayResult(
        job_id=payload["job_id"],
        attempt=payload["attempt"],
        state=JobState(payload["state"]),
        time=time,
        reason=payload.get("reason"),
        counts=payload.get("counts"),
    )


def _refs(items) -> tuple[InstanceRef, ...]:
    return tuple(InstanceRef(i["series_instance_uid"], i["sop_class_uid"], i["sop_instance_uid"]) for i in items)


def study_changed(payload: Mapping[str, Any]) -> StudyChanged:
    """Map a payload already validated against study-changed.v1, with the rules a schema cannot
    say: a split or merge names its target and one copy per moved instance; no instance twice."""
    change = StudyChange(payload["change"])
    _check_dicom_values(payload)
    study = dict(payload["study"])
    if study.get("storage_uri"):
        study["storage_uri"] = _study_prefix(STUDY_CHANGED, "study/storage_uri", study["storage_uri"])
    instances = _refs(payload["instances"])
    if len({i.sop_instance_uid for i in instances}) != len(instances):
        raise MalformedInput("study-changed.v1: an instance is listed twice")
    target = None
    if change in (StudyChange.STUDY_SPLIT, StudyChange.STUDY_MERGED):
        t = payload.get("target")
        if t is None:
            raise MalformedInput(f"study-changed.v1: {change.value} without a target")
        target_uri = _study_prefix(STUDY_CHANGED, "target/storage_uri", t["storage_uri"]) if t.get("storage_uri") else ""
        target = StudyTarget(t["exam_id"], t["study_instance_uid"], target_uri, _refs(t["instances"]))
        if len(target.instances) != len(instances):
            raise MalformedInput("study-changed.v1: target must list one copy per moved instance")
        if target.study_instance_uid == payload["study"]["study_instance_uid"]:
            raise MalformedInput("study-changed.v1: target study is the original study")
        if {i.sop_instance_uid for i in target.instances} & {i.sop_instance_uid for i in instances}:
            raise MalformedInput("study-changed.v1: copies must have new SOP instance UIDs (IHE IOCM)")
    elif payload.get("target") is not None:
        raise MalformedInput(f"study-changed.v1: {change.value} takes no target")
    try:
        event_time = parse_time(payload["event_time"])
    except ValueError:
        raise MalformedInput("study-changed.v1: event_time is not a date-time with a UTC offset") from None
    return StudyChanged(
        event_id=payload["event_id"], event_time=event_time, facility_group_id=payload["facility_group_id"],
        facility_id=payload["facility_id"], change=change, exam_id=payload["exam_id"],
        study_instance_uid=payload["study"]["study_instance_uid"], instances=instances,
        patient=dict(payload["patient"]), study=study,
        rejection_reason=payload.get("rejection_reason"), target=target)


# --- Values the builders would refuse (issue 11 item 12, poison inputs) ---------------------------
# A schema-valid event whose values a builder refuses later (pydicom for the rejection note,
# hl7apy STRICT for ADT) used to fail after reads and writes, be retried and dead-lettered without
# a reason. The mapping applies the builders' own rules first, so such an event is dead-lettered
# with its reason on its first delivery and nothing is written. Reasons name the field and the
# rule, never the value (patient data).
_DA_RULE = "must be a real date YYYYMMDD or empty"
_DICOM_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    # field of study-changed.v1 -> (check, rule); the attributes the rejection note copies
    # (shared/iocm/kos.py, PS3.3 C.7.1.1 and C.7.2.1 with the VRs of PS3.5 6.2).
    "patient/patient_id": (lambda v: is_valid_dicom_text(v, 64), "must be at most 64 characters without backslash or "
                                                               "control characters (DICOM LO)"),
    "patient/name": (is_valid_person_name, "must be a DICOM person name: at most 3 groups of at most 5 components, "
                                           "64 characters per group, no backslash or control characters (PS3.5 6.2.1)"),
    "patient/issuer": (lambda v: is_valid_dicom_text(v, 64), "must be at most 64 characters without backslash or "
                                                           "control characters (DICOM LO)"),
    "patient/issuer_oid": (is_valid_oid, "must be an ISO OID: digits and dots, no leading zeros, at most 64 "
                                         "characters (DICOM UI, PS3.5 9.1)"),
    "patient/birth_date": (is_valid_date, _DA_RULE + " (DICOM DA)"),
    "study/accession_number": (lambda v: is_valid_dicom_text(v, 16), "must be at most 16 characters without backslash "
                                                                   "or control characters (DICOM SH)"),
    "study/study_date": (is_valid_date, _DA_RULE + " (DICOM DA)"),
    "study/study_time": (is_valid_dicom_time, "must be a time HHMMSS[.FFFFFF] or empty (DICOM TM)"),
    "study/study_id": (lambda v: is_valid_dicom_text(v, 16), "must be at most 16 characters without backslash or "
                                                           "control characters (DICOM SH)"),
    "study/referring_physician_name": (is_valid_person_name, "must be a DICOM person name: at most 3 groups of at "
                                                             "most 5 components, 64 characters per group, no "
                                                             "backslash or control characters (PS3.5 6.2.1)"),
}


def _raise(schema: str, problems: list[str]) -> None:
    if problems:
        raise MalformedInput(f"{schema}: " + "; ".join(problems[:5]))


def _check_dicom_values(payload: Mapping[str, Any]) -> None:
    problems = []
    for where, (ok, rule) in _DICOM_RULES.items():
        part, key = where.split("/")
        value = payload[part].get(key, "")
        if value != "" and not ok(value):
            problems.append(f"{where}: {rule}")
    _raise(STUDY_CHANGED, problems)


def _identifier_key(ident: Mapping[str, Any]) -> tuple[str, ...]:
    # As shared/services/patient_updates.py reads a CX: type code MR when absent; blanks stripped.
    return tuple(str(ident.get(k, d)).strip() for k, d in
                 (("id", ""), ("assigning_authority", ""), ("authority_oid", ""), ("type_code", "MR")))


def _check_identifiers(where: str, idents: list, problems: list[str]) -> None:
    for n, ident in enumerate(idents):
        at = f"{where}/{n}"
        if not is_valid_hl7_text(ident["id"], required=True):
            problems.append(f"{at}/id: must not be blank or hold control characters (HL7 CX.1)")
        if not is_valid_hl7_text(ident.get("assigning_authority", ""), max_len=HL7_NAMESPACE_MAX):
            problems.append(f"{at}/assigning_authority: must be at most {HL7_NAMESPACE_MAX} characters without control "
                            "characters (HL7 HD.1, IS)")
        oid = ident.get("authority_oid", "")
        if not is_valid_hl7_text(oid) or (oid.strip() and not is_valid_oid(oid.strip())):
            problems.append(f"{at}/authority_oid: must be an ISO OID: digits and dots, no leading zeros (HL7 HD.2)")
        if not is_valid_hl7_type_code(ident.get("type_code", "MR")):
            problems.append(f"{at}/type_code: must be an identifier type code of HL7 table 0203, e.g. MR")
    keys = [_identifier_key(i) for i in idents]
    if len(set(keys)) != len(keys):
        problems.append(f"{where}: an identifier is listed twice")


def patient_updated(payload: Mapping[str, Any]) -> Mapping[str, Any]:
    """Check a payload already validated against patient-updated.v1 against the rules of the ADT
    builders (shared/hl7/adt.py: HL7 v2.5.1 PID-3, PID-5, PID-7, MRG-1, MRG-7); returns it."""
    problems: list[str] = []
    p = payload["patient"]
    _check_identifiers("patient/identifiers", p["identifiers"], problems)
    if not is_valid_hl7_text(p["family_name"], required=True):
        problems.append("patient/family_name: must not be blank or hold control characters (HL7 XPN.1)")
    for key in ("given_name", "middle_name", "suffix", "prefix"):
        if not is_valid_hl7_text(p.get(key, "")):
            problems.append(f"patient/{key}: must not hold control characters (HL7 XPN)")
    if p.get("birth_date") and not is_valid_date(p["birth_date"]):
        problems.append(f"patient/birth_date: {_DA_RULE} (HL7 PID-7)")
    prior = payload.get("prior")
    if prior is not None:
        _check_identifiers("prior/identifiers", prior["identifiers"], problems)
        if prior.get("family_name") and not is_valid_hl7_text(prior["family_name"], required=True):
            problems.append("prior/family_name: must not be blank or hold control characters (HL7 MRG-7)")
        if not is_valid_hl7_text(prior.get("given_name", "")):
            problems.append("prior/given_name: must not hold control characters (HL7 MRG-7)")
        if payload["change"] in ("IDENTIFIER_CHANGE", "MERGE") and not problems:
            # A40: MRG-1 and PID-3 share assigning authority and type (digest B2/B3).
            surviving = [_identifier_key(i) for i in p["identifiers"]]
            for n, ident in enumerate(prior["identifiers"]):
                key = _identifier_key(ident)
                if key in surviving:
                    problems.append(f"prior/identifiers/{n}: equals a surviving identifier: a patient cannot be merged "
                                    "into itself (HL7 MRG-1)")
                elif not any(s[1:] == key[1:] for s in surviving):
                    problems.append(f"prior/identifiers/{n}: must have the assigning authority and identifier type of "
                                    "a surviving identifier (HL7 MRG-1)")
    _raise(PATIENT_UPDATED, problems)
    return payload

"""Payload mapping for the contracts in ``shared/contracts`` (pure: dicts in, models out)."""
from __future__ import annotations

import json
from typing import Any, Mapping

from ..clock import iso, parse_time
from .errors import MalformedInput
from .jobs import GatewayResult
from .models import (Destination, ExamStatusChanged, InstanceRef, Job, JobState, Patient, StudyChange, StudyChanged,
                     StudyTarget)

SCHEMA_VERSION = "1"
MAX_INTEGER = 2**31 - 1


def exam_status_changed(payload: Mapping[str, Any]) -> ExamStatusChanged:
    """Map a payload already validated against exam-status-changed.v1."""
    exam = payload["exam"]
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
            study_storage_uri=exam.get("study_storage_uri", ""),
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
                         "study_instance_uid": job.study_instance_uid, "storage_uri": job.study_storage_uri}
    if job.hl7:
        body["hl7"] = dict(job.hl7)
    if job.instances:
        body["instances"] = list(job.instances)
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
    instances = _refs(payload["instances"])
    if len({i.sop_instance_uid for i in instances}) != len(instances):
        raise MalformedInput("study-changed.v1: an instance is listed twice")
    target = None
    if change in (StudyChange.STUDY_SPLIT, StudyChange.STUDY_MERGED):
        t = payload.get("target")
        if t is None:
            raise MalformedInput(f"study-changed.v1: {change.value} without a target")
        target = StudyTarget(t["exam_id"], t["study_instance_uid"], t.get("storage_uri", ""), _refs(t["instances"]))
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
        raise MalformedInput("study-changed.v1: event_time lacks a UTC offset") from None
    return StudyChanged(
        event_id=payload["event_id"], event_time=event_time, facility_group_id=payload["facility_group_id"],
        facility_id=payload["facility_id"], change=change, exam_id=payload["exam_id"],
        study_instance_uid=payload["study"]["study_instance_uid"], instances=instances,
        patient=dict(payload["patient"]), study=dict(payload["study"]),
        rejection_reason=payload.get("rejection_reason"), target=target)

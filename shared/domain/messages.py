"""Payload mapping for the contracts in ``shared/contracts`` (pure: dicts in, models out)."""
from __future__ import annotations

import json
from typing import Any, Mapping

from ..clock import iso, parse_time
from .errors import MalformedInput
from .jobs import GatewayResult
from .models import Destination, ExamStatusChanged, Job, JobState, Patient

SCHEMA_VERSION = "1"


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
            "retry": {"max_retries": job.max_retries, "retry_timeout_seconds": job.retry_timeout_seconds},
        },
        "study": {
            "exam_id": job.exam_id,
            "facility_id": job.facility_id,
            "study_instance_uid": job.study_instance_uid,
            "storage_uri": job.study_storage_uri,
        },
    }
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
    return GatewayResult(
        job_id=payload["job_id"],
        attempt=payload["attempt"],
        state=JobState(payload["state"]),
        time=time,
        reason=payload.get("reason"),
        counts=payload.get("counts"),
    )

"""Model <-> Firestore document mapping (plain dicts; datetimes stay datetimes)."""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Optional

from ..domain import history
from ..domain.models import (
    ArchiveState,
    ArchiveStateValue,
    Deferral,
    Destination,
    DestinationInterval,
    ExamStatus,
    Facility,
    FacilityGroup,
    Gateway,
    GatewayInterval,
    Job,
    JobState,
    JobType,
)


def _utc(t: Optional[datetime]) -> Optional[datetime]:
    # Firestore returns DatetimeWithNanoseconds in UTC; normalise to plain aware datetimes.
    return None if t is None else datetime.fromtimestamp(t.timestamp(), tz=timezone.utc)


def group_to_doc(g: FacilityGroup) -> dict[str, Any]:
    return {"id": g.id, "name": g.name, "version": g.version, "removed": g.removed, "updated_at": g.updated_at}


def group_from_doc(d: dict[str, Any]) -> FacilityGroup:
    return FacilityGroup(id=d["id"], name=d.get("name", ""), version=int(d.get("version", 0)),
                         removed=bool(d.get("removed", False)), updated_at=_utc(d.get("updated_at")))


def facility_to_doc(f: Facility) -> dict[str, Any]:
    return {"id": f.id, "facility_group_id": f.facility_group_id, "name": f.name, "send_adt": f.send_adt,
            "version": f.version, "removed": f.removed, "updated_at": f.updated_at}


def facility_from_doc(d: dict[str, Any]) -> Facility:
    return Facility(id=d["id"], facility_group_id=d["facility_group_id"], name=d.get("name", ""),
                    send_adt=bool(d.get("send_adt", False)), version=int(d.get("version", 0)),
                    removed=bool(d.get("removed", False)), updated_at=_utc(d.get("updated_at")))


def gateway_to_doc(g: Gateway) -> dict[str, Any]:
    return {
        "id": g.id,
        "facility_group_id": g.facility_group_id,
        "name": g.name,
        "description": g.description,
        "facility_ids": list(g.facility_ids),
        "active": g.active,
        "topic_id": g.topic_id,
        "subscription_id": g.subscription_id,
        "service_account_email": g.service_account_email,
        "service_account_key_id": g.service_account_key_id,
        "provisioning_state": g.provisioning_state,
        "created_by": g.created_by,
        "created_at": g.created_at,
        "updated_by": g.updated_by,
        "updated_at": g.updated_at,
        "history": [{"since": i.since, "active": i.active, "facility_ids": list(i.facility_ids)} for i in g.history],
    }


def gateway_from_doc(d: dict[str, Any]) -> Gateway:
    return Gateway(
        id=d["id"],
        facility_group_id=d["facility_group_id"],
        name=d["name"],
        description=d.get("description", ""),
        facility_ids=tuple(d.get("facility_ids") or ()),
        active=bool(d.get("active", True)),
        topic_id=d["topic_id"],
        subscription_id=d["subscription_id"],
        service_account_email=d.get("service_account_email", ""),
        service_account_key_id=d.get("service_account_key_id", ""),
        provisioning_state=d.get("provisioning_state", "READY"),
        created_by=d.get("created_by", ""),
        created_at=_utc(d.get("created_at")),
        updated_by=d.get("updated_by", ""),
        updated_at=_utc(d.get("updated_at")),
        history=tuple(GatewayInterval(_utc(i["since"]), bool(i["active"]), tuple(i.get("facility_ids") or ()))
                      for i in d.get("history") or ()),
    )


def destination_to_doc(x: Destination) -> dict[str, Any]:
    return {
        "id": x.id,
        "facility_group_id": x.facility_group_id,
        "name": x.name,
        "type": x.type,
        "host": x.host,
        "port": x.port,
        "called_ae_title": x.called_ae_title,
        "calling_ae_title": x.calling_ae_title,
        "moving_ae_title": x.moving_ae_title,
        "gateway_id": x.gateway_id,
        "facility_ids": list(x.facility_ids),
        "max_retries": x.max_retries,
        "retry_timeout_seconds": x.retry_timeout_seconds,
        "transfer_syntax_uid": x.transfer_syntax_uid,
        "excluded_sop_class_uids": list(x.excluded_sop_class_uids),
        "auto_archive": x.auto_archive,
        "trigger_status": x.trigger_status.value if x.trigger_status else None,
        "auto_archive_since": x.auto_archive_since,
        "support_iocm": x.support_iocm,
        "allow_prefetch": x.allow_prefetch,
        "storage_commitment": x.storage_commitment,
        "active": x.active,
        "hl7_host": x.hl7_host,
        "hl7_port": x.hl7_port,
        "hl7_receiving_application": x.hl7_receiving_application,
        "hl7_receiving_facility": x.hl7_receiving_facility,
        "created_by": x.created_by,
        "created_at": x.created_at,
        "updated_by": x.updated_by,
        "updated_at": x.updated_at,
        "history": [{"since": i.since, "active": i.active, "auto_archive": i.auto_archive,
                     "trigger_status": i.trigger_status.value if i.trigger_status else None,
                     "gateway_id": i.gateway_id, "facility_ids": list(i.facility_ids)} for i in x.history],
        # Queried by on_exam_status_changed (array-contains): every trigger status of the history.
        "archive_triggers": history.archive_triggers(x),
    }


def destination_from_doc(d: dict[str, Any]) -> Destination:
    return Destination(
        id=d["id"],
        facility_group_id=d["facility_group_id"],
        name=d["name"],
        type=d.get("type", "DICOM_SCP"),
        host=d["host"],
        port=int(d["port"]),
        called_ae_title=d["called_ae_title"],
        calling_ae_title=d["calling_ae_title"],
        moving_ae_title=d.get("moving_ae_title"),
        gateway_id=d["gateway_id"],
        facility_ids=tuple(d.get("facility_ids") or ()),
        max_retries=int(d.get("max_retries", 3)),
        retry_timeout_seconds=int(d.get("retry_timeout_seconds", 10)),
        transfer_syntax_uid=d.get("transfer_syntax_uid"),
        excluded_sop_class_uids=tuple(d.get("excluded_sop_class_uids") or ()),
        auto_archive=bool(d.get("auto_archive")),
        trigger_status=ExamStatus(d["trigger_status"]) if d.get("trigger_status") else None,
        auto_archive_since=_utc(d.get("auto_archive_since")),
        support_iocm=bool(d.get("support_iocm")),
        allow_prefetch=bool(d.get("allow_prefetch")),
        storage_commitment=bool(d.get("storage_commitment")),
        active=bool(d.get("active", True)),
        hl7_host=d.get("hl7_host"),
        hl7_port=d.get("hl7_port"),
        hl7_receiving_application=d.get("hl7_receiving_application", ""),
        hl7_receiving_facility=d.get("hl7_receiving_facility", ""),
        created_by=d.get("created_by", ""),
        created_at=_utc(d.get("created_at")),
        updated_by=d.get("updated_by", ""),
        updated_at=_utc(d.get("updated_at")),
        history=tuple(DestinationInterval(_utc(i["since"]), bool(i["active"]), bool(i["auto_archive"]),
                                          ExamStatus(i["trigger_status"]) if i.get("trigger_status") else None,
                                          i["gateway_id"], tuple(i.get("facility_ids") or ()))
                      for i in d.get("history") or ()),
    )


_JOB_TIMES = ("queued_at", "deadline", "started_at", "completed_at", "published_at", "publish_lease_until")


def job_to_doc(j: Job) -> dict[str, Any]:
    d = dict(j.__dict__)
    d["type"] = j.type.value
    d["state"] = j.state.value
    d["patient_name_lower"] = j.patient_name.lower()  # the Jobs tab's case-insensitive prefix search
    return d


def job_from_doc(d: dict[str, Any]) -> Job:
    d = dict(d)
    d["type"] = JobType(d["type"])
    d["state"] = JobState(d["state"])
    for k in _JOB_TIMES:
        d[k] = _utc(d.get(k))
    d["counts"] = dict(d.get("counts") or {})
    # Documents written before issue 11 item 3 may still hold inline lists ("instances",
    # "deferred_instances"): not fields any more, so they are dropped here.
    known = Job.__dataclass_fields__
    return Job(**{k: v for k, v in d.items() if k in known})


def deferral_to_doc(x: Deferral) -> dict[str, Any]:
    return {"id": x.id, "facility_group_id": x.facility_group_id, "job_id": x.job_id, "instances_uri": x.instances_uri,
            "instance_count": x.instance_count, "created_at": x.created_at}


def deferral_from_doc(d: dict[str, Any]) -> Deferral:
    return Deferral(id=d["id"], facility_group_id=d["facility_group_id"], job_id=d["job_id"],
                    instances_uri=d["instances_uri"], instance_count=int(d["instance_count"]),
                    created_at=_utc(d["created_at"]))


def archive_state_to_doc(a: ArchiveState) -> dict[str, Any]:
    return {
        "facility_group_id": a.facility_group_id,
        "exam_id": a.exam_id,
        "destination_id": a.destination_id,
        "state": a.state.value,
        "job_id": a.job_id,
        "updated_at": a.updated_at,
    }


def archive_state_from_doc(d: dict[str, Any]) -> ArchiveState:
    return ArchiveState(
        facility_group_id=d["facility_group_id"],
        exam_id=d["exam_id"],
        destination_id=d["destination_id"],
        state=ArchiveStateValue(d["state"]),
        job_id=d["job_id"],
        updated_at=_utc(d["updated_at"]),
    )

"""Field validation for gateways and destinations (seed 000 "Complete the Gateway fields" and
"Complete the Destination Fields"). Pure functions; errors name the field, never echo the value."""
from __future__ import annotations

import ipaddress
import re
from datetime import datetime
from typing import Any, Mapping, Optional

from .errors import ValidationFailed
from .models import Destination, ExamStatus, Gateway

# Identifiers we use as Firestore document ids: no '/', never '.', '..' or '__x__' (Firestore
# reserved), bounded length.
ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
# DICOM PS3.5 6.2 (AE VR): 16 characters max, default repertoire, no backslash or control
# characters; seed 000 additionally forbids spaces.
_AE_PATTERN = re.compile(r"^[\x21-\x5B\x5D-\x7E]{1,16}$")
# PS3.5 9.1: components of digits separated by '.', no leading zero in a multi-digit component,
# 64 characters max.
_UID_PATTERN = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+$")
_HOST_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
DESTINATION_TYPES = ("DICOM_SCP",)


def is_valid_id(value: Any) -> bool:
    return isinstance(value, str) and bool(ID_PATTERN.match(value))


def is_valid_ae_title(value: Any) -> bool:
    return isinstance(value, str) and bool(_AE_PATTERN.match(value))


def is_valid_uid(value: Any) -> bool:
    return isinstance(value, str) and len(value) <= 64 and bool(_UID_PATTERN.match(value))


def is_valid_host(value: Any) -> bool:
    """An IPv4/IPv6 address or an RFC 1123 host name, as seen from the gateway's network."""
    if not isinstance(value, str) or not value or len(value) > 253:
        return False
    try:
        ipaddress.ip_address(value)
        return True
    except ValueError:
        pass
    if re.fullmatch(r"[0-9.]+", value):  # looks like a bad IPv4 address, e.g. 192.168.0.300
        return False
    return all(_HOST_LABEL.match(label) for label in value.rstrip(".").split("."))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# Retry policy bounds (issue 11 item 4; reasons in docs/admin-api.md "Retry settings"). Seed 000 only
# says "0 or greater" and "greater than 0"; unbounded values overflow the result-window arithmetic
# and would hold a Pending/Inflight order lock for days.
MAX_RETRIES_MAX = 10
RETRY_TIMEOUT_SECONDS_MAX = 3600


def retry_settings_problems(max_retries: Any, retry_timeout_seconds: Any) -> dict[str, str]:
    """What is wrong with a destination's retry policy, by field (empty when both are in range).
    Used on admin input and again on stored destinations before a job is queued (documents written
    before the bounds existed may hold anything)."""
    problems = {}
    if not _is_int(max_retries) or not 0 <= max_retries <= MAX_RETRIES_MAX:
        problems["max_retries"] = f"must be an integer from 0 to {MAX_RETRIES_MAX}"
    if not _is_int(retry_timeout_seconds) or not 1 <= retry_timeout_seconds <= RETRY_TIMEOUT_SECONDS_MAX:
        problems["retry_timeout_seconds"] = f"must be an integer from 1 to {RETRY_TIMEOUT_SECONDS_MAX} (seconds)"
    return problems


def _facility_list(value: Any, field: str, errors: dict[str, str]) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, (list, tuple)) or not all(is_valid_id(v) for v in value):
        errors[field] = "must be a list of facility ids"
        return ()
    if len(set(value)) != len(value):
        errors[field] = "must not repeat a facility"
    return tuple(value)


def _required_text(data: Mapping[str, Any], key: str, errors: dict[str, str], max_len: int) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value.strip():
        errors[key] = "is required"
        return ""
    if len(value) > max_len:
        errors[key] = f"must be at most {max_len} characters"
    return value.strip()


def validate_gateway(
    data: Mapping[str, Any],
    *,
    gateway_id: str,
    facility_group_id: str,
    group_facility_ids: frozenset[str],
    topic_id: str,
    subscription_id: str,
) -> Gateway:
    """Build a Gateway from admin input. Facilities must belong to the gateway's facility group."""
    errors: dict[str, str] = {}
    name = _required_text(data, "name", errors, 100)
    description = data.get("description") or ""
    if not isinstance(description, str) or len(description) > 500:
        errors["description"] = "must be text of at most 500 characters"
        description = ""
    facilities = _facility_list(data.get("facility_ids"), "facility_ids", errors)
    unknown = [f for f in facilities if f not in group_facility_ids]
    if unknown and "facility_ids" not in errors:
        errors["facility_ids"] = "every facility must belong to the facility group"
    active = data.get("active", True)
    if not isinstance(active, bool):
        errors["active"] = "must be true or false"
    if errors:
        raise ValidationFailed(errors)
    return Gateway(
        id=gateway_id,
        facility_group_id=facility_group_id,
        name=name,
        description=description,
        facility_ids=facilities,
        active=active,
        topic_id=topic_id,
        subscription_id=subscription_id,
    )


def validate_destination(
    data: Mapping[str, Any],
    *,
    destination_id: str,
    facility_group_id: str,
    gateway: Optional[Gateway],
    group_facility_ids: frozenset[str],
    now: datetime,
    previous: Optional[Destination] = None,
) -> Destination:
    """Build a Destination from admin input, checking every rule of seed 000 "Complete the
    Destination Fields" and "Configure Auto Archive". ``gateway`` is the gateway the input names,
    looked up in the caller's facility group (None if it is not there)."""
    errors: dict[str, str] = {}
    name = _required_text(data, "name", errors, 100)

    dtype = data.get("type")
    if dtype not in DESTINATION_TYPES:
        errors["type"] = "is required and must be one of: " + ", ".join(DESTINATION_TYPES)

    host = data.get("host")
    if not is_valid_host(host):
        errors["host"] = "is required and must be an IP address or host name"

    port = data.get("port")
    if not _is_int(port) or not 1 <= port <= 65535:
        errors["port"] = "is required and must be an integer from 1 to 65535"

    for key in ("called_ae_title", "calling_ae_title"):
        if not is_valid_ae_title(data.get(key)):
            errors[key] = "is required: 1-16 characters, no spaces, backslash or control characters"
    moving = data.get("moving_ae_title") or None
    if moving is not None and not is_valid_ae_title(moving):
        errors["moving_ae_title"] = "must be 1-16 characters, no spaces, backslash or control characters"

    gateway_id = data.get("gateway_id")
    if not gateway_id:
        errors["gateway_id"] = "is required"
    elif gateway is None or gateway.id != gateway_id or gateway.facility_group_id != facility_group_id:
        # Seed 000 Troubleshooting: "selected Gateway belongs to a different Facility Group".
        errors["gateway_id"] = "must name a gateway of the same facility group"

    facilities = _facility_list(data.get("facility_ids"), "facility_ids", errors)
    if facilities and "facility_ids" not in errors:
        if any(f not in group_facility_ids for f in facilities):
            errors["facility_ids"] = "every facility must belong to the facility group"
        elif gateway is not None and gateway.facility_ids and not set(facilities) <= set(gateway.facility_ids):
            # Seed 000: "Only facilities already linked to the selected Gateway can be chosen."
            errors["facility_ids"] = "every facility must be one the selected gateway serves"

    max_retries = data.get("max_retries", 3)
    retry_timeout = data.get("retry_timeout_seconds", 10)
    errors.update(retry_settings_problems(max_retries, retry_timeout))

    ts = data.get("transfer_syntax_uid") or None
    if ts is not None and not is_valid_uid(ts):
        errors["transfer_syntax_uid"] = "must be a valid DICOM UID"
    excluded = data.get("excluded_sop_class_uids") or []
    if not isinstance(excluded, (list, tuple)) or not all(is_valid_uid(u) for u in excluded):
        errors["excluded_sop_class_uids"] = "must be a list of valid DICOM UIDs"
        excluded = []

    auto_archive = data.get("auto_archive", False)
    if not isinstance(auto_archive, bool):
        errors["auto_archive"] = "must be true or false"
        auto_archive = False
    trigger_raw = data.get("trigger_status")
    trigger: Optional[ExamStatus] = None
    if trigger_raw is not None:
        try:
            trigger = ExamStatus(str(trigger_raw).upper())
        except ValueError:
            errors["trigger_status"] = "must be one of PENDING, INFLIGHT, COMPLETED"
    if auto_archive and trigger is None and "trigger_status" not in errors:
        # Seed 000: "Choose one status from the radio buttons".
        errors["trigger_status"] = "is required when auto archive is on"

    hl7_host, hl7_port = data.get("hl7_host") or None, data.get("hl7_port")
    if hl7_host is not None and not is_valid_host(hl7_host):
        errors["hl7_host"] = "must be an IP address or host name"
    if hl7_port is not None and (not _is_int(hl7_port) or not 1 <= hl7_port <= 65535):
        errors["hl7_port"] = "must be an integer from 1 to 65535"
    if (hl7_host is None) != (hl7_port is None) and "hl7_host" not in errors and "hl7_port" not in errors:
        errors["hl7_port" if hl7_port is None else "hl7_host"] = "the HL7 endpoint needs both host and port"
    hl7_names = {}
    for key in ("hl7_receiving_application", "hl7_receiving_facility"):
        value = data.get(key) or ""
        if not isinstance(value, str) or len(value) > 64 or any(c in value for c in "|^~\\&\r\n"):
            errors[key] = "must be text of at most 64 characters without HL7 delimiters"
            value = ""
        hl7_names[key] = value

    flags = {}
    for key, default in (("support_iocm", False), ("allow_prefetch", False), ("storage_commitment", False), ("active", True)):
        value = data.get(key, default)
        if not isinstance(value, bool):
            errors[key] = "must be true or false"
        flags[key] = value

    if errors:
        raise ValidationFailed(errors)

    # The no-retroactive-archiving instant moves only when auto archive is switched on or its
    # trigger status changes; editing other fields keeps it.
    since = now
    if previous is not None and previous.auto_archive and auto_archive and previous.trigger_status == trigger:
        since = previous.auto_archive_since or now
    return Destination(
        id=destination_id,
        facility_group_id=facility_group_id,
        name=name,
        type=dtype,
        host=host,
        port=port,
        called_ae_title=data["called_ae_title"],
        calling_ae_title=data["calling_ae_title"],
        moving_ae_title=moving,
        gateway_id=gateway_id,
        facility_ids=facilities,
        max_retries=max_retries,
        retry_timeout_seconds=retry_timeout,
        transfer_syntax_uid=ts,
        excluded_sop_class_uids=tuple(excluded),
        auto_archive=auto_archive,
        trigger_status=trigger if auto_archive else None,
        auto_archive_since=since if auto_archive else None,
        support_iocm=flags["support_iocm"],
        allow_prefetch=flags["allow_prefetch"],
        storage_commitment=flags["storage_commitment"],
        active=flags["active"],
        hl7_host=hl7_host,
        hl7_port=hl7_port,
        **hl7_names,
        created_at=previous.created_at if previous else now,
        created_by=previous.created_by if previous else "",
        updated_at=now,
    )


# --- Values that inbound events copy into DICOM objects, HL7 messages and job messages ----------
# Checked when an event is mapped, before anything is read or written, so that a payload the
# builders would refuse is dead-lettered with its reason on the first delivery (rule 2) instead of
# failing late and being retried. Each check names a rule, never the value (patient data).

# A study's storage prefix (contract job-message.v1 "study_prefix", ARCHITECTURE rule 9): a bucket
# and at least one non-empty folder name, no empty segment; the trailing '/' may be left out.
_STUDY_PREFIX = re.compile(r"^gs://[a-z0-9][a-z0-9._-]{1,221}[a-z0-9]/([^/\x00-\x1f\x7f]+/)*[^/\x00-\x1f\x7f]+/?$")


def study_prefix(uri: str) -> str:
    """The study storage prefix ``uri`` names, ending in '/': ``gs://b/fg/1.2.3`` is the folder
    ``gs://b/fg/1.2.3/``. Without the '/', a prefix listing would also match a sibling study
    (``…/1.2.34/``); a bare bucket would list every study. Raises ValueError for those."""
    if not isinstance(uri, str) or len(uri) > 1100 or not _STUDY_PREFIX.match(uri):
        raise ValueError("must be gs://<bucket>/<study prefix>/ (a bucket alone or an empty folder name is refused)")
    return uri if uri.endswith("/") else uri + "/"


_DA = re.compile(r"^[0-9]{8}$")
# PS3.5 6.2 TM: HH[MM[SS[.F{1,6}]]], hours 00-23, minutes 00-59, seconds 00-59.
_TM = re.compile(r"^([01][0-9]|2[0-3])([0-5][0-9]([0-5][0-9](\.[0-9]{1,6})?)?)?$")
_DICOM_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# HL7 v2.5.1 section 2.7: a CR or LF inside a value would end the segment; hl7apy also splits
# lines at NEL, U+2028 and U+2029 (the same set as shared/hl7/adt.py).
_HL7_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_HL7_TYPE_CODE = re.compile(r"^[A-Z0-9]{1,5}$")  # table 0203 codes: MR, PI, PT, NNUSA, ...
HL7_NAMESPACE_MAX = 20  # HD.1 is IS(20), 2.5.1 section 2.A.33


def is_encodable(value: Any) -> bool:
    """Text that UTF-8 can carry: JSON may hold a lone surrogate (\\ud800), which no DICOM or HL7
    encoder can write."""
    if not isinstance(value, str):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def is_valid_date(value: Any) -> bool:
    """DICOM DA / HL7 DT to the day: YYYYMMDD and a real calendar date (PS3.5 6.2)."""
    if not isinstance(value, str) or not _DA.match(value):
        return False
    try:
        datetime.strptime(value, "%Y%m%d")
    except ValueError:
        return False
    return True


def is_valid_dicom_time(value: Any) -> bool:
    return isinstance(value, str) and bool(_TM.match(value))


def is_valid_dicom_text(value: Any, max_len: int) -> bool:
    """LO/SH (PS3.5 6.2), single-valued: at most ``max_len`` characters, no backslash (the value
    separator) and no control characters."""
    return (is_encodable(value) and len(value) <= max_len and "\\" not in value
            and not _DICOM_CONTROL.search(value))


def is_valid_person_name(value: Any) -> bool:
    """PN (PS3.5 6.2.1): at most 3 component groups ('='), each of at most 5 components ('^') and
    64 characters; no backslash or control characters."""
    if not is_encodable(value) or "\\" in value or _DICOM_CONTROL.search(value):
        return False
    groups = value.split("=")
    return len(groups) <= 3 and all(len(g) <= 64 and g.count("^") <= 4 for g in groups)


def is_valid_hl7_text(value: Any, *, required: bool = False, max_len: Optional[int] = None) -> bool:
    """An HL7 v2 leaf value as shared/hl7/adt.py takes it: no control characters; surrounding
    blanks are not significant (2.5.1 section 2.A.74), so a required value must not be blank."""
    if not is_encodable(value) or _HL7_CONTROL.search(value):
        return False
    text = value.strip()
    return not (required and not text) and (max_len is None or len(text) <= max_len)


def is_valid_hl7_type_code(value: Any) -> bool:
    return is_valid_hl7_text(value) and (value.strip() == "" or bool(_HL7_TYPE_CODE.match(value.strip())))


def is_valid_oid(value: Any) -> bool:
    """An ISO OID as DICOM (UI, PS3.5 9.1) and HL7 (HD.2 with HD.3 'ISO') carry it."""
    return is_valid_uid(value)

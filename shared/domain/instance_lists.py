"""Instance lists of DICOM jobs (contract ``instance-list.v1``; issue 11 item 3): pure naming and
encoding. A study change may name 50,000 instances (study-changed.v1 maxItems); at ~200 bytes each
that is ~10 MB, beyond a Firestore document (1 MiB) and at a Pub/Sub message's limit (10 MB). So
the list is a JSON object in Cloud Storage under the gateway's own prefix — the only one its
service account may read — and the job document and message carry its URI and count."""
from __future__ import annotations

import json
from typing import Any, Sequence

from .errors import MalformedInput

SCHEMA_VERSION = "1"
MAX_INSTANCES = 50_000  # study-changed.v1: instances maxItems
_KEYS = ("series_instance_uid", "sop_class_uid", "sop_instance_uid")


def object_name(gateway_id: str, job_id: str) -> str:
    """Where a job's list lives: named by the job's deterministic id, so a redelivered event
    rewrites the same bytes to the same object instead of leaving a second one behind."""
    return f"gateways/{gateway_id}/instances/{job_id}.json"


def rehomed_name(uri: str, gateway_id: str) -> str:
    """The object name of ``uri`` (``gs://bucket/gateways/<gw>/<rest>``) under another gateway's
    prefix: a job re-routed to another gateway takes copies of its objects with it, because each
    gateway's service account reads only its own prefix."""
    _, _, name = uri.partition("gs://")[2].partition("/")
    head, _, rest = name.partition("/")
    _, _, rest = rest.partition("/")
    if head != "gateways" or not rest:
        raise ValueError("not an object under a gateway's prefix")
    return f"gateways/{gateway_id}/{rest}"


def gateway_of(uri: str) -> str:
    """The gateway whose prefix holds ``uri`` ("" if none)."""
    name = uri.partition("gs://")[2].partition("/")[2]
    head, _, rest = name.partition("/")
    return rest.partition("/")[0] if head == "gateways" else ""


def encode(study_instance_uid: str, instances: Sequence[dict]) -> bytes:
    """Deterministic bytes (same list, same bytes): a rewrite by a redelivery changes nothing."""
    if len(instances) > MAX_INSTANCES:
        raise MalformedInput(f"instance-list.v1: more than {MAX_INSTANCES} instances")
    body = {"schema_version": SCHEMA_VERSION, "study_instance_uid": study_instance_uid,
            "instances": [{k: i[k] for k in _KEYS} for i in instances]}
    return json.dumps(body, separators=(",", ":")).encode()


def decode(data: bytes) -> tuple[str, list[dict]]:
    """(study UID, instances) of an instance-list.v1 object written by :func:`encode`."""
    try:
        body: Any = json.loads(data)
        instances = body["instances"]
        if body.get("schema_version") != SCHEMA_VERSION or not isinstance(instances, list):
            raise ValueError
        return str(body["study_instance_uid"]), [{k: str(i[k]) for k in _KEYS} for i in instances]
    except (ValueError, KeyError, TypeError):
        raise MalformedInput("instance-list.v1: not an instance list") from None


def merge(lists: Sequence[Sequence[dict]]) -> list[dict]:
    """Concatenate, keeping the first of each SOP Instance UID: one job never sends an instance twice."""
    seen: set[str] = set()
    out = []
    for items in lists:
        for i in items:
            if i["sop_instance_uid"] not in seen:
                seen.add(i["sop_instance_uid"])
                out.append(i)
    return out

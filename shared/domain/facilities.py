"""Facility groups and facilities are the platform's master data (ARCHITECTURE.md "Contracts";
issue 11 item 1). They arrive as facility-changed.v1 events carrying the entity's whole state and a
version; this module decides, purely, what an event does to the stored state (docs/facilities.md).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping, Optional, TypeVar, Union

from ..clock import parse_time
from .errors import MalformedInput
from .models import Facility, FacilityGroup

GROUP_EVENT = "facility_group.changed"
FACILITY_EVENT = "facility.changed"

Entity = TypeVar("Entity", FacilityGroup, Facility)


@dataclass(frozen=True)
class Applied:
    """What an event did: ``applied`` (stored), ``duplicate`` (same version already stored) or
    ``stale`` (a newer version is stored: an older event arrived late)."""

    outcome: str
    entity: Union[FacilityGroup, Facility]


def from_event(payload: Mapping[str, Any]) -> Union[FacilityGroup, Facility]:
    """The state a payload (already valid against facility-changed.v1) describes."""
    try:
        at = parse_time(payload["event_time"])
    except ValueError:
        raise MalformedInput("facility-changed.v1: event_time lacks a UTC offset or is not a date-time") from None
    removed = bool(payload.get("removed", False))
    common = dict(name=payload.get("name", ""), version=payload["version"], removed=removed, updated_at=at)
    if payload["event_type"] == GROUP_EVENT:
        return FacilityGroup(id=payload["facility_group_id"], **common)
    return Facility(id=payload["facility_id"], facility_group_id=payload["facility_group_id"],
                    send_adt=bool(payload.get("send_adt", False)), **common)


def apply(current: Optional[Entity], incoming: Entity) -> tuple[str, Optional[Entity]]:
    """The outcome and the state to store (None: store nothing). Versions make it order-safe and
    idempotent: only a higher version replaces what is stored. A removal keeps the last known name
    and Send ADT setting in its tombstone (the tombstone also stops a late, older upsert from
    bringing the entity back); a later, higher version may restore it."""
    if current is not None and incoming.version <= current.version:
        return ("duplicate" if incoming.version == current.version else "stale"), None
    if incoming.removed:
        last = current if current is not None and not current.removed else None
        keep: dict[str, Any] = {"name": last.name if last else (current.name if current else "")}
        if isinstance(incoming, Facility):
            keep["send_adt"] = last.send_adt if isinstance(last, Facility) else False
        incoming = dataclasses.replace(incoming, **keep)
    return "applied", incoming

"""``on_facility_changed``: keep this product's copy of the platform's facility groups and
facilities in step (contract facility-changed.v1; issue 11 item 1; docs/facilities.md)."""
from __future__ import annotations

from functools import partial

from .. import logs
from ..domain import facilities
from ..domain.models import Facility
from ..ports import FacilityStore


class FacilitySyncService:
    def __init__(self, store: FacilityStore):
        self._store = store

    def handle(self, payload: dict) -> str:
        """``payload`` is valid against facility-changed.v1. Returns applied | duplicate | stale."""
        incoming = facilities.from_event(payload)
        decide = partial(facilities.apply, incoming=incoming)
        fg = payload["facility_group_id"]
        if isinstance(incoming, Facility):
            outcome = self._store.transact_facility(fg, incoming.id, decide)
        else:
            outcome = self._store.transact_facility_group(fg, decide)
        # Names are the platform's, not patient data; the log still carries ids only.
        logs.info("facility master data", event_id=payload["event_id"], event_type=payload["event_type"],
                  facility_group_id=fg, facility_id=payload.get("facility_id"), version=incoming.version,
                  removed=incoming.removed, outcome=outcome)
        return outcome

"""Firestore side of gateway health and of the sweeper's monitoring queries (issue 15 items 2-3),
mixed into FirestoreStore (it uses its client, paths and counters).

  facility_groups/{fg}/gateway_health/{gateway}   last result, heartbeat and pull of a gateway

Health lives in its own document, never in the gateway's: administrators write that one, and a
busy gateway's contacts would contend with their edits (~1 write/s per document).
"""
from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Optional, Sequence

from google.api_core import exceptions as gexc
from google.cloud.firestore_v1.base_query import FieldFilter

from ..domain.errors import Contention
from ..domain.health import MIN_WRITE_INTERVAL_SECONDS, GatewayHealth, contact_update
from ..domain.models import Job, JobState
from . import codec

GATEWAY_HEALTH = "gateway_health"
JOBS = "jobs"

# Composite indexes of the queries below (added to COMPOSITE_INDEXES in firestore_store.py,
# declared in infra/firestore_monitoring.tf).
MONITORING_INDEXES = (
    # stale_queued_jobs: held == false AND published == true AND state == QUEUED AND queued_at <= t
    (JOBS, "COLLECTION_GROUP", (("held", "ASCENDING"), ("published", "ASCENDING"), ("state", "ASCENDING"),
                                ("queued_at", "ASCENDING"))),
    # overdue_locks: lock_held == true AND queued_at <= t
    (JOBS, "COLLECTION_GROUP", (("lock_held", "ASCENDING"), ("queued_at", "ASCENDING"))),
)


def _health_from_doc(fg: str, gateway_id: str, d: dict[str, Any]) -> GatewayHealth:
    return GatewayHealth(fg, gateway_id, codec._utc(d.get("last_result_at")), codec._utc(d.get("last_heartbeat_at")),
                         codec._utc(d.get("last_pull_at")))


class HealthQueries:
    """Mixin of FirestoreStore: ``self._db``, ``self._group``, ``self._read``, ``self.ops``."""

    _db: Any
    ops: Any
    _group: Any  # FirestoreStore._group(fg): the group's document
    _read: Any  # FirestoreStore._read(n): counts reads

    def _health_ref(self, fg: str, gateway_id: str) -> Any:
        return self._group(fg).collection(GATEWAY_HEALTH).document(gateway_id)

    def gateway_health(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], GatewayHealth]:
        """Health of each (facility group, gateway) in ``keys`` that has been in contact, in one batched read."""
        from .firestore_store import _translated

        keys = list(dict.fromkeys(keys))
        if not keys:
            return {}
        refs = [self._health_ref(fg, gw) for fg, gw in keys]
        with _translated():
            snaps = list(self._db.get_all(refs))
        self._read(len(refs))
        out = {}
        for s in snaps:
            if s.exists:
                fg = s.reference.parent.parent.id
                out[(fg, s.id)] = _health_from_doc(fg, s.id, s.to_dict())
        return out

    def record_contact(self, fg: str, gateway_id: str, kind: str, at: datetime, *,
                       last_pull_at: Optional[datetime] = None,
                       min_interval_seconds: int = MIN_WRITE_INTERVAL_SECONDS) -> bool:
        """Record that the gateway was in contact (``kind``: result | heartbeat) at ``at``; True if
        written. Throttled: a contact within ``min_interval_seconds`` of the stored one of the same
        kind writes nothing, and this instance skips even the read while its own last write is that
        recent. Concurrent writers: the write is conditional on the version read, a loser writes
        nothing (the winner recorded the same minute)."""
        from .firestore_store import _translated

        cache: dict = self.__dict__.setdefault("_health_written", {})
        mine = cache.get((fg, gateway_id, kind))
        if mine is not None and timedelta(0) <= at - mine < timedelta(seconds=min_interval_seconds) and last_pull_at is None:
            return False
        ref = self._health_ref(fg, gateway_id)
        with _translated():
            snap = ref.get()
        self._read()
        stored = _health_from_doc(fg, gateway_id, snap.to_dict()) if snap.exists else None
        fields = contact_update(stored, kind, at, last_pull_at=last_pull_at, min_interval_seconds=min_interval_seconds)
        if fields is None:
            return False
        try:
            with _translated():
                if snap.exists:
                    ref.update(fields, option=self._db.write_option(last_update_time=snap.update_time))
                else:
                    ref.create({"facility_group_id": fg, "gateway_id": gateway_id, **fields})
        except (gexc.FailedPrecondition, gexc.AlreadyExists, Contention):
            self.ops.refused += 1
            return False
        self.ops.writes += 1
        cache[(fg, gateway_id, kind)] = at
        return True

    def stale_queued_jobs(self, queued_before: datetime, limit: int) -> list[Job]:
        """Published, not held jobs still QUEUED (no gateway took them) since before ``queued_before``,
        oldest first."""
        q = (self._db.collection_group(JOBS)
             .where(filter=FieldFilter("held", "==", False))
             .where(filter=FieldFilter("published", "==", True))
             .where(filter=FieldFilter("state", "==", JobState.QUEUED.value))
             .where(filter=FieldFilter("queued_at", "<=", queued_before))
             .order_by("queued_at")
             .limit(limit))
        return self._job_list(q)

    def overdue_locks(self, queued_before: datetime, limit: int) -> list[Job]:
        """Jobs holding their exam's order lock since before ``queued_before``, oldest first."""
        q = (self._db.collection_group(JOBS)
             .where(filter=FieldFilter("lock_held", "==", True))
             .where(filter=FieldFilter("queued_at", "<=", queued_before))
             .order_by("queued_at")
             .limit(limit))
        return self._job_list(q)

    def _job_list(self, query: Any) -> list[Job]:
        from .firestore_store import _translated

        with _translated():
            docs = list(query.stream())
        self._read(len(docs))
        return [codec.job_from_doc(d.to_dict()) for d in docs]

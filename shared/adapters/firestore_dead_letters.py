"""Firestore adapter: the DeadLetterIndex port. One document per dead-lettered message,
``dead_letters/{kind}-{dead-letter message id}`` (ids from shared.domain.dead_letters.record_id),
created once when the message is collected from its audit subscription; a replay updates it in a
transaction. Top-level: dead letters belong to the platform team, not to a facility group."""
from __future__ import annotations

from datetime import datetime
from typing import Any, Optional

from google.api_core import exceptions as gexc
from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter

from ..domain.dead_letters import DeadLetterRecord, DeadLetterState
from .firestore_store import _translated

DEAD_LETTERS = "dead_letters"
# A record keeps the last few replays' message ids (how a replay is found in the logs).
KEPT_REPLAY_IDS = 10


def _to_doc(r: DeadLetterRecord) -> dict[str, Any]:
    return {
        "kind": r.kind, "state": r.state.value, "message_id": r.message_id, "dead_letter_topic": r.dead_letter_topic,
        "original_topic": r.original_topic, "function": r.function, "reason": r.reason, "reason_code": r.reason_code,
        "original_message_id": r.original_message_id, "source_subscription": r.source_subscription,
        "delivery_attempts": r.delivery_attempts, "dead_lettered_at": r.dead_lettered_at, "collected_at": r.collected_at,
        "ids": dict(r.ids), "size_bytes": r.size_bytes, "data": r.data, "replay_attributes": dict(r.replay_attributes),
        "replay_count": r.replay_count, "last_replayed_at": r.last_replayed_at, "last_replayed_by": r.last_replayed_by,
        "replay_message_ids": list(r.replay_message_ids),
    }


def _from_doc(doc_id: str, d: dict[str, Any]) -> DeadLetterRecord:
    return DeadLetterRecord(
        id=doc_id, kind=d["kind"], message_id=d["message_id"], dead_letter_topic=d["dead_letter_topic"],
        original_topic=d.get("original_topic") or "", function=d.get("function") or "", reason=d.get("reason") or "",
        reason_code=d.get("reason_code") or "UNKNOWN", original_message_id=d.get("original_message_id") or "",
        source_subscription=d.get("source_subscription") or "", delivery_attempts=d.get("delivery_attempts"),
        dead_lettered_at=d.get("dead_lettered_at"), collected_at=d["collected_at"], ids=d.get("ids") or {},
        size_bytes=int(d.get("size_bytes") or 0), data=bytes(d.get("data") or b""),
        replay_attributes=d.get("replay_attributes") or {}, state=DeadLetterState(d.get("state", "PARKED")),
        replay_count=int(d.get("replay_count") or 0), last_replayed_at=d.get("last_replayed_at"),
        last_replayed_by=d.get("last_replayed_by") or "", replay_message_ids=tuple(d.get("replay_message_ids") or ()))


class FirestoreDeadLetterIndex:
    def __init__(self, client: firestore.Client):
        self._db = client

    def _ref(self, record_id: str) -> firestore.DocumentReference:
        return self._db.collection(DEAD_LETTERS).document(record_id)

    def create(self, record: DeadLetterRecord) -> bool:
        try:
            with _translated():
                self._ref(record.id).create(_to_doc(record))
        except gexc.AlreadyExists:
            return False
        return True

    def get(self, record_id: str) -> Optional[DeadLetterRecord]:
        with _translated():
            snap = self._ref(record_id).get()
        return _from_doc(snap.id, snap.to_dict()) if snap.exists else None

    def list(self, kind: Optional[str], state: Optional[str], limit: int, after: Optional[str]) -> list[DeadLetterRecord]:
        # Equality filters ordered by document id only: served by Firestore's single-field
        # indexes, no composite index needed. Ids start with the kind, so a kind is a range.
        query: Any = self._db.collection(DEAD_LETTERS)
        if kind:
            query = query.where(filter=FieldFilter("kind", "==", kind))
        if state:
            query = query.where(filter=FieldFilter("state", "==", state))
        query = query.order_by("__name__")
        if after:
            query = query.start_after({"__name__": self._ref(after)})
        with _translated():
            return [_from_doc(s.id, s.to_dict()) for s in query.limit(limit).stream()]

    def mark_replayed(self, record_id: str, at: datetime, by: str, message_id: str) -> Optional[DeadLetterRecord]:
        ref = self._ref(record_id)
        transaction = self._db.transaction()

        @firestore.transactional
        def run(tx: Any) -> Optional[DeadLetterRecord]:
            snap = ref.get(transaction=tx)
            if not snap.exists:
                return None
            d = snap.to_dict()
            ids = (list(d.get("replay_message_ids") or []) + [message_id])[-KEPT_REPLAY_IDS:]
            update = {"state": DeadLetterState.REPLAYED.value, "replay_count": int(d.get("replay_count") or 0) + 1,
                      "last_replayed_at": at, "last_replayed_by": by[:256], "replay_message_ids": ids}
            tx.update(ref, update)
            return _from_doc(snap.id, {**d, **update})

        with _translated():
            return run(transaction)

"""Dead-letter redrive (issue 15 item 4), the pure part: what a parked message is (ids and reasons,
never patient data), where it came from, and what is published when it is replayed.

Two dead-letter topics exist (infra/pubsub.tf local.dead_letter):
- ``inbound``: platform events a function rejected (shared/services/dead_letter.py publishes them
  with ``reason``, ``function``, ``original_message_id``, ``source``) and inbound messages Pub/Sub
  gave up on after the push subscription's max delivery attempts;
- ``gateway``: job messages no gateway acked within its subscription's max delivery attempts.
Messages Pub/Sub itself dead-letters keep their own attributes and gain
``CloudPubSubDeadLetterSource*`` ones (the source subscription, its project, the delivery count)."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from typing import Any, Mapping, Optional

KINDS = ("inbound", "gateway")

# Pub/Sub's own attributes on a message it dead-lettered.
SOURCE_SUBSCRIPTION = "CloudPubSubDeadLetterSourceSubscription"
SOURCE_PROJECT = "CloudPubSubDeadLetterSourceSubscriptionProject"
SOURCE_DELIVERIES = "CloudPubSubDeadLetterSourceDeliveryCount"
PUBSUB_PREFIX = "CloudPubSubDeadLetter"
# The attributes shared/services/dead_letter.py puts on a message a function rejected
# (contract dead-letter.v1); they describe the rejection, not the message, so a replay drops them.
REJECTION_ATTRIBUTES = frozenset({"reason", "function", "original_message_id", "source", "event_id", "reason_code"})
# Marks a replayed message (its dead-letter id) so logs can tie the second life to the first.
REDRIVE_ATTRIBUTE = "archsync_redrive_id"

# Pub/Sub message ids are decimal; the emulator's too. Kept loose but path- and query-safe.
_MESSAGE_ID = re.compile(r"^[A-Za-z0-9_-]{1,100}$")
DEAD_LETTER_ID = re.compile(r"^(inbound|gateway)-([A-Za-z0-9_-]{1,100})$")
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
_TOPIC = re.compile(r"^//pubsub\.googleapis\.com/projects/([^/]+)/topics/([^/]+)$")
# The payload fields a listing may show: identifiers only. Exam events carry the patient's MRN,
# name and accession, ADT job messages an HL7 message: none of those is ever read from the data.
_ID_FIELDS = ("event_id", "event_type", "facility_group_id", "facility_id", "job_id", "job_type", "gateway_id")
# What we keep of a message: Firestore documents hold at most 1 MiB; the rest of the document
# (ids, reason, attributes) stays far below the margin left.
MAX_STORED_BYTES = 900 * 1024


class DeadLetterState(str, Enum):
    PARKED = "PARKED"  # waiting for an operator
    REPLAYED = "REPLAYED"  # published back to its original topic at least once


@dataclass(frozen=True)
class ParkedMessage:
    """A message as pulled from a dead-letter topic's audit subscription."""

    message_id: str
    data: bytes
    attributes: Mapping[str, str]
    publish_time: Optional[datetime]


@dataclass(frozen=True)
class DeadLetterRecord:
    """One dead-lettered message in the durable index (``id`` = "<kind>-<dead-letter message id>").
    ``data`` and ``replay_attributes`` are what a replay publishes; every other field is an id, a
    count, a time or a reason (reasons name fields, never values: docs/auto-archive.md)."""

    id: str
    kind: str
    message_id: str
    dead_letter_topic: str
    original_topic: str  # "" when it cannot be known (its subscription is gone): not replayable
    function: str
    reason: str
    reason_code: str
    original_message_id: str
    source_subscription: str
    delivery_attempts: Optional[int]
    dead_lettered_at: Optional[datetime]
    collected_at: datetime
    ids: Mapping[str, str]
    size_bytes: int
    data: bytes
    replay_attributes: Mapping[str, str]
    state: DeadLetterState = DeadLetterState.PARKED
    replay_count: int = 0
    last_replayed_at: Optional[datetime] = None
    last_replayed_by: str = ""
    replay_message_ids: tuple[str, ...] = field(default=())

    def summary(self) -> dict[str, Any]:
        """What the API and the command show: never the data, never the message's attributes
        (a platform may put anything in them)."""
        return {
            "id": self.id, "kind": self.kind, "state": self.state.value, "message_id": self.message_id,
            "dead_letter_topic": self.dead_letter_topic, "original_topic": self.original_topic or None,
            "replayable": bool(self.original_topic), "function": self.function or None, "reason": self.reason,
            "reason_code": self.reason_code, "original_message_id": self.original_message_id or None,
            "source_subscription": self.source_subscription or None, "delivery_attempts": self.delivery_attempts,
            "dead_lettered_at": _iso(self.dead_lettered_at), "collected_at": _iso(self.collected_at),
            **{k: self.ids.get(k) for k in _ID_FIELDS}, "size_bytes": self.size_bytes,
            "replay_count": self.replay_count, "last_replayed_at": _iso(self.last_replayed_at),
            "last_replayed_by": self.last_replayed_by or None,
        }


def _iso(t: Optional[datetime]) -> Optional[str]:
    return t.isoformat() if t else None


def record_id(kind: str, message_id: str) -> str:
    """Deterministic: collecting the same dead-letter message twice finds the first record."""
    if kind not in KINDS or not _MESSAGE_ID.match(message_id):
        raise ValueError("not a dead-letter message id")
    return f"{kind}-{message_id}"


def is_record_id(value: Any) -> bool:
    return isinstance(value, str) and bool(DEAD_LETTER_ID.match(value))


def rejected_by_function(attributes: Mapping[str, str]) -> bool:
    """Published by shared/services/dead_letter.py (a function refused it), not by Pub/Sub."""
    return SOURCE_SUBSCRIPTION not in attributes and "function" in attributes and "reason" in attributes


def topic_of_source(source: str, project_id: str) -> str:
    """The topic id of a CloudEvent source //pubsub.googleapis.com/projects/P/topics/T, if it is
    one of this project's topics ("" otherwise: never replay into another project)."""
    m = _TOPIC.match(source or "")
    return m.group(2) if m and m.group(1) == project_id else ""


def reason_code(attributes: Mapping[str, str]) -> str:
    """A bounded code per dead letter: the publisher's own ``reason_code`` attribute when it sets
    one (upper snake case), else DELIVERY_ATTEMPTS_EXHAUSTED for what Pub/Sub dead-lettered,
    BAD_ENVELOPE for what was not even a Pub/Sub message, REJECTED for any other permanent
    refusal by a function, UNKNOWN for anything else published to a dead-letter topic."""
    code = attributes.get("reason_code", "")
    if re.fullmatch(r"[A-Z][A-Z0-9_]{0,63}", code):
        return code
    if SOURCE_SUBSCRIPTION in attributes:
        return "DELIVERY_ATTEMPTS_EXHAUSTED"
    if rejected_by_function(attributes):
        reason = attributes["reason"]
        if reason.startswith(("not a Pub/Sub message envelope", "message data is not base64")):
            return "BAD_ENVELOPE"
        return "REJECTED"
    return "UNKNOWN"


def payload_ids(data: bytes) -> dict[str, str]:
    """The identifiers of a JSON payload (top level only; values that do not look like ids are
    left out), for the listing. Nothing else of the payload is ever read."""
    try:
        payload = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return {}
    if not isinstance(payload, dict):
        return {}
    return {k: payload[k] for k in _ID_FIELDS if isinstance(payload.get(k), str) and _SAFE_ID.match(payload[k])}


def describe(kind: str, message: ParkedMessage, *, dead_letter_topic: str, project_id: str,
             subscription_topic: Optional[str], collected_at: datetime) -> DeadLetterRecord:
    """The index record of a parked message. ``subscription_topic``: the topic id of its source
    subscription (Pub/Sub dead letters), looked up by the caller; None if there is none or it is gone."""
    attrs = dict(message.attributes)
    source_sub = attrs.get(SOURCE_SUBSCRIPTION, "")
    deliveries = attrs.get(SOURCE_DELIVERIES, "")
    if rejected_by_function(attrs):
        original_topic = topic_of_source(attrs.get("source", ""), project_id)
        replay_attributes = {k: v for k, v in attrs.items() if k not in REJECTION_ATTRIBUTES and not k.startswith(PUBSUB_PREFIX)}
        reason = attrs.get("reason", "")
        function = attrs.get("function", "")
        original_message_id = attrs.get("original_message_id", "")
    else:
        original_topic = subscription_topic or ""
        replay_attributes = {k: v for k, v in attrs.items() if not k.startswith(PUBSUB_PREFIX)}
        function = ""
        original_message_id = ""
        if source_sub:
            reason = f"not acknowledged after {deliveries or 'the maximum'} deliveries to subscription {source_sub}"
            if not subscription_topic:
                reason += " (the subscription no longer exists: its topic is unknown)"
        else:
            reason = "published to the dead-letter topic without a reason"
    replay_attributes.pop(REDRIVE_ATTRIBUTE, None)
    return DeadLetterRecord(
        id=record_id(kind, message.message_id), kind=kind, message_id=message.message_id,
        dead_letter_topic=dead_letter_topic, original_topic=original_topic, function=function[:128],
        reason=reason[:1024], reason_code=reason_code(attrs), original_message_id=original_message_id[:128],
        source_subscription=source_sub[:255], delivery_attempts=int(deliveries) if deliveries.isdigit() else None,
        dead_lettered_at=message.publish_time, collected_at=collected_at, ids=payload_ids(message.data),
        size_bytes=len(message.data), data=message.data, replay_attributes=replay_attributes)


def replay_attributes(record: DeadLetterRecord) -> dict[str, str]:
    return {**record.replay_attributes, REDRIVE_ATTRIBUTE: record.id}

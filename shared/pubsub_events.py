"""Decoding of Pub/Sub-delivered CloudEvents (google.cloud.pubsub.topic.v1.messagePublished)."""
from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from typing import Any, Mapping

from .domain.errors import MalformedInput


@dataclass(frozen=True)
class PubSubMessage:
    message_id: str
    data: bytes
    attributes: dict[str, str] = field(default_factory=dict)
    source: str = ""


def from_cloud_event_data(data: Any, source: str = "", ce_id: str = "") -> PubSubMessage:
    if not isinstance(data, Mapping) or not isinstance(data.get("message"), Mapping):
        raise MalformedInput("not a Pub/Sub message envelope")
    message = data["message"]
    try:
        raw = base64.b64decode(message.get("data") or "", validate=True)
    except (binascii.Error, ValueError, TypeError):
        raise MalformedInput("message data is not base64") from None
    attributes = message.get("attributes") or {}
    return PubSubMessage(
        message_id=str(message.get("messageId") or message.get("message_id") or ce_id),
        data=raw,
        attributes={str(k): str(v) for k, v in attributes.items()} if isinstance(attributes, Mapping) else {},
        source=source,
    )


def json_payload(message: PubSubMessage) -> Any:
    try:
        return json.loads(message.data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise MalformedInput("message data is not UTF-8 JSON") from None

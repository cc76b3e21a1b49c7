"""Running a Pub/Sub-triggered handler under rule 2: a malformed message goes to the dead-letter
topic with its reason and is acknowledged; anything transient raises so Pub/Sub redelivers."""
from __future__ import annotations

import re
from typing import Any, Callable

from .. import contracts, metrics
from ..domain.errors import PermanentError
from ..ports import MessageBus
from ..pubsub_events import PubSubMessage, from_cloud_event_data, json_payload


class DeadLetter:
    def __init__(self, bus: MessageBus, topic_id: str, function_name: str):
        self._bus = bus
        self._topic = topic_id
        self._function = function_name

    def send(self, message: PubSubMessage, reason: str, event_id: str = "", reason_code: str = "PERMANENT_ERROR") -> None:
        """``reason``: free text for people (ids, never values); ``reason_code``: a bounded code
        for metrics (reason_code_of), the label of archsync/dead_lettered (infra/monitoring.tf)."""
        attributes = {
            "reason": reason[:1024],
            "function": self._function,
            "original_message_id": message.message_id,
            "source": message.source,
        }
        if event_id:
            attributes["event_id"] = event_id
        # Raises if the dead-letter topic is unreachable, so the message is redelivered, not lost.
        self._bus.publish(self._topic, message.data, attributes)
        metrics.dead_lettered(self._function, reason_code, message.message_id, reason)


def reason_code_of(error: Exception) -> str:
    """A bounded code for a permanent failure: its error class in upper snake case
    (MalformedInput -> MALFORMED_INPUT), so the metric has a few label values, not one per message."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", type(error).__name__).upper()


def run_pubsub(cloud_event: Any, schema: str, handle: Callable[[dict], Any], dead_letter: DeadLetter) -> Any:
    """Decode a Pub/Sub CloudEvent, validate its payload against ``schema`` and hand it to
    ``handle``. Permanent failures are dead-lettered; TransientError propagates (the function
    fails, Pub/Sub retries)."""
    source, ce_id = str(cloud_event["source"]), str(cloud_event["id"])
    try:
        message = from_cloud_event_data(cloud_event.data, source, ce_id)
    except PermanentError as e:  # not even an envelope: park what there is
        dead_letter.send(PubSubMessage(ce_id, b"", {}, source), str(e), reason_code="BAD_ENVELOPE")
        return None
    event_id = ""
    try:
        payload = json_payload(message)
        if isinstance(payload, dict):
            event_id = str(payload.get("event_id", ""))[:128]
        contracts.validate(schema, payload)
        return handle(payload)
    except PermanentError as e:
        dead_letter.send(message, str(e), event_id, reason_code=reason_code_of(e))
        return None

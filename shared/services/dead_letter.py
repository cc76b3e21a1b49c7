"""Running a Pub/Sub-triggered handler under rule 2: a malformed message goes to the dead-letter
topic with its reason and is acknowledged; anything transient raises so Pub/Sub redelivers."""
from __future__ import annotations

from typing import Any, Callable

from .. import contracts, logs
from ..domain.errors import PermanentError
from ..ports import MessageBus
from ..pubsub_events import PubSubMessage, from_cloud_event_data, json_payload


class DeadLetter:
    def __init__(self, bus: MessageBus, topic_id: str, function_name: str):
        self._bus = bus
        self._topic = topic_id
        self._function = function_name

    def send(self, message: PubSubMessage, reason: str, event_id: str = "") -> None:
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
        logs.error("message dead-lettered", reason=reason, function=self._function, message_id=message.message_id)


def run_pubsub(cloud_event: Any, schema: str, handle: Callable[[dict], Any], dead_letter: DeadLetter) -> Any:
    """Decode a Pub/Sub CloudEvent, validate its payload against ``schema`` and hand it to
    ``handle``. Permanent failures are dead-lettered; TransientError propagates (the function
    fails, Pub/Sub retries)."""
    source, ce_id = str(cloud_event["source"]), str(cloud_event["id"])
    try:
        message = from_cloud_event_data(cloud_event.data, source, ce_id)
    except PermanentError as e:  # not even an envelope: park what there is
        dead_letter.send(PubSubMessage(ce_id, b"", {}, source), str(e))
        return None
    event_id = ""
    try:
        payload = json_payload(message)
        if isinstance(payload, dict):
            event_id = str(payload.get("event_id", ""))[:128]
        contracts.validate(schema, payload)
        return handle(payload)
    except PermanentError as e:
        dead_letter.send(message, str(e), event_id)
        return None

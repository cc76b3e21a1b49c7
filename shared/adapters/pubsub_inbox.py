"""Pub/Sub adapter: the DeadLetterInbox port, the audit pull subscriptions of the dead-letter
topics (infra/pubsub.tf). Synchronous pull, so a call takes what is there and returns."""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Optional, Sequence

from google.api_core import exceptions as gexc

from ..domain.dead_letters import ParkedMessage
from .errors import translated

PULL_TIMEOUT_SECONDS = 10.0


class PubSubInbox:
    def __init__(self, project_id: str, subscriber: Optional[Any] = None):
        self._project = project_id
        self._subscriber = subscriber

    @property
    def subscriber(self) -> Any:
        if self._subscriber is None:
            from google.cloud import pubsub_v1

            self._subscriber = pubsub_v1.SubscriberClient()
        return self._subscriber

    def _path(self, subscription_id: str, project_id: Optional[str] = None) -> str:
        return f"projects/{project_id or self._project}/subscriptions/{subscription_id}"

    def pull(self, subscription_id: str, max_messages: int) -> list[tuple[str, ParkedMessage]]:
        with translated(f"pull from subscription {subscription_id}"):
            try:
                # return_immediately: a listing must not wait for messages that are not there.
                # Pub/Sub may then answer with fewer than are waiting: they are collected next time.
                resp = self.subscriber.pull(request={"subscription": self._path(subscription_id),
                                                     "max_messages": max_messages, "return_immediately": True},
                                            timeout=PULL_TIMEOUT_SECONDS)
            except gexc.DeadlineExceeded:
                return []
        out = []
        for received in resp.received_messages:
            m = received.message
            publish_time = m.publish_time
            if publish_time is not None and not isinstance(publish_time, datetime):
                publish_time = None
            if publish_time is not None and publish_time.tzinfo is None:
                publish_time = publish_time.replace(tzinfo=timezone.utc)
            out.append((received.ack_id, ParkedMessage(m.message_id, bytes(m.data), dict(m.attributes), publish_time)))
        return out

    def ack(self, subscription_id: str, ack_ids: Sequence[str]) -> None:
        if ack_ids:
            with translated(f"ack on subscription {subscription_id}"):
                self.subscriber.acknowledge(request={"subscription": self._path(subscription_id), "ack_ids": list(ack_ids)})

    def release(self, subscription_id: str, ack_ids: Sequence[str]) -> None:
        if ack_ids:
            with translated(f"release on subscription {subscription_id}"):
                self.subscriber.modify_ack_deadline(request={"subscription": self._path(subscription_id),
                                                             "ack_ids": list(ack_ids), "ack_deadline_seconds": 0})

    def topic_of(self, project_id: str, subscription_id: str) -> Optional[str]:
        sub = None
        with translated(f"get subscription {subscription_id}", missing_ok=True):
            sub = self.subscriber.get_subscription(request={"subscription": self._path(subscription_id, project_id)})
        if sub is None:
            return None
        prefix = f"projects/{self._project}/topics/"
        topic = sub.topic or ""
        return topic[len(prefix):] if topic.startswith(prefix) else None

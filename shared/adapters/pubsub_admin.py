"""Pub/Sub administration for gateway provisioning: topics, pull subscriptions and their IAM
policy. Names are deterministic, so creates and deletes are idempotent."""
from __future__ import annotations

from typing import Any, Callable, Mapping, Optional

from . import retrying
from .errors import policy_retry_kind, translated
from .retrying import POLICY_RETRIES, Backoff


class PubSubAdmin:
    def __init__(self, project_id: str, publisher: Optional[Any] = None, subscriber: Optional[Any] = None,
                 policy_client: Optional[Any] = None, retries: Mapping[str, Backoff] = POLICY_RETRIES):
        """``policy_client`` answers Get/SetIamPolicy for subscriptions (a SubscriberClient; in
        tests one whose channel goes to the IAM stand-in, the emulator has no IAM)."""
        self._project = project_id
        self._publisher, self._subscriber, self._policy = publisher, subscriber, policy_client
        self._retries = retries
        self.calls = 0

    @property
    def publisher(self) -> Any:
        if self._publisher is None:
            from google.cloud import pubsub_v1

            self._publisher = pubsub_v1.PublisherClient()
        return self._publisher

    @property
    def subscriber(self) -> Any:
        if self._subscriber is None:
            from google.cloud import pubsub_v1

            self._subscriber = pubsub_v1.SubscriberClient()
        return self._subscriber

    def topic_path(self, topic_id: str) -> str:
        return f"projects/{self._project}/topics/{topic_id}"

    def subscription_path(self, subscription_id: str) -> str:
        return f"projects/{self._project}/subscriptions/{subscription_id}"

    def create_topic(self, topic_id: str) -> None:
        self.calls += 1
        with translated(f"create topic {topic_id}", exists_ok=True):
            self.publisher.create_topic(name=self.topic_path(topic_id))

    def delete_topic(self, topic_id: str) -> None:
        self.calls += 1
        with translated(f"delete topic {topic_id}", missing_ok=True):
            self.publisher.delete_topic(topic=self.topic_path(topic_id))

    def create_subscription(self, subscription_id: str, topic_id: str, *, ack_deadline_seconds: int,
                            retention_seconds: int, dead_letter_topic_id: str, max_delivery_attempts: int,
                            min_retry_backoff_seconds: int, max_retry_backoff_seconds: int) -> None:
        self.calls += 1
        with translated(f"create subscription {subscription_id}", exists_ok=True):
            self.subscriber.create_subscription(request={
                "name": self.subscription_path(subscription_id),
                "topic": self.topic_path(topic_id),
                "ack_deadline_seconds": ack_deadline_seconds,
                "message_retention_duration": {"seconds": retention_seconds},
                "dead_letter_policy": {"dead_letter_topic": self.topic_path(dead_letter_topic_id),
                                       "max_delivery_attempts": max_delivery_attempts},
                # Exponential backoff between redeliveries (after a nack or an expired lease)
                # instead of at once: a gateway whose Result Endpoint is down must not burn its
                # deliveries in seconds (issue 11 item 5; the numbers are in docs/admin-api.md).
                "retry_policy": {"minimum_backoff": {"seconds": min_retry_backoff_seconds},
                                 "maximum_backoff": {"seconds": max_retry_backoff_seconds}},
                # An idle gateway (site closed for a month) must not lose its subscription.
                "expiration_policy": {},
            })

    def delete_subscription(self, subscription_id: str) -> None:
        self.calls += 1
        with translated(f"delete subscription {subscription_id}", missing_ok=True):
            self.subscriber.delete_subscription(subscription=self.subscription_path(subscription_id))

    def _update_policy(self, subscription_id: str, change: Callable[[Any], bool], retries: Mapping[str, Backoff],
                       missing_ok: bool = False) -> None:
        """Read-modify-write of the subscription's IAM policy, guarded by its etag (IAM answers 409
        ABORTED to a write based on a stale read; the cycle is then redone after a jittered backoff;
        issue 11 item 8)."""
        client = self._policy or self.subscriber
        resource = self.subscription_path(subscription_id)
        what = f"IAM policy of subscription {subscription_id}"

        def read_modify_write() -> None:
            self.calls += 1
            policy = client.get_iam_policy(request={"resource": resource})
            if change(policy):
                self.calls += 1
                client.set_iam_policy(request={"resource": resource, "policy": policy})  # carries the etag

        with translated(what, missing_ok=missing_ok):
            retrying.run(read_modify_write, policy_retry_kind, retries, what)

    def grant_subscription_role(self, subscription_id: str, role: str, members: list[str]) -> None:
        """Add ``members`` to ``role`` on the subscription. A service account created a moment
        ago may not be known to IAM yet: that is retried for a bounded time."""
        def add(policy: Any) -> bool:
            binding = next((b for b in policy.bindings if b.role == role), None)
            if binding is None:
                binding = policy.bindings.add(role=role)
            missing = [m for m in members if m not in binding.members]
            binding.members.extend(missing)
            return bool(missing)

        self._update_policy(subscription_id, add, self._retries)

    def revoke_subscription_role(self, subscription_id: str, role: str, members: list[str]) -> None:
        def remove(policy: Any) -> bool:
            binding = next((b for b in policy.bindings if b.role == role), None)
            if binding is None or not any(m in binding.members for m in members):
                return False
            kept = [m for m in binding.members if m not in members]
            del binding.members[:]
            binding.members.extend(kept)
            if not kept:
                policy.bindings.remove(binding)
            return True

        stale_only = {k: v for k, v in self._retries.items() if k == retrying.STALE_ETAG}
        self._update_policy(subscription_id, remove, stale_only, missing_ok=True)

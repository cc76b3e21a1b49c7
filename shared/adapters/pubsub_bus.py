"""Pub/Sub adapter: the MessageBus port. The publisher client is created on first publish."""
from __future__ import annotations

import concurrent.futures
from typing import Any, Mapping, Optional

from google.api_core import exceptions as gexc

from ..domain.errors import PermanentError, TransientError


class PubSubBus:
    def __init__(self, project_id: str, publisher: Optional[Any] = None, timeout_seconds: float = 30.0):
        self._project = project_id
        self._publisher = publisher
        self._timeout = timeout_seconds

    @property
    def publisher(self) -> Any:
        if self._publisher is None:
            from google.cloud import pubsub_v1

            # One message per event: a short batch latency keeps publish() fast.
            self._publisher = pubsub_v1.PublisherClient(batch_settings=pubsub_v1.types.BatchSettings(max_latency=0.005))
        return self._publisher

    def topic_path(self, topic_id: str) -> str:
        return f"projects/{self._project}/topics/{topic_id}"

    def publish(self, topic_id: str, data: bytes, attributes: Mapping[str, str]) -> str:
        try:
            future = self.publisher.publish(self.topic_path(topic_id), data, **dict(attributes))
            return future.result(timeout=self._timeout)
        except gexc.NotFound:
            raise PermanentError(f"topic {topic_id} does not exist") from None
        except gexc.InvalidArgument as e:
            raise PermanentError(f"publish to {topic_id} refused: {type(e).__name__}") from None
        except (gexc.GoogleAPICallError, concurrent.futures.TimeoutError, TimeoutError) as e:
            raise TransientError(f"publish to {topic_id} failed: {type(e).__name__}") from None

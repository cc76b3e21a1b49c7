"""Pub/Sub's topics-per-project limit for the local stack (docs/scale.md, "Topics and subscriptions").

The Pub/Sub emulator creates any number of topics. Production refuses a project's 10,001st topic
(Pub/Sub "Quotas and limits", resource limits: 10,000 topics per project) with 429
RESOURCE_EXHAUSTED. :class:`TopicQuotaPublisher` wraps the ``PublisherClient`` that the
provisioning adapter (``shared.adapters.pubsub_admin.PubSubAdmin``) creates topics with and refuses
the same way, so the adapter's translation (``QuotaExceeded``) and provisioning's rollback run as in
production. Everything else goes to the wrapped client unchanged.

Where it applies: the harness builds the provisioning adapters with it (``tests/conftest.py``
``Stack.cloud``). It is a client-side wrapper, not a proxy: a function started as its own process
(the demo's admin_api, the e2e tests) builds its own client and is not limited. The count is per
project, shared by every wrapper in this process, seeded from the emulator's own topic list the
first time a project is seen, so topics made by other clients count too.
"""
from __future__ import annotations

import threading
from typing import Any, Optional

from google.api_core import exceptions as gexc

__all__ = ["TopicQuotaPublisher", "DEFAULT_TOPICS_PER_PROJECT"]

DEFAULT_TOPICS_PER_PROJECT = 10_000

_lock = threading.Lock()
_topics: dict[str, set[str]] = {}  # project -> topic names this process knows of


def _project_of(topic: str) -> str:
    parts = topic.split("/")
    if len(parts) != 4 or parts[0] != "projects" or parts[2] != "topics":
        raise gexc.InvalidArgument(f"Invalid resource name given (name={topic}).")
    return parts[1]


class TopicQuotaPublisher:
    """A ``PublisherClient`` whose ``create_topic`` enforces ``max_topics_per_project``."""

    def __init__(self, publisher: Any, max_topics_per_project: Optional[int] = DEFAULT_TOPICS_PER_PROJECT):
        self._publisher = publisher
        self.max_topics_per_project = max_topics_per_project

    def __getattr__(self, name: str) -> Any:
        return getattr(self._publisher, name)

    def _known(self, project: str) -> set[str]:
        """Lock held: the project's topics, listed from the emulator the first time."""
        if project not in _topics:
            _topics[project] = {t.name for t in self._publisher.list_topics(request={"project": f"projects/{project}"})}
        return _topics[project]

    def create_topic(self, request: Any = None, *, name: Optional[str] = None, **kwargs: Any) -> Any:
        topic = name if name is not None else (request["name"] if isinstance(request, dict) else request.name)
        project = _project_of(topic)
        with _lock:
            known = self._known(project)
            limit = self.max_topics_per_project
            if topic not in known and limit is not None and len(known) >= limit:
                # Pub/Sub's wording for a resource limit (429 RESOURCE_EXHAUSTED).
                raise gexc.ResourceExhausted(f'Your project has exceeded a limit: (type="topics-per-project", '
                                             f'current={len(known)}, maximum={limit}).')
            known.add(topic)  # reserved before the call: concurrent creators cannot both pass the check
        try:
            if name is not None:
                return self._publisher.create_topic(request=request, name=name, **kwargs)
            return self._publisher.create_topic(request=request, **kwargs)
        except gexc.AlreadyExists:
            raise
        except Exception:
            with _lock:
                _topics.get(project, set()).discard(topic)
            raise

    def delete_topic(self, request: Any = None, *, topic: Optional[str] = None, **kwargs: Any) -> Any:
        name = topic if topic is not None else (request["topic"] if isinstance(request, dict) else request.topic)
        try:
            if topic is not None:
                result = self._publisher.delete_topic(request=request, topic=topic, **kwargs)
            else:
                result = self._publisher.delete_topic(request=request, **kwargs)
        except gexc.NotFound:
            self._forget(name)
            raise
        self._forget(name)
        return result

    @staticmethod
    def _forget(topic: str) -> None:
        with _lock:
            _topics.get(_project_of(topic), set()).discard(topic)

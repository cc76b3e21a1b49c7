"""Building adapters and services from Settings, for the entry points. Clients are created on
first use and cached per settings (a warm instance reuses its gRPC channels), never at import."""
from __future__ import annotations

import functools

from .clock import SystemClock
from .settings import Settings


@functools.lru_cache(maxsize=4)
def firestore_store(settings: Settings):
    from google.cloud import firestore

    from .adapters.firestore_store import FirestoreStore

    return FirestoreStore(firestore.Client(project=settings.project_id, database=settings.firestore_database))


@functools.lru_cache(maxsize=4)
def pubsub_bus(settings: Settings):
    from .adapters.pubsub_bus import PubSubBus

    return PubSubBus(settings.project_id)


def job_publisher(settings: Settings):
    from .services.publisher import JobPublisher

    return JobPublisher(firestore_store(settings), pubsub_bus(settings), SystemClock(), settings.publish_lease_seconds)


def dead_letter(settings: Settings, function_name: str):
    from .services.dead_letter import DeadLetter

    return DeadLetter(pubsub_bus(settings), settings.dead_letter_topic, function_name)

"""Test harness: starts the real Firestore and Pub/Sub emulators once per session on free ports.
Each test gets its own project id (Pub/Sub has no reset; in Firestore it isolates for free) and
its Firestore data is deleted afterwards."""
from __future__ import annotations

import os
import sys
import time
import uuid
from pathlib import Path
from typing import Iterator

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from devstack import processes  # noqa: E402
from tests.support import FakeClock, RecordingBus, T0  # noqa: E402


@pytest.fixture(scope="session")
def emulators(tmp_path_factory) -> Iterator[dict]:
    log_dir = tmp_path_factory.mktemp("emulator-logs")
    fs = processes.start_firestore(log_dir)
    ps = processes.start_pubsub(log_dir)
    os.environ["FIRESTORE_EMULATOR_HOST"] = fs.host
    os.environ["PUBSUB_EMULATOR_HOST"] = ps.host
    try:
        yield {"firestore": fs.host, "pubsub": ps.host, "log_dir": log_dir}
    finally:
        ps.stop()
        fs.stop()


@pytest.fixture
def project_id(emulators) -> Iterator[str]:
    pid = f"test-{uuid.uuid4().hex[:12]}"
    yield pid
    processes.reset_firestore(emulators["firestore"], pid)


class Stack:
    """Real adapters on the emulators for one test's project, plus topic/subscription helpers."""

    def __init__(self, project: str):
        from google.cloud import firestore, pubsub_v1

        from shared.adapters.firestore_store import FirestoreStore
        from shared.adapters.pubsub_bus import PubSubBus
        from shared.services.publisher import JobPublisher

        self.project = project
        self.db = firestore.Client(project=project)
        self.store = FirestoreStore(self.db)
        self.publisher_client = pubsub_v1.PublisherClient()
        self.subscriber = pubsub_v1.SubscriberClient()
        self.bus = RecordingBus(PubSubBus(project, self.publisher_client))
        self.clock = FakeClock(T0)
        self.job_publisher = JobPublisher(self.store, self.bus, self.clock, lease_seconds=60, wait_seconds=3.0, poll_seconds=0.05)
        self.topic("archsync-dead-letter", subscription="dead-letter-audit")

    def topic(self, topic_id: str, subscription: str | None = None) -> None:
        path = self.publisher_client.topic_path(self.project, topic_id)
        self.publisher_client.create_topic(name=path)
        if subscription:
            self.subscriber.create_subscription(name=self.subscriber.subscription_path(self.project, subscription), topic=path)

    def add_gateway(self, gw) -> None:
        self.topic(gw.topic_id, subscription=gw.subscription_id)
        self.store.save_gateway(gw)

    def pull(self, subscription: str, expect: int | None = None, wait: float = 2.0) -> list:
        """Pull and ack what arrives within ``wait`` seconds. With ``expect``, stop early once that
        many arrived, after one more look for unexpected duplicates."""
        path = self.subscriber.subscription_path(self.project, subscription)
        got, end = [], time.monotonic() + wait
        while True:
            resp = self.subscriber.pull(request={"subscription": path, "max_messages": 100, "return_immediately": True}, timeout=5)
            if resp.received_messages:
                got.extend(m.message for m in resp.received_messages)
                self.subscriber.acknowledge(subscription=path, ack_ids=[m.ack_id for m in resp.received_messages])
                continue
            if time.monotonic() >= end or (expect is not None and len(got) >= expect and time.monotonic() >= end - wait + 0.3):
                return got
            time.sleep(0.05)

    def close(self) -> None:
        self.publisher_client.transport.close()
        self.subscriber.close()
        self.db.close()


@pytest.fixture
def stack(project_id) -> Iterator[Stack]:
    s = Stack(project_id)
    yield s
    s.close()


@pytest.fixture
def function_env(project_id, monkeypatch) -> str:
    """Environment an entry point reads, pointing at this test's project."""
    monkeypatch.setenv("ARCHSYNC_PROJECT_ID", project_id)
    return project_id

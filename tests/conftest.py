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
CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"
sys.path.insert(0, str(REPO))

from devstack import processes  # noqa: E402
from tests.support import AdminAuth, FakeClock, RecordingBus, T0  # noqa: E402


@pytest.fixture(scope="session")
def emulators(tmp_path_factory) -> Iterator[dict]:
    """Firestore and Pub/Sub emulators, fake-gcs-server, and the IAM and bucket-IAM stand-ins."""
    from devstack.gcs import emulator_url, start_gcs
    from devstack.iam_standin import IamStandIn
    from devstack.strict import start_strict_storage

    log_dir = tmp_path_factory.mktemp("emulator-logs")
    fs = processes.start_firestore(log_dir)
    ps = processes.start_pubsub(log_dir)
    gcs = start_gcs(log_dir)
    # Small keys: faster (they sign token assertions; RS256 works with any RSA size). A new service
    # account becomes usable in IAM policies 1 s after its creation (production: seconds, up to a
    # minute and more). Its token endpoint (iam.token_url) is every minted key's token_uri.
    iam = IamStandIn(key_bits=1024, propagation_seconds=1.0).start()
    # Cloud Storage as strict as production (issue 12 item 2): every request, the tests' own
    # included, goes through the authorising front with a bearer token from the IAM stand-in.
    # The tests' set-up identity (buckets, the platform's study files) is an owner, like a
    # project owner; each function runs as its own runtime account (infra's account ids) and
    # gets only what infra/ grants it, each gateway only what provisioning grants it.
    function_keys = tmp_path_factory.mktemp("function-keys")
    bucket_iam, owner = start_strict_storage(iam, emulator_url(gcs), function_keys)
    os.environ["FIRESTORE_EMULATOR_HOST"] = fs.host
    os.environ["PUBSUB_EMULATOR_HOST"] = ps.host
    os.environ["STORAGE_EMULATOR_HOST"] = bucket_iam.url
    try:
        yield {"firestore": fs.host, "pubsub": ps.host, "gcs": bucket_iam.url, "iam": iam, "bucket_iam": bucket_iam,
               "owner": owner, "function_keys": function_keys, "log_dir": log_dir}
    finally:
        bucket_iam.stop()
        iam.stop()
        gcs.stop()
        ps.stop()
        fs.stop()


@pytest.fixture
def project_id(emulators) -> Iterator[str]:
    pid = f"test-{uuid.uuid4().hex[:12]}"
    emulators["iam"].reset()
    emulators["bucket_iam"].reset()
    yield pid
    processes.reset_firestore(emulators["firestore"], pid)


class Stack:
    """Real adapters on the emulators for one test's project, plus topic/subscription helpers."""

    def __init__(self, project: str, emulators: dict):
        from google.cloud import firestore, pubsub_v1, storage

        from devstack.infra_grants import seed_bucket_grants
        from shared.adapters.firestore_admin import FirestoreAdminStore
        from shared.adapters.gcs import KeyVault, VaultSecrets
        from shared.adapters.pubsub_bus import PubSubBus
        from shared.services.publisher import JobPublisher

        self.project = project
        self.emulators = emulators
        self.db = firestore.Client(project=project)
        self.store = FirestoreAdminStore(self.db)
        self.gcs = storage.Client(project=project, credentials=emulators["owner"])
        self.key_bucket, self.objects_bucket = f"keys-{project}", f"objects-{project}"
        self.study_bucket = f"studies-{project}"  # the platform's study files: <facility_group_id>/<study>/...
        for b in (self.key_bucket, self.objects_bucket, self.study_bucket):
            self.gcs.create_bucket(b)
        # What infra/ grants the functions on these buckets, as production has it from `apply`.
        seed_bucket_grants(emulators["bucket_iam"], project,
                           {"keys": self.key_bucket, "generated": self.objects_bucket, "study": self.study_bucket})
        self.vault = KeyVault(self.key_bucket, self.gcs)
        self.secrets = VaultSecrets(self.vault)
        self.publisher_client = pubsub_v1.PublisherClient()
        self.subscriber = pubsub_v1.SubscriberClient()
        self.bus = RecordingBus(PubSubBus(project, self.publisher_client))
        self.clock = FakeClock(T0)
        self.job_publisher = JobPublisher(self.store, self.bus, self.clock, lease_seconds=60, wait_seconds=3.0, poll_seconds=0.05)
        self.topic("archsync-dead-letter", subscription="dead-letter-audit")

    def grant_gateway_reads(self, email: str, facility_group_id: str = "fg-1", gateway_id: str = "gw-1") -> None:
        """What provisioning grants a gateway's account (its bucket_binding and study_binding
        steps), for tests that make a gateway's key without provisioning it: read of its own
        generated-objects prefix, read and list of its group's study prefix."""
        from shared.adapters.gcs import prefix_reader_condition

        front = self.emulators["bucket_iam"]
        for bucket, prefix, listing in ((self.objects_bucket, f"gateways/{gateway_id}/", False),
                                        (self.study_bucket, f"{facility_group_id}/", True)):
            policy = front.policies.get(bucket, {"bindings": []})
            policy["bindings"].append({
                "role": "roles/storage.objectViewer", "members": [f"serviceAccount:{email}"],
                "condition": {"title": prefix, "expression": prefix_reader_condition(bucket, prefix, listing)}})
            front.seed_policy(bucket, {"version": 3, "bindings": policy["bindings"]})

    def function_storage(self, function: str):
        """A storage client with ``function``'s runtime identity (its key from the local stack)."""
        from google.cloud import storage
        from google.oauth2 import service_account

        credentials = service_account.Credentials.from_service_account_file(
            str(self.emulators["function_keys"] / f"{function}.json"), scopes=[CLOUD_PLATFORM])
        return storage.Client(project=self.project, credentials=credentials)

    def cloud(self, max_topics_per_project: int | None = None):
        """The provisioning adapters, wired to the emulators and stand-ins like the functions are,
        with admin_api's runtime identity (the function that provisions). Topic creation is
        limited to Pub/Sub's 10,000 topics per project (``max_topics_per_project`` lowers it;
        devstack/pubsub_quota.py)."""
        from devstack.pubsub_quota import DEFAULT_TOPICS_PER_PROJECT, TopicQuotaPublisher
        from shared.adapters.gcs import BucketIam, KeyVault, ManagedFolderIam
        from shared.adapters.iam_admin import IamAdmin
        from shared.adapters.pubsub_admin import PubSubAdmin
        from shared.services.provisioning import Cloud

        iam, client = self.emulators["iam"], self.function_storage("admin_api")
        publisher = TopicQuotaPublisher(self.publisher_client, max_topics_per_project or DEFAULT_TOPICS_PER_PROJECT)
        return Cloud(PubSubAdmin(self.project, publisher=publisher, policy_client=iam.subscriber_policy_client()),
                     IamAdmin(self.project, iam.iam_client()), BucketIam(client), KeyVault(self.key_bucket, client),
                     ManagedFolderIam(client))

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
def stack(project_id, emulators) -> Iterator[Stack]:
    s = Stack(project_id, emulators)
    yield s
    s.close()


@pytest.fixture
def function_env(project_id, emulators, monkeypatch) -> str:
    """Environment an entry point reads, pointing at this test's project and buckets."""
    monkeypatch.setenv("ARCHSYNC_PROJECT_ID", project_id)
    monkeypatch.setenv("ARCHSYNC_KEY_BUCKET", f"keys-{project_id}")
    monkeypatch.setenv("ARCHSYNC_OBJECTS_BUCKET", f"objects-{project_id}")
    monkeypatch.setenv("ARCHSYNC_STUDY_BUCKET", f"studies-{project_id}")
    monkeypatch.setenv("ARCHSYNC_IAM_EMULATOR_HOST", emulators["iam"].address)
    monkeypatch.setenv("ARCHSYNC_STORAGE_IAM_EMULATOR_HOST", emulators["bucket_iam"].url)
    monkeypatch.setenv("ARCHSYNC_LOCAL_CREDENTIALS_DIR", str(emulators["function_keys"]))
    return project_id


@pytest.fixture(scope="session")
def admin_auth() -> AdminAuth:
    return AdminAuth()


@pytest.fixture
def admin_env(function_env, admin_auth, monkeypatch) -> AdminAuth:
    monkeypatch.setenv("ARCHSYNC_ADMIN_JWT_PUBLIC_KEYS", admin_auth.public_pem)
    monkeypatch.setenv("ARCHSYNC_ADMIN_JWT_AUDIENCE", admin_auth.AUDIENCE)
    monkeypatch.setenv("ARCHSYNC_ADMIN_JWT_ISSUER", admin_auth.ISSUER)
    return admin_auth

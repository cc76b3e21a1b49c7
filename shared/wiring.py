"""Building adapters and services from Settings, for the entry points. Clients are created on
first use and cached per settings (a warm instance reuses its gRPC channels), never at import."""
from __future__ import annotations

import functools

from pathlib import Path
from typing import TYPE_CHECKING, Any

from .clock import SystemClock
from .settings import Settings

if TYPE_CHECKING:
    from google.auth.credentials import Credentials

# The scope Cloud Functions' runtime identities get from the metadata server; what a function may
# do is decided by IAM (the roles infra/iam.tf grants its service account), not by the scope.
CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"


@functools.lru_cache(maxsize=4)
def firestore_store(settings: Settings):
    from google.cloud import firestore

    from .adapters.firestore_admin import FirestoreAdminStore

    return FirestoreAdminStore(firestore.Client(project=settings.project_id, database=settings.firestore_database))


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


# -- the function's own identity for Cloud Storage (issue 12 item 2) -------------------------------
@functools.lru_cache(maxsize=4)
def storage_credentials(settings: Settings) -> "Credentials":
    """The credentials every storage client of this function uses: its runtime service account.

    Production: application default credentials, i.e. the function's runtime service account
    (infra/iam.tf google_service_account.function) through the metadata server. Locally, with
    ARCHSYNC_LOCAL_CREDENTIALS_DIR: that account's JSON key <dir>/<function>.json, so requests
    carry the same identity and the local bucket IAM front applies what infra/ grants it
    (docs/deployment.md). A storage emulator without a key directory: anonymous, as before."""
    if settings.local_credentials_dir:
        if not settings.function_name:
            raise RuntimeError("ARCHSYNC_LOCAL_CREDENTIALS_DIR needs the function's name (Settings.from_env(function=...))")
        from google.oauth2 import service_account

        key = Path(settings.local_credentials_dir) / f"{settings.function_name}.json"
        return service_account.Credentials.from_service_account_file(str(key), scopes=[CLOUD_PLATFORM_SCOPE])
    if settings.storage_emulator_host:
        from google.auth.credentials import AnonymousCredentials

        return AnonymousCredentials()
    import google.auth

    return google.auth.default(scopes=[CLOUD_PLATFORM_SCOPE])[0]


@functools.lru_cache(maxsize=4)
def storage_client(settings: Settings) -> Any:
    """The function's google-cloud-storage client (STORAGE_EMULATOR_HOST, if set, picks the endpoint)."""
    from google.cloud import storage

    return storage.Client(project=settings.project_id, credentials=storage_credentials(settings))


# -- admin API, provisioning and keys (issue 3) ------------------------------------------------
@functools.lru_cache(maxsize=4)
def key_vault(settings: Settings):
    from .adapters.gcs import KeyVault

    if not settings.key_bucket:
        raise RuntimeError("ARCHSYNC_KEY_BUCKET is not set")
    return KeyVault(settings.key_bucket, client_factory=lambda: storage_client(settings))


def secret_store(settings: Settings):
    from .adapters.gcs import VaultSecrets

    return VaultSecrets(key_vault(settings))


def _standin_channel(host: str):
    import grpc

    return grpc.insecure_channel(host)


@functools.lru_cache(maxsize=4)
def iam_admin(settings: Settings):
    from .adapters.iam_admin import IamAdmin

    client = None
    if settings.iam_emulator_host:
        from google.cloud import iam_admin_v1
        from google.cloud.iam_admin_v1.services.iam.transports import IAMGrpcTransport

        client = iam_admin_v1.IAMClient(transport=IAMGrpcTransport(channel=_standin_channel(settings.iam_emulator_host)))
    return IamAdmin(settings.project_id, client)


@functools.lru_cache(maxsize=4)
def pubsub_admin(settings: Settings):
    from .adapters.pubsub_admin import PubSubAdmin

    policy_client = None
    if settings.iam_emulator_host:  # the Pub/Sub emulator has no IAM: policies go to the stand-in
        from google.cloud import pubsub_v1
        from google.pubsub_v1.services.subscriber.transports import SubscriberGrpcTransport

        policy_client = pubsub_v1.SubscriberClient(
            transport=SubscriberGrpcTransport(channel=_standin_channel(settings.iam_emulator_host)))
    return PubSubAdmin(settings.project_id, policy_client=policy_client)


@functools.lru_cache(maxsize=4)
def bucket_iam(settings: Settings):
    from .adapters.gcs import BucketIam

    def client() -> Any:
        if not settings.storage_iam_emulator_host:
            return storage_client(settings)
        from google.cloud import storage

        # The bucket-IAM stand-in, with the function's own credentials like every storage request.
        return storage.Client(project=settings.project_id, credentials=storage_credentials(settings),
                              client_options={"api_endpoint": settings.storage_iam_emulator_host})

    return BucketIam(client_factory=client)


def provisioner(settings: Settings):
    from .services.provisioning import Cloud, Provisioner, ProvisioningSettings

    if not settings.objects_bucket:
        raise RuntimeError("ARCHSYNC_OBJECTS_BUCKET is not set")
    if not settings.study_bucket:
        raise RuntimeError("ARCHSYNC_STUDY_BUCKET is not set")
    cloud = Cloud(pubsub_admin(settings), iam_admin(settings), bucket_iam(settings), key_vault(settings))
    return Provisioner(firestore_store(settings), cloud, SystemClock(), ProvisioningSettings(
        objects_bucket=settings.objects_bucket, study_bucket=settings.study_bucket,
        gateway_dead_letter_topic=settings.gateway_dead_letter_topic,
        pubsub_service_agent=settings.pubsub_service_agent, lease_seconds=settings.provisioning_lease_seconds,
        identity_projects=settings.gateway_identity_projects))


def admin_service(settings: Settings):
    from .services.admin import AdminService
    from .services.jobs import JobsService

    jobs = JobsService(firestore_store(settings), lambda: job_publisher(settings), SystemClock(), settings.timeout_policy,
                       lambda: object_store(settings))
    return AdminService(firestore_store(settings), provisioner(settings), key_vault(settings), iam_admin(settings),
                        SystemClock(), jobs, result_key_grace_seconds=settings.result_key_grace_seconds,
                        health=firestore_store(settings), gateway_silent_seconds=settings.gateway_silent_seconds)


@functools.lru_cache(maxsize=4)
def jwt_verifier(settings: Settings):
    from .auth import JwtVerifier

    return JwtVerifier(settings.admin_jwt_public_keys, settings.admin_jwt_audience, settings.admin_jwt_issuer)


# -- study changes (issue 4) --------------------------------------------------------------------
@functools.lru_cache(maxsize=4)
def object_store(settings: Settings):
    from .adapters.gcs import ObjectStore

    if not settings.objects_bucket:
        raise RuntimeError("ARCHSYNC_OBJECTS_BUCKET is not set")
    return ObjectStore(settings.objects_bucket, client_factory=lambda: storage_client(settings))


def followups(settings: Settings):
    from .services.followups import FollowUps

    store = firestore_store(settings)
    return FollowUps(store, store, job_publisher(settings), SystemClock(), settings.timeout_policy,
                     objects=object_store(settings))


def study_change_service(settings: Settings):
    from .services.study_changes import StudyChangeService

    store = firestore_store(settings)
    return StudyChangeService(store, store, job_publisher(settings), followups(settings), object_store(settings),
                              SystemClock(), settings.timeout_policy)


def patient_update_service(settings: Settings):
    from .services.patient_updates import PatientUpdateService

    store = firestore_store(settings)
    return PatientUpdateService(store, store, job_publisher(settings), SystemClock(), settings.timeout_policy)


# -- platform master data: facility groups and facilities (issue 11 item 1) ------------------------
def facility_sync_service(settings: Settings):
    from .services.facilities import FacilitySyncService

    return FacilitySyncService(firestore_store(settings))


# -- dead-letter redrive for the platform team (issue 15 item 4) ---------------------------------
# The audit subscription of each dead-letter topic is "<topic>-audit" (infra/pubsub.tf).
AUDIT_SUFFIX = "-audit"


def dead_letter_sources(settings: Settings) -> list:
    from .services.redrive import DeadLetterSource

    return [DeadLetterSource("inbound", settings.dead_letter_topic, settings.dead_letter_topic + AUDIT_SUFFIX),
            DeadLetterSource("gateway", settings.gateway_dead_letter_topic, settings.gateway_dead_letter_topic + AUDIT_SUFFIX)]


@functools.lru_cache(maxsize=4)
def dead_letter_index(settings: Settings):
    from google.cloud import firestore

    from .adapters.firestore_dead_letters import FirestoreDeadLetterIndex

    return FirestoreDeadLetterIndex(firestore.Client(project=settings.project_id, database=settings.firestore_database))


@functools.lru_cache(maxsize=4)
def dead_letter_inbox(settings: Settings):
    from .adapters.pubsub_inbox import PubSubInbox

    return PubSubInbox(settings.project_id)


def redrive_service(settings: Settings):
    from .services.redrive import RedriveService

    return RedriveService(dead_letter_inbox(settings), dead_letter_index(settings), pubsub_bus(settings), SystemClock(),
                          settings.project_id, dead_letter_sources(settings))

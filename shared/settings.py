"""Settings of a function, read once by its entry point from the environment it passes in."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from .domain.rules import TimeoutPolicy


@dataclass(frozen=True)
class Settings:
    project_id: str
    dead_letter_topic: str = "archsync-dead-letter"
    firestore_database: str = "(default)"
    dispatch_grace_seconds: int = 1800
    attempt_allowance_seconds: int = 900
    max_result_window_seconds: int = 12 * 3600
    signature_max_skew_seconds: int = 300
    publish_lease_seconds: int = 60
    sweep_batch_size: int = 200
    # Admin API and provisioning (issue 3)
    key_bucket: str = ""  # private bucket: service-account keys and Result Endpoint keys
    objects_bucket: str = ""  # generated objects gateways read (their own prefix only)
    study_bucket: str = ""  # the platform's study files; gateways read their group's prefix only
    gateway_dead_letter_topic: str = "archsync-gateway-dead-letter"
    pubsub_service_agent: str = ""  # service-PROJECT_NUMBER@gcp-sa-pubsub.iam.gserviceaccount.com
    provisioning_lease_seconds: int = 300
    # Projects holding the gateways' service accounts (docs/scale.md): at most 100 accounts each by
    # default. Empty: the deployment's own project (ARCHSYNC_GATEWAY_IDENTITY_PROJECTS, comma-separated).
    gateway_identity_projects: tuple[str, ...] = ()
    # After a Result Endpoint key rotation the previous key keeps verifying this long, so gateways
    # can be switched to the new key without losing results (issue 11 item 5; docs/admin-api.md).
    result_key_grace_seconds: int = 24 * 3600
    # Monitoring (issue 15; docs/operations.md): a gateway without contact (result or heartbeat)
    # for longer than this is "silent" in the Gateways table, and the sweeper reports it when jobs
    # wait for it; an order lock held longer than lock_overdue_seconds is reported by the sweeper.
    gateway_silent_seconds: int = 900
    lock_overdue_seconds: int = 7200
    admin_jwt_public_keys: tuple[str, ...] = ()
    admin_jwt_audience: str = ""
    admin_jwt_issuer: str = ""
    # The console's sign-in (issue 14; docs/console.md): the platform identity provider's OAuth 2.0
    # authorization and token endpoints and the console's client id there (authorization code +
    # PKCE, a public client: no secret). Empty: the console says sign-in is not configured.
    console_authorize_url: str = ""
    console_token_url: str = ""
    console_client_id: str = ""
    console_scope: str = "openid"
    # Local stand-ins only (no emulator exists for IAM): host:port of a gRPC server speaking the
    # IAM Admin and IAMPolicy APIs, and the base URL of a bucket-IAM stand-in.
    iam_emulator_host: str = ""
    storage_iam_emulator_host: str = ""
    # The function these settings are for (its entry point's NAME): picks its runtime identity.
    function_name: str = ""
    # Local stack only: a directory of JSON keys, <function_name>.json, of each function's own
    # runtime service account (infra/iam.tf google_service_account.function), so the functions
    # call storage as themselves, as in production, and the local bucket IAM front can refuse
    # what infra/ does not grant them (issue 12 item 2; docs/deployment.md). Empty: production
    # (the runtime service account through the metadata server), or anonymous on a storage emulator.
    local_credentials_dir: str = ""
    storage_emulator_host: str = ""  # STORAGE_EMULATOR_HOST, read by google-cloud-storage too

    @property
    def timeout_policy(self) -> TimeoutPolicy:
        return TimeoutPolicy(self.dispatch_grace_seconds, self.attempt_allowance_seconds, self.max_result_window_seconds)

    @classmethod
    def from_env(cls, env: Mapping[str, str], function: str = "") -> "Settings":
        """``function``: the entry point's NAME (its runtime identity, infra/functions.tf)."""
        project = env.get("ARCHSYNC_PROJECT_ID") or env.get("GOOGLE_CLOUD_PROJECT") or env.get("GCP_PROJECT")
        if not project:
            raise RuntimeError("ARCHSYNC_PROJECT_ID (or GOOGLE_CLOUD_PROJECT) is not set")

        def num(name: str, default: int) -> int:
            return int(env.get(name, default))

        return cls(
            project_id=project,
            dead_letter_topic=env.get("ARCHSYNC_DEAD_LETTER_TOPIC", cls.dead_letter_topic),
            firestore_database=env.get("ARCHSYNC_FIRESTORE_DATABASE", cls.firestore_database),
            dispatch_grace_seconds=num("ARCHSYNC_DISPATCH_GRACE_SECONDS", cls.dispatch_grace_seconds),
            attempt_allowance_seconds=num("ARCHSYNC_ATTEMPT_ALLOWANCE_SECONDS", cls.attempt_allowance_seconds),
            max_result_window_seconds=num("ARCHSYNC_MAX_RESULT_WINDOW_SECONDS", cls.max_result_window_seconds),
            signature_max_skew_seconds=num("ARCHSYNC_SIGNATURE_MAX_SKEW_SECONDS", cls.signature_max_skew_seconds),
            publish_lease_seconds=num("ARCHSYNC_PUBLISH_LEASE_SECONDS", cls.publish_lease_seconds),
            sweep_batch_size=num("ARCHSYNC_SWEEP_BATCH_SIZE", cls.sweep_batch_size),
            key_bucket=env.get("ARCHSYNC_KEY_BUCKET", ""),
            objects_bucket=env.get("ARCHSYNC_OBJECTS_BUCKET", ""),
            study_bucket=env.get("ARCHSYNC_STUDY_BUCKET", ""),
            gateway_dead_letter_topic=env.get("ARCHSYNC_GATEWAY_DEAD_LETTER_TOPIC", cls.gateway_dead_letter_topic),
            pubsub_service_agent=env.get("ARCHSYNC_PUBSUB_SERVICE_AGENT", ""),
            provisioning_lease_seconds=num("ARCHSYNC_PROVISIONING_LEASE_SECONDS", cls.provisioning_lease_seconds),
            gateway_identity_projects=tuple(p.strip() for p in env.get("ARCHSYNC_GATEWAY_IDENTITY_PROJECTS", "").split(",")
                                            if p.strip()),
            result_key_grace_seconds=num("ARCHSYNC_RESULT_KEY_GRACE_SECONDS", cls.result_key_grace_seconds),
            gateway_silent_seconds=num("ARCHSYNC_GATEWAY_SILENT_SECONDS", cls.gateway_silent_seconds),
            lock_overdue_seconds=num("ARCHSYNC_LOCK_OVERDUE_SECONDS", cls.lock_overdue_seconds),
            admin_jwt_public_keys=_pems(env.get("ARCHSYNC_ADMIN_JWT_PUBLIC_KEYS", "")),
            admin_jwt_audience=env.get("ARCHSYNC_ADMIN_JWT_AUDIENCE", ""),
            admin_jwt_issuer=env.get("ARCHSYNC_ADMIN_JWT_ISSUER", ""),
            console_authorize_url=env.get("ARCHSYNC_CONSOLE_AUTHORIZE_URL", ""),
            console_token_url=env.get("ARCHSYNC_CONSOLE_TOKEN_URL", ""),
            console_client_id=env.get("ARCHSYNC_CONSOLE_CLIENT_ID", ""),
            console_scope=env.get("ARCHSYNC_CONSOLE_SCOPE", "") or cls.console_scope,
            iam_emulator_host=env.get("ARCHSYNC_IAM_EMULATOR_HOST", ""),
            storage_iam_emulator_host=env.get("ARCHSYNC_STORAGE_IAM_EMULATOR_HOST", ""),
            function_name=function,
            local_credentials_dir=env.get("ARCHSYNC_LOCAL_CREDENTIALS_DIR", ""),
            storage_emulator_host=env.get("STORAGE_EMULATOR_HOST", ""),
        )


def _pems(text: str) -> tuple[str, ...]:
    """One or more PEM public keys, concatenated (several during a key rotation)."""
    end = "-----END PUBLIC KEY-----"
    return tuple(part.strip() + "\n" + end + "\n" for part in text.split(end) if part.strip())


# Every environment variable ``Settings.from_env`` reads (the infra consistency test uses it).
ENV_VARS = (
    "ARCHSYNC_PROJECT_ID",
    "ARCHSYNC_DEAD_LETTER_TOPIC",
    "ARCHSYNC_FIRESTORE_DATABASE",
    "ARCHSYNC_DISPATCH_GRACE_SECONDS",
    "ARCHSYNC_ATTEMPT_ALLOWANCE_SECONDS",
    "ARCHSYNC_MAX_RESULT_WINDOW_SECONDS",
    "ARCHSYNC_SIGNATURE_MAX_SKEW_SECONDS",
    "ARCHSYNC_PUBLISH_LEASE_SECONDS",
    "ARCHSYNC_SWEEP_BATCH_SIZE",
    "ARCHSYNC_KEY_BUCKET",
    "ARCHSYNC_OBJECTS_BUCKET",
    "ARCHSYNC_STUDY_BUCKET",
    "ARCHSYNC_GATEWAY_DEAD_LETTER_TOPIC",
    "ARCHSYNC_GATEWAY_IDENTITY_PROJECTS",
    "ARCHSYNC_PUBSUB_SERVICE_AGENT",
    "ARCHSYNC_PROVISIONING_LEASE_SECONDS",
    "ARCHSYNC_RESULT_KEY_GRACE_SECONDS",
    "ARCHSYNC_GATEWAY_SILENT_SECONDS",
    "ARCHSYNC_LOCK_OVERDUE_SECONDS",
    "ARCHSYNC_ADMIN_JWT_PUBLIC_KEYS",
    "ARCHSYNC_ADMIN_JWT_AUDIENCE",
    "ARCHSYNC_ADMIN_JWT_ISSUER",
    "ARCHSYNC_CONSOLE_AUTHORIZE_URL",
    "ARCHSYNC_CONSOLE_TOKEN_URL",
    "ARCHSYNC_CONSOLE_CLIENT_ID",
    "ARCHSYNC_CONSOLE_SCOPE",
)
# Read by Settings.from_env but only ever set locally: never declared in infra/.
LOCAL_ONLY_ENV_VARS = ("ARCHSYNC_IAM_EMULATOR_HOST", "ARCHSYNC_STORAGE_IAM_EMULATOR_HOST",
                       "ARCHSYNC_LOCAL_CREDENTIALS_DIR", "STORAGE_EMULATOR_HOST")

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
    signature_max_skew_seconds: int = 300
    publish_lease_seconds: int = 60
    sweep_batch_size: int = 200

    @property
    def timeout_policy(self) -> TimeoutPolicy:
        return TimeoutPolicy(self.dispatch_grace_seconds, self.attempt_allowance_seconds)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "Settings":
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
            signature_max_skew_seconds=num("ARCHSYNC_SIGNATURE_MAX_SKEW_SECONDS", cls.signature_max_skew_seconds),
            publish_lease_seconds=num("ARCHSYNC_PUBLISH_LEASE_SECONDS", cls.publish_lease_seconds),
            sweep_batch_size=num("ARCHSYNC_SWEEP_BATCH_SIZE", cls.sweep_batch_size),
        )


# Every environment variable ``Settings.from_env`` reads (the infra consistency test uses it).
ENV_VARS = (
    "ARCHSYNC_PROJECT_ID",
    "ARCHSYNC_DEAD_LETTER_TOPIC",
    "ARCHSYNC_FIRESTORE_DATABASE",
    "ARCHSYNC_DISPATCH_GRACE_SECONDS",
    "ARCHSYNC_ATTEMPT_ALLOWANCE_SECONDS",
    "ARCHSYNC_SIGNATURE_MAX_SKEW_SECONDS",
    "ARCHSYNC_PUBLISH_LEASE_SECONDS",
    "ARCHSYNC_SWEEP_BATCH_SIZE",
)

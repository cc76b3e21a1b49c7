"""Gateway provisioning as a saga (rule 7; seed 000 Step 1: "If provisioning fails, the system
rolls back cleanly — no partial resources are left behind").

Every resource name derives from the gateway id, so each step and each undo is idempotent and a
rollback can be finished by anyone who reads the durable log: the function itself on failure, or
the sweeper when the function died half-way."""
from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass, field
from datetime import datetime
from typing import Optional

# Order of creation; undo runs the attempted ones in reverse.
CREATE_STEPS = (
    "topic",
    "subscription",
    "service_account",
    "subscription_binding",
    "bucket_binding",
    "study_binding",
    "service_account_key",
    "result_key",
    "record",
)


class Operation(str, enum.Enum):
    CREATE = "CREATE"
    DELETE = "DELETE"
    # Replacing the gateway's service-account key (issue 11 item 16): the log records the intent
    # before a key is made, so whoever finishes it (the function, or the sweeper once the lease
    # ran out) leaves exactly the stored key active.
    ROTATE_KEY = "ROTATE_KEY"


class LogState(str, enum.Enum):
    IN_PROGRESS = "IN_PROGRESS"
    ROLLING_BACK = "ROLLING_BACK"
    DONE = "DONE"
    ROLLED_BACK = "ROLLED_BACK"
    DELETED = "DELETED"


UNFINISHED = (LogState.IN_PROGRESS, LogState.ROLLING_BACK)


@dataclass(frozen=True)
class GatewayResources:
    facility_group_id: str
    gateway_id: str

    @property
    def topic_id(self) -> str:
        # Seed 000 shows subscriptions named "gateway-pub...".
        return f"gateway-pubsub-{self.gateway_id}"

    @property
    def subscription_id(self) -> str:
        return f"gateway-pubsub-{self.gateway_id}-sub"

    @property
    def account_id(self) -> str:
        # IAM: 6-30 characters, [a-z][a-z0-9-]*[a-z0-9]; gateway ids are "gw-" + 10 hex digits.
        return f"archsync-{self.gateway_id}"

    @property
    def objects_prefix(self) -> str:
        """Prefix of the generated objects (rejection notes, HL7) this gateway's jobs reference."""
        return f"gateways/{self.gateway_id}/"

    @property
    def study_prefix(self) -> str:
        """Prefix of the facility group's studies in the platform's study bucket: every
        study_storage_uri of the group is gs://<study bucket>/<facility_group_id>/... (the layout
        the platform must use, docs/deployment.md). The trailing '/' keeps "fg-1" from matching
        "fg-10/"."""
        return f"{self.facility_group_id}/"


@dataclass
class ProvisioningLog:
    facility_group_id: str
    gateway_id: str
    operation: Operation
    state: LogState
    started_at: datetime
    lease_until: datetime
    steps: list[str] = field(default_factory=list)  # attempted, in order
    error: Optional[str] = None
    actor: str = ""
    # The project whose identity pool holds (or is about to hold) the gateway's service account
    # (docs/scale.md): recorded before the account is created, so whoever undoes the log finds it.
    # "" in logs written before the pool existed: the deployment's own project.
    identity_project: str = ""


def identity_project_order(gateway_id: str, pool: tuple[str, ...]) -> list[str]:
    """The pool projects to try for a gateway's service account, in order: a deterministic start
    (a hash of the gateway id, so gateways spread evenly over the pool) and then every other
    project once, wrapping around, so a full project is skipped (docs/scale.md)."""
    if not pool:
        return []
    start = int.from_bytes(hashlib.sha256(gateway_id.encode()).digest()[:8], "big") % len(pool)
    return list(pool[start:] + pool[:start])


def project_of_account(email: str) -> str:
    """The project of a user-managed service account (``ID@PROJECT.iam.gserviceaccount.com``), or ""."""
    suffix = ".iam.gserviceaccount.com"
    domain = email.partition("@")[2]
    return domain[:-len(suffix)] if domain.endswith(suffix) else ""

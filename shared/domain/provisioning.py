"""Gateway provisioning as a saga (rule 7; seed 000 Step 1: "If provisioning fails, the system
rolls back cleanly — no partial resources are left behind").

Every resource name derives from the gateway id, so each step and each undo is idempotent and a
rollback can be finished by anyone who reads the durable log: the function itself on failure, or
the sweeper when the function died half-way."""
from __future__ import annotations

import enum
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

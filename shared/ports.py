"""Small interfaces the services depend on. Adapters in ``shared.adapters`` implement them."""
from __future__ import annotations

from datetime import datetime
from typing import Callable, Mapping, Optional, Protocol, Sequence

from .domain.dead_letters import DeadLetterRecord, ParkedMessage
from .domain.health import GatewayHealth
from .domain.jobs import Transition
from .domain.models import ArchiveState, Deferral, Destination, Facility, FacilityGroup, Gateway, Job
from .signing import ResultKeys


class Clock(Protocol):
    def now(self) -> datetime: ...


class ConfigStore(Protocol):
    """Facility groups, facilities, gateways and destinations (written by the admin API)."""

    def save_facility_group(self, group: FacilityGroup) -> None: ...
    def save_facility(self, facility: Facility) -> None: ...
    def save_gateway(self, gateway: Gateway) -> None: ...
    def save_destination(self, destination: Destination) -> None: ...
    def archiving_destinations(self, facility_group_id: str, trigger_status: str) -> list[Destination]: ...
    def get_gateways(self, facility_group_id: str, gateway_ids: Sequence[str]) -> dict[str, Gateway]: ...
    def get_destination(self, facility_group_id: str, destination_id: str) -> Optional[Destination]: ...


class FacilityStore(Protocol):
    """Platform master data (contract facility-changed.v1): each call reads the stored state, asks
    ``decide`` what to store (shared/domain/facilities.py) and writes it, atomically."""

    def transact_facility_group(
        self, facility_group_id: str, decide: Callable[[Optional[FacilityGroup]], tuple[str, Optional[FacilityGroup]]]
    ) -> str: ...
    def transact_facility(
        self, facility_group_id: str, facility_id: str,
        decide: Callable[[Optional[Facility]], tuple[str, Optional[Facility]]],
    ) -> str: ...


class JobStore(Protocol):
    def create_job(self, job: Job) -> bool:
        """Create the job; False if a job with that id already exists (idempotency key)."""
        ...

    def get_job(self, facility_group_id: str, job_id: str) -> Optional[Job]: ...

    def claim_publish(self, facility_group_id: str, job_id: str, now: datetime, lease_until: datetime) -> Optional[Job]:
        """Take the right to publish an unpublished open job whose lease has run out; the job,
        or None if it is published, leased to another caller, or another caller won the race."""
        ...

    def mark_published(self, facility_group_id: str, job_id: str, at: datetime) -> None: ...

    def transact_job(self, facility_group_id: str, job_id: str, decide: Callable[[Job], Transition]) -> Optional[Transition]:
        """Read the job and apply ``decide``'s transition (job and archive state) atomically.
        None if the job does not exist."""
        ...

    def defer(self, facility_group_id: str, job_id: str, deferral: Deferral,
              accepts: Callable[[Job], bool]) -> Optional[tuple[Job, bool]]:
        """In one transaction with a read of the job: record ``deferral`` beside it if
        ``accepts(job)``. Returns the job as read and whether the deferral is recorded (now or by
        an earlier delivery); None if the job does not exist. A final result written concurrently
        is either seen here or sees the deferral (followups read them after it)."""
        ...

    def deferrals(self, facility_group_id: str, job_id: str) -> list[Deferral]:
        """The job's deferrals, in id order."""
        ...

    def expired_jobs(self, now: datetime, limit: int) -> list[Job]: ...
    def unpublished_jobs(self, now: datetime, limit: int) -> list[Job]: ...
    def lock_holders(self, facility_group_id: str, exam_id: str) -> list[Job]: ...
    def archive_states(self, facility_group_id: str, exam_id: str) -> list[ArchiveState]: ...


class SecretStore(Protocol):
    """Per-gateway Result Endpoint secure keys. Never logged, never returned by the admin API."""

    def result_keys(self, facility_group_id: str, gateway_id: str, *, fresh: bool = False) -> Optional[ResultKeys]:
        """The current key and, during a rotation's grace period, the previous one; None for an
        unknown gateway. May be cached briefly; ``fresh`` asks for a recent read (rate-limited)."""
        ...
    def save_result_key(self, facility_group_id: str, gateway_id: str, key: bytes) -> None: ...


class GatewayDirectory(Protocol):
    def gateway_group(self, gateway_id: str) -> Optional[str]:
        """The facility group of gateway ``gateway_id`` (gateway ids are unique across groups),
        or None. For the Result Endpoint's link probe, which names only the gateway."""
        ...


class MessageBus(Protocol):
    def publish(self, topic_id: str, data: bytes, attributes: Mapping[str, str]) -> str:
        """Publish and wait for the server's acknowledgement; returns the message id. Raises
        TransientError (retry) or PermanentError (e.g. the topic does not exist)."""
        ...


class ObjectStore(Protocol):
    """Generated objects (rejection notes, instance lists) in the objects bucket, each under the
    prefix of the gateway that reads it (gateways/<gateway id>/…)."""

    def put(self, name: str, data: bytes, content_type: str) -> str:
        """Store (idempotently for deterministic names); the gs:// URI."""
        ...

    def get(self, uri: str) -> bytes:
        """The object's bytes; PermanentError if it does not exist."""
        ...

    def copy(self, uri: str, name: str) -> str:
        """Copy ``uri`` to ``name`` in the same bucket (idempotent); the new gs:// URI."""
        ...

    def delete(self, uri: str) -> None:
        """Delete; an object already gone is fine."""
        ...


class DeadLetterInbox(Protocol):
    """The dead-letter topics' audit pull subscriptions (issue 15 item 4; infra/pubsub.tf)."""

    def pull(self, subscription_id: str, max_messages: int) -> list[tuple[str, ParkedMessage]]:
        """Up to ``max_messages`` parked messages, each with its ack id, leased to the caller
        (possibly none even when some are waiting: the caller looks again later)."""
        ...
    def ack(self, subscription_id: str, ack_ids: Sequence[str]) -> None: ...
    def release(self, subscription_id: str, ack_ids: Sequence[str]) -> None:
        """Give the messages back at once (ack deadline 0), unconsumed."""
        ...
    def topic_of(self, project_id: str, subscription_id: str) -> Optional[str]:
        """The topic id a subscription of ``project_id`` reads; None if it does not exist, is
        detached or reads another project's topic."""
        ...


class DeadLetterIndex(Protocol):
    """The durable index of dead-lettered messages (Firestore ``dead_letters``)."""

    def create(self, record: DeadLetterRecord) -> bool:
        """Store; False if a record with that id exists (collected before)."""
        ...
    def get(self, record_id: str) -> Optional[DeadLetterRecord]: ...
    def list(self, kind: Optional[str], state: Optional[str], limit: int, after: Optional[str]) -> list[DeadLetterRecord]:
        """Records in id order, after the id ``after``."""
        ...
    def mark_replayed(self, record_id: str, at: datetime, by: str, message_id: str) -> Optional[DeadLetterRecord]: ...


class HealthStore(Protocol):
    """Gateway health (shared/domain/health.py) and the sweeper's monitoring queries."""

    def gateway_health(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], GatewayHealth]:
        """Health of each (facility group id, gateway id) that has been in contact."""
        ...

    def record_contact(self, fg: str, gateway_id: str, kind: str, at: datetime, *,
                       last_pull_at: Optional[datetime] = None, min_interval_seconds: int = 60) -> bool:
        """Record a contact (result | heartbeat), throttled; True if written."""
        ...

    def stale_queued_jobs(self, queued_before: datetime, limit: int) -> list[Job]: ...
    def overdue_locks(self, queued_before: datetime, limit: int) -> list[Job]: ...

"""Firestore adapter: the ConfigStore, JobStore and SecretStore ports.

Layout (everything under the tenant, so a path always names its facility group):
  facility_groups/{fg}
  facility_groups/{fg}/facilities/{facility}
  facility_groups/{fg}/gateways/{gateway}
  facility_groups/{fg}/destinations/{destination}
  facility_groups/{fg}/jobs/{job}                          ids from shared.domain.rules.job_id
  facility_groups/{fg}/jobs/{job}/deferrals/{event}        instances added while an ARCHIVE job ran
  facility_groups/{fg}/exams/{exam}/archive_states/{destination}
  facility_groups/{fg}/gateway_health/{gateway}            last contact of a gateway (firestore_health.py)
The order lock is the ``lock_held`` flag of the exam's running archive jobs: it is cleared in the
same write that makes a job final, so a lock cannot outlive its job.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable, Iterator, Optional, Sequence

from google.api_core import exceptions as gexc
from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter

from ..domain.errors import ArchSyncError, Contention, PermanentError, TransientError
from ..domain.jobs import Transition
from ..domain.models import (
    OPEN_JOB_STATES,
    ArchiveState,
    Deferral,
    Destination,
    Facility,
    FacilityGroup,
    Gateway,
    Job,
    JobState,
)
from ..domain.job_query import all_shapes, indexes_for
from . import codec
from .errors import TRANSIENT, is_commit_contention
from .firestore_health import MONITORING_INDEXES, HealthQueries

GROUPS = "facility_groups"
FACILITIES = "facilities"
GATEWAYS = "gateways"
DESTINATIONS = "destinations"
JOBS = "jobs"
EXAMS = "exams"
DEFERRALS = "deferrals"
ARCHIVE_STATES = "archive_states"

# Query shapes that need a composite index in production (declared in infra/firestore.tf; the
# emulator never asks for one). Each entry: (collection group, scope, ((field, order), ...)).
COMPOSITE_INDEXES = (
    (JOBS, "COLLECTION_GROUP", (("state", "ASCENDING"), ("deadline", "ASCENDING"))),
    (JOBS, "COLLECTION_GROUP", (("published", "ASCENDING"), ("state", "ASCENDING"), ("publish_lease_until", "ASCENDING"))),
    ("provisioning", "COLLECTION_GROUP", (("state", "ASCENDING"), ("lease_until", "ASCENDING"))),
    # The sweeper's monitoring queries (silent gateways, overdue order locks): firestore_health.py.
    *MONITORING_INDEXES,
    # The Jobs tab (shared/domain/job_query.py): one index per filterable field and ordering.
    *((JOBS, "COLLECTION", fields) for fields in sorted({i for s in all_shapes() for i in indexes_for(s)})),
)


@dataclass
class OpCounter:
    """Documents read and written, counted at the adapter (what Firestore bills)."""

    reads: int = 0
    writes: int = 0
    refused: int = 0  # conditional writes the server refused (create() of an existing document)

    def reset(self) -> None:
        self.reads = self.writes = self.refused = 0


@contextlib.contextmanager
def _translated() -> Iterator[None]:
    try:
        yield
    except (gexc.AlreadyExists, gexc.FailedPrecondition):
        raise  # answers to create() and preconditions: the caller decides what they mean
    except Exception as e:
        mapped = _firestore_error(e)
        if mapped is None:
            raise
        raise mapped from e


def _firestore_error(e: Exception) -> Optional[ArchSyncError]:
    if is_commit_contention(e):
        # Issue 11 item 7: concurrent writers of one document (e.g. a gateway's results racing);
        # the library already retried the transaction. Retry in a moment (HTTP 503 + Retry-After).
        return Contention("Firestore: concurrent updates of one document")
    if isinstance(e, TRANSIENT):
        return TransientError(f"Firestore unavailable: {type(e).__name__}")
    if isinstance(e, (gexc.InvalidArgument, gexc.NotFound)):
        return PermanentError(f"Firestore rejected the request: {type(e).__name__}")
    if isinstance(e, gexc.GoogleAPICallError):
        # Permission and configuration errors: retrying lets an operator fix them without loss.
        return TransientError(f"Firestore error: {type(e).__name__}")
    return None


# gateway id -> facility group, found by gateway_group (bounded; cleared when full).
_GATEWAY_GROUPS: dict[str, str] = {}


class FirestoreStore(HealthQueries):
    def __init__(self, client: firestore.Client):
        self._db = client
        self.ops = OpCounter()

    # -- paths ---------------------------------------------------------------------------
    def _group(self, fg: str) -> firestore.DocumentReference:
        return self._db.collection(GROUPS).document(fg)

    def _job_ref(self, fg: str, job_id: str) -> firestore.DocumentReference:
        return self._group(fg).collection(JOBS).document(job_id)

    def _archive_ref(self, fg: str, exam_id: str, destination_id: str) -> firestore.DocumentReference:
        return self._group(fg).collection(EXAMS).document(exam_id).collection(ARCHIVE_STATES).document(destination_id)

    def _read(self, n: int = 1) -> None:
        self.ops.reads += max(n, 1)  # a query that matches nothing still costs one read

    def _set(self, ref: firestore.DocumentReference, doc: dict[str, Any]) -> None:
        with _translated():
            ref.set(doc)
        self.ops.writes += 1

    # -- configuration -------------------------------------------------------------------
    def save_facility_group(self, group: FacilityGroup) -> None:
        self._set(self._group(group.id), codec.group_to_doc(group))

    def save_facility(self, facility: Facility) -> None:
        self._set(self._group(facility.facility_group_id).collection(FACILITIES).document(facility.id), codec.facility_to_doc(facility))

    def transact_facility_group(self, fg: str, decide: Callable[[Optional[FacilityGroup]], tuple[str, Optional[FacilityGroup]]]) -> str:
        """Read the group, apply ``decide`` and write what it returns, in one transaction (order-safe
        upserts of platform master data: shared/domain/facilities.py)."""
        return self._transact_doc(self._group(fg), codec.group_from_doc, codec.group_to_doc, decide)

    def transact_facility(self, fg: str, facility_id: str,
                          decide: Callable[[Optional[Facility]], tuple[str, Optional[Facility]]]) -> str:
        return self._transact_doc(self._group(fg).collection(FACILITIES).document(facility_id), codec.facility_from_doc,
                                  codec.facility_to_doc, decide)

    def _transact_doc(self, ref: firestore.DocumentReference, from_doc: Callable, to_doc: Callable, decide: Callable) -> str:
        @firestore.transactional
        def run(tx: firestore.Transaction) -> str:
            snap = ref.get(transaction=tx)
            self._read()
            outcome, new = decide(from_doc(snap.to_dict()) if snap.exists else None)
            if new is not None:
                tx.set(ref, to_doc(new), merge=True)  # merge: the group document is also the tenant's root
                self.ops.writes += 1
            return outcome

        try:
            with _translated():
                return run(self._db.transaction())
        except ValueError as e:
            # The client gives up on a contended transaction with ValueError("Failed to commit
            # transaction in N attempts"): contention is transient, Pub/Sub redelivers.
            if "Failed to commit transaction" in str(e):
                raise TransientError("Firestore transaction contention") from e
            raise

    def save_gateway(self, gateway: Gateway) -> None:
        self._set(self._group(gateway.facility_group_id).collection(GATEWAYS).document(gateway.id), codec.gateway_to_doc(gateway))

    def save_destination(self, destination: Destination) -> None:
        ref = self._group(destination.facility_group_id).collection(DESTINATIONS).document(destination.id)
        self._set(ref, codec.destination_to_doc(destination))

    def archiving_destinations(self, facility_group_id: str, trigger_status: str) -> list[Destination]:
        """Destinations that had auto archive on with ``trigger_status`` at some point of their
        retained history (shared/domain/history.py): a destination inactive now may have been
        active when the exam first reached the status. Single-field indexes only."""
        coll = self._group(facility_group_id).collection(DESTINATIONS)
        queries = (
            coll.where(filter=FieldFilter("archive_triggers", "array_contains", trigger_status)),
            # Documents written before histories existed have no archive_triggers yet (until
            # their next edit): they are found by their current settings, as before. This costs
            # one more read per matching destination; drop it once every destination document
            # has been saved by this version.
            coll.where(filter=FieldFilter("trigger_status", "==", trigger_status))
                .where(filter=FieldFilter("auto_archive", "==", True))
                .where(filter=FieldFilter("active", "==", True)),
        )
        found: dict[str, Destination] = {}
        for q in queries:
            with _translated():
                docs = list(q.stream())
            self._read(len(docs))
            for d in docs:
                found.setdefault(d.id, codec.destination_from_doc(d.to_dict()))
        return [found[k] for k in sorted(found)]

    def get_destination(self, facility_group_id: str, destination_id: str) -> Optional[Destination]:
        with _translated():
            snap = self._group(facility_group_id).collection(DESTINATIONS).document(destination_id).get()
        self._read()
        return codec.destination_from_doc(snap.to_dict()) if snap.exists else None

    def get_gateways(self, facility_group_id: str, gateway_ids: Sequence[str]) -> dict[str, Gateway]:
        if not gateway_ids:
            return {}
        refs = [self._group(facility_group_id).collection(GATEWAYS).document(g) for g in dict.fromkeys(gateway_ids)]
        with _translated():
            snaps = list(self._db.get_all(refs))
        self._read(len(refs))
        return {s.id: codec.gateway_from_doc(s.to_dict()) for s in snaps if s.exists}

    def gateway_group(self, gateway_id: str) -> Optional[str]:
        """GatewayDirectory: one collection-group equality query on ``gateways.id`` (single-field
        collection-group index in infra/firestore_gateway_lookup.tf); found answers are cached for
        the process (a gateway never changes group, and its ids are never reused)."""
        cached = _GATEWAY_GROUPS.get(gateway_id)
        if cached is not None:
            return cached
        q = self._db.collection_group(GATEWAYS).where(filter=FieldFilter("id", "==", gateway_id)).limit(1)
        with _translated():
            docs = list(q.stream())
        self._read(max(len(docs), 1))
        if not docs:
            return None
        group = docs[0].to_dict().get("facility_group_id")
        if isinstance(group, str) and group:
            if len(_GATEWAY_GROUPS) >= 10_000:
                _GATEWAY_GROUPS.clear()
            _GATEWAY_GROUPS[gateway_id] = group
            return group
        return None

    # -- exams (what this product has seen of the platform's exams) ------------------------
    def record_exam(self, fg: str, exam: dict) -> None:
        """Remember an exam from its status events: later study changes are checked against it."""
        with _translated():
            self._group(fg).collection(EXAMS).document(exam["exam_id"]).set(exam, merge=True)
        self.ops.writes += 1

    def get_exam(self, fg: str, exam_id: str) -> Optional[dict]:
        with _translated():
            snap = self._group(fg).collection(EXAMS).document(exam_id).get()
        self._read()
        return snap.to_dict() if snap.exists else None

    # -- jobs ----------------------------------------------------------------------------
    def create_job(self, job: Job) -> bool:
        try:
            with _translated():
                self._job_ref(job.facility_group_id, job.id).create(codec.job_to_doc(job))
        except gexc.AlreadyExists:
            self.ops.refused += 1
            return False
        self.ops.writes += 1
        return True

    def get_job(self, facility_group_id: str, job_id: str) -> Optional[Job]:
        with _translated():
            snap = self._job_ref(facility_group_id, job_id).get()
        self._read()
        return codec.job_from_doc(snap.to_dict()) if snap.exists else None

    def claim_publish(self, facility_group_id: str, job_id: str, now: datetime, lease_until: datetime) -> Optional[Job]:
        """Take the publish lease of an unpublished, open job whose lease ran out. The update is
        conditional on the version read, so of concurrent callers exactly one wins; the others
        get None."""
        ref = self._job_ref(facility_group_id, job_id)
        with _translated():
            snap = ref.get()
        self._read()
        if not snap.exists:
            return None
        job = codec.job_from_doc(snap.to_dict())
        if job.published or job.state not in OPEN_JOB_STATES:
            return None
        if job.publish_lease_until is not None and job.publish_lease_until > now:
            return None
        try:
            with _translated():
                ref.update({"publish_lease_until": lease_until}, option=self._db.write_option(last_update_time=snap.update_time))
        except (gexc.FailedPrecondition, TransientError):
            self.ops.refused += 1
            return None
        self.ops.writes += 1
        job.publish_lease_until = lease_until
        return job

    def mark_published(self, facility_group_id: str, job_id: str, at: datetime) -> None:
        with _translated():
            self._job_ref(facility_group_id, job_id).update({"published": True, "published_at": at})
        self.ops.writes += 1

    def transact_job(self, facility_group_id: str, job_id: str, decide: Callable[[Job], Transition]) -> Optional[Transition]:
        ref = self._job_ref(facility_group_id, job_id)
        # Issue 11 item 7: most concurrent callers of one job change nothing (a repeated result, a
        # result after the final one). Decide those on a plain read, which is strongly consistent
        # and takes no lock (a read-only transaction at the read's time would answer the same), and
        # keep transactions, and their contention on this one document, for real changes.
        with _translated():
            snap = ref.get()
        self._read()
        if not snap.exists:
            return None
        first = decide(codec.job_from_doc(snap.to_dict()))
        if first.job is None and first.archive_state is None:
            return first

        @firestore.transactional
        def run(tx: firestore.Transaction) -> Optional[Transition]:
            snap = ref.get(transaction=tx)
            self._read()
            if not snap.exists:
                return None
            transition = decide(codec.job_from_doc(snap.to_dict()))
            if transition.job is not None:
                tx.set(ref, codec.job_to_doc(transition.job))
                self.ops.writes += 1
            if transition.archive_state is not None:
                a = transition.archive_state
                tx.set(self._archive_ref(a.facility_group_id, a.exam_id, a.destination_id), codec.archive_state_to_doc(a))
                self.ops.writes += 1
            return transition

        with _translated():
            return run(self._db.transaction())

    def defer(self, facility_group_id: str, job_id: str, deferral: Deferral,
              accepts: Callable[[Job], bool]) -> Optional[tuple[Job, bool]]:
        """A deferral is its own small document beside the job, created in a transaction that
        reads the job: the job document is neither grown nor written (a burst of late images would
        make it large and hot: ~1 write/s per document), and a final result committed concurrently
        is serialised with it (read lock on the job), so either the deferral sees the final state or
        the follow-ups that run after the result see the deferral."""
        job_ref = self._job_ref(facility_group_id, job_id)
        ref = job_ref.collection(DEFERRALS).document(deferral.id)

        @firestore.transactional
        def run(tx: firestore.Transaction) -> Optional[tuple[Job, bool]]:
            snap = job_ref.get(transaction=tx)
            self._read()
            if not snap.exists:
                return None
            job = codec.job_from_doc(snap.to_dict())
            existing = ref.get(transaction=tx)
            self._read()
            if existing.exists:  # a redelivery of the same event
                return job, True
            if not accepts(job):
                return job, False
            tx.create(ref, codec.deferral_to_doc(deferral))
            self.ops.writes += 1
            return job, True

        with _translated():
            return run(self._db.transaction())

    def deferrals(self, facility_group_id: str, job_id: str) -> list[Deferral]:
        coll = self._job_ref(facility_group_id, job_id).collection(DEFERRALS)
        with _translated():
            docs = list(coll.order_by("__name__").stream())
        self._read(len(docs))
        return [codec.deferral_from_doc(d.to_dict()) for d in docs]

    def expired_jobs(self, now: datetime, limit: int) -> list[Job]:
        q = (
            self._db.collection_group(JOBS)
            .where(filter=FieldFilter("state", "in", [s.value for s in OPEN_JOB_STATES]))
            .where(filter=FieldFilter("deadline", "<=", now))
            .order_by("deadline")
            .limit(limit)
        )
        return self._jobs(q)

    def unpublished_jobs(self, now: datetime, limit: int) -> list[Job]:
        q = (
            self._db.collection_group(JOBS)
            .where(filter=FieldFilter("published", "==", False))
            .where(filter=FieldFilter("state", "==", JobState.QUEUED.value))
            .where(filter=FieldFilter("publish_lease_until", "<=", now))
            .order_by("publish_lease_until")
            .limit(limit)
        )
        return self._jobs(q)

    def lock_holders(self, facility_group_id: str, exam_id: str) -> list[Job]:
        q = (
            self._group(facility_group_id)
            .collection(JOBS)
            .where(filter=FieldFilter("exam_id", "==", exam_id))
            .where(filter=FieldFilter("lock_held", "==", True))
        )
        return self._jobs(q)

    def archive_states(self, facility_group_id: str, exam_id: str) -> list[ArchiveState]:
        coll = self._group(facility_group_id).collection(EXAMS).document(exam_id).collection(ARCHIVE_STATES)
        with _translated():
            docs = list(coll.stream())
        self._read(len(docs))
        return [codec.archive_state_from_doc(d.to_dict()) for d in docs]

    def _jobs(self, query: Any) -> list[Job]:
        with _translated():
            docs = list(query.stream())
        self._read(len(docs))
        return [codec.job_from_doc(d.to_dict()) for d in docs]

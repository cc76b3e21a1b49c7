"""Firestore persistence of the admin API: gateways, destinations, the provisioning log and the
audit trail. Each change is written in one batch with its audit entry, so there is never a
change without its audit entry or the reverse.

  facility_groups/{fg}/provisioning/{gateway}    durable provisioning log (rule 7)
  facility_groups/{fg}/audit/{auto id}           who changed what, when (field names, no values)
"""
from __future__ import annotations

from datetime import datetime
from typing import Any, Optional, Sequence

from google.api_core import exceptions as gexc
from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter

from ..domain.errors import Conflict, MalformedInput, PermanentError
from ..domain.models import OPEN_JOB_STATES, Destination, Facility, FacilityGroup, Gateway, Job
from ..domain.provisioning import UNFINISHED, LogState, Operation, ProvisioningLog
from . import codec
from .firestore_store import DESTINATIONS, FACILITIES, GATEWAYS, JOBS, FirestoreStore, _translated

PROVISIONING = "provisioning"
AUDIT = "audit"
BULK_ACTIONS = "bulk_actions"  # facility_groups/{fg}/bulk_actions/{request id}: one per bulk retry (console)


def _log_to_doc(log: ProvisioningLog) -> dict[str, Any]:
    return {"facility_group_id": log.facility_group_id, "gateway_id": log.gateway_id, "operation": log.operation.value,
            "state": log.state.value, "started_at": log.started_at, "lease_until": log.lease_until,
            "steps": list(log.steps), "error": log.error, "actor": log.actor,
            "identity_project": log.identity_project}


def _log_from_doc(d: dict[str, Any]) -> ProvisioningLog:
    return ProvisioningLog(d["facility_group_id"], d["gateway_id"], Operation(d["operation"]), LogState(d["state"]),
                           codec._utc(d["started_at"]), codec._utc(d["lease_until"]), list(d.get("steps") or []),
                           d.get("error"), d.get("actor", ""), d.get("identity_project") or "")


class FirestoreAdminStore(FirestoreStore):
    # -- reads ---------------------------------------------------------------------------
    def _facility_docs(self, fg: str) -> list:
        with _translated():
            docs = list(self._group(fg).collection(FACILITIES).stream())
        self._read(len(docs))
        return docs

    def facility_records(self, fg: str) -> list[Facility]:
        """Every facility of the group the platform sent (contract facility-changed.v1), removed ones
        (tombstones) included, by name."""
        return sorted((codec.facility_from_doc({"facility_group_id": fg, **d.to_dict(), "id": d.id})
                       for d in self._facility_docs(fg)), key=lambda f: (f.name.lower(), f.id))

    def facilities(self, fg: str) -> dict[str, str]:
        """Facility id -> display name; a facility the platform removed keeps its last name, marked
        "(removed)" (it may still be in a scope or on a job: docs/facilities.md)."""
        return {f.id: f.name + (" (removed)" if f.removed else "") for f in self.facility_records(fg)}

    def facilities_with_adt(self, fg: str) -> dict[str, bool]:
        """Facility id -> its Send ADT Message setting (seed 000: enabled at facility level). A
        removed facility keeps its last setting: its patients' archived exams still get corrections."""
        return {f.id: f.send_adt for f in self.facility_records(fg)}

    def facility_groups(self, ids: Sequence[str]) -> list[FacilityGroup]:
        """The groups among ``ids`` the platform sent and has not removed, by name."""
        if not ids:
            return []
        refs = [self._group(g) for g in dict.fromkeys(ids)]
        with _translated():
            snaps = list(self._db.get_all(refs))
        self._read(len(refs))
        groups = [codec.group_from_doc({**s.to_dict(), "id": s.id}) for s in snaps if s.exists]
        return sorted((g for g in groups if not g.removed), key=lambda g: (g.name.lower(), g.id))

    def list_gateways(self, fg: str) -> list[Gateway]:
        with _translated():
            docs = list(self._group(fg).collection(GATEWAYS).stream())
        self._read(len(docs))
        return sorted((codec.gateway_from_doc(d.to_dict()) for d in docs), key=lambda g: (g.name.lower(), g.id))

    def get_gateway(self, fg: str, gateway_id: str) -> Optional[Gateway]:
        return self.get_gateways(fg, [gateway_id]).get(gateway_id)

    def list_destinations(self, fg: str) -> list[Destination]:
        with _translated():
            docs = list(self._group(fg).collection(DESTINATIONS).stream())
        self._read(len(docs))
        return sorted((codec.destination_from_doc(d.to_dict()) for d in docs), key=lambda x: (x.name.lower(), x.id))

    def _any(self, query: Any) -> bool:
        with _translated():
            docs = list(query.limit(1).stream())
        self._read(len(docs))
        return bool(docs)

    def gateway_has_destinations(self, fg: str, gateway_id: str) -> bool:
        return self._any(self._group(fg).collection(DESTINATIONS).where(filter=FieldFilter("gateway_id", "==", gateway_id)))

    def has_open_jobs(self, fg: str, field: str, value: str) -> bool:
        """Any QUEUED or IN_PROGRESS job whose ``field`` (gateway_id, destination_id) is ``value``."""
        return self._any(self._group(fg).collection(JOBS)
                         .where(filter=FieldFilter(field, "==", value))
                         .where(filter=FieldFilter("state", "in", [s.value for s in OPEN_JOB_STATES])))

    # -- writes with audit ---------------------------------------------------------------
    def _audit(self, batch: Any, fg: str, actor: str, action: str, target_type: str, target_id: str,
               fields: list[str], at: datetime) -> None:
        ref = self._group(fg).collection(AUDIT).document()
        batch.set(ref, {"at": at, "actor": actor, "action": action, "target_type": target_type, "target_id": target_id,
                        "fields": sorted(fields)})

    def audit(self, fg: str, actor: str, action: str, target_type: str, target_id: str, at: datetime,
              fields: Optional[list[str]] = None) -> None:
        batch = self._db.batch()
        self._audit(batch, fg, actor, action, target_type, target_id, fields or [], at)
        with _translated():
            batch.commit()
        self.ops.writes += 1

    def audit_entries(self, fg: str) -> list[dict]:
        with _translated():
            docs = list(self._group(fg).collection(AUDIT).order_by("at").stream())
        self._read(len(docs))
        return [d.to_dict() for d in docs]

    def _commit(self, batch: Any, writes: int) -> None:
        try:
            with _translated():
                batch.commit()
        except gexc.AlreadyExists:
            raise Conflict("already exists") from None
        self.ops.writes += writes

    def put_destination(self, destination: Destination, *, create: bool, actor: str, action: str, fields: list[str]) -> None:
        ref = self._group(destination.facility_group_id).collection(DESTINATIONS).document(destination.id)
        batch = self._db.batch()
        (batch.create if create else batch.set)(ref, codec.destination_to_doc(destination))
        self._audit(batch, destination.facility_group_id, actor, action, "destination", destination.id, fields,
                    destination.updated_at)
        self._commit(batch, 2)

    def delete_destination(self, fg: str, destination_id: str, *, actor: str, at: datetime) -> None:
        batch = self._db.batch()
        batch.delete(self._group(fg).collection(DESTINATIONS).document(destination_id))
        self._audit(batch, fg, actor, "destination.delete", "destination", destination_id, [], at)
        self._commit(batch, 2)

    def put_gateway(self, gateway: Gateway, *, actor: str, action: str, fields: list[str]) -> None:
        batch = self._db.batch()
        batch.set(self._group(gateway.facility_group_id).collection(GATEWAYS).document(gateway.id), codec.gateway_to_doc(gateway))
        self._audit(batch, gateway.facility_group_id, actor, action, "gateway", gateway.id, fields, gateway.updated_at)
        self._commit(batch, 2)

    def set_gateway_key(self, fg: str, gateway_id: str, key_name: str, *, actor: str, at: datetime) -> None:
        """Point the gateway at its current service-account key, with the audit entry. Only these
        fields are written, so a concurrent edit of the gateway's other fields is not undone."""
        batch = self._db.batch()
        batch.update(self._group(fg).collection(GATEWAYS).document(gateway_id),
                     {"service_account_key_id": key_name, "updated_at": at, "updated_by": actor})
        self._audit(batch, fg, actor, "gateway.key.rotate", "gateway", gateway_id, ["service_account_key_id"], at)
        self._commit(batch, 2)

    def create_gateway_record(self, gateway: Gateway, *, actor: str) -> None:
        """The last provisioning step: the record, its audit entry and the log's DONE, atomically."""
        fg = gateway.facility_group_id
        batch = self._db.batch()
        batch.create(self._group(fg).collection(GATEWAYS).document(gateway.id), codec.gateway_to_doc(gateway))
        self._audit(batch, fg, actor, "gateway.create", "gateway", gateway.id, [], gateway.created_at)
        batch.update(self._log_ref(fg, gateway.id), {"state": LogState.DONE.value})
        self._commit(batch, 3)

    def delete_gateway_record(self, fg: str, gateway_id: str, *, actor: str, at: datetime, audited: bool) -> None:
        batch = self._db.batch()
        batch.delete(self._group(fg).collection(GATEWAYS).document(gateway_id))
        if audited:
            self._audit(batch, fg, actor, "gateway.delete", "gateway", gateway_id, [], at)
        self._commit(batch, 2 if audited else 1)

    # -- the Jobs tab ----------------------------------------------------------------------
    def query_jobs(self, fg: str, query: Any, after: Optional[tuple[dict, str]] = None) -> list[Job]:
        """One page of ``query`` (shared.domain.job_query). ``after`` is the decoded cursor: the
        order values and id of the previous page's last row, turned into a start_after position
        without reading that document (a page costs only its own rows)."""
        from google.cloud.firestore_v1.document import DocumentSnapshot

        coll = self._group(fg).collection(JOBS)
        q: Any = self._job_query(fg, query)
        if after is not None:
            values, doc_id = after
            position = DocumentSnapshot(coll.document(doc_id), values, True, None, None, None)
            q = q.start_after(position)
        try:
            return self._jobs(q.limit(query.page_size))
        except PermanentError:
            # Everything in this query comes from the request (filters and cursor, validated by
            # shared.domain.job_query): what Firestore still refuses as INVALID_ARGUMENT (say, a
            # value too large to index) is bad input, not a fault (issue 11 item 13).
            raise MalformedInput("the database refused this job query: correct the filters or the cursor") from None

    def _job_query(self, fg: str, query: Any, *, ordered: bool = True) -> Any:
        q: Any = self._group(fg).collection(JOBS)
        for field, value in query.equalities:
            q = q.where(filter=FieldFilter(field, "==", value))
        if query.range_field is not None:
            if query.range_from is not None:
                q = q.where(filter=FieldFilter(query.range_field, ">=", query.range_from))
            if query.range_to is not None:
                op = "<" if query.range_field == "patient_name_lower" else "<="
                q = q.where(filter=FieldFilter(query.range_field, op, query.range_to))
        if ordered:
            for field, direction in query.order:
                q = q.order_by(field, direction=direction)
        return q

    def count_jobs(self, fg: str, query: Any, below: Any = None) -> int:
        """How many jobs match ``query`` (the Jobs tab's counts and chart): a Firestore count()
        aggregation, billed one read per 1,000 index entries, never the documents. Ordered like the
        list query so it runs on the same composite indexes (shared/domain/job_query.py).
        ``below``: an exclusive upper bound on the range field (a day's end for the chart)."""
        q = self._job_query(fg, query)
        if below is not None:
            q = q.where(filter=FieldFilter(query.range_field, "<", below))
        try:
            with _translated():
                result = q.count(alias="n").get()
        except PermanentError:
            raise MalformedInput("the database refused this job query: correct the filters") from None
        self._read(1)
        return int(result[0][0].value)

    def get_bulk_action(self, fg: str, request_id: str) -> Optional[dict]:
        with _translated():
            snap = self._group(fg).collection(BULK_ACTIONS).document(request_id).get()
        self._read()
        return snap.to_dict() if snap.exists else None

    def record_bulk_action(self, fg: str, request_id: str, record: dict, *, actor: str, at: datetime) -> Optional[dict]:
        """The bulk action's record and its audit entry in one batch, created once: a replay of the
        same request id finds it (the stored record is returned) and writes nothing."""
        batch = self._db.batch()
        batch.create(self._group(fg).collection(BULK_ACTIONS).document(request_id), record)
        self._audit(batch, fg, actor, "job.bulk_retry", "bulk_action", request_id, sorted(record.get("filters", {})), at)
        try:
            self._commit(batch, 2)
        except Conflict:
            return self.get_bulk_action(fg, request_id)
        return None

    # -- provisioning log ----------------------------------------------------------------
    def _log_ref(self, fg: str, gateway_id: str) -> Any:
        return self._group(fg).collection(PROVISIONING).document(gateway_id)

    def begin_log(self, log: ProvisioningLog, *, replace_state: Optional[LogState] = None) -> None:
        """Create the log (CREATE), or turn a finished one into a DELETE (only from ``replace_state``)."""
        ref = self._log_ref(log.facility_group_id, log.gateway_id)
        if replace_state is None:
            try:
                with _translated():
                    ref.create(_log_to_doc(log))
            except gexc.AlreadyExists:
                raise Conflict("gateway is already being provisioned") from None
        else:
            with _translated():
                snap = ref.get()
            self._read()
            if snap.exists and snap.get("state") != replace_state.value:
                raise Conflict("the gateway is being provisioned, deleted or given a new key: retry later")
            try:
                with _translated():
                    if snap.exists:
                        ref.update(_log_to_doc(log), option=self._db.write_option(last_update_time=snap.update_time))
                    else:
                        ref.create(_log_to_doc(log))
            except (gexc.FailedPrecondition, gexc.AlreadyExists):
                raise Conflict("the gateway is being provisioned, deleted or given a new key: retry later") from None
        self.ops.writes += 1

    def log_step(self, fg: str, gateway_id: str, step: str) -> None:
        """Record the intent to run ``step`` before running it: a crash mid-step is then undone too."""
        with _translated():
            self._log_ref(fg, gateway_id).update({"steps": firestore.ArrayUnion([step])})
        self.ops.writes += 1

    def log_identity_project(self, fg: str, gateway_id: str, project: str) -> None:
        """Record where the gateway's service account is about to be created (docs/scale.md), before
        creating it: an undo then looks there."""
        with _translated():
            self._log_ref(fg, gateway_id).update({"identity_project": project})
        self.ops.writes += 1

    def set_log_state(self, fg: str, gateway_id: str, state: LogState, error: Optional[str] = None) -> None:
        update: dict[str, Any] = {"state": state.value}
        if error is not None:
            update["error"] = error[:500]
        with _translated():
            self._log_ref(fg, gateway_id).update(update)
        self.ops.writes += 1

    def get_log(self, fg: str, gateway_id: str) -> Optional[ProvisioningLog]:
        with _translated():
            snap = self._log_ref(fg, gateway_id).get()
        self._read()
        return _log_from_doc(snap.to_dict()) if snap.exists else None

    def stale_logs(self, now: datetime, limit: int) -> list[ProvisioningLog]:
        q = (self._db.collection_group(PROVISIONING)
             .where(filter=FieldFilter("state", "in", [s.value for s in UNFINISHED]))
             .where(filter=FieldFilter("lease_until", "<=", now))
             .order_by("lease_until").limit(limit))
        with _translated():
            docs = list(q.stream())
        self._read(len(docs))
        return [_log_from_doc(d.to_dict()) for d in docs]

    def claim_log(self, fg: str, gateway_id: str, now: datetime, lease_until: datetime) -> Optional[ProvisioningLog]:
        """Take over an unfinished log whose lease ran out (exactly one taker wins)."""
        ref = self._log_ref(fg, gateway_id)
        with _translated():
            snap = ref.get()
        self._read()
        if not snap.exists:
            return None
        log = _log_from_doc(snap.to_dict())
        if log.state not in UNFINISHED or log.lease_until > now:
            return None
        try:
            with _translated():
                ref.update({"lease_until": lease_until, "state": LogState.ROLLING_BACK.value if log.operation is Operation.CREATE
                            else log.state.value}, option=self._db.write_option(last_update_time=snap.update_time))
        except gexc.FailedPrecondition:
            self.ops.refused += 1
            return None
        self.ops.writes += 1
        log.lease_until = lease_until
        return log

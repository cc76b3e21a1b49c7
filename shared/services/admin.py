"""Admin API use cases (issue 3): gateways and destinations of one facility group (seed 000 Steps 1
and 2). Every method takes the authenticated caller first and refuses other groups with 404."""
from __future__ import annotations

import dataclasses
import re
from datetime import timedelta
from typing import Any, Mapping, Optional, Sequence

from .. import logs
from ..adapters.gcs import VaultSecrets, decode_result_keys, result_key_object, sa_key_object
from ..auth import Caller
from ..clock import iso
from ..domain import history
from ..domain.errors import Conflict, NotFound, ValidationFailed
from ..domain.models import Destination, Gateway
from ..domain.validation import is_valid_id, validate_destination, validate_gateway
from ..domain.health import health_view
from ..ports import Clock, HealthStore
import secrets

from .provisioning import Provisioner, new_gateway_id, new_result_key

GATEWAY_FIELDS = frozenset({"name", "description", "facility_ids", "active"})
DESTINATION_FIELDS = frozenset({
    "name", "type", "host", "port", "called_ae_title", "calling_ae_title", "moving_ae_title", "gateway_id",
    "facility_ids", "max_retries", "retry_timeout_seconds", "transfer_syntax_uid", "excluded_sop_class_uids",
    "auto_archive", "trigger_status", "support_iocm", "allow_prefetch", "storage_commitment", "active", "hl7_host", "hl7_port",
    "hl7_receiving_application", "hl7_receiving_facility"})
# Seed 000 Troubleshooting, "Gateway cannot be deleted".
GATEWAY_HAS_DESTINATIONS = "The gateway has linked destinations: remove all destinations linked to it first."
GATEWAY_HAS_JOBS = "The gateway has jobs in progress: wait for them to complete."


def _body(data: Any, allowed: frozenset[str]) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise ValidationFailed({"(body)": "must be a JSON object"})
    unknown = sorted(k for k in data if k not in allowed)
    if unknown:
        raise ValidationFailed({k: "is not a known field" for k in unknown})
    return data


def _changed(old: Any, new: Any, fields: frozenset[str]) -> list[str]:
    return sorted(f for f in fields if getattr(old, f, None) != getattr(new, f, None))


class AdminService:
    def __init__(self, store: Any, provisioner: Provisioner, vault: Any, iam: Any, clock: Clock, jobs: Any = None,
                 result_key_grace_seconds: int = 24 * 3600, health: Optional[HealthStore] = None,
                 gateway_silent_seconds: int = 900):
        """``health``: each gateway's last contact, shown as its ``health`` (issue 15 item 3); silent
        after ``gateway_silent_seconds`` without contact."""
        self._store, self._prov, self._vault, self._iam, self._clock = store, provisioner, vault, iam, clock
        self._health, self._silent_after = health, gateway_silent_seconds
        self._result_key_grace = result_key_grace_seconds
        self.jobs = jobs  # the Jobs tab (services/jobs.py), behind the same authentication

    # -- helpers -------------------------------------------------------------------------
    def _gateway(self, caller: Caller, fg: str, gateway_id: str) -> Gateway:
        caller.require_group(fg)
        gw = self._store.get_gateway(fg, gateway_id) if is_valid_id(gateway_id) else None
        if gw is None:
            raise NotFound("gateway not found")
        return gw

    def _destination(self, caller: Caller, fg: str, destination_id: str) -> Destination:
        caller.require_group(fg)
        d = self._store.get_destination(fg, destination_id) if is_valid_id(destination_id) else None
        if d is None:
            raise NotFound("destination not found")
        return d

    def _facilities(self, fg: str, keep: tuple[str, ...] = ()) -> tuple[dict[str, str], frozenset[str]]:
        """Display names of the group's facilities, and the ids a scope may hold: those the platform
        has not removed, plus ``keep`` (a saved scope's own ids, so that a facility removed since
        does not block unrelated edits; docs/facilities.md)."""
        records = self._store.facility_records(fg)
        names = {f.id: f.name + (" (removed)" if f.removed else "") for f in records}
        return names, frozenset(f.id for f in records if not f.removed) | frozenset(keep)

    # -- facility groups and facilities (platform data, read-only here; docs/facilities.md) ----
    def list_facility_groups(self, caller: Caller) -> list[dict]:
        """The groups the caller administers that the platform has sent (and not removed)."""
        return [{"id": g.id, "name": g.name} for g in self._store.facility_groups(sorted(caller.facility_group_ids))]

    def list_facilities(self, caller: Caller, fg: str) -> list[dict]:
        """The facilities a gateway or destination form may offer (removed ones are not)."""
        caller.require_group(fg)
        return [{"id": f.id, "name": f.name, "send_adt": f.send_adt}
                for f in self._store.facility_records(fg) if not f.removed]

    # -- gateways ------------------------------------------------------------------------
    def _views(self, gateways: Sequence[Gateway], names: Mapping[str, str]) -> list[dict]:
        """Gateway rows with their health: one batched read of the health documents."""
        if self._health is None:
            return [gateway_view(g, names) for g in gateways]
        found = self._health.gateway_health([(g.facility_group_id, g.id) for g in gateways])
        now = self._clock.now()
        return [gateway_view(g, names, health_view(found.get((g.facility_group_id, g.id)), now, self._silent_after))
                for g in gateways]

    def list_gateways(self, caller: Caller, fg: str) -> list[dict]:
        caller.require_group(fg)
        names = self._store.facilities(fg)
        return self._views(self._store.list_gateways(fg), names)

    def get_gateway(self, caller: Caller, fg: str, gateway_id: str) -> dict:
        return self._views([self._gateway(caller, fg, gateway_id)], self._store.facilities(fg))[0]

    def create_gateway(self, caller: Caller, fg: str, data: Any) -> dict:
        caller.require_group(fg)
        facilities, selectable = self._facilities(fg)
        gw_id = new_gateway_id()
        gateway = validate_gateway(_body(data, GATEWAY_FIELDS), gateway_id=gw_id, facility_group_id=fg,
                                   group_facility_ids=selectable, topic_id="", subscription_id="")
        created = self._prov.create(gateway, caller.label)
        return self._views([created], facilities)[0]

    def update_gateway(self, caller: Caller, fg: str, gateway_id: str, data: Any) -> dict:
        current = self._gateway(caller, fg, gateway_id)
        if current.provisioning_state != "READY":
            raise Conflict("the gateway is being deleted")
        facilities, selectable = self._facilities(fg, keep=current.facility_ids)
        patch = _body(data, GATEWAY_FIELDS)
        merged = {"name": current.name, "description": current.description, "facility_ids": list(current.facility_ids),
                  "active": current.active, **patch}
        v = validate_gateway(merged, gateway_id=current.id, facility_group_id=fg, group_facility_ids=selectable,
                             topic_id=current.topic_id, subscription_id=current.subscription_id)
        if "facility_ids" in patch and v.facility_ids:
            # Destinations may only serve facilities their gateway serves (seed 000 Step 2).
            # A destination with an empty list serves whatever the gateway serves: only narrowing
            # the gateway strands it; widening (a superset of what it served) is allowed.
            narrowed = not current.facility_ids or not set(current.facility_ids) <= set(v.facility_ids)
            stranded = [d.id for d in self._store.list_destinations(fg) if d.gateway_id == current.id
                        and ((not d.facility_ids and narrowed) or not set(d.facility_ids) <= set(v.facility_ids))]
            if stranded:
                raise ValidationFailed({"facility_ids": "linked destinations serve facilities outside this list: "
                                                        + ", ".join(sorted(stranded))})
        now = self._clock.now()
        updated = dataclasses.replace(current, name=v.name, description=v.description, facility_ids=v.facility_ids,
                                      active=v.active, updated_at=now, updated_by=caller.label)
        updated = history.recorded_gateway(current, updated, now)  # activation and scope instants (rule 1)
        self._store.put_gateway(updated, actor=caller.label, action="gateway.update",
                                fields=_changed(current, updated, GATEWAY_FIELDS))
        return self._views([updated], facilities)[0]

    def delete_gateway(self, caller: Caller, fg: str, gateway_id: str) -> None:
        gw = self._gateway(caller, fg, gateway_id)
        if gw.provisioning_state != "READY":
            raise Conflict("the gateway is being deleted")

        def refusal() -> Optional[str]:
            if self._store.gateway_has_destinations(fg, gateway_id):
                return GATEWAY_HAS_DESTINATIONS
            if self._store.has_open_jobs(fg, "gateway_id", gateway_id):
                return GATEWAY_HAS_JOBS
            return None

        reason = refusal()
        if reason:
            raise Conflict(reason)
        self._prov.delete(gw, caller.label, refusal)

    def _download(self, caller: Caller, fg: str, gateway_id: str, object_name, action: str, read=None) -> bytes:
        gw = self._gateway(caller, fg, gateway_id)
        key = (read or self._vault.get)(object_name(fg, gw.id), fresh=True)
        if key is None:
            raise NotFound("no key stored for this gateway")
        self._store.audit(fg, caller.label, action, "gateway", gw.id, self._clock.now())  # who took a copy, when
        return key

    def service_account_key(self, caller: Caller, fg: str, gateway_id: str) -> bytes:
        return self._download(caller, fg, gateway_id, sa_key_object, "gateway.key.download")

    def result_endpoint_key(self, caller: Caller, fg: str, gateway_id: str) -> bytes:
        """The current key only (during a rotation's grace period the stored record holds two)."""
        def current(name: str, *, fresh: bool) -> Optional[bytes]:
            data = self._vault.get(name, fresh=fresh)
            keys = decode_result_keys(data) if data is not None else None
            return keys.current if keys else None

        return self._download(caller, fg, gateway_id, result_key_object, "gateway.result_key.download", read=current)

    def rotate_service_account_key(self, caller: Caller, fg: str, gateway_id: str) -> dict:
        """New key stored first, then the old one revoked: the gateway keeps working until an
        administrator installs the new key (downloaded with the key endpoint). One unit, whatever
        fails or dies half-way: Provisioner.rotate_key (issue 11 item 16)."""
        gw = self._gateway(caller, fg, gateway_id)
        if gw.provisioning_state != "READY":
            raise Conflict("the gateway is being deleted")
        updated = self._prov.rotate_key(gw, caller.label)
        return self._views([updated], self._store.facilities(fg))[0]

    def rotate_result_endpoint_key(self, caller: Caller, fg: str, gateway_id: str, grace_seconds: Optional[str] = None) -> None:
        """A new Result Endpoint key becomes current at once; the old one keeps verifying for the
        grace period (default ``result_key_grace_seconds``), so results of a gateway not yet
        switched to the new key are not lost (issue 11 item 5). ``grace_seconds`` may only shorten
        it: 0 revokes the old key at once (e.g. it leaked). docs/admin-api.md "Keys and secrets"."""
        gw = self._gateway(caller, fg, gateway_id)
        grace = self._result_key_grace
        if grace_seconds is not None:
            if not re.fullmatch(r"[0-9]{1,7}", grace_seconds) or int(grace_seconds) > grace:
                raise ValidationFailed({"grace_seconds": f"must be a whole number of seconds from 0 to {grace}"})
            grace = int(grace_seconds)
        now = self._clock.now()
        VaultSecrets(self._vault).rotate_result_key(fg, gw.id, new_result_key(),
                                                    now + timedelta(seconds=grace) if grace else None)
        self._store.audit(fg, caller.label, "gateway.result_key.rotate", "gateway", gw.id, now)
        logs.info("result endpoint key rotated", gateway_id=gw.id, facility_group_id=fg, grace_seconds=grace)

    # -- destinations --------------------------------------------------------------------
    def list_destinations(self, caller: Caller, fg: str) -> list[dict]:
        caller.require_group(fg)
        names = self._store.facilities(fg)
        gateways = {g.id: g for g in self._store.list_gateways(fg)}
        return [destination_view(d, gateways.get(d.gateway_id), names) for d in self._store.list_destinations(fg)]

    def get_destination(self, caller: Caller, fg: str, destination_id: str) -> dict:
        d = self._destination(caller, fg, destination_id)
        return destination_view(d, self._store.get_gateway(fg, d.gateway_id), self._store.facilities(fg))

    def _validated(self, fg: str, data: Mapping[str, Any], destination_id: str, previous: Optional[Destination]) -> tuple:
        facilities, selectable = self._facilities(fg, keep=previous.facility_ids if previous else ())
        gw_id = data.get("gateway_id")
        gateway = self._store.get_gateway(fg, gw_id) if is_valid_id(gw_id) else None
        if gateway is not None and gateway.provisioning_state != "READY":
            gateway = None
        now = self._clock.now()
        d = validate_destination(data, destination_id=destination_id, facility_group_id=fg, gateway=gateway,
                                 group_facility_ids=selectable, now=now, previous=previous)
        # The instants that decide "no retroactive archiving" are recorded in the same write.
        return history.recorded_destination(previous, d, now), gateway, facilities

    def create_destination(self, caller: Caller, fg: str, data: Any) -> dict:
        caller.require_group(fg)
        d, gateway, facilities = self._validated(fg, _body(data, DESTINATION_FIELDS), new_destination_id(), None)
        d = dataclasses.replace(d, created_by=caller.label, updated_by=caller.label)
        self._store.put_destination(d, create=True, actor=caller.label, action="destination.create", fields=[])
        return destination_view(d, gateway, facilities)

    def update_destination(self, caller: Caller, fg: str, destination_id: str, data: Any) -> dict:
        current = self._destination(caller, fg, destination_id)
        patch = _body(data, DESTINATION_FIELDS)
        merged = {**destination_input(current), **patch}
        d, gateway, facilities = self._validated(fg, merged, current.id, current)
        d = dataclasses.replace(d, updated_by=caller.label)
        self._store.put_destination(d, create=False, actor=caller.label, action="destination.update",
                                    fields=_changed(current, d, DESTINATION_FIELDS))
        return destination_view(d, gateway, facilities)

    def set_destination_active(self, caller: Caller, fg: str, destination_id: str, active: bool) -> dict:
        return self.update_destination(caller, fg, destination_id, {"active": active})

    def delete_destination(self, caller: Caller, fg: str, destination_id: str) -> None:
        d = self._destination(caller, fg, destination_id)
        if self._store.has_open_jobs(fg, "destination_id", d.id):
            raise Conflict("The destination has jobs in progress: wait for them to complete.")
        self._store.delete_destination(fg, d.id, actor=caller.label, at=self._clock.now())


def new_destination_id() -> str:
    return "dst-" + secrets.token_hex(5)


def destination_input(d: Destination) -> dict:
    """A destination as admin input (the fields a PATCH may change)."""
    return {
        "name": d.name, "type": d.type, "host": d.host, "port": d.port, "called_ae_title": d.called_ae_title,
        "calling_ae_title": d.calling_ae_title, "moving_ae_title": d.moving_ae_title, "gateway_id": d.gateway_id,
        "facility_ids": list(d.facility_ids), "max_retries": d.max_retries, "retry_timeout_seconds": d.retry_timeout_seconds,
        "transfer_syntax_uid": d.transfer_syntax_uid, "excluded_sop_class_uids": list(d.excluded_sop_class_uids),
        "auto_archive": d.auto_archive, "trigger_status": d.trigger_status.value if d.trigger_status else None,
        "support_iocm": d.support_iocm, "allow_prefetch": d.allow_prefetch,
        "storage_commitment": d.storage_commitment, "active": d.active,
        "hl7_host": d.hl7_host, "hl7_port": d.hl7_port, "hl7_receiving_application": d.hl7_receiving_application,
        "hl7_receiving_facility": d.hl7_receiving_facility,
    }


def _facility_names(ids: tuple[str, ...], names: Mapping[str, str]) -> str:
    """The Facilities column: names, or "All" for an empty scope (seed 000: blank = all)."""
    return ", ".join(names.get(f, f) for f in ids) if ids else "All"


def gateway_view(g: Gateway, facility_names: Mapping[str, str], health: Optional[dict] = None) -> dict:
    """A row of the Gateways table (seed 000) plus the details an administrator needs to link the
    physical gateway (seed 000 Step 3), and its ``health`` (shared/domain/health.py health_view).
    Never any key material."""
    view = {
        "id": g.id, "name": g.name, "description": g.description,
        "pubsub_subscription_id": g.subscription_id, "pubsub_topic_id": g.topic_id,
        "created_by": g.created_by, "updated_by": g.updated_by,
        "created_at": iso(g.created_at), "updated_at": iso(g.updated_at),
        "facility_ids": list(g.facility_ids), "facilities": _facility_names(g.facility_ids, facility_names),
        "active": g.active, "provisioning_state": g.provisioning_state,
        "service_account_email": g.service_account_email,
        "sa_json_download": f"/v1/facility-groups/{g.facility_group_id}/gateways/{g.id}/service-account-key",
    }
    if health is not None:
        view["health"] = health
    return view


def destination_view(d: Destination, gateway: Optional[Gateway], facility_names: Mapping[str, str]) -> dict:
    """A row of the Destinations table (seed 000 "Destinations Table Reference") plus every field."""
    return {
        **destination_input(d), "id": d.id, "archive": d.archive_text,
        "gateway_name": gateway.name if gateway else "",
        "facilities": _facility_names(d.facility_ids, facility_names),
        "created_by": d.created_by, "updated_by": d.updated_by,
        "created_at": iso(d.created_at), "updated_at": iso(d.updated_at),
    }

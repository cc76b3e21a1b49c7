"""Creating and removing a gateway's cloud resources as one unit (rule 7 of ARCHITECTURE.md).

Create: write the durable log, then for each step of CREATE_STEPS record the intent in the log and
run the step; the last step writes the gateway record and marks the log DONE in one batch. On any
failure every attempted step is undone in reverse order and the log is marked ROLLED_BACK; if the
function dies instead, the log's lease runs out and the sweeper undoes it. Delete is the same undo
of every step, recorded as a DELETE log so a crashed deletion is finished too."""
from __future__ import annotations

import dataclasses
import json
import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, Optional

from .. import logs, metrics
from ..adapters.gcs import result_key_object, sa_key_object
from ..domain import history
from ..domain.errors import ArchSyncError, Conflict, QuotaExceeded, TransientError
from ..domain.models import Gateway
from ..domain.provisioning import (CREATE_STEPS, GatewayResources, LogState, Operation, ProvisioningLog,
                                   identity_project_order, project_of_account)
from ..ports import Clock

SUBSCRIBER_ROLE = "roles/pubsub.subscriber"


@dataclass(frozen=True)
class ProvisioningSettings:
    objects_bucket: str
    # The platform's study bucket (issue 12 item 3): each gateway may read and list its own
    # facility group's prefix only, to fetch the studies its ARCHIVE/DICOM jobs name.
    study_bucket: str
    gateway_dead_letter_topic: str = "archsync-gateway-dead-letter"
    # Pub/Sub's service agent must be able to pull from a subscription to dead-letter its messages.
    pubsub_service_agent: str = ""
    # Delivery of job messages to the gateway (issue 11 item 5; the reasoning is in
    # docs/admin-api.md "Job delivery and outages"): redeliveries back off exponentially from 60 s
    # to 600 s (Pub/Sub's maximum), so 20 deliveries span more than 2.5 hours even for a gateway
    # that nacks at once, and the reference agent holds a job ~45 min before it nacks.
    ack_deadline_seconds: int = 300
    retention_seconds: int = 7 * 24 * 3600
    max_delivery_attempts: int = 20
    min_retry_backoff_seconds: int = 60
    max_retry_backoff_seconds: int = 600
    lease_seconds: int = 300  # > the admin function's timeout: a live function is never overtaken
    # The identity pool (docs/scale.md, "Service accounts"): projects that hold the gateways'
    # service accounts, at most 100 each by default. Empty: the deployment's own project, as before.
    identity_projects: tuple[str, ...] = ()


@dataclass
class Cloud:
    """The adapters provisioning drives (Pub/Sub admin, IAM admin, bucket IAM, key vault, and the
    managed folders' IAM, docs/scale.md; by default on the bucket-IAM adapter's storage client)."""

    pubsub: Any
    iam: Any
    bucket_iam: Any
    vault: Any
    folders: Any = None

    def __post_init__(self) -> None:
        if self.folders is None:
            from ..adapters.gcs import ManagedFolderIam

            bucket_iam = self.bucket_iam
            self.folders = ManagedFolderIam(client_factory=lambda: bucket_iam.client)

    def call_count(self) -> int:
        return sum(getattr(x, "calls", 0) for x in (self.pubsub, self.iam, self.bucket_iam, self.vault, self.folders))


class ProvisioningFailed(TransientError):
    """Provisioning failed and everything it created was removed; the request may be retried."""


class Provisioner:
    def __init__(self, store: Any, cloud: Cloud, clock: Clock, settings: ProvisioningSettings):
        self._store, self._cloud, self._clock, self._settings = store, cloud, clock, settings

    # -- create --------------------------------------------------------------------------
    def create(self, gateway: Gateway, actor: str) -> Gateway:
        res = GatewayResources(gateway.facility_group_id, gateway.id)
        now = self._clock.now()
        log = ProvisioningLog(gateway.facility_group_id, gateway.id, Operation.CREATE, LogState.IN_PROGRESS, now,
                              now + timedelta(seconds=self._settings.lease_seconds), actor=actor)
        self._store.begin_log(log)
        state: dict[str, Any] = {"gateway": gateway, "identity_project": ""}
        attempted: list[str] = []
        try:
            for step in CREATE_STEPS:
                self._store.log_step(res.facility_group_id, res.gateway_id, step)
                attempted.append(step)
                self._do(step, res, state, actor)
        except Exception as e:  # not BaseException: a dying process leaves the rollback to the sweeper
            why = str(e) if isinstance(e, ArchSyncError) else type(e).__name__
            metrics.provisioning_failed(res.facility_group_id, res.gateway_id, Operation.CREATE.value,
                                        attempted[-1] if attempted else None, why)
            self._rollback(res, attempted, why, state["identity_project"])
            limit = " (a Google Cloud quota was reached: see docs/scale.md)" if isinstance(e, QuotaExceeded) else ""
            raise ProvisioningFailed(f"Gateway provisioning failed at step '{attempted[-1]}'{limit} and was rolled "
                                     "back; nothing was created. Retry later.") from None
        logs.info("gateway provisioned", gateway_id=res.gateway_id, facility_group_id=res.facility_group_id)
        return state["gateway"]

    def _do(self, step: str, res: GatewayResources, state: dict, actor: str) -> None:
        c, s = self._cloud, self._settings
        email = c.iam.email(res.account_id, state["identity_project"] or None)
        member = f"serviceAccount:{email}"
        if step == "topic":
            c.pubsub.create_topic(res.topic_id)
        elif step == "subscription":
            c.pubsub.create_subscription(res.subscription_id, res.topic_id, ack_deadline_seconds=s.ack_deadline_seconds,
                                         retention_seconds=s.retention_seconds, dead_letter_topic_id=s.gateway_dead_letter_topic,
                                         max_delivery_attempts=s.max_delivery_attempts,
                                         min_retry_backoff_seconds=s.min_retry_backoff_seconds,
                                         max_retry_backoff_seconds=s.max_retry_backoff_seconds)
        elif step == "service_account":
            self._create_account(res, state)
        elif step == "subscription_binding":
            # Subscriber on its own subscription only: it can pull and ack its jobs, nothing else.
            c.pubsub.grant_subscription_role(res.subscription_id, SUBSCRIBER_ROLE, self._members(email))
        elif step == "bucket_binding":
            # Its own managed folder gateways/<id>/ of the generated-objects bucket (docs/scale.md:
            # a bucket policy cannot hold 5,000 per-gateway bindings; each managed folder has its own).
            c.folders.grant_reader(s.objects_bucket, res.objects_prefix, member)
        elif step == "study_binding":
            # Its own group's studies only, listing included (the agent lists a study's folder
            # before it fetches the files, gateway_agent/fetch.py): a member of the group's managed
            # folder <facility_group_id>/ of the study bucket.
            c.folders.grant_reader(s.study_bucket, res.study_prefix, member)
        elif step == "service_account_key":
            key_name, key_json = c.iam.create_key(email)
            c.vault.put(sa_key_object(res.facility_group_id, res.gateway_id), key_json, "application/json")
            state["key_name"] = key_name
        elif step == "result_key":
            c.vault.put(result_key_object(res.facility_group_id, res.gateway_id), new_result_key())
        elif step == "record":
            now = self._clock.now()
            # The account's email names its pool project: that is where the gateway's identity lives.
            gw = dataclasses.replace(state["gateway"], topic_id=res.topic_id, subscription_id=res.subscription_id,
                                     service_account_email=email, service_account_key_id=state.get("key_name", ""),
                                     provisioning_state="READY", created_at=now, updated_at=now,
                                     created_by=actor, updated_by=actor)
            gw = history.recorded_gateway(None, gw, now)  # its first interval: active/scope from now (rule 1)
            self._store.create_gateway_record(gw, actor=actor)
            state["gateway"] = gw
        else:  # pragma: no cover - CREATE_STEPS and this function change together
            raise AssertionError(step)

    def _create_account(self, res: GatewayResources, state: dict) -> None:
        """Create the gateway's service account in the first project of its pool order that has
        room (docs/scale.md): each project is recorded in the log before it is tried, so an undo
        looks where the account may be; a project at its quota (QuotaExceeded) is skipped."""
        c = self._cloud
        pool = self._settings.identity_projects or (c.iam.project,)
        for project in identity_project_order(res.gateway_id, pool):
            self._store.log_identity_project(res.facility_group_id, res.gateway_id, project)
            state["identity_project"] = project
            try:
                c.iam.create_service_account(res.account_id, f"ArchSync gateway {state['gateway'].name}", project)
                return
            except QuotaExceeded:
                logs.warning("identity project at its service account quota; trying the next", project=project,
                             gateway_id=res.gateway_id, facility_group_id=res.facility_group_id)
        raise QuotaExceeded(f"every project of the gateway identity pool ({len(pool)}) is at its service account "
                            "quota: add projects to gateway_identity_projects (docs/scale.md)")

    def _members(self, email: str) -> list[str]:
        agent = self._settings.pubsub_service_agent
        return [f"serviceAccount:{email}"] + ([f"serviceAccount:{agent}"] if agent else [])

    # -- undo ----------------------------------------------------------------------------
    def _undo(self, res: GatewayResources, steps: list[str], actor: str, audited_delete: bool,
              identity_project: str = "") -> None:
        """Undo ``steps`` in reverse; every undo is idempotent (missing resources are fine).
        ``identity_project``: where the service account is ("" = the deployment's project)."""
        c, s = self._cloud, self._settings
        email = c.iam.email(res.account_id, identity_project or None)
        member = f"serviceAccount:{email}"
        for step in reversed([x for x in CREATE_STEPS if x in steps]):
            if step == "record":
                self._store.delete_gateway_record(res.facility_group_id, res.gateway_id, actor=actor,
                                                  at=self._clock.now(), audited=audited_delete)
            elif step == "result_key":
                c.vault.delete(result_key_object(res.facility_group_id, res.gateway_id))
            elif step == "service_account_key":
                c.vault.delete(sa_key_object(res.facility_group_id, res.gateway_id))  # deleting the account revokes the key
            elif step == "study_binding":
                c.folders.revoke_member(s.study_bucket, res.study_prefix, member)  # the group's folder stays
                # A gateway provisioned before managed folders has a conditional binding on the
                # bucket itself (docs/scale.md, "Migration"): removed too, if any.
                c.bucket_iam.revoke_member(s.study_bucket, member)
            elif step == "bucket_binding":
                c.folders.delete_folder(s.objects_bucket, res.objects_prefix)  # its own folder, policy and all
                c.bucket_iam.revoke_member(s.objects_bucket, member)
            elif step == "subscription_binding":
                c.pubsub.revoke_subscription_role(res.subscription_id, SUBSCRIBER_ROLE, self._members(email))
            elif step == "service_account":
                c.iam.delete_service_account(email)
            elif step == "subscription":
                c.pubsub.delete_subscription(res.subscription_id)  # its IAM policy goes with it
            elif step == "topic":
                c.pubsub.delete_topic(res.topic_id)

    def _rollback(self, res: GatewayResources, steps: list[str], why: str, identity_project: str) -> None:
        try:
            self._store.set_log_state(res.facility_group_id, res.gateway_id, LogState.ROLLING_BACK, why)
            self._undo(res, steps, actor="", audited_delete=False, identity_project=identity_project)
            self._store.set_log_state(res.facility_group_id, res.gateway_id, LogState.ROLLED_BACK)
        except Exception as e:  # the log stays ROLLING_BACK: the sweeper finishes when its lease runs out
            metrics.provisioning_rolled_back(res.facility_group_id, res.gateway_id, "request", False, type(e).__name__)
        else:
            metrics.provisioning_rolled_back(res.facility_group_id, res.gateway_id, "request", True, why)

    # -- delete --------------------------------------------------------------------------
    def delete(self, gateway: Gateway, actor: str, still_free: Callable[[], Optional[str]]) -> None:
        """Remove every resource of a gateway. ``still_free`` re-checks, after the gateway was
        marked DELETING (so no new job can start), that nothing uses it; it returns the reason to
        refuse, and the gateway is then put back as it was."""
        res = GatewayResources(gateway.facility_group_id, gateway.id)
        now = self._clock.now()
        project = project_of_account(gateway.service_account_email)
        log = ProvisioningLog(res.facility_group_id, res.gateway_id, Operation.DELETE, LogState.IN_PROGRESS, now,
                              now + timedelta(seconds=self._settings.lease_seconds), steps=list(CREATE_STEPS), actor=actor,
                              identity_project=project)
        self._store.begin_log(log, replace_state=LogState.DONE)
        deleting = dataclasses.replace(gateway, provisioning_state="DELETING", updated_at=now, updated_by=actor)
        self._store.put_gateway(deleting, actor=actor, action="gateway.delete.start", fields=["provisioning_state"])
        reason = still_free()
        if reason:
            self._store.put_gateway(gateway, actor=actor, action="gateway.delete.refused", fields=["provisioning_state"])
            self._store.set_log_state(res.facility_group_id, res.gateway_id, LogState.DONE, reason)
            raise Conflict(reason)
        self._undo(res, list(CREATE_STEPS), actor, audited_delete=True, identity_project=project)
        self._store.set_log_state(res.facility_group_id, res.gateway_id, LogState.DELETED)
        logs.info("gateway deleted", gateway_id=res.gateway_id, facility_group_id=res.facility_group_id)

    # -- migration of gateways provisioned before managed folders (docs/scale.md) ------------
    def migrate_bucket_access(self, gateway: Gateway) -> None:
        """Move a gateway's read grants from the buckets' own policies (one conditional binding
        per gateway, as provisioned before) to its managed folders. The folders are granted first,
        so the gateway never loses access; then its bindings on the bucket policies are removed.
        Idempotent: a gateway already moved only costs the reads."""
        c, s = self._cloud, self._settings
        res = GatewayResources(gateway.facility_group_id, gateway.id)
        member = f"serviceAccount:{gateway.service_account_email}"
        for bucket, folder in ((s.objects_bucket, res.objects_prefix), (s.study_bucket, res.study_prefix)):
            c.folders.grant_reader(bucket, folder, member)
        for bucket in (s.objects_bucket, s.study_bucket):
            c.bucket_iam.revoke_member(bucket, member)
        logs.info("gateway bucket access moved to managed folders", gateway_id=res.gateway_id,
                  facility_group_id=res.facility_group_id)

    # -- service-account key rotation (issue 11 item 16) ------------------------------------
    def rotate_key(self, gateway: Gateway, actor: str) -> Gateway:
        """Replace the gateway's service-account key as one unit. The durable log records the
        intent first; then the new key is made and stored in the vault, which is the commit point
        (the stored key is the gateway's key: the one an administrator downloads); then
        :meth:`_settle_key` points the record at it and deletes every other user-managed key.
        Whatever fails or dies on the way, settling (here, or by the sweeper once the log's lease
        ran out) leaves exactly one active key: the stored one, tracked by the record."""
        res = GatewayResources(gateway.facility_group_id, gateway.id)
        now = self._clock.now()
        project = project_of_account(gateway.service_account_email)
        self._store.begin_log(ProvisioningLog(res.facility_group_id, res.gateway_id, Operation.ROTATE_KEY,
                                              LogState.IN_PROGRESS, now,
                                              now + timedelta(seconds=self._settings.lease_seconds), actor=actor,
                                              identity_project=project),
                              replace_state=LogState.DONE)
        c = self._cloud
        email = c.iam.email(res.account_id, project or None)
        new_name: Optional[str] = None
        try:
            new_name, key_json = c.iam.create_key(email)
            c.vault.put(sa_key_object(res.facility_group_id, res.gateway_id), key_json, "application/json")
        except Exception as e:  # settle: whichever key the vault holds now stays, any other goes
            metrics.provisioning_failed(res.facility_group_id, res.gateway_id, Operation.ROTATE_KEY.value, "service_account_key",
                                        str(e) if isinstance(e, ArchSyncError) else type(e).__name__)
        try:
            kept = self._settle_key(res, actor, project)
        except Exception as e:  # the log stays IN_PROGRESS: the sweeper settles it when the lease runs out
            logs.error("key rotation unsettled; the sweeper will finish it", gateway_id=res.gateway_id,
                       facility_group_id=res.facility_group_id, why=str(e) if isinstance(e, ArchSyncError) else type(e).__name__)
            raise ProvisioningFailed("The key rotation could not be finished now; it is completed automatically within "
                                     "minutes. Download the key again then.") from None
        if new_name is None or kept != new_name:
            raise ProvisioningFailed("The key rotation failed and was undone: the current key still works. Retry later.")
        logs.info("service account key rotated", gateway_id=res.gateway_id, facility_group_id=res.facility_group_id)
        return dataclasses.replace(gateway, service_account_key_id=kept, updated_at=self._clock.now(), updated_by=actor)

    def _settle_key(self, res: GatewayResources, actor: str, identity_project: str) -> Optional[str]:
        """Make the gateway's keys consistent and finish its ROTATE_KEY log: keep the key stored in
        the vault (or, if the vault holds none that IAM knows, the record's), point the record at
        it, delete every other user-managed key of the account, mark the log DONE. Idempotent."""
        c = self._cloud
        email = c.iam.email(res.account_id, identity_project or None)
        stored = c.vault.get(sa_key_object(res.facility_group_id, res.gateway_id), fresh=True)
        keys = c.iam.list_keys(email)
        record = self._store.get_gateway(res.facility_group_id, res.gateway_id)
        by_id = {k.rsplit("/", 1)[-1]: k for k in keys}
        keep = by_id.get(_private_key_id(stored))
        if keep is None and record is not None and record.service_account_key_id in keys:
            keep = record.service_account_key_id
            logs.error("the stored service account key is not active; keeping the recorded one",
                       gateway_id=res.gateway_id, facility_group_id=res.facility_group_id)
        if record is not None and record.service_account_key_id != (keep or ""):
            self._store.set_gateway_key(res.facility_group_id, res.gateway_id, keep or "", actor=actor or "sweeper",
                                        at=self._clock.now())
        for name in keys:
            if name != keep:
                c.iam.delete_key(name)  # an untracked key: never left active
        self._store.set_log_state(res.facility_group_id, res.gateway_id, LogState.DONE)
        return keep

    # -- sweeper -------------------------------------------------------------------------
    def finish_stale(self, limit: int = 50) -> list[str]:
        """Finish what dead functions left: roll back unfinished creations, complete deletions."""
        done = []
        now = self._clock.now()
        for log in self._store.stale_logs(now, limit):
            claimed = self._store.claim_log(log.facility_group_id, log.gateway_id, now,
                                            now + timedelta(seconds=self._settings.lease_seconds))
            if claimed is None:
                continue
            res = GatewayResources(log.facility_group_id, log.gateway_id)
            try:
                project = claimed.identity_project or self._recorded_project(res)
                if claimed.operation is Operation.CREATE:
                    self._undo(res, claimed.steps, actor="sweeper", audited_delete=False, identity_project=project)
                    self._store.set_log_state(res.facility_group_id, res.gateway_id, LogState.ROLLED_BACK)
                    metrics.provisioning_rolled_back(res.facility_group_id, res.gateway_id, "sweeper", True,
                                                     "abandoned creation")
                elif claimed.operation is Operation.ROTATE_KEY:
                    self._settle_key(res, claimed.actor or "sweeper", project)  # marks the log DONE
                else:
                    self._undo(res, list(CREATE_STEPS), actor=claimed.actor or "sweeper", audited_delete=True,
                               identity_project=project)
                    self._store.set_log_state(res.facility_group_id, res.gateway_id, LogState.DELETED)
                done.append(log.gateway_id)
                logs.warning("finished abandoned gateway operation", gateway_id=log.gateway_id,
                             operation=claimed.operation.value, facility_group_id=log.facility_group_id)
            except ArchSyncError as e:  # try again at the next sweep (the lease runs out again)
                logs.error("could not finish abandoned gateway operation", gateway_id=log.gateway_id, why=str(e))
        return done


    def _recorded_project(self, res: GatewayResources) -> str:
        """The project of the gateway's account as its record names it ("" if there is no record):
        for logs written before the identity pool existed, which do not name it."""
        record = self._store.get_gateway(res.facility_group_id, res.gateway_id)
        return project_of_account(record.service_account_email) if record is not None else ""


def _private_key_id(key_file: Optional[bytes]) -> Optional[str]:
    """The key id in a service-account key file (its ``private_key_id``: the last segment of the
    key's resource name), or None."""
    try:
        value = json.loads(key_file or b"null")
    except ValueError:
        return None
    key_id = value.get("private_key_id") if isinstance(value, dict) else None
    return key_id if isinstance(key_id, str) and key_id else None


def new_result_key() -> bytes:
    """A Result Endpoint secure key: 256 random bits as URL-safe text, so an administrator can paste
    it into the gateway's "Result Endpoint Secure Key" field; the HMAC key is its UTF-8 bytes."""
    return secrets.token_urlsafe(32).encode()


def new_gateway_id() -> str:
    return "gw-" + secrets.token_hex(5)

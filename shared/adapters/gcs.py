"""Cloud Storage adapters: the private key vault (service-account keys and Result Endpoint keys)
and conditional bucket IAM bindings (a gateway reads only its own objects)."""
from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from datetime import datetime, timezone
from typing import Any, Callable, Mapping, Optional

from google.api_core import exceptions as gexc

from .. import logs
from ..domain.errors import Conflict, PermanentError
from ..signing import ResultKeys
from . import retrying
from .errors import policy_retry_kind, translated
from .retrying import POLICY_RETRIES, Backoff

OBJECT_READER = "roles/storage.objectViewer"


class _Storage:
    """A google-cloud-storage client, given or made by ``client_factory`` on first use (never at
    import). The adapters never build one themselves: the entry point's wiring does, with the
    function's own runtime identity (shared/wiring.py storage_credentials)."""

    def __init__(self, client: Optional[Any] = None, *, client_factory: Optional[Callable[[], Any]] = None):
        if client is None and client_factory is None:
            raise ValueError("a storage client or client_factory is required")
        self._client = client
        self._client_factory = client_factory
        self.calls = 0

    @property
    def client(self) -> Any:
        if self._client is None:
            assert self._client_factory is not None
            self._client = self._client_factory()
        return self._client


class KeyVault(_Storage):
    """Secrets as objects in a private bucket (uniform access, only the admin and result functions'
    service accounts may read it: infra/storage.tf). Values are never logged.

    Reads are cached in-process (issue 11 item 14): at most ``cache_entries`` names, least recently
    used evicted first, each for ``cache_seconds``; a missing object is cached too, so a flood of
    callbacks naming an unknown gateway costs one read per name and period, not one per request."""

    def __init__(self, bucket: str, client: Optional[Any] = None, cache_seconds: float = 60.0, cache_entries: int = 1024,
                 *, client_factory: Optional[Callable[[], Any]] = None):
        super().__init__(client, client_factory=client_factory)
        self._bucket_name = bucket
        self._cache: OrderedDict[str, tuple[float, Optional[bytes]]] = OrderedDict()
        self._lock = threading.Lock()
        self._ttl = cache_seconds
        self._max_entries = cache_entries

    @property
    def bucket(self) -> Any:
        return self.client.bucket(self._bucket_name)

    def _remember(self, name: str, at: float, value: Optional[bytes]) -> None:
        with self._lock:
            self._cache[name] = (at, value)
            self._cache.move_to_end(name)
            while len(self._cache) > self._max_entries:
                self._cache.popitem(last=False)

    def _forget(self, name: str) -> None:
        with self._lock:
            self._cache.pop(name, None)

    def put(self, name: str, data: bytes, content_type: str = "application/octet-stream", *,
            if_generation_match: Optional[int] = None) -> None:
        """Store ``data``. With ``if_generation_match`` (0 = must not exist yet) the write happens
        only if the object is still that generation; otherwise Conflict (a concurrent writer won)."""
        self.calls += 1
        try:
            with translated("store secret"):
                try:
                    self.bucket.blob(name).upload_from_string(data, content_type=content_type,
                                                              if_generation_match=if_generation_match)
                except gexc.PreconditionFailed:
                    raise Conflict("the stored key changed concurrently; retry") from None
        finally:
            self._forget(name)

    def get(self, name: str, *, fresh: bool = False, max_age: Optional[float] = None) -> Optional[bytes]:
        """The secret, or None. Served from the cache if read less than ``max_age`` seconds ago
        (default ``cache_seconds``); ``fresh`` always reads."""
        now = time.monotonic()
        limit = 0.0 if fresh else (self._ttl if max_age is None else max_age)
        with self._lock:
            hit = self._cache.get(name)
            if hit is not None:
                self._cache.move_to_end(name)
        if hit and now - hit[0] < limit:
            return hit[1]
        self.calls += 1
        value: Optional[bytes] = None
        with translated("read secret", missing_ok=True):
            value = self.bucket.blob(name).download_as_bytes()
        self._remember(name, now, value)
        return value

    def get_versioned(self, name: str) -> tuple[Optional[bytes], int]:
        """The secret (uncached) and its generation (0 if there is none), for a conditional ``put``."""
        self.calls += 1
        blob = self.bucket.blob(name)
        with translated("read secret", missing_ok=True):
            data = blob.download_as_bytes()
            return data, int(blob.generation or 0)
        return None, 0

    def delete(self, name: str) -> None:
        self.calls += 1
        with translated("delete secret", missing_ok=True):
            self.bucket.blob(name).delete()
        self._forget(name)

    def exists(self, name: str) -> bool:
        return self.get(name, fresh=True) is not None


def sa_key_object(facility_group_id: str, gateway_id: str) -> str:
    return f"{facility_group_id}/{gateway_id}/service-account-key.json"


def result_key_object(facility_group_id: str, gateway_id: str) -> str:
    return f"{facility_group_id}/{gateway_id}/result-endpoint-key"


def encode_result_keys(keys: ResultKeys) -> bytes:
    """The stored form of a gateway's Result Endpoint keys. A key without a predecessor is stored
    bare (the key text, as provisioning writes it); after a rotation, a JSON record holds both keys
    and the end of the previous key's grace. Keys are URL-safe text, so a bare key never starts
    with '{'. Both forms live in the same private object (docs/admin-api.md)."""
    if keys.previous is None or keys.previous_valid_until is None:
        return keys.current
    return json.dumps({"schema_version": "1", "current": keys.current.decode(), "previous": keys.previous.decode(),
                       "previous_valid_until": keys.previous_valid_until.astimezone(timezone.utc).isoformat()},
                      separators=(",", ":")).encode()


def decode_result_keys(data: bytes) -> Optional[ResultKeys]:
    """The keys in a stored object; None (logged, never the content) if it is unreadable."""
    if not data.startswith(b"{"):
        return ResultKeys(data) if data else None
    try:
        record = json.loads(data)
        until = datetime.fromisoformat(record["previous_valid_until"])
        if until.tzinfo is None:
            raise ValueError("naive time")
        return ResultKeys(record["current"].encode(), record["previous"].encode(), until)
    except (ValueError, KeyError, TypeError, AttributeError):
        logs.error("stored Result Endpoint key record is unreadable")
        return None


class VaultSecrets:
    """The SecretStore port over the key vault."""

    # A signature that fails against the cached keys is checked once more against freshly read ones
    # (a rotation on another instance), but a key is re-read at most this often: a stream of
    # well-formed, wrongly signed callbacks costs one read per gateway per interval (item 14).
    REFRESH_SECONDS = 5.0

    def __init__(self, vault: KeyVault):
        self.vault = vault

    def result_keys(self, facility_group_id: str, gateway_id: str, *, fresh: bool = False) -> Optional[ResultKeys]:
        data = self.vault.get(result_key_object(facility_group_id, gateway_id),
                              max_age=self.REFRESH_SECONDS if fresh else None)
        return decode_result_keys(data) if data is not None else None

    def result_key(self, facility_group_id: str, gateway_id: str, *, fresh: bool = False) -> Optional[bytes]:
        """The current key only (what the key download returns); ``fresh``: read now, uncached."""
        data = self.vault.get(result_key_object(facility_group_id, gateway_id), fresh=fresh)
        keys = decode_result_keys(data) if data is not None else None
        return keys.current if keys else None

    def save_result_key(self, facility_group_id: str, gateway_id: str, key: bytes) -> None:
        self.vault.put(result_key_object(facility_group_id, gateway_id), encode_result_keys(ResultKeys(key)))

    def rotate_result_key(self, facility_group_id: str, gateway_id: str, new_key: bytes,
                          previous_valid_until: Optional[datetime]) -> None:
        """Make ``new_key`` current; the key it replaces keeps verifying until
        ``previous_valid_until`` (None: revoked at once). A key older than that is dropped. The
        write is conditional on the object's generation, so two concurrent rotations cannot both
        believe they kept the same previous key (the loser gets Conflict)."""
        name = result_key_object(facility_group_id, gateway_id)
        data, generation = self.vault.get_versioned(name)
        old = decode_result_keys(data) if data else None
        previous = old.current if old and previous_valid_until is not None else None
        record = ResultKeys(new_key, previous, previous_valid_until if previous else None)
        self.vault.put(name, encode_result_keys(record), if_generation_match=generation)


def prefix_reader_condition(bucket: str, prefix: str, listing: bool = False) -> str:
    """The IAM condition (CEL) of a prefix-limited object reader. Reading an object is checked on
    the object (resource.name projects/_/buckets/B/objects/NAME); listing (storage.objects.list)
    is checked on the bucket (resource.name projects/_/buckets/B), and Cloud Storage exposes the
    list request's prefix as the API attribute storage.googleapis.com/objectListPrefix (IAM
    Conditions attribute reference): a list without that prefix (or without any) is refused."""
    if any(c in bucket + prefix for c in '"\\') or not prefix.endswith("/"):
        raise PermanentError("not a bucket prefix an IAM condition can name")
    objects = f'resource.name.startsWith("projects/_/buckets/{bucket}/objects/{prefix}")'
    if not listing:
        return objects
    return (f'{objects} || (resource.name == "projects/_/buckets/{bucket}" && '
            f'api.getAttribute("storage.googleapis.com/objectListPrefix", "").startsWith("{prefix}"))')


class BucketIam(_Storage):
    """Conditional object-reader bindings on a bucket: one binding per member, limited by an IAM
    condition to an object-name prefix (IAM conditions on resource.name, policy version 3).

    The bucket's policy is shared by every gateway, so each change is a read-modify-write guarded
    by the policy's etag: GCS refuses a write based on a stale read (412), and the whole cycle is
    redone after a jittered backoff; a member IAM does not know yet (a service account created a
    moment ago) is retried for a bounded time too (issue 11 item 8; shared.adapters.retrying)."""

    def __init__(self, client: Optional[Any] = None, retries: Mapping[str, Backoff] = POLICY_RETRIES,
                 *, client_factory: Optional[Callable[[], Any]] = None):
        super().__init__(client, client_factory=client_factory)
        self._retries = retries

    def _update(self, bucket: str, change: Callable[[Any], bool], retries: Mapping[str, Backoff]) -> None:
        what = f"IAM policy of bucket {bucket}"

        def read_modify_write() -> None:
            b = self.client.bucket(bucket)
            self.calls += 1
            policy = b.get_iam_policy(requested_policy_version=3)
            policy.version = 3
            if change(policy):
                self.calls += 1
                b.set_iam_policy(policy)  # carries the etag read above

        with translated(what):
            retrying.run(read_modify_write, policy_retry_kind, retries, what)

    def grant_prefix_reader(self, bucket: str, member: str, prefix: str, listing: bool = False) -> None:
        """One conditional objectViewer binding for ``member``: objects under ``prefix`` and,
        with ``listing``, listing them too."""
        expression = prefix_reader_condition(bucket, prefix, listing)
        title = "gateway's prefix only, listing included" if listing else "gateway objects only"

        def add(policy: Any) -> bool:
            if any(member in set(x.get("members", ())) and (x.get("condition") or {}).get("expression") == expression
                   for x in policy.bindings):
                return False
            policy.bindings.append({"role": OBJECT_READER, "members": {member},
                                    "condition": {"title": title, "expression": expression}})
            return True

        self._update(bucket, add, self._retries)

    def revoke_member(self, bucket: str, member: str) -> None:
        def remove(policy: Any) -> bool:
            changed, kept = False, []
            for x in policy.bindings:
                members = set(x.get("members", ()))
                if member in members:
                    changed = True
                    members.discard(member)
                    if not members:
                        continue
                    x = {**x, "members": members}
                kept.append(x)
            if changed:
                policy.bindings = kept
            return changed

        # Removing a member never waits for IAM to know it: only etag races are retried.
        self._update(bucket, remove, {k: v for k, v in self._retries.items() if k == retrying.STALE_ETAG})


def _folder_path(bucket: str, folder: str) -> str:
    """The JSON API path of a managed folder (its name percent-encoded as one path segment)."""
    from urllib.parse import quote

    return f"/b/{quote(bucket, safe='')}/managedFolders/{quote(folder, safe='')}"


class ManagedFolderIam(_Storage):
    """Readers of a prefix through a managed folder (docs/scale.md, "Bucket IAM principals").

    A bucket's IAM policy holds at most 1,500 principals (each occurrence counted), so one
    conditional binding per gateway on a shared bucket stops at 1,500 gateways (fewer with the
    function grants). A managed folder is a prefix of a bucket with its own IAM policy, whose
    grants apply to every object under that prefix and to listing it; each policy has its own
    1,500-principal limit. So: one managed folder per gateway in the generated-objects bucket
    (``gateways/<id>/``, one principal each) and one per facility group in the study bucket
    (``<facility_group_id>/``, one principal per gateway of the group). No IAM condition needed.

    The google-cloud-storage client (3.x) has no managed-folder methods, so the JSON API
    (storage/v1 managedFolders: insert, delete, getIamPolicy, setIamPolicy) is called through the
    client's own authorised resource helpers. Policy changes are etag-guarded read-modify-writes,
    retried like the bucket ones (BucketIam)."""

    def __init__(self, client: Optional[Any] = None, retries: Mapping[str, Backoff] = POLICY_RETRIES,
                 *, client_factory: Optional[Callable[[], Any]] = None):
        super().__init__(client, client_factory=client_factory)
        self._retries = retries

    def ensure_folder(self, bucket: str, folder: str) -> None:
        """Create the managed folder (a folder that already exists is fine)."""
        self.calls += 1
        with translated(f"create managed folder in bucket {bucket}", exists_ok=True):
            try:
                self.client._post_resource(f"/b/{bucket}/managedFolders", {"name": folder})
            except gexc.Conflict as e:  # GCS answers 409 for an existing managed folder
                raise gexc.AlreadyExists(str(e)) from None

    def delete_folder(self, bucket: str, folder: str) -> None:
        """Delete the managed folder and its policy (objects under it stay; a missing one is fine)."""
        self.calls += 1
        with translated(f"delete managed folder in bucket {bucket}", missing_ok=True):
            self.client._delete_resource(_folder_path(bucket, folder), query_params={"allowNonEmpty": "true"})

    def _update(self, bucket: str, folder: str, change: Callable[[dict], bool], retries: Mapping[str, Backoff],
                missing_ok: bool = False) -> None:
        what = f"IAM policy of a managed folder of bucket {bucket}"
        path = _folder_path(bucket, folder) + "/iam"

        def read_modify_write() -> None:
            self.calls += 1
            policy = self.client._get_resource(path, query_params={"optionsRequestedPolicyVersion": 3})
            policy.setdefault("bindings", [])
            if change(policy):
                self.calls += 1
                self.client._put_resource(path, {"bindings": policy["bindings"], "etag": policy.get("etag"),
                                                 "version": 3})

        with translated(what, missing_ok=missing_ok):
            retrying.run(read_modify_write, policy_retry_kind, retries, what)

    def grant_reader(self, bucket: str, folder: str, member: str) -> None:
        """``member`` may read and list the objects under ``folder`` (roles/storage.objectViewer
        on the managed folder, created first if missing)."""
        self.ensure_folder(bucket, folder)

        def add(policy: dict) -> bool:
            binding = next((b for b in policy["bindings"] if b.get("role") == OBJECT_READER and not b.get("condition")),
                           None)
            if binding is None:
                policy["bindings"].append({"role": OBJECT_READER, "members": [member]})
                return True
            if member in binding.get("members", []):
                return False
            binding["members"] = [*binding.get("members", []), member]
            return True

        self._update(bucket, folder, add, self._retries)

    def revoke_member(self, bucket: str, folder: str, member: str) -> None:
        """Remove ``member`` from every binding of the managed folder (a missing folder is fine)."""
        def remove(policy: dict) -> bool:
            changed, kept = False, []
            for b in policy["bindings"]:
                members = [m for m in b.get("members", []) if m != member]
                changed = changed or len(members) != len(b.get("members", []))
                if members:
                    kept.append({**b, "members": members})
            policy["bindings"] = kept
            return changed

        self._update(bucket, folder, remove, {k: v for k, v in self._retries.items() if k == retrying.STALE_ETAG},
                     missing_ok=True)

    def readers(self, bucket: str, folder: str) -> list[str]:
        """The members of the managed folder's bindings (empty if it does not exist)."""
        self.calls += 1
        policy: dict = {}
        with translated(f"read IAM policy of a managed folder of bucket {bucket}", missing_ok=True):
            policy = self.client._get_resource(_folder_path(bucket, folder) + "/iam",
                                               query_params={"optionsRequestedPolicyVersion": 3})
        return sorted({m for b in policy.get("bindings", []) for m in b.get("members", [])})


class ObjectStore(_Storage):
    """The ObjectStore port: generated objects (rejection notes, instance lists) in the objects
    bucket, each under the prefix of the gateway that will read it: its service account may read
    nothing else (docs/admin-api.md)."""

    def __init__(self, bucket: str, client: Optional[Any] = None, *, client_factory: Optional[Callable[[], Any]] = None):
        super().__init__(client, client_factory=client_factory)
        self._bucket_name = bucket

    @property
    def bucket(self) -> Any:
        return self.client.bucket(self._bucket_name)

    def put(self, name: str, data: bytes, content_type: str) -> str:
        """Store (idempotently: a redelivered event writes the same bytes again); the gs:// URI."""
        self.calls += 1
        with translated("store object"):
            self.bucket.blob(name).upload_from_string(data, content_type=content_type)
        return f"gs://{self._bucket_name}/{name}"

    def _name(self, uri: str) -> str:
        prefix = f"gs://{self._bucket_name}/"
        if not uri.startswith(prefix):
            raise PermanentError("object URI outside the objects bucket")
        return uri[len(prefix):]

    def get(self, uri: str) -> bytes:
        self.calls += 1
        with translated("read object"):
            return self.bucket.blob(self._name(uri)).download_as_bytes()

    def copy(self, uri: str, name: str) -> str:
        """Server-side copy (no bytes through the function); rewriting the same name is idempotent."""
        self.calls += 1
        with translated("copy object"):
            self.bucket.copy_blob(self.bucket.blob(self._name(uri)), self.bucket, name)
        return f"gs://{self._bucket_name}/{name}"

    def delete(self, uri: str) -> None:
        self.calls += 1
        with translated("delete object", missing_ok=True):
            self.bucket.blob(self._name(uri)).delete()

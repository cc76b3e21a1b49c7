#!/usr/bin/env python3
"""Check infra/*.tf against the Google provider's schema, offline: what `terraform validate` would
refuse for lack of the provider binary (architecture rule 10: the local stack enforces the provider
schema of every Terraform resource).

The schema is the committed infra/schema/google-<version>.json written by
scripts/extract_tf_schema.py (the format of `terraform providers schema -json`). Checked, for every
resource, data source (also inside `check` blocks) and provider block, down to every nested block:

- unknown argument or block -> error (with the closest known name);
- missing required argument, or required block absent -> error;
- wrong nesting: a block written as an argument (``x = {...}``) or an argument written as a block
  (``x {...}``), a ``dynamic`` block for something that is not a block, more blocks than
  ``max_items``, a literal of the wrong shape (list for a string, string for a map, ...) -> error;
- a read-only (computed) attribute set -> error;
- meta-arguments: count / for_each (not both), depends_on, provider, lifecycle (its arguments and
  precondition/postcondition blocks; ignore_changes naming real attributes), provisioner and
  connection (resources only), ``dynamic "x" { for_each, iterator, labels, content {...} }``;
- moved / import / removed blocks: their arguments;
- references ``google_x.name[...].attr`` and ``data.google_x.name.attr``: the resource is declared,
  is indexed when it has count/for_each, and the attribute (and nested block path) exists.

Run ``python scripts/tf_schema_check.py`` for a report; tests/unit/test_tf_schema.py runs it.
"""
from __future__ import annotations

import difflib
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import hcl2

REPO = Path(__file__).resolve().parents[1]
INFRA = REPO / "infra"
SCHEMA_DIR = INFRA / "schema"
PROVIDER_ADDRESS = "registry.terraform.io/hashicorp/google"
REFRESH_HINT = "run scripts/extract_tf_schema.py (docs/deployment.md, \"Provider schema\")"

# Terraform's meta-arguments (language reference, "Meta-Arguments"): never provider arguments.
RESOURCE_META = {"count", "for_each", "depends_on", "provider", "lifecycle", "provisioner", "connection"}
DATA_META = {"count", "for_each", "depends_on", "provider", "lifecycle"}
LIFECYCLE_ARGS = {"resource": {"create_before_destroy", "prevent_destroy", "ignore_changes", "replace_triggered_by"},
                  "data": set()}
CONDITION_ARGS = {"condition", "error_message"}
DYNAMIC_ARGS = {"for_each", "iterator", "labels", "content"}
# Top-level blocks other than resource/data/provider: (allowed, required) arguments.
MOVED_ARGS = ({"from", "to"}, {"from", "to"})
IMPORT_ARGS = ({"to", "id", "identity", "provider", "for_each"}, {"to"})
REMOVED_ARGS = ({"from", "lifecycle", "provisioner", "connection"}, {"from"})


@dataclass(frozen=True)
class Doc:
    path: Path
    text: str
    body: dict


def parse_dir(infra: Path = INFRA) -> list[Doc]:
    docs = []
    for tf in sorted(infra.glob("*.tf")):
        text = tf.read_text()
        docs.append(Doc(tf, text, hcl2.loads(text)))
    return docs


def parse_text(text: str, name: str = "snippet.tf") -> list[Doc]:
    return [Doc(Path(name), text, hcl2.loads(text))]


def unquote(s: str) -> str:
    return s[1:-1] if isinstance(s, str) and len(s) >= 2 and s[0] == s[-1] == '"' else s


def _labelled(blocks: list, depth: int):
    """(labels, body) of each block of a python-hcl2 list of labelled blocks."""
    for item in blocks or []:
        stack = [((), item)]
        while stack:
            labels, node = stack.pop()
            if len(labels) == depth:
                yield labels, node
                continue
            for k, v in node.items():
                if not k.startswith("__"):
                    stack.append(((*labels, unquote(k)), v))


def declared(docs: list[Doc]) -> dict[tuple[str, str, str], tuple[Doc, dict]]:
    """(mode, type, name) -> declaration, for resources and data sources (check blocks included)."""
    out = {}
    for doc in docs:
        for (t, n), body in _labelled(doc.body.get("resource"), 2):
            out[("resource", t, n)] = (doc, body)
        for (t, n), body in _labelled(doc.body.get("data"), 2):
            out[("data", t, n)] = (doc, body)
        for (_,), check in _labelled(doc.body.get("check"), 1):
            for (t, n), body in _labelled(check.get("data"), 2):
                out[("data", t, n)] = (doc, body)
    return out


def used_types(docs: list[Doc]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {"resource": set(), "data": set()}
    for mode, t, _ in declared(docs):
        out[mode].add(t)
    return out


# --- schema ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Schema:
    path: Path
    version: str
    provider: dict
    resources: dict
    data_sources: dict


def schema_files(directory: Path = SCHEMA_DIR) -> list[Path]:
    return sorted(directory.glob("google-*.json"))


def load_schema(path: Path) -> Schema:
    raw = json.loads(path.read_text())
    p = raw["provider_schemas"][PROVIDER_ADDRESS]
    return Schema(path, p["version"], p["provider"]["block"],
                  {k: v["block"] for k, v in p["resource_schemas"].items()},
                  {k: v["block"] for k, v in p["data_source_schemas"].items()})


def pinned_provider_version(docs: list[Doc]) -> str | None:
    """The `version` constraint of hashicorp/google in terraform.required_providers."""
    for doc in docs:
        for tf in doc.body.get("terraform", []):
            for rp in tf.get("required_providers", []):
                google = rp.get("google")
                if isinstance(google, dict):
                    # "6.50.0" and "= 6.50.0" pin one version; anything else is a range.
                    return re.sub(r"^=\s*", "", unquote(google.get("version") or "").strip())
    return None


# --- values ---------------------------------------------------------------------------------------

def literal_kind(v) -> str:
    """What python-hcl2 tells about a value without evaluating it: bool, number, string, null,
    object, tuple, or expr (unknown until plan)."""
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, (int, float)):
        return "number"
    if isinstance(v, dict):
        return "object"
    if isinstance(v, list):
        return "tuple"
    if v in ("true", "false"):
        return "bool"
    if v == "null":
        return "null"
    if len(v) >= 2 and v[0] == v[-1] == '"':
        return "string"
    if v.startswith("${") and v.endswith("}"):
        try:
            float(v[2:-1])
            return "number"
        except ValueError:
            return "expr"
    return "expr"


def _type_name(t) -> str:
    if isinstance(t, str):
        return t
    if t[0] == "object":
        return "object"
    return f"{t[0]}({_type_name(t[1])})"


def type_errors(value, t, where: str) -> list[str]:
    """Literals that cannot convert to the attribute's type (Terraform's "Incorrect attribute value
    type"); expressions are left to plan."""
    k = literal_kind(value)
    if k in ("expr", "null") or t == "dynamic":
        return []
    want = _type_name(t)
    got = {"object": "an object { ... }", "tuple": "a list [ ... ]"}.get(k, f"a {k}")
    bad = f"{where}: {want} required, got {got}"
    if t == "string":
        return [bad] if k in ("object", "tuple") else []
    if t == "number":
        if k == "string" and "${" not in value:
            try:
                float(unquote(value))
            except ValueError:
                return [f"{where}: number required, got the string {value}"]
        return [bad] if k in ("object", "tuple", "bool") else []
    if t == "bool":
        if k == "string" and "${" not in value and unquote(value) not in ("true", "false"):
            return [f"{where}: bool required, got the string {value}"]
        return [bad] if k in ("object", "tuple", "number") else []
    kind = t[0]
    if kind in ("list", "set"):
        if k != "tuple":
            return [bad]
        return [e for i, item in enumerate(value) for e in type_errors(item, t[1], f"{where}[{i}]")]
    if kind == "map":
        if k != "object":
            return [bad]
        return [e for key, item in value.items() if not key.startswith("__")
                for e in type_errors(item, t[1], f"{where}[{key}]")]
    if kind == "object":
        return [bad] if k in ("string", "number", "bool", "tuple") else []
    return []


def is_block(v) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(i, dict) and i.get("__is_block__") for i in v)


def is_labelled_block(v) -> bool:
    """`dynamic "x" {...}`, `provisioner "local-exec" {...}`: python-hcl2 nests the body under the label."""
    return (isinstance(v, list) and bool(v) and all(isinstance(i, dict) for i in v)
            and all(is_block([b]) for i in v for k, b in i.items() if not k.startswith("__")))


def _suggest(name: str, known) -> str:
    close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
    return f" (did you mean \"{close[0]}\"?)" if close else ""


# --- blocks ---------------------------------------------------------------------------------------

class Checker:
    def __init__(self, schema: Schema, docs: list[Doc]):
        self.schema = schema
        self.docs = docs
        self.decls = declared(docs)
        self.errors: list[str] = []
        self.checked: list[tuple[str, str, str]] = []  # (mode, type, name) of each declaration checked

    def err(self, where: str, msg: str) -> None:
        self.errors.append(f"{where}: {msg}")

    def check_body(self, body: dict, block: dict, where: str, meta: set[str] = frozenset(),
                   mode: str | None = None) -> None:
        attrs = block.get("attributes", {})
        blocks = block.get("block_types", {})
        seen_blocks: dict[str, int] = {}
        dynamic: set[str] = set()
        for key, value in body.items():
            if key.startswith("__"):
                continue
            if key in meta:
                self.check_meta(key, value, block, where, mode)
                continue
            if key == "dynamic" and is_labelled_block(value):
                for (label,), dyn in _labelled(value, 1):
                    dynamic.add(label)
                    self.check_dynamic(label, dyn, blocks, attrs, where)
                continue
            if is_block(value):
                if key in blocks:
                    seen_blocks[key] = seen_blocks.get(key, 0) + len(value)
                    for item in value:
                        self.check_body(item, blocks[key]["block"], _join(where, key))
                elif key in attrs:
                    self.err(where, f"\"{key}\" is an argument, not a block: write `{key} = ...`")
                else:
                    self.err(where, f"unsupported block type \"{key}\"{_suggest(key, {**blocks, **attrs})}")
                continue
            if key in blocks:
                self.err(where, f"\"{key}\" is a block, not an argument: write `{key} {{ ... }}`"
                                f"{' (or a dynamic block)' if isinstance(value, list) else ''}")
            elif key not in attrs:
                self.err(where, f"unsupported argument \"{key}\"{_suggest(key, {**attrs, **blocks})}")
            elif attrs[key].get("computed") and not (attrs[key].get("optional") or attrs[key].get("required")):
                self.err(where, f"\"{key}\" is read-only (computed by the provider) and cannot be set")
            else:
                for e in type_errors(value, attrs[key]["type"], _join(where, key)):
                    self.errors.append(e)
        for name, a in attrs.items():
            if a.get("required") and name not in body:
                self.err(where, f"missing required argument \"{name}\"")
        for name, bt in blocks.items():
            n = seen_blocks.get(name, 0)
            if name in dynamic:
                continue
            if n < bt.get("min_items", 0):
                self.err(where, f"missing required block \"{name}\" (at least {bt['min_items']})")
            if bt.get("max_items") is not None and n > bt["max_items"]:
                self.err(where, f"too many \"{name}\" blocks: {n}, at most {bt['max_items']}")
            if bt.get("nesting_mode") == "single" and n > 1:
                self.err(where, f"too many \"{name}\" blocks: {n}, at most 1")

    def check_dynamic(self, label: str, dyn: dict, blocks: dict, attrs: dict, where: str) -> None:
        here = _join(where, f"dynamic \"{label}\"")
        if label not in blocks:
            hint = " (it is an argument: assign it a value)" if label in attrs else _suggest(label, blocks)
            self.err(here, f"unsupported block type \"{label}\"{hint}")
            return
        for k in dyn:
            if not k.startswith("__") and k not in DYNAMIC_ARGS:
                self.err(here, f"unsupported argument \"{k}\" of a dynamic block (only for_each, iterator, labels, content)")
        if "for_each" not in dyn:
            self.err(here, "missing required argument \"for_each\"")
        content = dyn.get("content")
        if not is_block(content) or len(content) != 1:
            self.err(here, "needs exactly one content block")
            return
        self.check_body(content[0], blocks[label]["block"], _join(here, "content"))

    def check_meta(self, key: str, value, block: dict, where: str, mode: str | None) -> None:
        if key in ("count", "for_each", "provider", "alias"):
            if is_block(value):
                self.err(where, f"\"{key}\" is an argument, not a block")
        elif key == "depends_on":
            if literal_kind(value) != "tuple":
                self.err(where, "depends_on must be a list of references")
        elif key == "lifecycle":
            if not is_block(value) or len(value) != 1:
                self.err(where, "lifecycle must be one block")
                return
            lc = value[0]
            here = _join(where, "lifecycle")
            allowed = LIFECYCLE_ARGS[mode or "resource"]
            for k, v in lc.items():
                if k.startswith("__"):
                    continue
                if k in ("precondition", "postcondition") and is_block(v):
                    for cond in v:
                        self.check_condition(cond, _join(here, k))
                elif k not in allowed:
                    self.err(here, f"unsupported argument \"{k}\"{_suggest(k, allowed | {'precondition', 'postcondition'})}")
                elif k == "ignore_changes" and isinstance(v, list):
                    known = {**block.get("attributes", {}), **block.get("block_types", {})}
                    for item in v:
                        root = re.match(r"[A-Za-z_][\w-]*", _strip_expr(item))
                        if root and root.group(0) not in known:
                            self.err(here, f"ignore_changes names \"{root.group(0)}\", which is not an attribute"
                                           f"{_suggest(root.group(0), known)}")
        elif key == "provisioner":
            if not is_labelled_block(value):
                self.err(where, "provisioner must be a labelled block")
        elif key == "connection":
            if not is_block(value) or len(value) != 1:
                self.err(where, "connection must be one block")

    def check_condition(self, cond: dict, where: str) -> None:
        for k in cond:
            if not k.startswith("__") and k not in CONDITION_ARGS:
                self.err(where, f"unsupported argument \"{k}\"")
        for k in sorted(CONDITION_ARGS - set(cond)):
            self.err(where, f"missing required argument \"{k}\"")

    def check_simple(self, body: dict, args: tuple[set[str], set[str]], where: str) -> None:
        allowed, required = args
        for k in body:
            if not k.startswith("__") and k not in allowed:
                self.err(where, f"unsupported argument \"{k}\"{_suggest(k, allowed)}")
        for k in sorted(required - set(body)):
            self.err(where, f"missing required argument \"{k}\"")

    # --- references ---------------------------------------------------------------------------

    def check_references(self, value, where: str) -> None:
        for expr in _expressions(value):
            for m in _REF.finditer(expr):
                self.check_reference(m, where)

    def check_reference(self, m: re.Match, where: str) -> None:
        mode = "data" if m.group("data") else "resource"
        t, name, rest = m.group("type"), m.group("name"), m.group("rest")
        if not t.startswith("google_"):
            return
        ref = f"{'data.' if mode == 'data' else ''}{t}.{name}"
        decl = self.decls.get((mode, t, name))
        if decl is None:
            self.err(where, f"reference to undeclared {'data source' if mode == 'data' else 'resource'} {ref}")
            return
        schemas = self.schema.data_sources if mode == "data" else self.schema.resources
        block = schemas.get(t)
        if block is None:
            return  # reported at the declaration
        tokens = _TOKEN.findall(rest)
        if not tokens:
            return
        _, body = decl
        repeated = "count" in body or "for_each" in body
        if repeated:
            if tokens[0][0] != "[":
                self.err(where, f"{ref} has count/for_each: index it ({ref}[...]) or use a splat ({ref}[*]) "
                                f"before .{tokens[0][1:]}")
                return
            ref, tokens = ref + tokens[0], tokens[1:]
        elif tokens[0][0] == "[" and tokens[0] != "[*]":
            self.err(where, f"{ref} has neither count nor for_each: it cannot be indexed with {tokens[0]}")
            return
        elif tokens[0] == "[*]":
            ref, tokens = ref + tokens[0], tokens[1:]
        self.walk(block, tokens, ref, where)

    def walk(self, node, tokens: list[str], path: str, where: str) -> None:
        for tok in tokens:
            if isinstance(node, dict) and ("attributes" in node or "block_types" in node or not node):
                # a block: .name selects an attribute or a nested block
                if tok[0] == "[":
                    self.err(where, f"{path} is a single object: it cannot be indexed with {tok}")
                    return
                name = tok[1:]
                attrs, blocks = node.get("attributes", {}), node.get("block_types", {})
                path = f"{path}.{name}"
                if name in attrs:
                    node = attrs[name]["type"]
                elif name in blocks:
                    bt = blocks[name]
                    node = bt["block"] if bt.get("nesting_mode") == "single" else ("blocklist", bt["block"])
                elif name == "id":
                    node = "string"
                else:
                    self.err(where, f"{path}: unsupported attribute \"{name}\"{_suggest(name, {**attrs, **blocks})}")
                    return
            elif isinstance(node, tuple):  # a list/set of nested blocks: needs an index or splat
                if tok[0] != "[":
                    self.err(where, f"{path} is a list of blocks: index it ({path}[0]) before .{tok[1:]}")
                    return
                path, node = f"{path}{tok}", node[1]
            elif isinstance(node, list) and node[0] in ("list", "set", "map"):
                path, node = f"{path}{tok}", node[1]
            elif isinstance(node, list) and node[0] == "object":
                if tok[0] == "[":
                    return
                name = tok[1:]
                if name not in node[1]:
                    self.err(where, f"{path}: unsupported attribute \"{name}\"{_suggest(name, node[1])}")
                    return
                path, node = f"{path}.{name}", node[1][name]
            else:
                return  # primitive or dynamic: anything further is left to plan

    # --- driver -------------------------------------------------------------------------------

    def run(self) -> list[str]:
        for doc in self.docs:
            rel = _rel(doc.path)
            for (name,), body in _labelled(doc.body.get("provider"), 1):
                where = f"{rel}:{_line(doc, 'provider', name)} provider \"{name}\""
                if name == "google":
                    self.check_body(body, self.schema.provider, where, meta={"alias"})
                    self.check_references(body, where)
            for mode, items in (("resource", _labelled(doc.body.get("resource"), 2)),
                                ("data", _labelled(doc.body.get("data"), 2)),
                                ("data", ((tn, b) for (_,), chk in _labelled(doc.body.get("check"), 1)
                                          for tn, b in _labelled(chk.get("data"), 2)))):
                for (t, n), body in items:
                    self.check_declaration(doc, mode, t, n, body)
            for kind, args in (("moved", MOVED_ARGS), ("import", IMPORT_ARGS), ("removed", REMOVED_ARGS)):
                for body in doc.body.get(kind, []):
                    self.check_simple(body, args, f"{rel} {kind} block")
                    if kind == "import":
                        self.check_references({"to": body.get("to", "")}, f"{rel} import block")
            for (name,), body in _labelled(doc.body.get("output"), 1):
                self.check_references(body, f"{rel}:{_line(doc, 'output', name)} output \"{name}\"")
            for body in doc.body.get("locals", []):
                self.check_references(body, f"{rel} locals")
        return self.errors

    def check_declaration(self, doc: Doc, mode: str, t: str, n: str, body: dict) -> None:
        rel = _rel(doc.path)
        where = f"{rel}:{_line(doc, mode, t, n)} {'data.' if mode == 'data' else ''}{t}.{n}"
        # Rule 10 wants every resource checked: one of another provider (or google-beta, whose
        # schema differs) is reported rather than skipped, until its schema is extracted too.
        provider = _strip_expr(body.get("provider", "google")).split(".")[0]
        if not t.startswith("google_") or provider != "google":
            name = provider if provider != "google" else t.split("_")[0]
            self.err(where, f"not checked: the schema of provider \"{name}\" is not in infra/schema/ "
                            f"(scripts/extract_tf_schema.py extracts hashicorp/google only)")
            return
        schemas = self.schema.data_sources if mode == "data" else self.schema.resources
        block = schemas.get(t)
        if block is None:
            self.err(where, f"{'data source' if mode == 'data' else 'resource'} type {t} is not in "
                            f"{_rel(self.schema.path)}: unknown to google {self.schema.version}, or the schema "
                            f"needs refreshing: {REFRESH_HINT}")
            return
        if "count" in body and "for_each" in body:
            self.err(where, "count and for_each cannot both be set")
        self.check_body(body, block, where, meta=RESOURCE_META if mode == "resource" else DATA_META, mode=mode)
        self.check_references(body, where)
        self.checked.append((mode, t, n))


_REF = re.compile(r"(?<![\w.\]])(?P<data>data\.)?(?P<type>google_\w+)\.(?P<name>[A-Za-z_][\w-]*)"
                  r"(?P<rest>(?:\[[^\[\]]*\]|\.[A-Za-z_][\w-]*)*)")
_TOKEN = re.compile(r"\[[^\[\]]*\]|\.[A-Za-z_][\w-]*")


def _strip_expr(v) -> str:
    return v[2:-1] if isinstance(v, str) and v.startswith("${") and v.endswith("}") else str(v)


def _expressions(value):
    """Every expression inside a value: `${...}` parts of strings, recursively through lists/maps/blocks."""
    if isinstance(value, dict):
        for k, v in value.items():
            if not k.startswith("__"):
                yield from _expressions(v)
    elif isinstance(value, list):
        for v in value:
            yield from _expressions(v)
    elif isinstance(value, str):
        i = value.find("${")
        while i >= 0:
            depth, j = 0, i + 1
            while j < len(value):
                if value[j] == "{":
                    depth += 1
                elif value[j] == "}":
                    depth -= 1
                    if depth == 0:
                        break
                j += 1
            yield value[i + 2:j]
            i = value.find("${", j)


def _join(where: str, key: str) -> str:
    return f"{where} > {key}"


def _rel(p: Path) -> str:
    try:
        return str(p.resolve().relative_to(REPO))
    except ValueError:
        return str(p)


def _line(doc: Doc, *labels: str) -> int:
    head = r"\s+".join([re.escape(labels[0])] + [rf'"{re.escape(label)}"' for label in labels[1:]])
    m = re.search(rf"^[ \t]*{head}\s*\{{", doc.text, re.M)
    return doc.text.count("\n", 0, m.start()) + 1 if m else 0


def check(docs: list[Doc], schema: Schema) -> list[str]:
    return Checker(schema, docs).run()


def main(argv: list[str] | None = None) -> int:
    docs = parse_dir(INFRA)
    files = schema_files()
    if len(files) != 1:
        print(f"expected one infra/schema/google-<version>.json, found {[f.name for f in files]}", file=sys.stderr)
        return 2
    errors = check(docs, load_schema(files[0]))
    for e in errors:
        print(e)
    print(f"{len(errors)} error(s) against {_rel(files[0])}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())

"""infra/ is valid against the Google provider's real schema, offline (issue 12 item 6;
architecture rule 10). `terraform validate` needs the provider binary, which cannot be downloaded
here: scripts/extract_tf_schema.py extracts the schema of the pinned provider version from the
jsii assembly of PyPI cdktn-provider-google into infra/schema/google-<version>.json (committed), and
scripts/tf_schema_check.py checks every resource, data source, provider and nested block against
it. The synthetic snippets below prove each kind of mistake is refused with a clear message."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))
import tf_schema_check as tfc  # noqa: E402


@pytest.fixture(scope="module")
def schema() -> tfc.Schema:
    files = tfc.schema_files()
    assert len(files) == 1, f"expected exactly one infra/schema/google-<version>.json, found {[f.name for f in files]}"
    return tfc.load_schema(files[0])


@pytest.fixture(scope="module")
def infra() -> list[tfc.Doc]:
    return tfc.parse_dir()


def errors_of(schema: tfc.Schema, hcl: str) -> list[str]:
    return tfc.check(tfc.parse_text(hcl), schema)


def assert_refused(schema: tfc.Schema, hcl: str, *expected: str) -> list[str]:
    errors = errors_of(schema, hcl)
    for text in expected:
        assert any(text in e for e in errors), f"expected an error containing {text!r}, got {errors}"
    return errors


# --- the committed schema -----------------------------------------------------------------------

def test_schema_is_the_pinned_provider_version(schema, infra):
    pinned = tfc.pinned_provider_version(infra)
    assert pinned == schema.version, (
        f"infra/versions.tf pins hashicorp/google {pinned!r} but {schema.path.name} is google {schema.version}: "
        f"pin the exact version the schema was extracted from, or {tfc.REFRESH_HINT} for the pinned one")
    assert schema.path.name == f"google-{schema.version}.json"


def test_schema_covers_every_type_infra_uses(schema, infra):
    used = tfc.used_types(infra)
    missing = sorted(f"resource {t}" for t in used["resource"] - set(schema.resources))
    missing += sorted(f"data {t}" for t in used["data"] - set(schema.data_sources))
    assert not missing, f"{schema.path.name} lacks {', '.join(missing)}: {tfc.REFRESH_HINT}"


def test_schema_file_is_generated_small_and_sorted(schema):
    text = schema.path.read_text()
    raw = json.loads(text)
    assert text == json.dumps(raw, indent=1, sort_keys=True) + "\n", "edited by hand? re-run scripts/extract_tf_schema.py"
    assert len(text.encode()) < 2 * 1024 * 1024
    assert raw["x_source"]["package"].startswith("@cdktn/provider-google@")
    # The families the project is expected to grow into are there, not only today's types.
    for t in ("google_cloudfunctions2_function", "google_pubsub_topic", "google_firestore_database",
              "google_storage_bucket", "google_project_iam_member", "google_service_account",
              "google_monitoring_alert_policy", "google_logging_metric", "google_cloud_scheduler_job",
              "google_kms_crypto_key", "google_project_service", "google_secret_manager_secret"):
        assert t in schema.resources, t
    # What the extraction has to get right, on attributes whose shape is documented.
    sub = schema.resources["google_pubsub_subscription"]
    assert sub["attributes"]["name"] == {"required": True, "type": "string"}
    assert sub["attributes"]["labels"] == {"optional": True, "type": ["map", "string"]}
    assert sub["attributes"]["effective_labels"]["computed"] is True
    assert sub["block_types"]["push_config"]["max_items"] == 1
    assert "oidc_token" in sub["block_types"]["push_config"]["block"]["block_types"]
    fields = schema.resources["google_firestore_index"]["block_types"]["fields"]
    assert fields["min_items"] == 1 and "max_items" not in fields
    assert schema.resources["google_storage_bucket"]["block_types"]["timeouts"]["nesting_mode"] == "single"
    fn = schema.resources["google_cloudfunctions2_function"]["block_types"]["service_config"]["block"]
    assert fn["attributes"]["uri"] == {"computed": True, "type": "string"}


# --- infra/ -------------------------------------------------------------------------------------

def test_infra_matches_the_provider_schema(schema, infra):
    errors = tfc.check(infra, schema)
    assert not errors, "infra/ does not match google " + schema.version + ":\n" + "\n".join(errors)


def test_every_declaration_of_infra_is_checked(schema, infra):
    """Nothing is skipped: every resource and data source python-hcl2 finds went through the check."""
    checker = tfc.Checker(schema, infra)
    checker.run()
    assert sorted(checker.checked) == sorted(tfc.declared(infra))
    assert len(checker.checked) > 30


# --- synthetic snippets: each mistake is refused ------------------------------------------------

VALID_SUBSCRIPTION = """
resource "google_pubsub_topic" "t" {
  name = "t"
}
resource "google_service_account" "sa" {
  account_id = "sa"
}
resource "google_pubsub_subscription" "s" {
  name  = "s"
  topic = google_pubsub_topic.t.id
  labels = {
    app = "x"
  }
  push_config {
    push_endpoint = "https://example.com/push"
    oidc_token {
      service_account_email = google_service_account.sa.email
    }
  }
  dead_letter_policy {
    dead_letter_topic     = google_pubsub_topic.t.id
    max_delivery_attempts = 5
  }
  lifecycle {
    ignore_changes = [labels]
    precondition {
      condition     = true
      error_message = "never"
    }
  }
}
"""


def test_a_valid_snippet_passes(schema):
    assert errors_of(schema, VALID_SUBSCRIPTION) == []


def test_misspelt_attribute_is_refused(schema):
    errors = assert_refused(schema, VALID_SUBSCRIPTION.replace("max_delivery_attempts", "max_delivery_attempt"),
                            'unsupported argument "max_delivery_attempt" (did you mean "max_delivery_attempts"?)')
    assert errors[0].startswith("snippet.tf:")
    assert "google_pubsub_subscription.s > dead_letter_policy" in errors[0]


def test_misspelt_nested_attribute_and_block_are_refused(schema):
    assert_refused(schema, VALID_SUBSCRIPTION.replace("service_account_email", "service_acount_email"),
                   'push_config > oidc_token: unsupported argument "service_acount_email"')
    assert_refused(schema, VALID_SUBSCRIPTION.replace("oidc_token {", "oidc_tokens {"),
                   'unsupported block type "oidc_tokens" (did you mean "oidc_token"?)')


def test_missing_required_argument_is_refused(schema):
    assert_refused(schema, VALID_SUBSCRIPTION.replace("topic = google_pubsub_topic.t.id\n", ""),
                   'google_pubsub_subscription.s: missing required argument "topic"')
    assert_refused(schema, VALID_SUBSCRIPTION.replace('push_endpoint = "https://example.com/push"', ""),
                   'push_config: missing required argument "push_endpoint"')


def test_missing_required_block_is_refused(schema):
    assert_refused(schema, """
resource "google_firestore_index" "i" {
  collection = "jobs"
}
""", 'missing required block "fields"')


def test_wrong_nesting_is_refused(schema):
    # A nested block one level too high.
    assert_refused(schema, VALID_SUBSCRIPTION.replace("  dead_letter_policy {", """  oidc_token {
    service_account_email = "a@b.iam.gserviceaccount.com"
  }
  dead_letter_policy {"""), 'google_pubsub_subscription.s: unsupported block type "oidc_token"')
    # A block written as an argument, and an argument written as a block.
    assert_refused(schema, VALID_SUBSCRIPTION.replace("dead_letter_policy {", "dead_letter_policy = {"),
                   '"dead_letter_policy" is a block, not an argument')
    assert_refused(schema, VALID_SUBSCRIPTION.replace("labels = {", "labels {"),
                   '"labels" is an argument, not a block')
    # A single block (max_items 1) given twice.
    assert_refused(schema, VALID_SUBSCRIPTION.replace("  lifecycle {", """  dead_letter_policy {
    max_delivery_attempts = 6
  }
  lifecycle {"""), 'too many "dead_letter_policy" blocks: 2, at most 1')


def test_literal_of_the_wrong_shape_is_refused(schema):
    assert_refused(schema, VALID_SUBSCRIPTION.replace('name  = "s"', 'name  = ["s"]'), "name: string required, got a list [ ... ]")
    assert_refused(schema, VALID_SUBSCRIPTION.replace("max_delivery_attempts = 5", 'max_delivery_attempts = "five"'),
                   'number required, got the string "five"')
    assert_refused(schema, VALID_SUBSCRIPTION.replace("labels = {\n    app = \"x\"\n  }", 'labels = "x"'),
                   "map(string) required, got a string")


def test_read_only_attribute_is_refused(schema):
    assert_refused(schema, VALID_SUBSCRIPTION.replace('name  = "s"', 'name  = "s"\n  effective_labels = {}'),
                   '"effective_labels" is read-only')


def test_unknown_type_asks_to_refresh_the_schema(schema):
    assert_refused(schema, 'resource "google_pubsub_topik" "t" {\n  name = "t"\n}\n',
                   "resource type google_pubsub_topik is not in infra/schema/", "scripts/extract_tf_schema.py")


def test_other_providers_are_reported_not_skipped(schema):
    assert_refused(schema, 'resource "time_sleep" "wait" {\n  create_duration = "30s"\n}\n',
                   'not checked: the schema of provider "time" is not in infra/schema/')
    assert_refused(schema, 'resource "google_pubsub_topic" "t" {\n  provider = google-beta\n  name = "t"\n}\n',
                   'not checked: the schema of provider "google-beta"')


def test_dynamic_blocks(schema):
    ok = """
resource "google_firestore_index" "i" {
  collection = "jobs"
  dynamic "fields" {
    for_each = [["a", "ASCENDING"], ["b", "DESCENDING"]]
    content {
      field_path = fields.value[0]
      order      = fields.value[1]
    }
  }
}
"""
    assert errors_of(schema, ok) == [], "a dynamic block satisfies a required block"
    assert_refused(schema, ok.replace("field_path", "field_paht"),
                   'dynamic "fields" > content: unsupported argument "field_paht" (did you mean "field_path"?)')
    assert_refused(schema, ok.replace('dynamic "fields"', 'dynamic "field"'), 'unsupported block type "field"')
    assert_refused(schema, ok.replace("for_each = [", "for_eachh = ["), 'unsupported argument "for_eachh" of a dynamic block',
                   'missing required argument "for_each"')
    assert_refused(schema, ok.replace('dynamic "fields"', 'dynamic "collection"'),
                   'unsupported block type "collection" (it is an argument')


def test_meta_arguments(schema):
    base = 'resource "google_pubsub_topic" "t" {\n  name = "t"\n%s}\n'
    assert errors_of(schema, base % '  count = 1\n  depends_on = [google_pubsub_topic.u]\n  provider = google\n'
                             '  lifecycle {\n    create_before_destroy = true\n    prevent_destroy = false\n  }\n'
                     + 'resource "google_pubsub_topic" "u" {\n  name = "u"\n}\n') == []
    assert_refused(schema, base % '  count = 1\n  for_each = toset(["a"])\n', "count and for_each cannot both be set")
    assert_refused(schema, base % '  lifecycle {\n    prevent_destroyed = true\n  }\n',
                   'lifecycle: unsupported argument "prevent_destroyed" (did you mean "prevent_destroy"?)')
    assert_refused(schema, base % '  lifecycle {\n    ignore_changes = [lables]\n  }\n',
                   'ignore_changes names "lables", which is not an attribute (did you mean "labels"?)')
    assert_refused(schema, base % '  lifecycle {\n    postcondition {\n      condition = true\n    }\n  }\n',
                   'postcondition: missing required argument "error_message"')
    data = 'data "google_project" "p" {\n  lifecycle {\n    create_before_destroy = true\n  }\n}\n'
    assert_refused(schema, data, 'data.google_project.p > lifecycle: unsupported argument "create_before_destroy"')


def test_data_sources_provider_and_check_blocks(schema):
    assert_refused(schema, 'data "google_project" "p" {\n  project = "x"\n}\n',
                   'data.google_project.p: unsupported argument "project" (did you mean "project_id"?)')
    assert_refused(schema, 'provider "google" {\n  default_label = {}\n}\n',
                   'provider "google": unsupported argument "default_label" (did you mean "default_labels"?)')
    assert errors_of(schema, 'provider "google" {\n  alias = "eu"\n  region = "europe-west1"\n}\n') == []
    assert_refused(schema, 'check "c" {\n  data "google_project" "p" {\n    projectid = "x"\n  }\n'
                           '  assert {\n    condition = true\n    error_message = "x"\n  }\n}\n',
                   'data.google_project.p: unsupported argument "projectid"')


def test_moved_import_removed_blocks(schema):
    assert errors_of(schema, VALID_SUBSCRIPTION + 'moved {\n  from = google_pubsub_topic.old\n  to = google_pubsub_topic.t\n}\n'
                     'import {\n  to = google_pubsub_topic.t\n  id = "projects/p/topics/t"\n}\n') == []
    assert_refused(schema, 'moved {\n  from = google_pubsub_topic.a\n}\n', 'moved block: missing required argument "to"')
    assert_refused(schema, 'import {\n  to = google_pubsub_topic.a\n  idd = "x"\n}\n',
                   'import block: unsupported argument "idd"', "reference to undeclared resource google_pubsub_topic.a")
    assert_refused(schema, 'removed {\n  form = google_pubsub_topic.a\n}\n', 'removed block: unsupported argument "form"')


def test_references(schema):
    assert_refused(schema, VALID_SUBSCRIPTION.replace("google_service_account.sa.email", "google_service_account.sa.emial"),
                   'google_service_account.sa.emial: unsupported attribute "emial" (did you mean "email"?)')
    assert_refused(schema, VALID_SUBSCRIPTION.replace("google_service_account.sa.email", "google_service_account.sb.email"),
                   "reference to undeclared resource google_service_account.sb")
    fn = """
resource "google_cloudfunctions2_function" "f" {
  for_each = toset(["a"])
  name     = each.key
  location = "europe-west1"
}
output "u" {
  value = %s
}
"""
    assert errors_of(schema, fn % 'google_cloudfunctions2_function.f["a"].service_config[0].uri') == []
    assert errors_of(schema, fn % "google_cloudfunctions2_function.f[*].name") == []
    assert_refused(schema, fn % 'google_cloudfunctions2_function.f["a"].service_config.uri',
                   "service_config is a list of blocks: index it")
    assert_refused(schema, fn % "google_cloudfunctions2_function.f.name", "has count/for_each: index it")
    assert_refused(schema, fn % 'google_cloudfunctions2_function.f["a"].service_config[0].url',
                   'unsupported attribute "url" (did you mean "uri"?)')
    assert_refused(schema, 'output "n" {\n  value = data.google_project.p.number\n}\n',
                   "reference to undeclared data source data.google_project.p")


# --- the extraction script, on a miniature package of the same layout ----------------------------

def _js_attr(hcl: str, value: str, is_block: bool, kind: str, storage: str) -> str:
    return (f"        {hcl}: {{\n            value: {value},\n            isBlock: {'true' if is_block else 'false'},\n"
            f"            type: \"{kind}\",\n            storageClassType: \"{storage}\",\n        }},\n")


def _js_mapping(fn: str, *attrs: str) -> str:
    return f"function {fn}ToHclTerraform(struct) {{\n    const attrs = {{\n{''.join(attrs)}    }};\n    return attrs;\n}}\n"


def _js_class(name: str, base: str, body: str) -> str:
    return f"class {name} extends cdktn.{base} {{\n{body}}}\n"


def _jsii_struct(fqn: str, directory: str, props: dict) -> tuple[str, dict]:
    return fqn, {"name": fqn.rsplit(".", 1)[1], "kind": "interface", "locationInModule": {"filename": f"src/{directory}/index.ts"},
                 "properties": [{"name": n, "type": t, **({"optional": True} if opt else {})} for n, (t, opt) in props.items()]}


def _jsii_class(fqn: str, directory: str, config: str) -> tuple[str, dict]:
    return fqn, {"name": fqn.rsplit(".", 1)[1], "kind": "class", "locationInModule": {"filename": f"src/{directory}/index.ts"},
                 "initializer": {"parameters": [{"name": "scope"}, {"name": "id"}, {"name": "config", "type": {"fqn": config}}]}}


def _miniature_wheel(path: Path) -> Path:
    import io
    import tarfile
    import zipfile
    a = "@cdktn/provider-google"
    s = {"primitive": "string"}
    types = dict([
        _jsii_class(f"{a}.provider.GoogleProvider", "provider", f"{a}.provider.GoogleProviderConfig"),
        _jsii_struct(f"{a}.provider.GoogleProviderConfig", "provider", {"alias": (s, True), "project": (s, True)}),
        _jsii_class(f"{a}.fooThing.FooThing", "foo-thing", f"{a}.fooThing.FooThingConfig"),
        _jsii_struct(f"{a}.fooThing.FooThingConfig", "foo-thing", {
            "name": (s, False),
            "labels": ({"collection": {"kind": "map", "elementtype": s}}, True),
            "buildAttribute": ({"fqn": f"{a}.fooThing.FooThingBuild"}, True),  # renamed by cdktn (clashes with a member)
            "rule": ({"union": {"types": [{"fqn": "cdktn.IResolvable"}, {"collection": {"kind": "array", "elementtype": {
                "fqn": f"{a}.fooThing.FooThingRule"}}}]}}, False),
            "timeouts": ({"fqn": f"{a}.fooThing.FooThingTimeouts"}, True),
        }),
        _jsii_struct(f"{a}.fooThing.FooThingBuild", "foo-thing", {"image": (s, False)}),
        _jsii_struct(f"{a}.fooThing.FooThingRule", "foo-thing", {
            "action": (s, True), "tags": ({"collection": {"kind": "array", "elementtype": s}}, True)}),
        _jsii_struct(f"{a}.fooThing.FooThingTimeouts", "foo-thing", {"create": (s, True)}),
        _jsii_class(f"{a}.dataGoogleFooThing.DataGoogleFooThing", "data-google-foo-thing", f"{a}.dataGoogleFooThing.DataGoogleFooThingConfig"),
        _jsii_struct(f"{a}.dataGoogleFooThing.DataGoogleFooThingConfig", "data-google-foo-thing", {"name": (s, False)}),
    ])
    string = "cdktn.stringToHclTerraform"
    provider_js = _js_class("GoogleProvider", "TerraformProvider", "    synthesizeHclAttributes() {\n        const attrs = {\n"
                            + _js_attr("alias", f"{string}(this._alias)", False, "simple", "string")
                            + _js_attr("project", f"{string}(this._project)", False, "simple", "string")
                            + "        };\n    }\n") + 'GoogleProvider.tfResourceType = "google";\n'
    thing_js = (
        _js_mapping("fooThingBuild", _js_attr("image", f"{string}(struct.image)", False, "simple", "string"))
        + _js_class("FooThingBuildOutputReference", "ComplexObject",
                    "    get image() {\n        return this.getStringAttribute('image');\n    }\n"
                    "    get digest() {\n        return this.getStringAttribute('digest');\n    }\n")
        + _js_mapping("fooThingRule", _js_attr("action", f"{string}(struct.action)", False, "simple", "string"),
                      _js_attr("tags", f"cdktn.listMapperHcl({string}, false)(struct.tags)", False, "set", "stringList"))
        + _js_mapping("fooThingTimeouts", _js_attr("create", f"{string}(struct.create)", False, "simple", "string"))
        + _js_class("FooThingStatusOutputReference", "ComplexObject",
                    "    get state() {\n        return this.getStringAttribute('state');\n    }\n")
        + _js_class("FooThing", "TerraformResource",
                    '    static tfResourceType = "google_foo_thing";\n'
                    "    constructor(scope, id, config) {\n"
                    '        this._status = new FooThingStatusList(this, "status", false);\n    }\n'
                    "    get uri() {\n        return this.getStringAttribute('uri');\n    }\n"
                    "    synthesizeHclAttributes() {\n        const attrs = {\n"
                    + _js_attr("labels", f"cdktn.hashMapperHcl({string})(this._labels)", False, "map", "stringMap")
                    + _js_attr("name", f"{string}(this._name)", False, "simple", "string")
                    + _js_attr("build", "fooThingBuildToHclTerraform(this._build.internalValue)", True, "list", "FooThingBuildList")
                    + _js_attr("rule", "cdktn.listMapperHcl(fooThingRuleToHclTerraform, true)(this._rule.internalValue)", True, "set",
                               "FooThingRuleList")
                    + _js_attr("timeouts", "fooThingTimeoutsToHclTerraform(this._timeouts.internalValue)", True, "struct",
                               "FooThingTimeouts")
                    + "        };\n    }\n"))
    data_js = _js_class("DataGoogleFooThing", "TerraformDataSource",
                        "    get etag() {\n        return this.getStringAttribute('etag');\n    }\n"
                        "    synthesizeHclAttributes() {\n        const attrs = {\n"
                        + _js_attr("name", f"{string}(this._name)", False, "simple", "string") + "        };\n    }\n"
                        ) + 'DataGoogleFooThing.tfResourceType = "google_foo_thing";\n'
    members = {
        "package/package.json": json.dumps({"name": a, "cdktn": {"provider": {"name": tfc.PROVIDER_ADDRESS, "version": "9.9.9"}}}),
        "package/.jsii": json.dumps({"version": "1.2.3", "types": types}),
        "package/lib/provider/index.js": provider_js,
        "package/lib/foo-thing/index.js": thing_js,
        "package/lib/data-google-foo-thing/index.js": data_js,
    }
    tgz = io.BytesIO()
    with tarfile.open(fileobj=tgz, mode="w:gz") as t:
        for name, text in members.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    wheel = path / "cdktn_provider_google-1.2.3-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("cdktn_provider_google/_jsii/provider-google@1.2.3.jsii.tgz", tgz.getvalue())
    return wheel


def test_extractor_reads_the_package_layout(tmp_path):
    import extract_tf_schema
    wheel = _miniature_wheel(tmp_path)
    infra = tmp_path / "infra"
    infra.mkdir()
    (infra / "main.tf").write_text('resource "google_foo_thing" "a" {\n  name = "a"\n}\n'
                                   'data "google_foo_thing" "b" {\n  name = "b"\n}\n')
    out = tmp_path / "google-9.9.9.json"
    assert extract_tf_schema.main([str(wheel), "--out", str(out), "--infra", str(infra)]) == 0
    first = out.read_bytes()
    assert extract_tf_schema.main([str(wheel), "--out", str(out), "--infra", str(infra)]) == 0
    assert out.read_bytes() == first, "the output is deterministic"
    schema = tfc.load_schema(out)
    assert schema.version == "9.9.9"
    assert schema.provider == {"attributes": {"project": {"optional": True, "type": "string"}}}  # alias is a meta-argument
    assert schema.resources == {"google_foo_thing": {
        "attributes": {
            "labels": {"optional": True, "type": ["map", "string"]},
            "name": {"required": True, "type": "string"},
            "status": {"computed": True, "type": ["list", ["object", {"state": "string"}]]},
            "uri": {"computed": True, "type": "string"},
        },
        "block_types": {
            "build": {"nesting_mode": "list", "max_items": 1, "block": {"attributes": {
                "digest": {"computed": True, "type": "string"}, "image": {"required": True, "type": "string"}}}},
            "rule": {"nesting_mode": "set", "min_items": 1, "block": {"attributes": {
                "action": {"optional": True, "type": "string"}, "tags": {"optional": True, "type": ["set", "string"]}}}},
            "timeouts": {"nesting_mode": "single", "block": {"attributes": {"create": {"optional": True, "type": "string"}}}},
        },
    }}
    assert schema.data_sources == {"google_foo_thing": {"attributes": {
        "etag": {"computed": True, "type": "string"}, "name": {"required": True, "type": "string"}}}}
    # ... and what the checker makes of it.
    assert_refused(schema, 'resource "google_foo_thing" "a" {\n  name = "a"\n  uri = "x"\n}\n',
                   'missing required block "rule"', '"uri" is read-only')

"""Offline consistency of infra/ with the code: formatting, functions, their identities, roles and
ingress, settings, topics, subscriptions, indexes, buckets, variables, tfvars and the deployment
guide. infra/ is parsed with python-hcl2 (string values and block labels keep their quotes)."""
from __future__ import annotations

import functools
import os
import re
import subprocess
from pathlib import Path

import hcl2
import pytest

from shared.adapters.firestore_store import COMPOSITE_INDEXES
from shared.settings import ENV_VARS, LOCAL_ONLY_ENV_VARS, Settings

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
ENVIRONMENTS = ("dev", "prod")


def _unquote(v):
    return v.strip('"') if isinstance(v, str) else v


@functools.lru_cache(maxsize=None)
def _parsed() -> tuple:
    out = []
    for tf in sorted(INFRA.glob("*.tf")):
        with tf.open() as f:
            out.append(hcl2.load(f))
    return tuple(out)


def _resources(kind: str) -> dict:
    out = {}
    for doc in _parsed():
        for block in doc.get("resource", []):
            for k, body in block.items():
                if _unquote(k) == kind:
                    for name, attrs in body.items():
                        out[_unquote(name)] = attrs
    return out


def _locals() -> dict:
    merged = {}
    for doc in _parsed():
        for block in doc.get("locals", []):
            merged.update(block)
    return merged


def _variables() -> dict:
    out = {}
    for doc in _parsed():
        for block in doc.get("variable", []):
            for name, attrs in block.items():
                out[_unquote(name)] = attrs
    return out


def _functions() -> dict:
    return _locals()["functions"]


def _entry_source(name: str) -> str:
    return (REPO / "functions" / name / "main.py").read_text()


# --- Formatting ------------------------------------------------------------------------------------

def test_terraform_fmt(tmp_path):
    rc = tmp_path / "tfrc"
    rc.write_text("disable_checkpoint = true\n")
    out = subprocess.run(["terraform", "fmt", "-check", "-recursive", str(INFRA)], capture_output=True, text=True,
                         env={**os.environ, "TF_CLI_CONFIG_FILE": str(rc)})
    assert out.returncode == 0, f"terraform fmt would change: {out.stdout}{out.stderr}"


# --- Functions ---------------------------------------------------------------------------------------

def test_every_function_is_declared_with_its_entry_point():
    declared = _functions()
    on_disk = sorted(p.parent.name for p in (REPO / "functions").glob("*/main.py"))
    assert sorted(declared) == on_disk
    [fn] = _resources("google_cloudfunctions2_function").values()
    assert "each.key" in str(fn["build_config"])  # entry_point = the directory name
    for name in on_disk:
        assert f"def {name}(" in _entry_source(name)


def test_functions_are_2nd_gen_python_with_their_own_service_account():
    assert not _resources("google_cloudfunctions_function")  # no 1st gen function
    [fn] = _resources("google_cloudfunctions2_function").values()
    assert _unquote(fn["for_each"]) == "${local.functions}"
    [build] = fn["build_config"]
    assert re.fullmatch(r"python3\d+", _unquote(build["runtime"]))
    assert _unquote(build["entry_point"]) == "${each.key}"
    [service] = fn["service_config"]
    assert service["service_account_email"] == "${google_service_account.function[each.key].email}"
    sa = _resources("google_service_account")["function"]
    assert sa["for_each"] == "${local.functions}" and sa["account_id"] == "${each.value.account_id}"
    account_ids = [_unquote(f["account_id"]) for f in _functions().values()]
    assert len(set(account_ids)) == len(account_ids)  # one identity per function, never shared
    assert all(re.fullmatch(r"[a-z][a-z0-9-]{4,28}[a-z0-9]", a) for a in account_ids)


# Entry-point wiring that publishes to Pub/Sub (job messages, follow-ups, dead-lettered events).
_PUBLISHING_WIRING = ("job_publisher", "followups", "dead_letter", "study_change_service", "patient_update_service",
                      "admin_service")
# Entry-point wiring that creates or removes gateway resources.
_PROVISIONING_WIRING = ("provisioner", "admin_service")
_PROVISIONING_ROLES = {"roles/iam.serviceAccountAdmin", "roles/iam.serviceAccountKeyAdmin", "roles/pubsub.admin"}


def _project_roles(name: str) -> set[str]:
    fn = _functions()[name]
    roles = {_unquote(r) for r in fn["project_roles"]}
    if fn["provisions_gateways"] == "true":
        roles |= {_unquote(r) for r in _locals()["gateway_provisioning_project_roles"]}
    return roles


@pytest.mark.parametrize("name", sorted(p.parent.name for p in (REPO / "functions").glob("*/main.py")))
def test_each_function_gets_only_the_project_roles_its_code_uses(name):
    source = _entry_source(name)
    publishes = any(f"wiring.{w}(" in source for w in _PUBLISHING_WIRING)
    provisions = any(f"wiring.{w}(" in source for w in _PROVISIONING_WIRING)
    roles = _project_roles(name)
    assert (_functions()[name]["provisions_gateways"] == "true") == provisions
    assert "roles/datastore.user" in roles  # every function keeps its state in Firestore
    # Publishing needs pubsub.publisher (or the pubsub.admin a provisioner holds anyway), and a
    # function that never publishes gets no Pub/Sub role at all.
    assert bool(roles & {"roles/pubsub.publisher", "roles/pubsub.admin"}) == publishes
    if provisions:
        assert _PROVISIONING_ROLES <= roles
    allowed = {"roles/datastore.user", "roles/pubsub.publisher"} | (_PROVISIONING_ROLES if provisions else set())
    assert roles <= allowed
    # Never a basic role nor a project-wide storage role (bucket grants are on each bucket).
    assert not any(r in {"roles/owner", "roles/editor", "roles/viewer"} or r.startswith("roles/storage.")
                   for r in roles)


def test_provisioners_may_edit_the_iam_policy_of_the_generated_and_study_buckets_only():
    role = _resources("google_project_iam_custom_role")["bucket_iam_admin"]
    # The bucket's own policy (gateways provisioned before managed folders) and its managed
    # folders' policies (docs/scale.md, "Bucket IAM principals"); never object access.
    assert {_unquote(p) for p in role["permissions"]} == {
        "storage.buckets.get", "storage.buckets.getIamPolicy", "storage.buckets.setIamPolicy",
        "storage.managedFolders.create", "storage.managedFolders.delete", "storage.managedFolders.get",
        "storage.managedFolders.getIamPolicy", "storage.managedFolders.setIamPolicy"}
    grants = _resources("google_storage_bucket_iam_member")
    custom = "google_project_iam_custom_role.bucket_iam_admin.id"
    for grant, bucket, role in (
            ("objects_bucket_iam_admin", "${google_storage_bucket.generated.name}", "${%s}" % custom),
            # A study bucket in another project needs a role defined there (var.study_bucket_iam_role).
            ("study_bucket_iam_admin", "${var.study_bucket}", "${coalesce(var.study_bucket_iam_role, %s)}" % custom)):
        assert grants[grant]["bucket"] == bucket
        assert grants[grant]["role"] == role
        assert grants[grant]["for_each"] == "${local.gateway_provisioners}"
    assert grants["key_bucket_provisioner"]["for_each"] == "${local.gateway_provisioners}"
    assert _unquote(grants["key_bucket_provisioner"]["role"]) == "roles/storage.objectAdmin"
    # on_job_result reads Result Endpoint keys only, never the service-account keys.
    reader = grants["key_bucket_result_key_reader"]
    assert _unquote(reader["role"]) == "roles/storage.objectViewer"
    assert "result-endpoint-key" in reader["condition"][0]["expression"]
    # Study files are the platform's: the study bucket is never created or managed here.
    assert "study" not in " ".join(_resources("google_storage_bucket"))


_PUBLIC_FUNCTIONS = {"on_job_result", "admin_api", "lock_status"}


def test_ingress_is_internal_except_for_the_functions_called_from_outside():
    locals_ = _locals()
    assert _unquote(locals_["ingress_internal"]) == "ALLOW_INTERNAL_ONLY"
    assert _unquote(locals_["ingress_public"]) == "ALLOW_ALL"
    [fn] = _resources("google_cloudfunctions2_function").values()
    assert fn["service_config"][0]["ingress_settings"] == "${each.value.ingress_settings}"
    # Internal: every function a push subscription or the scheduler job invokes (Cloud Run counts
    # Pub/Sub and Cloud Scheduler of the same project as internal).
    pushed = {_unquote(v["function"]) for v in locals_["inbound"].values()}
    scheduled = {m for job in _resources("google_cloud_scheduler_job").values()
                 for m in re.findall(r'function\["(\w+)"\]', job["http_target"][0]["uri"])}
    assert scheduled == {"sweep_jobs"}
    for name, spec in _functions().items():
        if name in pushed | scheduled:
            assert spec["ingress_settings"] == "${local.ingress_internal}", name
        else:
            assert spec["ingress_settings"] == "${local.ingress_public}", name
    # The checkov CKV_GCP_124 suppression names exactly these public functions.
    assert set(_functions()) - pushed - scheduled == _PUBLIC_FUNCTIONS
    text = (INFRA / "functions.tf").read_text()
    [skip] = re.findall(r"checkov:skip=CKV_GCP_124:(.*)", text)
    assert all(name in skip for name in _PUBLIC_FUNCTIONS)


def test_function_environment_matches_settings():
    env = _locals()["function_env"]
    assert set(env) == set(ENV_VARS)
    assert not set(env) & set(LOCAL_ONLY_ENV_VARS)


# --- Pub/Sub -------------------------------------------------------------------------------------------

def test_topics_the_code_names_are_declared():
    dead_letter = {k: _unquote(v) for k, v in _locals()["dead_letter"].items()}
    inbound = {_unquote(v["topic"]) for v in _locals()["inbound"].values()}
    settings = Settings(project_id="x")
    assert dead_letter == {"inbound": settings.dead_letter_topic, "gateway": settings.gateway_dead_letter_topic}
    env = _locals()["function_env"]
    assert env["ARCHSYNC_DEAD_LETTER_TOPIC"] == '${google_pubsub_topic.dead_letter["inbound"].name}'
    assert env["ARCHSYNC_GATEWAY_DEAD_LETTER_TOPIC"] == '${google_pubsub_topic.dead_letter["gateway"].name}'
    # One inbound topic per Pub/Sub-triggered function, pushing to it.
    assert inbound == {"archsync-exam-status", "archsync-study-changed", "archsync-patient-updated",
                       "archsync-facility-changed"}
    assert {_unquote(v["function"]) for v in _locals()["inbound"].values()} == {
        "on_exam_status_changed", "on_study_changed", "on_patient_updated", "on_facility_changed"}
    topics = _resources("google_pubsub_topic")
    assert topics["inbound"]["for_each"] == "${local.inbound}"
    assert topics["dead_letter"]["for_each"] == "${local.dead_letter}"


def test_inbound_push_subscriptions_carry_oidc_retry_and_dead_letter_policies():
    subs = _resources("google_pubsub_subscription")
    sub = subs["exam_status_to_function"]
    assert sub["for_each"] == "${local.inbound}"
    [push] = sub["push_config"]
    assert push["oidc_token"][0]["service_account_email"] == "${google_service_account.push_invoker.email}"
    assert "retry_policy" in sub
    [dlp] = sub["dead_letter_policy"]
    assert dlp["dead_letter_topic"] == '${google_pubsub_topic.dead_letter["inbound"].id}'
    assert 5 <= dlp["max_delivery_attempts"] <= 100
    # Each dead-letter topic has a never-expiring pull subscription, or parked messages are lost.
    audit = subs["dead_letter_audit"]
    assert audit["for_each"] == "${local.dead_letter}"
    assert audit["expiration_policy"][0]["ttl"] == '""'


def test_pubsub_service_agent_can_dead_letter():
    agent = "${local.pubsub_service_agent}"
    publisher = _resources("google_pubsub_topic_iam_member")["dead_letter_pubsub_agent"]
    assert publisher["for_each"] == "${local.dead_letter}" and publisher["member"] == agent
    assert _unquote(publisher["role"]) == "roles/pubsub.publisher"
    subscriber = _resources("google_pubsub_subscription_iam_member")["inbound_pubsub_agent"]
    assert subscriber["for_each"] == "${local.inbound}" and subscriber["member"] == agent
    assert _unquote(subscriber["role"]) == "roles/pubsub.subscriber"
    assert subscriber["subscription"] == "${google_pubsub_subscription.exam_status_to_function[each.key].id}"
    # The provisioning code adds the agent to each gateway subscription itself.
    assert _locals()["function_env"]["ARCHSYNC_PUBSUB_SERVICE_AGENT"] == "${local.pubsub_service_agent_email}"


# --- Who may invoke the functions (Cloud Run IAM: no emulator checks it; issue 12) ---------------

def _run_invoker(name: str) -> dict:
    grant = _resources("google_cloud_run_v2_service_iam_member")[name]
    assert _unquote(grant["role"]) == "roles/run.invoker"
    return grant


def test_every_push_subscription_and_the_scheduler_may_invoke_their_function():
    """The push subscriptions' OIDC identity must hold run.invoker on each function they deliver
    to, and the scheduler's on sweep_jobs: without it every event is refused with 403 and
    dead-lettered."""
    grant = _run_invoker("invoker")
    assert grant["for_each"] == "${local.function_invokers}" and grant["member"] == "${each.value.member}"
    assert grant["name"] == "${google_cloudfunctions2_function.function[each.value.name].service_config[0].service}"
    invokers = _locals()["function_invokers"]  # one HCL expression: check its parts
    assert re.search(r"for pair in local\.inbound : .*name = pair\.function, member = "
                     r"google_service_account\.push_invoker\.member", invokers)
    assert re.search(r'"sweep_jobs scheduler" = \{name = "sweep_jobs", member = google_service_account\.scheduler\.member\}',
                     invokers)


def test_gateways_reach_the_result_endpoint_and_users_the_admin_api():
    """Gateways are not Google identities (HMAC-signed results) and the admin API's users carry the
    platform's JWT: both functions are invocable by allUsers, or by the configured members."""
    public = _run_invoker("result_endpoint_public")
    assert public["member"] == '"allUsers"' or _unquote(public["member"]) == "allUsers"
    assert 'function["on_job_result"]' in public["name"]
    admin = _run_invoker("admin_api_invoker")
    assert admin["for_each"] == "${toset(var.admin_invoker_members)}" and admin["member"] == "${each.value}"
    assert 'function["admin_api"]' in admin["name"]


def test_every_function_gets_its_project_roles():
    """local.functions[*].project_roles (checked against the code above) take effect only through
    this resource, one instance per function and role."""
    grant = _resources("google_project_iam_member")["function"]
    assert "local.functions" in grant["for_each"] and "fn.project_roles" in grant["for_each"]
    assert "local.gateway_provisioning_project_roles" in grant["for_each"]
    assert grant["role"] == "${each.value.role}"
    assert grant["member"] == "${google_service_account.function[each.value.name].member}"


def test_pubsub_service_agent_may_sign_the_push_identitys_oidc_tokens():
    """Projects that enabled Pub/Sub before 2021-04-08 need this explicitly, or every push is
    refused (no OIDC token): the service agent is token creator on the push identity only."""
    grant = _resources("google_service_account_iam_member")["push_invoker_token_creator"]
    assert grant["service_account_id"] == "${google_service_account.push_invoker.name}"
    assert _unquote(grant["role"]) == "roles/iam.serviceAccountTokenCreator"
    assert grant["member"] == "${local.pubsub_service_agent}"


def test_the_platform_may_publish_to_every_inbound_topic():
    """Exam status, study changed, patient updated and facility changed: without the publisher
    grant the platform's events never arrive (no emulator checks publish permissions)."""
    grant = _resources("google_pubsub_topic_iam_member")["inbound_platform_publisher"]
    assert "local.inbound" in grant["for_each"] and "var.platform_publisher_members" in grant["for_each"]
    assert grant["topic"] == "${google_pubsub_topic.inbound[each.value.inbound].id}"
    assert _unquote(grant["role"]) == "roles/pubsub.publisher" and grant["member"] == "${each.value.member}"


def test_the_build_identity_can_read_sources_write_images_and_logs():
    """Cloud Build builds the function images as its own account ("Custom service account for
    Cloud Build", Cloud Functions docs): it needs to write logs, read the uploaded and copied
    source bundles, and push to the functions' Artifact Registry repository."""
    build = "${google_service_account.build.member}"
    project = _resources("google_project_iam_member")
    assert _unquote(project["build_logs"]["role"]) == "roles/logging.logWriter" and project["build_logs"]["member"] == build
    sources = project["build_sources"]
    assert _unquote(sources["role"]) == "roles/storage.objectViewer" and sources["member"] == build
    assert "gcf-v2-sources-" in sources["condition"][0]["expression"]
    reader = _resources("google_storage_bucket_iam_member")["build_source_reader"]
    assert reader["bucket"] == "${local.functions_source_bucket}" and reader["member"] == build
    assert _unquote(reader["role"]) == "roles/storage.objectViewer"
    writer = _resources("google_artifact_registry_repository_iam_member")["build_writer"]
    assert _unquote(writer["role"]) == "roles/artifactregistry.writer" and writer["member"] == build
    assert writer["repository"] == "${google_artifact_registry_repository.functions.name}"


def test_the_scheduler_job_invokes_the_sweeper_with_an_oidc_token():
    job = _resources("google_cloud_scheduler_job")["sweep_jobs"]
    [target] = job["http_target"]
    assert 'function["sweep_jobs"]' in target["uri"]
    assert target["oidc_token"][0]["service_account_email"] == "${google_service_account.scheduler.email}"
    assert job["schedule"] == "${var.sweep_schedule}"


# --- Firestore -------------------------------------------------------------------------------------------

def test_firestore_database_is_native_and_protected():
    db = _resources("google_firestore_database")["default"]
    assert _unquote(db["type"]) == "FIRESTORE_NATIVE"
    assert _unquote(db["name"]) == Settings(project_id="x").firestore_database
    assert _unquote(db["delete_protection_state"]) == "DELETE_PROTECTION_ENABLED"


def _declared_indexes() -> list:
    declared = []
    for r in _resources("google_firestore_index").values():
        if "fields" in r:
            declared.append((_unquote(r["collection"]), _unquote(r["query_scope"]),
                             tuple((_unquote(f["field_path"]), _unquote(f["order"])) for f in r["fields"])))
    # The Jobs tab's indexes are declared from a list (infra/firestore_jobs.tf).
    for fields in _locals()["job_query_indexes"]:
        declared.append(("jobs", "COLLECTION", tuple((_unquote(f), _unquote(o)) for f, o in fields)))
    return declared


@pytest.mark.parametrize("collection,scope,fields", COMPOSITE_INDEXES)
def test_composite_indexes_are_declared(collection, scope, fields):
    assert (collection, scope, tuple(fields)) in _declared_indexes()


def test_no_index_is_declared_that_the_code_does_not_use():
    assert sorted(_declared_indexes()) == sorted((c, s, tuple(f)) for c, s, f in COMPOSITE_INDEXES)


# --- Buckets ------------------------------------------------------------------------------------------------

def test_buckets_are_private_with_uniform_access_and_the_key_bucket_versioned():
    buckets = _resources("google_storage_bucket")
    for name, bucket in buckets.items():
        assert bucket["uniform_bucket_level_access"] == "true", name
        assert _unquote(bucket["public_access_prevention"]) == "enforced", name
    keys = buckets["keys"]
    assert keys["versioning"][0]["enabled"] == "true"
    assert keys["force_destroy"] == "false"
    # Function env names the declared buckets.
    env = _locals()["function_env"]
    assert env["ARCHSYNC_KEY_BUCKET"] == "${google_storage_bucket.keys.name}"
    assert env["ARCHSYNC_OBJECTS_BUCKET"] == "${google_storage_bucket.generated.name}"


def test_the_generated_objects_bucket_has_a_lifecycle_rule():
    rules = _resources("google_storage_bucket")["generated"]["lifecycle_rule"]
    ages = [r["condition"][0].get("age") for r in rules if r["action"][0]["type"] == '"Delete"']
    assert "${var.generated_objects_retention_days}" in ages


def test_object_access_is_audit_logged():
    audit = _resources("google_project_iam_audit_config")["storage"]
    assert _unquote(audit["service"]) == "storage.googleapis.com"
    assert {_unquote(c["log_type"]) for c in audit["audit_log_config"]} == {"DATA_READ", "DATA_WRITE"}
    assert not any("exempted_members" in c for c in audit["audit_log_config"])


def test_optional_cmek_covers_the_topics_the_registry_and_the_buckets():
    assert _variables()["kms_key_name"]["default"] in (None, "null")  # opt-in
    for kind, name in (("google_pubsub_topic", "inbound"), ("google_pubsub_topic", "dead_letter"),
                       ("google_artifact_registry_repository", "functions")):
        assert _resources(kind)[name]["kms_key_name"] == "${var.kms_key_name}", name
    for name, bucket in _resources("google_storage_bucket").items():
        [dynamic] = bucket["dynamic"]
        assert '"encryption"' in dynamic, name
    grant = _resources("google_kms_crypto_key_iam_member")["cmek"]
    assert _unquote(grant["role"]) == "roles/cloudkms.cryptoKeyEncrypterDecrypter"
    assert grant["for_each"] == "${local.cmek_service_agents}"
    # The service agents that encrypt for those resources: Pub/Sub, Artifact Registry, Cloud Storage.
    agents = _locals()["cmek_service_agents"]
    assert all(a in agents for a in ("local.pubsub_service_agent", "@gcp-sa-artifactregistry.",
                                     "google_storage_project_service_account"))


# --- Variables, environments, state ----------------------------------------------------------------------

def test_every_variable_is_typed_and_described():
    for name, var in _variables().items():
        assert var.get("type"), f"variable {name} has no type"
        assert len(_unquote(var.get("description", "")).strip()) > 10, f"variable {name} has no description"


def _tfvars(env: str) -> dict:
    with (INFRA / "environments" / f"{env}.tfvars").open() as f:
        return {k: v for k, v in hcl2.load(f).items() if not k.startswith("__")}


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_each_environment_sets_every_required_variable_and_only_declared_ones(env):
    values = _tfvars(env)
    variables = _variables()
    assert set(values) <= set(variables), set(values) - set(variables)
    required = {name for name, var in variables.items() if "default" not in var}
    assert required <= set(values), required - set(values)
    assert _unquote(values["environment"]) == env


def test_state_is_kept_in_a_gcs_backend():
    backends = [b for doc in _parsed() for t in doc.get("terraform", []) for b in t.get("backend", [])]
    assert [list(b) for b in backends] == [['"gcs"']]


# --- Deployment guide ----------------------------------------------------------------------------------------

def _guide_variables() -> dict[str, list[str]]:
    """Rows of the variables table in docs/deployment.md: | `name` | `type` | default | description |"""
    rows = {}
    guide = (REPO / "docs" / "deployment.md").read_text()
    section = guide.split("\n## Variables\n", 1)[1].split("\n## ", 1)[0]
    for line in section.splitlines():
        m = re.match(r"\|\s*`(\w+)`\s*\|(.*)\|\s*$", line)
        if m:
            rows[m.group(1)] = [c.strip() for c in m.group(2).split("|")]
    return rows


def test_the_deployment_guide_documents_every_variable():
    rows = _guide_variables()
    variables = _variables()
    assert set(rows) == set(variables), set(rows) ^ set(variables)
    for name, var in variables.items():
        type_, default, description = rows[name]
        assert type_ == f"`{_unquote(var['type']).replace('${', '').rstrip('}')}`", name
        assert (default == "required") == ("default" not in var), name
        assert len(description) > 10, name


def test_the_readme_points_to_the_deployment_guide():
    readme = (REPO / "README.md").read_text()
    section = readme.split("\n## Deployment\n", 1)[1].split("\n## ", 1)[0]
    assert "docs/deployment.md" in section


def test_the_follow_up_paths_may_write_generated_objects():
    """Issue 11 items 3 and 15: merged instance lists (on_job_result), notes and lists copied to a
    job's new gateway (admin_api retry, sweep_jobs/on_job_result releasing a held note)."""
    grants = _resources("google_storage_bucket_iam_member")
    for name, who in (("objects_bucket_iocm_writer", None),
                      ("objects_bucket_followup_writer", '${toset(["on_job_result", "sweep_jobs", "admin_api"])}')):
        assert grants[name]["bucket"] == "${google_storage_bucket.generated.name}"
        assert _unquote(grants[name]["role"]) == "roles/storage.objectUser"
        if who:
            assert grants[name]["for_each"] == who

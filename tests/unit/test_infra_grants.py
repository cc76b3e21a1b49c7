"""devstack/infra_grants.py: what infra/ grants the functions' runtime service accounts on buckets,
read from the Terraform files (the local stack applies these; issue 12 item 2)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from devstack import infra_grants
from devstack.infra_grants import BucketGrant, bucket_grants, bucket_policies, custom_roles, function_accounts

INFRA = Path(__file__).resolve().parents[2] / "infra"
CUSTOM = "projects/{project}/roles/archsyncBucketIamAdmin"
RESULT_KEYS_ONLY = 'resource.name.endsWith("/result-endpoint-key")'


def _grants() -> set[tuple]:
    return {(g.bucket_key, g.role, g.function, g.condition) for g in bucket_grants()}


def test_function_accounts_are_the_runtime_identities_of_every_function():
    accounts = function_accounts()
    assert set(accounts) == {p.name for p in (INFRA.parent / "functions").iterdir() if (p / "main.py").exists()}
    assert accounts["admin_api"] == "archsync-admin-api"
    assert accounts["on_job_result"] == "archsync-job-result"
    assert len(set(accounts.values())) == len(accounts)


def test_custom_roles():
    assert custom_roles() == {"archsyncBucketIamAdmin": [
        "storage.buckets.get", "storage.buckets.getIamPolicy", "storage.buckets.setIamPolicy",
        "storage.managedFolders.create", "storage.managedFolders.delete", "storage.managedFolders.get",
        "storage.managedFolders.getIamPolicy", "storage.managedFolders.setIamPolicy"]}


def test_current_bucket_grants_are_found():
    grants = _grants()
    expected = {
        # on_job_result reads Result Endpoint keys only (conditional), writes follow-up objects
        ("keys", "roles/storage.objectViewer", "on_job_result", RESULT_KEYS_ONLY),
        ("generated", "roles/storage.objectUser", "on_job_result", None),
        # the provisioners (for_each over local.gateway_provisioners, and the literal toset)
        ("keys", "roles/storage.objectAdmin", "admin_api", None),
        ("keys", "roles/storage.objectAdmin", "sweep_jobs", None),
        ("generated", CUSTOM, "admin_api", None),
        ("generated", CUSTOM, "sweep_jobs", None),
        ("study", CUSTOM, "admin_api", None),  # role = coalesce(var.study_bucket_iam_role, custom role)
        ("study", CUSTOM, "sweep_jobs", None),
        ("generated", "roles/storage.objectUser", "admin_api", None),
        ("generated", "roles/storage.objectUser", "sweep_jobs", None),
        # IOCM rejection notes
        ("generated", "roles/storage.objectUser", "on_study_changed", None),
    }
    assert expected <= grants, expected - grants
    # Functions that touch no bucket get nothing; on_job_result gets nothing unconditional on keys.
    assert not {g for g in grants if g[2] in ("on_exam_status_changed", "on_patient_updated", "on_facility_changed",
                                              "lock_status")}
    assert not {g for g in grants if g[0] == "keys" and g[2] == "on_job_result" and g[3] is None}
    # The build account's grant on the source bucket is not a function's.
    assert all(g.resource.split(".")[1].split("[")[0] != "build_source_reader" for g in bucket_grants())
    one = next(g for g in bucket_grants() if g.function == "on_job_result" and g.bucket_key == "keys")
    assert one == BucketGrant("keys", "roles/storage.objectViewer", "on_job_result", RESULT_KEYS_ONLY,
                              "result endpoint keys only",
                              "google_storage_bucket_iam_member.key_bucket_result_key_reader")
    admin = next(g for g in bucket_grants() if g.resource.endswith('study_bucket_iam_admin["admin_api"]'))
    assert admin.role_in("prj") == "projects/prj/roles/archsyncBucketIamAdmin"


def test_bucket_policies_in_gcs_format():
    policies = bucket_policies("prj", {"keys": "k-bucket", "generated": "o-bucket", "study": "s-bucket"})
    assert set(policies) == {"k-bucket", "o-bucket", "s-bucket"}

    def sa(account: str) -> str:
        return f"serviceAccount:{account}@prj.iam.gserviceaccount.com"

    keys = policies["k-bucket"]
    assert keys["version"] == 3
    assert {"role": "roles/storage.objectViewer", "members": [sa("archsync-job-result")],
            "condition": {"title": "result endpoint keys only", "expression": RESULT_KEYS_ONLY}} in keys["bindings"]
    assert {"role": "roles/storage.objectAdmin",
            "members": [sa("archsync-admin-api"), sa("archsync-sweep-jobs")]} in keys["bindings"]
    objects = {b["role"]: b for b in policies["o-bucket"]["bindings"]}
    assert sa("archsync-study-changed") in objects["roles/storage.objectUser"]["members"]
    assert objects["projects/prj/roles/archsyncBucketIamAdmin"]["members"] == [sa("archsync-admin-api"),
                                                                               sa("archsync-sweep-jobs")]
    assert policies["s-bucket"]["bindings"] == [{"role": "projects/prj/roles/archsyncBucketIamAdmin",
                                                 "members": [sa("archsync-admin-api"), sa("archsync-sweep-jobs")]}]
    with pytest.raises(ValueError, match="no local bucket given for 'study'"):
        bucket_policies("prj", {"keys": "k", "generated": "o"})


def _infra_with(tmp_path: Path, extra: str) -> Path:
    infra = tmp_path / "infra"
    shutil.copytree(INFRA, infra)
    (infra / "zz_extra.tf").write_text(extra)
    return infra


UNKNOWN_SHAPES = {
    "member via email": ('resource "google_storage_bucket_iam_member" "odd" {\n'
                         '  bucket = google_storage_bucket.keys.name\n  role = "roles/storage.objectViewer"\n'
                         '  member = "serviceAccount:${google_service_account.function["lock_status"].email}"\n}\n',
                         "odd: unknown member"),
    "unknown bucket": ('resource "google_storage_bucket_iam_member" "odd" {\n'
                       '  bucket = google_storage_bucket.other.name\n  role = "roles/storage.objectViewer"\n'
                       '  member = google_service_account.function["lock_status"].member\n}\n',
                       "odd: unknown bucket"),
    "unknown for_each": ('resource "google_storage_bucket_iam_member" "odd" {\n  for_each = local.readers\n'
                         '  bucket = google_storage_bucket.keys.name\n  role = "roles/storage.objectViewer"\n'
                         '  member = google_service_account.function[each.key].member\n}\n',
                         "odd: unknown for_each"),
    "toset of a non-function": ('resource "google_storage_bucket_iam_member" "odd" {\n'
                                '  for_each = toset(["admin_api", "nobody"])\n'
                                '  bucket = google_storage_bucket.keys.name\n  role = "roles/storage.objectViewer"\n'
                                '  member = google_service_account.function[each.key].member\n}\n',
                                "odd: for_each names no function"),
    "count": ('resource "google_storage_bucket_iam_member" "odd" {\n  count = 1\n'
              '  bucket = google_storage_bucket.keys.name\n  role = "roles/storage.objectViewer"\n'
              '  member = google_service_account.function["lock_status"].member\n}\n',
              "odd: unknown attributes"),
    "role from a variable": ('resource "google_storage_bucket_iam_member" "odd" {\n'
                             '  bucket = google_storage_bucket.keys.name\n  role = var.some_role\n'
                             '  member = google_service_account.function["lock_status"].member\n}\n',
                             "odd.role: unknown role expression"),
    "each.key without for_each": ('resource "google_storage_bucket_iam_member" "odd" {\n'
                                  '  bucket = google_storage_bucket.keys.name\n  role = "roles/storage.objectViewer"\n'
                                  '  member = google_service_account.function[each.key].member\n}\n',
                                  "odd: member uses each.key without for_each"),
    "interpolated condition": ('resource "google_storage_bucket_iam_member" "odd" {\n'
                               '  bucket = google_storage_bucket.keys.name\n  role = "roles/storage.objectViewer"\n'
                               '  member = google_service_account.function["lock_status"].member\n'
                               '  condition {\n    title = "t"\n'
                               '    expression = "resource.name.startsWith(\\"${var.study_bucket}\\")"\n  }\n}\n',
                               "odd.condition.expression: expected a literal string"),
    "authoritative binding": ('resource "google_storage_bucket_iam_binding" "odd" {\n'
                              '  bucket = google_storage_bucket.keys.name\n  role = "roles/storage.objectViewer"\n'
                              '  members = [google_service_account.function["lock_status"].member]\n}\n',
                              "google_storage_bucket_iam_binding.odd"),
}


@pytest.mark.parametrize("name", sorted(UNKNOWN_SHAPES))
def test_a_grant_shape_it_does_not_understand_raises(tmp_path, name):
    text, message = UNKNOWN_SHAPES[name]
    infra = _infra_with(tmp_path, text)
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace(".", r"\.")):
        bucket_grants(infra)


def test_a_grant_to_another_identity_is_not_a_functions(tmp_path):
    infra = _infra_with(tmp_path, 'resource "google_storage_bucket_iam_member" "other" {\n'
                                  '  bucket = google_storage_bucket.keys.name\n  role = "roles/storage.objectViewer"\n'
                                  '  member = google_service_account.scheduler.member\n}\n')
    assert bucket_grants(infra) == bucket_grants()


def test_a_changed_provisioners_local_raises(tmp_path):
    infra = tmp_path / "infra"
    shutil.copytree(INFRA, infra)
    iam = infra / "iam.tf"
    iam.write_text(iam.read_text().replace("if fn.provisions_gateways", "if fn.provisions_gateways || true"))
    with pytest.raises(ValueError, match="local.gateway_provisioners: unknown expression"):
        bucket_grants(infra)


def test_module_reads_the_repositorys_infra():
    assert infra_grants.INFRA == INFRA

"""The local stack enforces Cloud Storage IAM as production does (issue 12): gateways read only what
provisioning grants them, with their own downloaded key; each function reaches storage as its own
runtime account, with only what infra/ grants it."""
from __future__ import annotations

import json

import pytest
from google.api_core import exceptions

from devstack.iam_standin import HARNESS_PROJECT
from devstack.studies import make_study, upload
from gateway_agent.fetch import FetchError, ObjectFetcher
from shared.adapters.gcs import result_key_object, sa_key_object
from shared.domain.models import Facility, FacilityGroup
from shared.domain.validation import validate_gateway
from shared.services.provisioning import Provisioner, ProvisioningSettings
from tests.support import load_app

S1, S2 = "1.2.826.0.1.3680043.8.498.12001", "1.2.826.0.1.3680043.8.498.12002"


# google-cloud-storage looks up a bucket's metadata in the background (storage.buckets.get) and,
# refused, falls back to defaults for good (_bucket_metadata_cache.py): as in production, none of
# these identities holds that permission, and the refusal is no failure.
LIBRARY_LOOKUP = "storage.buckets.get"


def refusals(stack) -> set[tuple]:
    return {(d.principal, d.permission, d.bucket) for d in stack.emulators["bucket_iam"].decisions
            if not d.allowed and d.permission != LIBRARY_LOOKUP}


def account(function_account_id: str) -> str:
    return f"serviceAccount:{function_account_id}@{HARNESS_PROJECT}.iam.gserviceaccount.com"


@pytest.fixture
def two_groups(stack):
    """One gateway in each of two facility groups, provisioned, with a study each."""
    stack.topic("archsync-gateway-dead-letter")
    prov = Provisioner(stack.store, stack.cloud(), stack.clock, ProvisioningSettings(
        objects_bucket=stack.objects_bucket, study_bucket=stack.study_bucket))
    gateways = {}
    for fg, fac, gid, study in (("fg-1", "fac-a", "gw-aaaaaaaaaa", S1), ("fg-2", "fac-b", "gw-bbbbbbbbbb", S2)):
        stack.store.save_facility_group(FacilityGroup(fg, fg))
        stack.store.save_facility(Facility(fac, fg, fac))
        gw = prov.create(validate_gateway({"name": gid, "facility_ids": [fac]}, gateway_id=gid, facility_group_id=fg,
                                          group_facility_ids=frozenset({fac}), topic_id="", subscription_id=""), "Pat")
        upload(stack.gcs, f"gs://{stack.study_bucket}/{fg}/{study}/", make_study(study, 2))
        gateways[fg] = (gw, json.loads(stack.vault.get(sa_key_object(fg, gid))))
    return gateways


def test_an_agent_reads_its_groups_studies_and_gets_403_for_another_groups(stack, two_groups, tmp_path):
    gw, key = two_groups["fg-1"]
    fetcher = ObjectFetcher(key, stack.project, stack.emulators["gcs"])
    assert len(fetcher.fetch_prefix(f"gs://{stack.study_bucket}/fg-1/{S1}/", tmp_path / "own")) == 2

    with pytest.raises(FetchError, match="may not read it") as refused:
        fetcher.fetch_prefix(f"gs://{stack.study_bucket}/fg-2/{S2}/", tmp_path / "other")
    assert not refused.value.retryable
    assert refusals(stack) == {(f"serviceAccount:{gw.service_account_email}", "storage.objects.list", stack.study_bucket)}
    # Naming another group's file directly is refused too, and so is listing the whole bucket.
    with pytest.raises(FetchError, match="may not read it"):
        fetcher.fetch_object(f"gs://{stack.study_bucket}/fg-2/{S2}/" + _first_name(stack, f"fg-2/{S2}/"), tmp_path / "x")
    client = fetcher._storage()
    with pytest.raises(exceptions.Forbidden):
        list(client.list_blobs(stack.study_bucket, prefix="fg-"))


def test_a_gateway_reads_only_its_own_generated_objects(stack, two_groups, tmp_path):
    (gw1, key1), (gw2, _) = two_groups["fg-1"], two_groups["fg-2"]
    for gw in (gw1, gw2):
        stack.gcs.bucket(stack.objects_bucket).blob(f"gateways/{gw.id}/iocm/note.dcm").upload_from_string(b"DICM")
    fetcher = ObjectFetcher(key1, stack.project, stack.emulators["gcs"])
    assert fetcher.fetch_object(f"gs://{stack.objects_bucket}/gateways/{gw1.id}/iocm/note.dcm", tmp_path / "a").read_bytes() == b"DICM"
    with pytest.raises(FetchError, match="may not read it"):
        fetcher.fetch_object(f"gs://{stack.objects_bucket}/gateways/{gw2.id}/iocm/note.dcm", tmp_path / "b")


def test_the_admin_api_reaches_storage_as_its_own_account_only(stack, admin_env):
    """Creating a gateway and downloading its keys: every storage check the front made was for
    admin_api's runtime account, none anonymous, none refused."""
    stack.store.save_facility_group(FacilityGroup("fg-1", "Group 1"))
    stack.topic("archsync-gateway-dead-letter")
    app = load_app("admin_api").application.test_client()
    front = stack.emulators["bucket_iam"]
    before = len(front.decisions)
    created = app.post("/v1/facility-groups/fg-1/gateways", json={"name": "Main"}, headers=admin_env.headers(["fg-1"]))
    assert created.status_code == 201, created.json
    gid = created.json["id"]
    for what in ("service-account-key", "result-endpoint-key"):
        r = app.get(f"/v1/facility-groups/fg-1/gateways/{gid}/{what}", headers=admin_env.headers(["fg-1"]))
        assert r.status_code == 200, r.get_data(as_text=True)
    seen = [d for d in front.decisions[before:] if d.permission != LIBRARY_LOOKUP]
    assert seen and {d.principal for d in seen} == {account("archsync-admin-api")} and all(d.allowed for d in seen)
    # The gateway's grants are on managed folders (docs/scale.md, "Bucket IAM principals").
    assert {d.permission for d in seen} >= {"storage.objects.create", "storage.objects.get",
                                            "storage.managedFolders.create", "storage.managedFolders.getIamPolicy",
                                            "storage.managedFolders.setIamPolicy"}


def test_the_result_endpoint_may_read_result_keys_and_nothing_else_in_the_key_bucket(stack):
    """infra/iam.tf grants on_job_result objectViewer on the key bucket under the condition
    resource.name.endsWith("/result-endpoint-key"): a gateway's service-account key is out of reach."""
    stack.vault.put(result_key_object("fg-1", "gw-1"), b"k" * 32)
    stack.vault.put(sa_key_object("fg-1", "gw-1"), b"{}", "application/json")
    bucket = stack.function_storage("on_job_result").bucket(stack.key_bucket)
    assert bucket.blob(result_key_object("fg-1", "gw-1")).download_as_bytes() == b"k" * 32
    with pytest.raises(exceptions.Forbidden):
        bucket.blob(sa_key_object("fg-1", "gw-1")).download_as_bytes()
    with pytest.raises(exceptions.Forbidden):  # no listing either
        list(stack.function_storage("on_job_result").list_blobs(stack.key_bucket))
    with pytest.raises(exceptions.Forbidden):  # and a function without any key-bucket grant
        stack.function_storage("on_study_changed").bucket(stack.key_bucket).blob(
            result_key_object("fg-1", "gw-1")).download_as_bytes()


def test_anonymous_requests_get_gcs_401(stack):
    import urllib.error
    import urllib.request

    url = f"{stack.emulators['gcs']}/storage/v1/b/{stack.study_bucket}/o?prefix=fg-1/"
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(url, timeout=30)
    assert e.value.code == 401
    error = json.loads(e.value.read())["error"]
    assert error["message"].startswith("Anonymous caller does not have storage.objects.list access")
    assert error["errors"][0]["reason"] == "required"


def _first_name(stack, prefix: str) -> str:
    return next(iter(stack.gcs.list_blobs(stack.study_bucket, prefix=prefix))).name[len(prefix):]


# What each function's code does in Cloud Storage (shared/adapters/gcs.py, called from the paths
# named), done with the real adapters as that function's runtime account: infra/iam.tf must grant
# each of these, and a grant removed from infra/ turns its case red.
NOTE = "gateways/gw-1/iocm/note.dcm"
STORAGE_USES = {
    "on_study_changed": ["objects.put", "objects.put"],  # IOCM notes; a redelivery rewrites the same name
    "on_job_result": ["objects.get", "objects.put", "objects.copy", "keys.get_result_key"],  # follow-ups, held notes
    # held notes; provisioning roll-back (managed folders: docs/scale.md; bucket_iam: gateways made before them)
    "sweep_jobs": ["objects.get", "objects.copy", "keys.put", "keys.get", "keys.delete", "bucket_iam", "managed_folders"],
    # retry re-routing; provisioning
    "admin_api": ["objects.get", "objects.copy", "keys.put", "keys.get", "keys.delete", "bucket_iam", "managed_folders"],
}


@pytest.mark.parametrize("function", sorted(STORAGE_USES))
def test_each_function_may_do_what_its_code_does_in_storage(stack, function):
    from shared.adapters.gcs import BucketIam, KeyVault, ManagedFolderIam, ObjectStore

    stack.gcs.bucket(stack.objects_bucket).blob(NOTE).upload_from_string(b"DICM")
    stack.vault.put(result_key_object("fg-1", "gw-1"), b"k" * 32)
    client = stack.function_storage(function)
    objects, vault = ObjectStore(stack.objects_bucket, client), KeyVault(stack.key_bucket, client)
    uri = f"gs://{stack.objects_bucket}/{NOTE}"
    for use in STORAGE_USES[function]:
        if use == "objects.put":
            objects.put(NOTE, b"DICM", "application/dicom")
        elif use == "objects.get":
            assert objects.get(uri) == b"DICM"
        elif use == "objects.copy":
            objects.copy(uri, "gateways/gw-2/iocm/note.dcm")
            objects.copy(uri, "gateways/gw-2/iocm/note.dcm")  # a redelivery copies again
        elif use == "keys.get_result_key":
            assert vault.get(result_key_object("fg-1", "gw-1")) == b"k" * 32
        elif use == "keys.put":
            vault.put(sa_key_object("fg-1", "gw-9"), b"{}", "application/json")
        elif use == "keys.get":
            assert vault.get(sa_key_object("fg-1", "gw-9"), fresh=True) == b"{}"
        elif use == "keys.delete":
            vault.delete(sa_key_object("fg-1", "gw-9"))
        elif use == "bucket_iam":
            for bucket in (stack.objects_bucket, stack.study_bucket):
                BucketIam(client).grant_prefix_reader(bucket, "user:someone@example.com", "fg-1/", listing=True)
                BucketIam(client).revoke_member(bucket, "user:someone@example.com")
        elif use == "managed_folders":
            folders = ManagedFolderIam(client)
            for bucket in (stack.objects_bucket, stack.study_bucket):
                folders.grant_reader(bucket, "fg-1/", "user:someone@example.com")
                assert folders.readers(bucket, "fg-1/") == ["user:someone@example.com"]
                folders.revoke_member(bucket, "fg-1/", "user:someone@example.com")
                folders.delete_folder(bucket, "fg-1/")
    assert not refusals(stack)

"""The enforcing Cloud Storage front (issue 12 item 2): the real ``storage.Client`` with static bearer
tokens against ``BucketIamStandIn(principal_of=...)`` relaying to fake-gcs-server. The token
resolver here is a dict (the IAM stand-in's ``principal_for_token`` takes its place in the stack).
Uses no project fixtures: the servers are started once for this module."""
from __future__ import annotations

import http.client
import io
import json
import uuid
from pathlib import Path
from typing import Iterator, Optional

import pytest
from google.api_core import exceptions
from google.auth import exceptions as auth_exceptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage
from google.oauth2.credentials import Credentials

from devstack import gcs, processes
from shared.adapters.gcs import BucketIam, prefix_reader_condition
from shared.domain.errors import TransientError

PROJECT = "archsync-test"
OWNER = "serviceAccount:harness@archsync-test.iam.gserviceaccount.com"
GW_A = "serviceAccount:gw-a@archsync-test.iam.gserviceaccount.com"
GW_B = "serviceAccount:gw-b@archsync-test.iam.gserviceaccount.com"
CREATOR = "serviceAccount:creator@archsync-test.iam.gserviceaccount.com"
USER = "serviceAccount:user@archsync-test.iam.gserviceaccount.com"
TOKENS = {"tok-owner": OWNER, "tok-a": GW_A, "tok-b": GW_B, "tok-creator": CREATOR, "tok-user": USER}


@pytest.fixture(scope="module")
def gcs_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[processes.Service]:
    service = gcs.start_gcs(Path(tmp_path_factory.mktemp("gcs-logs")))
    try:
        yield service
    finally:
        service.stop()


@pytest.fixture(scope="module")
def front_server(gcs_service: processes.Service) -> Iterator[gcs.BucketIamStandIn]:
    with gcs.BucketIamStandIn(upstream=gcs.emulator_url(gcs_service), principal_of=TOKENS.get,
                              owners=[OWNER]) as server:
        yield server


@pytest.fixture
def front(front_server: gcs.BucketIamStandIn) -> gcs.BucketIamStandIn:
    front_server.reset()
    return front_server


def _client(front: gcs.BucketIamStandIn, token: Optional[str]) -> storage.Client:
    credentials = Credentials(token=token) if token else AnonymousCredentials()
    return storage.Client(project=PROJECT, credentials=credentials, client_options={"api_endpoint": front.url})


def _raw(front: gcs.BucketIamStandIn, method: str, path: str, token: Optional[str] = None,
         body: bytes = b"") -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", front.port, timeout=30)
    try:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"{}")
    finally:
        conn.close()


@pytest.fixture
def bucket(front: gcs.BucketIamStandIn) -> str:
    """A bucket the owner made, with fg-1/a.dcm and fg-2/b.dcm."""
    owner = _client(front, "tok-owner")
    b = owner.create_bucket(f"archsync-{uuid.uuid4().hex[:12]}")
    b.blob("fg-1/a.dcm").upload_from_string(b"study a")
    b.blob("fg-2/b.dcm").upload_from_string(b"study b")
    return b.name


def _denied_message(member: str, permission: str, noun: str) -> str:
    return (f"{member.split(':', 1)[1]} does not have {permission} access to the Google Cloud Storage {noun}. "
            f"Permission '{permission}' denied on resource (or it may not exist).")


def test_a_conditional_viewer_reads_and_lists_only_its_prefix(front, bucket):
    front.seed_policy(bucket, {"version": 3, "bindings": [
        {"role": "roles/storage.objectViewer", "members": [GW_A],
         "condition": {"title": "fg-1", "expression": prefix_reader_condition(bucket, "fg-1/", listing=True)}}]})
    gw = _client(front, "tok-a")
    assert gw.bucket(bucket).blob("fg-1/a.dcm").download_as_bytes() == b"study a"
    assert [b.name for b in gw.list_blobs(bucket, prefix="fg-1/")] == ["fg-1/a.dcm"]
    with pytest.raises(exceptions.Forbidden) as e:
        gw.bucket(bucket).blob("fg-2/b.dcm").download_as_bytes()
    assert _denied_message(GW_A, "storage.objects.get", "object") in str(e.value)
    for wider in ("fg-", "", None):
        with pytest.raises(exceptions.Forbidden) as e:
            list(gw.list_blobs(bucket, prefix=wider))
        assert _denied_message(GW_A, "storage.objects.list", "bucket") in str(e.value)
    with pytest.raises(exceptions.Forbidden):  # a viewer cannot write inside its prefix either
        gw.bucket(bucket).blob("fg-1/new.dcm").upload_from_string(b"x")


def test_anonymous_and_bad_tokens_get_401_with_gcs_bodies(front, bucket):
    # The client library answers a 401 by refreshing its credentials, which anonymous and static
    # token credentials cannot do: the caller sees an auth error, as it would from GCS.
    with pytest.raises(auth_exceptions.GoogleAuthError):
        _client(front, None).bucket(bucket).blob("fg-1/a.dcm").download_as_bytes()
    status, body = _raw(front, "GET", f"/storage/v1/b/{bucket}/o/fg-1%2Fa.dcm")
    message = ("Anonymous caller does not have storage.objects.get access to the Google Cloud Storage object. "
               "Permission 'storage.objects.get' denied on resource (or it may not exist).")
    assert (status, body) == (401, {"error": {"code": 401, "message": message, "errors": [
        {"message": message, "domain": "global", "reason": "required", "locationType": "header",
         "location": "Authorization"}]}})
    status, body = _raw(front, "GET", f"/storage/v1/b/{bucket}/o/fg-1%2Fa.dcm", token="expired-or-forged")
    assert status == 401 and body["error"]["message"] == "Invalid Credentials"
    assert body["error"]["errors"][0]["reason"] == "authError"
    with pytest.raises(auth_exceptions.GoogleAuthError):
        _client(front, "nope").bucket(bucket).blob("fg-1/a.dcm").download_as_bytes()


def test_a_principal_without_a_binding_gets_403(front, bucket):
    front.seed_policy(bucket, {"bindings": [{"role": "roles/storage.objectViewer", "members": [GW_A]}]})
    status, body = _raw(front, "GET", f"/storage/v1/b/{bucket}/o/fg-1%2Fa.dcm", token="tok-b")
    message = _denied_message(GW_B, "storage.objects.get", "object")
    assert (status, body["error"]["message"], body["error"]["errors"][0]["reason"]) == (403, message, "forbidden")
    with pytest.raises(exceptions.Forbidden):
        _client(front, "tok-b").get_bucket(bucket)
    assert _client(front, "tok-a").bucket(bucket).blob("fg-1/a.dcm").download_as_bytes() == b"study a"


def test_overwriting_needs_delete_as_well_as_create(front, bucket):
    front.seed_policy(bucket, {"bindings": [{"role": "roles/storage.objectCreator", "members": [CREATOR]},
                                            {"role": "roles/storage.objectUser", "members": [USER]}]})
    creator = _client(front, "tok-creator").bucket(bucket)
    creator.blob("out/new.bin").upload_from_string(b"v1")
    with pytest.raises(exceptions.Forbidden) as e:
        creator.blob("out/new.bin").upload_from_string(b"v2")
    assert _denied_message(CREATOR, "storage.objects.delete", "object") in str(e.value)
    with pytest.raises(exceptions.PreconditionFailed):  # ifGenerationMatch=0 needs no delete: the write fails instead
        creator.blob("out/new.bin").upload_from_string(b"v2", if_generation_match=0)
    with pytest.raises(exceptions.Forbidden):  # copy onto an existing object is an overwrite too
        creator.copy_blob(creator.blob("out/new.bin"), creator, "fg-1/a.dcm")
    user = _client(front, "tok-user").bucket(bucket)
    user.blob("out/new.bin").upload_from_string(b"v3")
    user.copy_blob(user.blob("out/new.bin"), user, "fg-1/a.dcm")
    owner = _client(front, "tok-owner").bucket(bucket)
    assert owner.blob("out/new.bin").download_as_bytes() == b"v3"
    assert owner.blob("fg-1/a.dcm").download_as_bytes() == b"v3"
    user.blob("out/new.bin").delete()
    with pytest.raises(exceptions.Forbidden):
        user.get_iam_policy(requested_policy_version=3)  # objectUser has no IAM permissions


def test_a_resumable_upload_works_for_a_permitted_principal(front, bucket):
    front.seed_policy(bucket, {"bindings": [{"role": "roles/storage.objectCreator", "members": [CREATOR]},
                                            {"role": "roles/storage.objectViewer", "members": [GW_A]}]})
    data = bytes(range(256)) * 3000  # 768000 bytes: three chunks of 256 KiB
    blob = _client(front, "tok-creator").bucket(bucket).blob("big/upload.bin", chunk_size=256 * 1024)
    blob.upload_from_file(io.BytesIO(data))  # no size given: the client must upload resumably, in chunks
    assert front.upload_sessions == 1  # the session URI named the front, not the emulator behind it
    assert _client(front, "tok-owner").bucket(bucket).blob("big/upload.bin").download_as_bytes() == data
    refused = _client(front, "tok-a").bucket(bucket).blob("big/other.bin", chunk_size=256 * 1024)
    with pytest.raises(exceptions.Forbidden):
        refused.upload_from_file(io.BytesIO(data))
    # A session the front did not authorise (e.g. one opened on the emulator directly) is refused.
    status, body = _raw(front, "PUT", f"/upload/storage/v1/b/{bucket}/o?uploadType=resumable&upload_id=forged",
                        body=b"x")
    assert status == 403 and "not modelled by the local stack" in body["error"]["message"]


def test_test_iam_permissions_answers_only_what_the_caller_has(front, bucket):
    front.seed_policy(bucket, {"version": 3, "bindings": [
        {"role": "roles/storage.legacyBucketReader", "members": [GW_B]},
        {"role": "roles/storage.objectViewer", "members": [GW_A],
         "condition": {"title": "fg-1", "expression": prefix_reader_condition(bucket, "fg-1/", listing=True)}}]})
    asked = ["storage.buckets.get", "storage.objects.list", "storage.objects.get", "storage.objects.create",
             "storage.buckets.setIamPolicy"]
    assert _client(front, "tok-b").bucket(bucket).test_iam_permissions(asked) == \
        ["storage.buckets.get", "storage.objects.list"]
    assert _client(front, "tok-a").bucket(bucket).test_iam_permissions(asked) == []  # conditions see the bucket
    assert _client(front, "tok-owner").bucket(bucket).test_iam_permissions(asked) == asked
    assert front.calls["testIamPermissions"] == 3


def test_owners_can_do_everything_and_unmodelled_requests_are_refused(front, bucket):
    owner = _client(front, "tok-owner")
    assert bucket in [b.name for b in owner.list_buckets()]
    b = owner.get_bucket(bucket)
    policy = b.get_iam_policy(requested_policy_version=3)
    policy.bindings.append({"role": "roles/storage.objectViewer", "members": {GW_B}})
    b.set_iam_policy(policy)
    assert _client(front, "tok-b").bucket(bucket).blob("fg-2/b.dcm").download_as_bytes() == b"study b"
    b.blob("fg-2/b.dcm").delete()
    assert sorted(x.name for x in owner.list_blobs(bucket)) == ["fg-1/a.dcm"]
    with pytest.raises(exceptions.Forbidden):  # bucket creation is a project permission: owners only
        _client(front, "tok-b").create_bucket(f"archsync-{uuid.uuid4().hex[:12]}")
    for method, path in [("POST", "/batch/storage/v1"), ("GET", f"/storage/v1/b/{bucket}/o/fg-1%2Fa.dcm/acl"),
                         ("GET", f"/{bucket}/fg-1/a.dcm")]:
        status, body = _raw(front, method, path, token="tok-owner")
        assert status == 403 and "not modelled by the local stack" in body["error"]["message"], (method, path)


def test_the_projects_own_grant_through_the_front(front, bucket):
    """shared.adapters.gcs.BucketIam (the provisioning adapter) grants and revokes a gateway's study
    prefix through the enforcing front, and the grant means what it says."""
    adapter = BucketIam(client=_client(front, "tok-owner"))
    gw = _client(front, "tok-a")
    adapter.grant_prefix_reader(bucket, GW_A, "fg-1/", listing=True)
    assert [b.name for b in gw.list_blobs(bucket, prefix="fg-1/")] == ["fg-1/a.dcm"]
    with pytest.raises(exceptions.Forbidden):
        gw.bucket(bucket).blob("fg-2/b.dcm").download_as_bytes()
    adapter.revoke_member(bucket, GW_A)
    with pytest.raises(exceptions.Forbidden):
        gw.bucket(bucket).blob("fg-1/a.dcm").download_as_bytes()
    # A gateway cannot touch the policy (the adapter maps 403 to a retryable error: an operator can fix IAM).
    with pytest.raises(TransientError, match="Forbidden"):
        BucketIam(client=gw).grant_prefix_reader(bucket, GW_A, "fg-2/", listing=True)

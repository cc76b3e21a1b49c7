"""The real Google client libraries against the local stand-ins: the IAM gRPC stand-in (service
accounts, keys, IAMPolicy as Pub/Sub calls it), fake-gcs-server and the bucket IAM stand-in.
Uses no project fixtures: each server is started once for this module."""
from __future__ import annotations

import json
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import grpc
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509 import load_pem_x509_certificate
from google.api_core import exceptions
from google.cloud import iam_admin_v1, storage
from google.iam.v1 import policy_pb2
from google.oauth2 import service_account

from devstack import gcs, processes
from devstack.iam_standin import EMPTY_POLICY_ETAG, IamStandIn

PROJECT = "archsync-test"


# ---- fixtures ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def iam_server() -> Iterator[IamStandIn]:
    with IamStandIn() as server:
        yield server


@pytest.fixture
def iam(iam_server: IamStandIn) -> IamStandIn:
    iam_server.reset()
    return iam_server


@pytest.fixture(scope="module")
def iam_client(iam_server: IamStandIn) -> iam_admin_v1.IAMClient:
    return iam_server.iam_client()


@pytest.fixture(scope="module")
def gcs_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[processes.Service]:
    service = gcs.start_gcs(Path(tmp_path_factory.mktemp("gcs-logs")))
    try:
        yield service
    finally:
        service.stop()


@pytest.fixture
def gcs_client(gcs_service: processes.Service, monkeypatch: pytest.MonkeyPatch) -> storage.Client:
    """Configured the way code under test is: only STORAGE_EMULATOR_HOST and a project id."""
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs.emulator_url(gcs_service))
    return storage.Client(project=PROJECT)


@pytest.fixture(scope="module")
def bucket_iam_server(gcs_service: processes.Service) -> Iterator[gcs.BucketIamStandIn]:
    with gcs.BucketIamStandIn(upstream=gcs.emulator_url(gcs_service)) as server:
        yield server


@pytest.fixture
def bucket_iam(bucket_iam_server: gcs.BucketIamStandIn) -> gcs.BucketIamStandIn:
    bucket_iam_server.reset()
    return bucket_iam_server


def _bucket_name() -> str:
    return f"archsync-{uuid.uuid4().hex[:12]}"


def _create_sa(client: iam_admin_v1.IAMClient, account_id: str = "archive-sync",
               project: str = PROJECT) -> iam_admin_v1.ServiceAccount:
    return client.create_service_account(name=f"projects/{project}", account_id=account_id,
                                         service_account=iam_admin_v1.ServiceAccount(display_name="Archive sync"))


# ---- IAM: service accounts ------------------------------------------------------------------------
def test_service_account_create_get_list_delete(iam: IamStandIn, iam_client: iam_admin_v1.IAMClient) -> None:
    sa = _create_sa(iam_client)
    email = f"archive-sync@{PROJECT}.iam.gserviceaccount.com"
    assert sa.email == email
    assert sa.name == f"projects/{PROJECT}/serviceAccounts/{email}"
    assert sa.unique_id.isdigit() and sa.oauth2_client_id == sa.unique_id
    assert sa.display_name == "Archive sync"

    for name in (f"projects/-/serviceAccounts/{email}", sa.name, f"projects/-/serviceAccounts/{sa.unique_id}"):
        assert iam_client.get_service_account(name=name).email == email

    for account_id in ("archive-sync-2", "archive-sync-3"):
        _create_sa(iam_client, account_id)
    _create_sa(iam_client, "other-project", project="elsewhere")
    pager = iam_client.list_service_accounts(request={"name": f"projects/{PROJECT}", "page_size": 2})
    assert sorted(a.email.split("@")[0] for a in pager) == ["archive-sync", "archive-sync-2", "archive-sync-3"]
    assert iam.calls["ListServiceAccounts"] == 2  # two pages
    assert set(iam.service_accounts) == {email, f"archive-sync-2@{PROJECT}.iam.gserviceaccount.com",
                                         f"archive-sync-3@{PROJECT}.iam.gserviceaccount.com",
                                         "other-project@elsewhere.iam.gserviceaccount.com"}

    iam_client.delete_service_account(name=f"projects/-/serviceAccounts/{email}")
    assert email not in iam.service_accounts
    with pytest.raises(exceptions.NotFound):
        iam_client.get_service_account(name=sa.name)
    with pytest.raises(exceptions.NotFound):
        iam_client.delete_service_account(name=sa.name)
    with pytest.raises(exceptions.NotFound):  # explicit project that is not the account's
        iam_client.get_service_account(
            name=f"projects/elsewhere/serviceAccounts/archive-sync-2@{PROJECT}.iam.gserviceaccount.com")


def test_create_existing_service_account_raises_already_exists(iam: IamStandIn,
                                                               iam_client: iam_admin_v1.IAMClient) -> None:
    _create_sa(iam_client)
    with pytest.raises(exceptions.AlreadyExists) as err:
        _create_sa(iam_client)
    assert err.value.grpc_status_code == grpc.StatusCode.ALREADY_EXISTS


@pytest.mark.parametrize("account_id",
                         ["short", "a" * 31, "Upper-case", "1starts-with-digit", "ends-with-dash-", "under_score"])
def test_invalid_account_id_raises_invalid_argument(iam: IamStandIn, iam_client: iam_admin_v1.IAMClient,
                                                    account_id: str) -> None:
    with pytest.raises(exceptions.InvalidArgument):
        _create_sa(iam_client, account_id)
    assert iam.service_accounts == {}


def test_account_id_bounds_are_inclusive(iam: IamStandIn, iam_client: iam_admin_v1.IAMClient) -> None:
    assert _create_sa(iam_client, "abcdef").email.startswith("abcdef@")
    assert _create_sa(iam_client, "a" * 30).email.startswith("a" * 30 + "@")


# ---- IAM: keys --------------------------------------------------------------------------------------
def test_key_for_an_email_longer_than_a_certificate_common_name(iam: IamStandIn,
                                                                 iam_client: iam_admin_v1.IAMClient) -> None:
    # 30-character account id: the email (68 characters here) exceeds the 64 of an X.509 CN.
    sa = _create_sa(iam_client, "a" * 30)
    key = iam_client.create_service_account_key(name=sa.name)
    assert json.loads(key.private_key_data)["client_email"] == sa.email
    got = iam_client.get_service_account_key(
        request={"name": key.name, "public_key_type": iam_admin_v1.ServiceAccountPublicKeyType.TYPE_X509_PEM_FILE})
    cert = load_pem_x509_certificate(got.public_key_data)
    from cryptography import x509
    assert cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.RFC822Name) == [sa.email]


def test_service_account_keys(iam: IamStandIn, iam_client: iam_admin_v1.IAMClient) -> None:
    sa = _create_sa(iam_client)
    key = iam_client.create_service_account_key(name=f"projects/-/serviceAccounts/{sa.email}")
    key_id = key.name.rsplit("/", 1)[1]
    assert key.name == f"{sa.name}/keys/{key_id}"
    assert key.private_key_type == iam_admin_v1.ServiceAccountPrivateKeyType.TYPE_GOOGLE_CREDENTIALS_FILE

    info = json.loads(key.private_key_data)
    assert info["type"] == "service_account"
    assert (info["project_id"], info["client_email"], info["client_id"], info["private_key_id"]) == \
        (PROJECT, sa.email, sa.unique_id, key_id)
    assert info["token_uri"] == iam.token_url  # the stand-in's token endpoint (tests/integration/test_credentials.py)
    private = serialization.load_pem_private_key(info["private_key"].encode(), password=None)
    assert isinstance(private, rsa.RSAPrivateKey) and private.key_size == iam.key_bits
    creds = service_account.Credentials.from_service_account_info(info)  # google-auth accepts the file
    assert creds.service_account_email == sa.email

    second = iam_client.create_service_account_key(name=sa.name)
    listed = iam_client.list_service_account_keys(name=sa.name).keys
    assert sorted(k.name for k in listed) == sorted([key.name, second.name])
    assert all(not k.private_key_data for k in listed)  # private data only on create, as in IAM
    assert iam.keys == {sa.email: [key.name, second.name]}

    got = iam_client.get_service_account_key(
        request={"name": key.name, "public_key_type": iam_admin_v1.ServiceAccountPublicKeyType.TYPE_X509_PEM_FILE})
    cert = load_pem_x509_certificate(got.public_key_data)
    assert cert.public_key().public_numbers() == private.public_key().public_numbers()

    iam_client.delete_service_account_key(name=key.name.replace(f"projects/{PROJECT}/", "projects/-/"))
    with pytest.raises(exceptions.NotFound):
        iam_client.get_service_account_key(name=key.name)
    with pytest.raises(exceptions.NotFound):
        iam_client.delete_service_account_key(name=key.name)
    assert iam.keys == {sa.email: [second.name]}

    iam_client.delete_service_account(name=sa.name)  # takes its keys with it
    assert iam.keys == {}
    with pytest.raises(exceptions.NotFound):
        iam_client.list_service_account_keys(name=sa.name)


# ---- IAM: failure injection -------------------------------------------------------------------
def test_fail_next_raises_in_client_then_recovers(iam: IamStandIn, iam_client: iam_admin_v1.IAMClient) -> None:
    iam.fail_next("CreateServiceAccount")  # CreateServiceAccount has no default retry
    with pytest.raises(exceptions.ServiceUnavailable):
        _create_sa(iam_client)
    assert iam.service_accounts == {}  # failed before doing anything
    sa = _create_sa(iam_client)
    assert iam.calls["CreateServiceAccount"] == 2

    iam.fail_next("GetServiceAccount", code=grpc.StatusCode.PERMISSION_DENIED)
    with pytest.raises(exceptions.PermissionDenied):
        iam_client.get_service_account(name=sa.name)


def test_default_retry_hides_one_unavailable_on_get(iam: IamStandIn, iam_client: iam_admin_v1.IAMClient) -> None:
    sa = _create_sa(iam_client)
    iam.fail_next("GetServiceAccount")
    assert iam_client.get_service_account(name=sa.name).email == sa.email  # retried after ~0.1 s
    assert iam.calls["GetServiceAccount"] == 2

    iam.fail_next("GetServiceAccount", times=2)
    with pytest.raises(exceptions.ServiceUnavailable):
        iam_client.get_service_account(name=sa.name, retry=None)
    with pytest.raises(exceptions.ServiceUnavailable):
        iam_client.get_service_account(name=sa.name, retry=None)
    assert iam_client.get_service_account(name=sa.name, retry=None).email == sa.email

    with pytest.raises(ValueError):
        iam.fail_next("CreateServiceAcount")  # typo caught


def test_reset_clears_everything(iam: IamStandIn, iam_client: iam_admin_v1.IAMClient) -> None:
    sa = _create_sa(iam_client)
    iam_client.create_service_account_key(name=sa.name)
    iam.fail_next("GetServiceAccount", times=5)
    iam.reset()
    assert (iam.service_accounts, iam.keys, iam.policies, iam.calls) == ({}, {}, {}, {})
    with pytest.raises(exceptions.NotFound):  # not ServiceUnavailable: pending failures are gone
        iam_client.get_service_account(name=sa.name, retry=None)


# ---- IAM: IAMPolicy through Pub/Sub's SubscriberClient -------------------------------------------
def test_subscription_iam_policy_via_subscriber_client(iam: IamStandIn, monkeypatch: pytest.MonkeyPatch) -> None:
    # The project's test session exports PUBSUB_EMULATOR_HOST; the stand-in's client must ignore it.
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", "127.0.0.1:9")
    subscriber = iam.subscriber_policy_client()
    resource = subscriber.subscription_path(PROJECT, "gateway-fg1-gw1")
    member = f"serviceAccount:gw1@{PROJECT}.iam.gserviceaccount.com"

    empty = subscriber.get_iam_policy(request={"resource": resource})
    assert list(empty.bindings) == [] and empty.etag == EMPTY_POLICY_ETAG

    policy = policy_pb2.Policy(etag=empty.etag)
    policy.bindings.add(role="roles/pubsub.subscriber", members=[member])
    stored = subscriber.set_iam_policy(request={"resource": resource, "policy": policy})
    assert stored.etag not in (b"", empty.etag)
    assert stored.version == 1

    got = subscriber.get_iam_policy(request={"resource": resource})
    assert [(b.role, list(b.members)) for b in got.bindings] == [("roles/pubsub.subscriber", [member])]
    assert got.etag == stored.etag
    assert iam.policies[resource] == got

    with pytest.raises(exceptions.Aborted):  # stale etag: read-modify-write conflict
        subscriber.set_iam_policy(request={"resource": resource, "policy": policy})
    with pytest.raises(exceptions.Aborted):
        subscriber.set_iam_policy(request={"resource": resource, "policy": {"etag": b"\x00" * 8}})

    cleared = subscriber.set_iam_policy(request={"resource": resource, "policy": {}})  # no etag: overwrite
    assert list(cleared.bindings) == []

    permissions = ["pubsub.subscriptions.consume", "pubsub.subscriptions.get"]
    tested = subscriber.test_iam_permissions(request={"resource": resource, "permissions": permissions})
    assert list(tested.permissions) == permissions
    assert iam.calls["SetIamPolicy"] == 4 and iam.calls["GetIamPolicy"] == 2


def test_concurrent_read_modify_write_has_one_winner(iam: IamStandIn) -> None:
    subscriber = iam.subscriber_policy_client()
    resource = subscriber.subscription_path(PROJECT, "sub-raced")
    etag = subscriber.get_iam_policy(request={"resource": resource}).etag

    def write(i: int) -> str:
        binding = {"role": "roles/pubsub.subscriber", "members": [f"user:u{i}@example.com"]}
        policy = {"etag": etag, "bindings": [binding]}
        try:
            subscriber.set_iam_policy(request={"resource": resource, "policy": policy})
            return "ok"
        except exceptions.Aborted:
            return "aborted"

    with ThreadPoolExecutor(max_workers=8) as pool:
        outcomes = list(pool.map(write, range(16)))
    assert outcomes.count("ok") == 1 and outcomes.count("aborted") == 15


def test_conditional_binding_needs_policy_version_3(iam: IamStandIn) -> None:
    subscriber = iam.subscriber_policy_client()
    resource = subscriber.subscription_path(PROJECT, "sub-conditional")
    binding = {"role": "roles/pubsub.subscriber", "members": ["user:a@example.com"],
               "condition": {"title": "until 2030", "expression": 'request.time < timestamp("2030-01-01T00:00:00Z")'}}
    with pytest.raises(exceptions.InvalidArgument):
        subscriber.set_iam_policy(request={"resource": resource, "policy": {"bindings": [binding]}})
    stored = subscriber.set_iam_policy(request={"resource": resource, "policy": {"version": 3, "bindings": [binding]}})
    assert stored.version == 3 and stored.bindings[0].condition.title == "until 2030"


def test_subscriber_set_iam_policy_failure_injection(iam: IamStandIn) -> None:
    subscriber = iam.subscriber_policy_client()
    resource = subscriber.subscription_path(PROJECT, "sub-flaky")
    iam.fail_next("SetIamPolicy")
    with pytest.raises(exceptions.ServiceUnavailable):
        subscriber.set_iam_policy(request={"resource": resource, "policy": {}})
    assert resource not in iam.policies
    subscriber.set_iam_policy(request={"resource": resource, "policy": {}})
    assert resource in iam.policies


# ---- Cloud Storage: fake-gcs-server -----------------------------------------------------------
def test_gcs_upload_download_precondition_delete(gcs_client: storage.Client) -> None:
    bucket = gcs_client.create_bucket(_bucket_name())
    blob = bucket.blob("studies/1.2.3/manifest.json")
    blob.upload_from_string(b'{"n": 1}', content_type="application/json", if_generation_match=0)
    assert blob.generation

    with pytest.raises(exceptions.PreconditionFailed):
        bucket.blob(blob.name).upload_from_string(b'{"n": 2}', if_generation_match=0)
    assert bucket.blob(blob.name).download_as_bytes() == b'{"n": 1}'

    blob.upload_from_string(b'{"n": 3}', if_generation_match=blob.generation)  # the expected generation
    assert bucket.blob(blob.name).download_as_bytes() == b'{"n": 3}'

    bucket.blob(blob.name).delete()
    with pytest.raises(exceptions.NotFound):
        bucket.blob(blob.name).download_as_bytes()
    bucket.delete()


def test_fake_gcs_server_has_no_bucket_iam(gcs_client: storage.Client) -> None:
    """Why BucketIamStandIn exists: fake-gcs-server answers 404 for bucket IAM."""
    bucket = gcs_client.create_bucket(_bucket_name())
    with pytest.raises(exceptions.NotFound):
        bucket.get_iam_policy(requested_policy_version=3, retry=None)


# ---- Cloud Storage: bucket IAM stand-in ---------------------------------------------------------
def test_bucket_iam_round_trip_with_condition(bucket_iam: gcs.BucketIamStandIn) -> None:
    client = bucket_iam.client(PROJECT)
    bucket = client.create_bucket(_bucket_name())  # relayed to fake-gcs-server
    member = f"serviceAccount:gw1@{PROJECT}.iam.gserviceaccount.com"

    policy = bucket.get_iam_policy(requested_policy_version=3)
    assert policy.etag == gcs.EMPTY_POLICY_ETAG and list(policy.bindings) == []
    policy.version = 3
    policy.bindings.append({
        "role": "roles/storage.objectCreator", "members": {member},
        "condition": {"title": "fg1 only",
                      "expression": f'resource.name.startsWith("projects/_/buckets/{bucket.name}/objects/fg1/")'},
    })
    stored = bucket.set_iam_policy(policy)
    assert stored.etag != policy.etag

    again = bucket.get_iam_policy(requested_policy_version=3)
    assert again.version == 3 and again.etag == stored.etag
    (binding,) = list(again.bindings)
    assert binding["role"] == "roles/storage.objectCreator" and set(binding["members"]) == {member}
    assert binding["condition"]["title"] == "fg1 only"
    assert bucket_iam.policies[bucket.name]["resourceId"] == f"projects/_/buckets/{bucket.name}"

    with pytest.raises(exceptions.PreconditionFailed):  # stale etag
        bucket.set_iam_policy(policy)
    with pytest.raises(exceptions.BadRequest):  # conditions need requested_policy_version=3
        bucket.get_iam_policy()
    assert bucket.test_iam_permissions(["storage.objects.create"]) == ["storage.objects.create"]
    assert bucket_iam.calls == {"getIamPolicy": 3, "setIamPolicy": 2, "testIamPermissions": 1}


def test_bucket_iam_failure_injection(bucket_iam: gcs.BucketIamStandIn) -> None:
    bucket = bucket_iam.client(PROJECT).bucket(_bucket_name())
    bucket_iam.fail_next("GET")
    with pytest.raises(exceptions.ServiceUnavailable):
        bucket.get_iam_policy(requested_policy_version=3, retry=None)
    bucket_iam.fail_next("setIamPolicy", status=429)
    policy = bucket.get_iam_policy(requested_policy_version=3)
    with pytest.raises(exceptions.TooManyRequests):
        bucket.set_iam_policy(policy, retry=None)
    assert bucket_iam.policies == {}
    bucket.set_iam_policy(policy)
    assert bucket.name in bucket_iam.policies
    with pytest.raises(ValueError):
        bucket_iam.fail_next("DELETE")


def test_one_client_for_objects_and_iam(bucket_iam: gcs.BucketIamStandIn, gcs_client: storage.Client) -> None:
    """Through the stand-in's relay, objects land in fake-gcs-server (seen by a direct client)."""
    client = bucket_iam.client(PROJECT)
    bucket = client.create_bucket(_bucket_name())
    bucket.blob("a.txt").upload_from_string(b"small", if_generation_match=0)
    big = b"x" * (9 * 1024 * 1024)  # over the 8 MiB threshold: a resumable upload
    bucket.blob("big.bin").upload_from_string(big)
    with pytest.raises(exceptions.PreconditionFailed):
        bucket.blob("a.txt").upload_from_string(b"again", if_generation_match=0)
    direct = gcs_client.bucket(bucket.name)
    assert direct.blob("a.txt").download_as_bytes() == b"small"
    assert direct.blob("big.bin").download_as_bytes() == big
    assert sorted(b.name for b in client.list_blobs(bucket.name)) == ["a.txt", "big.bin"]
    assert bucket_iam.calls == {}

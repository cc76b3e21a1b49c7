"""Issue 15 item 5: the quotas that stop one-account-per-gateway in one project and one binding per
gateway on one bucket, enforced by the local stand-ins as Google enforces them, and provisioning
past them by the route docs/scale.md plans: an identity pool of projects for the gateways'
service accounts, and managed folders (each with its own IAM policy) for their bucket reads."""
from __future__ import annotations

import json
import time
from collections import Counter

import pytest
from google.api_core import exceptions as gexc

from devstack.studies import make_study, upload
from gateway_agent.fetch import FetchError, ObjectFetcher
from shared.adapters.gcs import BucketIam, ManagedFolderIam, sa_key_object
from shared.adapters.iam_admin import IamAdmin
from shared.domain.errors import QuotaExceeded
from shared.domain.models import Facility, FacilityGroup
from shared.domain.provisioning import LogState, identity_project_order, project_of_account
from shared.domain.validation import validate_gateway
from shared.services.provisioning import Provisioner, ProvisioningFailed, ProvisioningSettings
from tests.integration.test_provisioning import NOTHING, SimulatedCrash, folder_members, leftovers

POOL = ("archsync-pool-a", "archsync-pool-b", "archsync-pool-c")
GROUPS = ("fg-1", "fg-2", "fg-3")
S1, S2 = "1.2.826.0.1.3680043.8.498.15001", "1.2.826.0.1.3680043.8.498.15002"


@pytest.fixture
def scale(stack, monkeypatch):
    """Three facility groups; IAM's service-account quota lowered to 5 per project (the default,
    100, is exercised by the last test); IAM's propagation delay off (test_provisioning.py covers
    it; here many gateways are made)."""
    iam = stack.emulators["iam"]
    monkeypatch.setattr(iam, "max_service_accounts_per_project", 5)
    monkeypatch.setattr(iam, "propagation_seconds", 0)
    for i, fg in enumerate(GROUPS):
        stack.store.save_facility_group(FacilityGroup(fg, fg))
        stack.store.save_facility(Facility(f"fac-{i}", fg, f"Facility {i}"))
    stack.topic("archsync-gateway-dead-letter")
    stack.cloud_ = stack.cloud()
    return stack


def provisioner(s, pool: tuple[str, ...] = POOL) -> Provisioner:
    return Provisioner(s.store, s.cloud_, s.clock, ProvisioningSettings(
        objects_bucket=s.objects_bucket, study_bucket=s.study_bucket, identity_projects=pool))


def gateway(gid: str, fg: str = "fg-1"):
    fac = f"fac-{GROUPS.index(fg)}"
    return validate_gateway({"name": gid, "facility_ids": [fac]}, gateway_id=gid, facility_group_id=fg,
                            group_facility_ids=frozenset({fac}), topic_id="", subscription_id="")


def gid(i: int) -> str:
    return f"gw-{i:010x}"


# -- the stand-ins enforce the quotas, with Google's errors, and the adapters translate them ----------

def test_iam_refuses_an_account_past_the_project_quota_as_google_does(stack, monkeypatch):
    iam = stack.emulators["iam"]
    monkeypatch.setattr(iam, "max_service_accounts_per_project", 3)
    client = iam.iam_client()

    def create(project: str, account: str):
        return client.create_service_account(request={"name": f"projects/{project}", "account_id": account})

    made = [create("quota-p", f"acct-{i:04d}") for i in range(3)]
    with pytest.raises(gexc.ResourceExhausted) as refused:  # 429 RESOURCE_EXHAUSTED
        create("quota-p", "acct-0003")
    assert refused.value.message == "Maximum number of service accounts on project reached."
    assert [d.retry_delay.seconds for d in refused.value.details if hasattr(d, "retry_delay")] == [86401]
    create("quota-q", "acct-0003")  # the quota is per project
    client.delete_service_account(request={"name": made[0].name})  # a deleted account frees its place
    create("quota-p", "acct-0003")
    # The adapter tells a quota from a rate limit: never retried, the caller may go elsewhere.
    with pytest.raises(QuotaExceeded, match="Maximum number of service accounts on project reached"):
        IamAdmin("quota-p", client).create_service_account("acct-0004", "x")


def test_the_single_bucket_route_is_refused_past_the_principal_limit(stack, monkeypatch):
    """One conditional binding per gateway on the bucket's own policy (the route before managed
    folders) stops at the policy's principal limit, the function grants included; a managed
    folder has a limit of its own."""
    front = stack.emulators["bucket_iam"]
    seeded = sum(len(b["members"]) for b in front.policies[stack.objects_bucket]["bindings"])
    monkeypatch.setattr(front, "max_policy_principals", seeded + 3)
    client = stack.function_storage("admin_api")
    legacy = BucketIam(client)
    for i in range(3):
        legacy.grant_prefix_reader(stack.objects_bucket, f"user:u{i}@example.com", f"gateways/{gid(i)}/")
    with pytest.raises(QuotaExceeded, match=rf"number of members in the policy \({seeded + 4}\) is larger than "
                                            rf"the maximum allowed size {seeded + 3}") as refused:
        legacy.grant_prefix_reader(stack.objects_bucket, "user:u3@example.com", f"gateways/{gid(3)}/")
    assert isinstance(refused.value.__cause__, gexc.BadRequest)  # GCS's 400
    assert "user:u3@example.com" not in json.dumps(front.policies[stack.objects_bucket])

    monkeypatch.setattr(front, "max_policy_principals", 3)
    folders = ManagedFolderIam(client)
    for i in range(3):
        folders.grant_reader(stack.study_bucket, "fg-x/", f"user:v{i}@example.com")
    with pytest.raises(QuotaExceeded, match="number of members in the policy"):
        folders.grant_reader(stack.study_bucket, "fg-x/", "user:v3@example.com")
    folders.grant_reader(stack.study_bucket, "fg-y/", "user:v3@example.com")  # another folder, its own limit
    assert folder_members(stack, stack.study_bucket, "fg-y/") == {"user:v3@example.com"}


def test_topics_past_the_project_limit_are_refused_as_pubsub_does(stack):
    existing = len(list(stack.publisher_client.list_topics(request={"project": f"projects/{stack.project}"})))
    pubsub = stack.cloud(max_topics_per_project=existing + 2).pubsub
    pubsub.create_topic("t-1")
    pubsub.create_topic("t-2")
    pubsub.create_topic("t-1")  # already there: idempotent, and not counted twice
    with pytest.raises(QuotaExceeded, match='topics-per-project.*maximum='):
        pubsub.create_topic("t-3")
    topics = {t.name.rsplit("/", 1)[1] for t in stack.publisher_client.list_topics(
        request={"project": f"projects/{stack.project}"})}
    assert {"t-1", "t-2"} <= topics and "t-3" not in topics
    pubsub.delete_topic("t-1")
    pubsub.create_topic("t-3")


def test_the_single_project_route_is_refused_past_the_quota(scale):
    """The route before the identity pool: every account in the deployment's project."""
    prov = provisioner(scale, pool=())
    for i in range(5):
        prov.create(gateway(gid(i), GROUPS[i % 3]), "Pat Admin")
    with pytest.raises(ProvisioningFailed, match=r"service_account.*quota"):
        prov.create(gateway(gid(255)), "Pat Admin")
    assert leftovers(scale, gid(255)) == NOTHING
    log = scale.store.get_log("fg-1", gid(255))
    assert log.state is LogState.ROLLED_BACK and "service account quota" in log.error
    assert log.identity_project == scale.project


# -- the planned route ------------------------------------------------------------------------------

def test_provisioning_past_the_quota_through_the_identity_pool(scale, monkeypatch, tmp_path):
    """15 gateways with a quota of 5 accounts per project: each account goes to a pool project with
    room, recorded on the gateway (its email) and in the log; each gateway reads through managed
    folders (its own, and its group's), whose policies stay under a principal limit of 5 that the
    buckets' own policies could not meet. The 16th is refused (the pool is full) and rolled back."""
    front, iam = scale.emulators["bucket_iam"], scale.emulators["iam"]
    monkeypatch.setattr(front, "max_policy_principals", 5)
    prov = provisioner(scale)
    made = [prov.create(gateway(gid(i), GROUPS[i % 3]), "Pat Admin") for i in range(15)]

    homes = Counter(project_of_account(g.service_account_email) for g in made)
    assert homes == {p: 5 for p in POOL}
    assert set(iam.service_accounts) == {g.service_account_email for g in made}
    for g in made:
        assert scale.store.get_log(g.facility_group_id, g.id).identity_project == project_of_account(
            g.service_account_email)
        assert folder_members(scale, scale.objects_bucket, f"gateways/{g.id}/") == {
            f"serviceAccount:{g.service_account_email}"}
    for fg in GROUPS:
        assert folder_members(scale, scale.study_bucket, f"{fg}/") == {
            f"serviceAccount:{g.service_account_email}" for g in made if g.facility_group_id == fg}
    assert leftovers(scale, gid(0))["bucket_bindings"] == []

    with pytest.raises(ProvisioningFailed, match=r"service_account.*quota"):
        prov.create(gateway(gid(255)), "Pat Admin")
    assert leftovers(scale, gid(255)) == NOTHING
    assert "every project of the gateway identity pool (3)" in scale.store.get_log("fg-1", gid(255)).error

    # A deleted gateway frees its place in its pool project; the next one may take it.
    victim = made[0]
    prov.delete(victim, "Pat Admin", lambda: None)
    assert leftovers(scale, victim.id) == NOTHING
    again = prov.create(gateway(gid(254), victim.facility_group_id), "Pat Admin")
    assert project_of_account(again.service_account_email) == project_of_account(victim.service_account_email)

    # A pool account's downloaded key reads its own group's studies and nothing of another's.
    for fg, study in (("fg-1", S1), ("fg-2", S2)):
        upload(scale.gcs, f"gs://{scale.study_bucket}/{fg}/{study}/", make_study(study, 2))
    reader = next(g for g in made[1:] if g.facility_group_id == "fg-1")
    key = json.loads(scale.vault.get(sa_key_object("fg-1", reader.id)))
    assert key["client_email"] == reader.service_account_email and key["project_id"] in POOL
    fetcher = ObjectFetcher(key, scale.project, scale.emulators["gcs"])
    assert len(fetcher.fetch_prefix(f"gs://{scale.study_bucket}/fg-1/{S1}/", tmp_path / "own")) == 2
    with pytest.raises(FetchError, match="may not read it"):
        fetcher.fetch_prefix(f"gs://{scale.study_bucket}/fg-2/{S2}/", tmp_path / "other")


def test_a_crash_after_creating_a_pool_account_is_undone_in_that_project(scale, monkeypatch):
    real = Provisioner._do

    def crashing(self, step, *a, **k):
        real(self, step, *a, **k)
        if step == "study_binding":
            raise SimulatedCrash(step)

    prov = provisioner(scale)
    monkeypatch.setattr(Provisioner, "_do", crashing)
    with pytest.raises(SimulatedCrash):
        prov.create(gateway(gid(1)), "Pat Admin")
    monkeypatch.setattr(Provisioner, "_do", real)
    log = scale.store.get_log("fg-1", gid(1))
    assert log.identity_project == identity_project_order(gid(1), POOL)[0]
    assert [e for e in scale.emulators["iam"].service_accounts if e.endswith(f"@{log.identity_project}.iam.gserviceaccount.com")]
    scale.clock.advance(seconds=301)
    assert prov.finish_stale() == [gid(1)]
    assert leftovers(scale, gid(1)) == NOTHING


def test_a_full_pool_project_is_skipped(scale):
    """The project a gateway's hash picks first is full: its account goes to the next one."""
    first, second = identity_project_order(gid(7), POOL)[:2]
    client = scale.emulators["iam"].iam_client()
    for i in range(5):
        client.create_service_account(request={"name": f"projects/{first}", "account_id": f"other-{i:04d}"})
    gw = provisioner(scale).create(gateway(gid(7)), "Pat Admin")
    assert project_of_account(gw.service_account_email) == second
    assert scale.store.get_log("fg-1", gw.id).identity_project == second


# -- gateways provisioned before (backwards compatibility) --------------------------------------------

def test_a_gateway_provisioned_before_managed_folders_is_migrated_and_deleted_cleanly(scale):
    prov = provisioner(scale, pool=())
    legacy = BucketIam(scale.function_storage("admin_api"))
    folders = scale.cloud_.folders

    def as_before(g):
        """The grants provisioning made before managed folders: conditional bindings on the buckets."""
        member = f"serviceAccount:{g.service_account_email}"
        folders.delete_folder(scale.objects_bucket, f"gateways/{g.id}/")
        folders.revoke_member(scale.study_bucket, f"{g.facility_group_id}/", member)
        legacy.grant_prefix_reader(scale.objects_bucket, member, f"gateways/{g.id}/")
        legacy.grant_prefix_reader(scale.study_bucket, member, f"{g.facility_group_id}/", listing=True)
        return member

    old = prov.create(gateway(gid(10)), "Pat Admin")
    member = as_before(old)
    assert sorted(leftovers(scale, old.id)["bucket_bindings"]) == sorted([scale.objects_bucket, scale.study_bucket])
    prov.migrate_bucket_access(old)
    prov.migrate_bucket_access(old)  # idempotent
    assert leftovers(scale, old.id)["bucket_bindings"] == []
    assert folder_members(scale, scale.objects_bucket, f"gateways/{old.id}/") == {member}
    assert folder_members(scale, scale.study_bucket, "fg-1/") == {member}

    never_migrated = prov.create(gateway(gid(11)), "Pat Admin")
    as_before(never_migrated)
    prov.delete(never_migrated, "Pat Admin", lambda: None)
    assert leftovers(scale, never_migrated.id) == NOTHING
    assert folder_members(scale, scale.study_bucket, "fg-1/") == {member}


# -- the default quota, really passed ---------------------------------------------------------------

def test_more_than_100_gateways_with_the_default_quota(scale, monkeypatch):
    """IAM's default quota (100 accounts per project): 105 gateways through a pool of two projects,
    one of which already holds 95 other accounts. Both fill to exactly 100, the deployment's own
    project gets none, and the 106th gateway is refused and rolled back. (About a minute on a
    loaded 2-core machine.)"""
    iam = scale.emulators["iam"]
    monkeypatch.setattr(iam, "max_service_accounts_per_project", iam.DEFAULT_SERVICE_ACCOUNT_QUOTA)
    pool = ("archsync-pool-d", "archsync-pool-e")
    client = iam.iam_client()
    for i in range(95):
        client.create_service_account(request={"name": f"projects/{pool[0]}", "account_id": f"other-{i:04d}"})
    prov = provisioner(scale, pool)
    started = time.monotonic()
    made = [prov.create(gateway(gid(i), GROUPS[i % 3]), "Pat Admin") for i in range(105)]
    elapsed = time.monotonic() - started
    per_project = Counter(a.project_id for a in iam.service_accounts.values())
    assert per_project == {pool[0]: 100, pool[1]: 100}
    assert Counter(project_of_account(g.service_account_email) for g in made) == {pool[0]: 5, pool[1]: 100}
    with pytest.raises(ProvisioningFailed, match=r"service_account.*quota"):
        prov.create(gateway(gid(255)), "Pat Admin")
    assert leftovers(scale, gid(255)) == NOTHING
    print(f"105 gateways provisioned in {elapsed:.1f} s")

"""Atomic gateway provisioning (rule 7; seed 000 Step 1): every resource is created, or none is —
also when a step fails or the function dies at any step — and deletion removes them all."""
from __future__ import annotations

import json
import time

import pytest

from shared.adapters.gcs import result_key_object, sa_key_object
from shared.domain.errors import Conflict, TransientError
from shared.domain.models import Facility, FacilityGroup
from shared.domain.provisioning import CREATE_STEPS, GatewayResources, LogState
from shared.domain.validation import validate_gateway
from shared.services.provisioning import Provisioner, ProvisioningFailed, ProvisioningSettings
from tests.support import load_app

AGENT = "service-123@gcp-sa-pubsub.iam.gserviceaccount.com"


class SimulatedCrash(BaseException):
    """The function instance dies (a BaseException: nothing in the code may catch it)."""


@pytest.fixture
def env(stack):
    stack.store.save_facility_group(FacilityGroup("fg-1", "Group 1"))
    stack.store.save_facility(Facility("fac-a", "fg-1", "Facility A"))
    stack.topic("archsync-gateway-dead-letter")
    stack.cloud_ = stack.cloud()
    stack.prov = Provisioner(stack.store, stack.cloud_, stack.clock, ProvisioningSettings(
        objects_bucket=stack.objects_bucket, study_bucket=stack.study_bucket, pubsub_service_agent=AGENT,
        lease_seconds=300))
    return stack


def new_gateway(gid="gw-0123456789"):
    return validate_gateway({"name": "Main gateway", "facility_ids": ["fac-a"]}, gateway_id=gid, facility_group_id="fg-1",
                            group_facility_ids=frozenset({"fac-a"}), topic_id="", subscription_id="")


def leftovers(s, gid="gw-0123456789") -> dict:
    """Everything that may exist for the gateway, in every system."""
    res = GatewayResources("fg-1", gid)
    iam, bucket_iam = s.emulators["iam"], s.emulators["bucket_iam"]
    member = f"serviceAccount:{res.account_id}@{s.project}.iam.gserviceaccount.com"
    topics = [t.name for t in s.publisher_client.list_topics(request={"project": f"projects/{s.project}"})]
    subs = [x.name for x in s.subscriber.list_subscriptions(request={"project": f"projects/{s.project}"})]
    return {
        "topics": [t for t in topics if gid in t],
        "subscriptions": [x for x in subs if gid in x],
        "service_accounts": [e for e in iam.service_accounts if res.account_id in e],
        "keys": [k for e, ks in iam.keys.items() if res.account_id in e for k in ks],
        "subscription_bindings": [r for r, p in iam.policies.items() if any(member in b.members for b in p.bindings)],
        "bucket_bindings": [b for b, p in bucket_iam.policies.items()
                            if any(member in x.get("members", []) for x in p.get("bindings", []))],
        # The managed-folder route (docs/scale.md): its member in a folder's policy, its own folder.
        "folder_bindings": [k for k, p in bucket_iam.folder_policies.items()
                            if any(member in x.get("members", []) for x in p.get("bindings", []))],
        "gateway_folders": [k for k in bucket_iam.folder_policies if gid in k[1]],
        "vault_objects": [b.name for b in s.gcs.list_blobs(s.key_bucket) if gid in b.name],
        "record": s.store.get_gateway("fg-1", gid) is not None,
    }


def folder_members(s, bucket: str, folder: str) -> set[str]:
    """The members of a managed folder's policy (docs/scale.md, "Bucket IAM principals")."""
    policy = s.emulators["bucket_iam"].folder_policies.get((bucket, folder)) or {}
    return {m for b in policy.get("bindings", []) for m in b["members"]}


def gateway_bindings(s, bucket: str) -> list[dict]:
    """The bucket's bindings less the functions' grants from infra/ (the local stack's accounts)."""
    from devstack.iam_standin import HARNESS_PROJECT

    return [b for b in s.emulators["bucket_iam"].policies.get(bucket, {}).get("bindings", [])
            if not all(f"@{HARNESS_PROJECT}." in m for m in b["members"])]


NOTHING = {"topics": [], "subscriptions": [], "service_accounts": [], "keys": [], "subscription_bindings": [],
           "bucket_bindings": [], "folder_bindings": [], "gateway_folders": [], "vault_objects": [], "record": False}


def test_create_provisions_every_resource(env):
    gw = env.prov.create(new_gateway(), "Pat Admin")
    left = leftovers(env)
    assert len(left["topics"]) == 1 and len(left["subscriptions"]) == 1 and len(left["service_accounts"]) == 1
    assert len(left["keys"]) == 1 and left["record"] and len(left["vault_objects"]) == 2
    assert (gw.topic_id, gw.subscription_id) == ("gateway-pubsub-gw-0123456789", "gateway-pubsub-gw-0123456789-sub")
    assert gw.provisioning_state == "READY" and gw.created_by == "Pat Admin" and gw.service_account_key_id in left["keys"]

    sub = env.subscriber.get_subscription(subscription=env.subscriber.subscription_path(env.project, gw.subscription_id))
    assert sub.ack_deadline_seconds == 300 and sub.dead_letter_policy.max_delivery_attempts == 20
    # Redeliveries back off exponentially (issue 11 item 5), instead of coming back at once.
    assert sub.retry_policy.minimum_backoff.total_seconds() == 60
    assert sub.retry_policy.maximum_backoff.total_seconds() == 600
    assert sub.dead_letter_policy.dead_letter_topic.endswith("/topics/archsync-gateway-dead-letter")
    assert sub.message_retention_duration.total_seconds() == 7 * 24 * 3600

    # Subscriber on its own subscription only (plus Pub/Sub's agent, for dead-lettering).
    iam = env.emulators["iam"]
    [resource] = left["subscription_bindings"]
    assert resource.endswith(gw.subscription_id)
    [binding] = iam.policies[resource].bindings
    assert binding.role == "roles/pubsub.subscriber"
    assert set(binding.members) == {f"serviceAccount:{gw.service_account_email}", f"serviceAccount:{AGENT}"}
    # Object reads limited to the gateway's own managed folder of the objects bucket and its group's
    # folder of the study bucket; nothing on the buckets' own policies, whose 1,500 principals
    # could not hold 5,000 gateways (docs/scale.md).
    assert left["bucket_bindings"] == [] and gateway_bindings(env, env.objects_bucket) == []
    assert sorted(left["folder_bindings"]) == sorted([(env.objects_bucket, "gateways/gw-0123456789/"),
                                                      (env.study_bucket, "fg-1/")])
    policy = env.emulators["bucket_iam"].folder_policies[(env.objects_bucket, "gateways/gw-0123456789/")]
    assert policy["bindings"] == [{"role": "roles/storage.objectViewer",
                                   "members": [f"serviceAccount:{gw.service_account_email}"]}]

    key = json.loads(env.vault.get(sa_key_object("fg-1", gw.id)))
    assert key["type"] == "service_account" and key["client_email"] == gw.service_account_email
    assert len(env.vault.get(result_key_object("fg-1", gw.id))) >= 43
    assert env.store.get_log("fg-1", gw.id).state is LogState.DONE
    assert [e["action"] for e in env.store.audit_entries("fg-1")] == ["gateway.create"]


@pytest.mark.parametrize("step", CREATE_STEPS)
def test_failure_at_any_step_rolls_everything_back(env, step, monkeypatch):
    real = Provisioner._do

    def failing(self, s, *a, **k):
        real(self, s, *a, **k)  # worst case: the step took effect, then its call "failed"
        if s == step:
            raise TransientError(f"injected failure after {s}")

    monkeypatch.setattr(Provisioner, "_do", failing)
    with pytest.raises(ProvisioningFailed, match=step):
        env.prov.create(new_gateway(), "Pat Admin")
    assert leftovers(env) == NOTHING
    log = env.store.get_log("fg-1", "gw-0123456789")
    assert log.state is LogState.ROLLED_BACK and "injected failure" in log.error


@pytest.mark.parametrize("step", CREATE_STEPS)
def test_crash_at_any_step_is_rolled_back_by_the_sweeper(env, step, monkeypatch):
    real = Provisioner._do

    def crashing(self, s, *a, **k):
        real(self, s, *a, **k)
        if s == step:
            raise SimulatedCrash(s)

    monkeypatch.setattr(Provisioner, "_do", crashing)
    with pytest.raises(SimulatedCrash):
        env.prov.create(new_gateway(), "Pat Admin")
    monkeypatch.setattr(Provisioner, "_do", real)
    log = env.store.get_log("fg-1", "gw-0123456789")
    if step == "record":  # the crash came after the final atomic write: provisioning is complete
        assert log.state is LogState.DONE and leftovers(env)["record"]
        return
    assert log.state is LogState.IN_PROGRESS and log.steps[-1] == step
    assert env.prov.finish_stale() == []  # a live function is never overtaken within its lease
    env.clock.advance(seconds=301)
    assert env.prov.finish_stale() == ["gw-0123456789"]
    assert leftovers(env) == NOTHING
    assert env.store.get_log("fg-1", "gw-0123456789").state is LogState.ROLLED_BACK
    assert env.prov.finish_stale() == []


def test_crash_during_rollback_is_finished_by_the_sweeper(env, monkeypatch):
    real_do, real_undo = Provisioner._do, Provisioner._undo

    def failing(self, s, *a, **k):
        real_do(self, s, *a, **k)
        if s == "result_key":
            raise TransientError("injected")

    def dying_undo(self, *a, **k):
        raise SimulatedCrash("during rollback")

    monkeypatch.setattr(Provisioner, "_do", failing)
    monkeypatch.setattr(Provisioner, "_undo", dying_undo)
    with pytest.raises(SimulatedCrash):
        env.prov.create(new_gateway(), "Pat Admin")
    monkeypatch.setattr(Provisioner, "_undo", real_undo)
    assert env.store.get_log("fg-1", "gw-0123456789").state is LogState.ROLLING_BACK
    env.clock.advance(seconds=301)
    assert env.prov.finish_stale() == ["gw-0123456789"]
    assert leftovers(env) == NOTHING


def test_cloud_failure_from_the_iam_service_rolls_back(env):
    import grpc

    env.emulators["iam"].fail_next("CreateServiceAccountKey", grpc.StatusCode.UNAVAILABLE)
    with pytest.raises(ProvisioningFailed, match="service_account_key"):
        env.prov.create(new_gateway(), "Pat Admin")
    assert leftovers(env) == NOTHING


def test_same_gateway_cannot_be_provisioned_twice_concurrently(env):
    env.prov.create(new_gateway(), "Pat Admin")
    with pytest.raises(Conflict):
        env.prov.create(new_gateway(), "Pat Admin")


def test_delete_removes_every_resource(env):
    gw = env.prov.create(new_gateway(), "Pat Admin")
    env.prov.delete(gw, "Pat Admin", lambda: None)
    assert leftovers(env) == NOTHING
    assert env.store.get_log("fg-1", gw.id).state is LogState.DELETED
    assert {"gateway.delete.start", "gateway.delete"} <= {e["action"] for e in env.store.audit_entries("fg-1")}


def test_delete_refused_late_puts_the_gateway_back(env):
    gw = env.prov.create(new_gateway(), "Pat Admin")
    with pytest.raises(Conflict, match="in use"):
        env.prov.delete(gw, "Pat Admin", lambda: "in use")
    assert env.store.get_gateway("fg-1", gw.id).provisioning_state == "READY"
    assert env.store.get_log("fg-1", gw.id).state is LogState.DONE
    assert leftovers(env)["record"] and leftovers(env)["service_accounts"]


def test_crashed_delete_is_completed_by_the_sweeper(env, monkeypatch):
    gw = env.prov.create(new_gateway(), "Pat Admin")
    real = env.cloud_.iam.delete_service_account

    def dying(email):
        raise SimulatedCrash("during delete")

    monkeypatch.setattr(env.cloud_.iam, "delete_service_account", dying)
    with pytest.raises(SimulatedCrash):
        env.prov.delete(gw, "Pat Admin", lambda: None)
    monkeypatch.setattr(env.cloud_.iam, "delete_service_account", real)
    env.clock.advance(seconds=301)
    assert env.prov.finish_stale() == [gw.id]
    assert leftovers(env) == NOTHING
    assert env.store.get_log("fg-1", gw.id).state is LogState.DELETED


def test_provisioning_calls_are_counted(env):
    before = env.cloud_.call_count()
    env.prov.create(new_gateway(), "Pat Admin")
    iam, bucket_iam = env.emulators["iam"].calls, env.emulators["bucket_iam"].calls
    policy_calls = (iam["GetIamPolicy"] + iam["SetIamPolicy"] + bucket_iam["managedFolders.getIamPolicy"]
                    + bucket_iam["managedFolders.setIamPolicy"])
    # topic, sub, SA, key, 2 vault puts, 2 managed-folder creations, and each policy read and
    # write, retries included: at least 2 for the subscription and 2 for each managed folder, more
    # while IAM does not know the new account yet. The buckets' own policies are not touched.
    assert bucket_iam["managedFolders.insert"] == 2 and bucket_iam["setIamPolicy"] == 0
    assert env.cloud_.call_count() - before == 8 + policy_calls and policy_calls >= 6


# -- shared IAM policies and IAM's eventual consistency (issue 11 item 8) ------------------------

def test_binding_a_new_service_account_waits_until_iam_knows_it(env):
    """The stand-ins, like production, refuse for a while to bind an account created a moment
    ago ("... does not exist"): the binding steps retry instead of rolling everything back."""
    iam = env.emulators["iam"]
    assert iam.propagation_seconds > 0
    gw = env.prov.create(new_gateway(), "Pat Admin")
    member = f"serviceAccount:{gw.service_account_email}"
    assert iam.calls["SetIamPolicy"] >= 2  # refused at least once, then accepted
    [resource] = leftovers(env)["subscription_bindings"]
    assert member in iam.policies[resource].bindings[0].members
    assert sorted(leftovers(env)["folder_bindings"]) == sorted([(env.objects_bucket, f"gateways/{gw.id}/"),
                                                                (env.study_bucket, "fg-1/")])


def test_an_account_iam_never_learns_fails_within_the_bound_and_rolls_back(env, monkeypatch):
    from shared.adapters.pubsub_admin import PubSubAdmin
    from shared.adapters.retrying import NOT_YET_VISIBLE, STALE_ETAG, Backoff

    iam = env.emulators["iam"]
    monkeypatch.setattr(iam, "propagation_seconds", 3600)
    short = {NOT_YET_VISIBLE: Backoff(0.05, 0.2, deadline=1.0), STALE_ETAG: Backoff(0.01, 0.05, deadline=1.0)}
    env.cloud_.pubsub = PubSubAdmin(env.project, policy_client=iam.subscriber_policy_client(), retries=short)
    started = time.monotonic()
    with pytest.raises(ProvisioningFailed, match="subscription_binding"):
        env.prov.create(new_gateway(), "Pat Admin")
    assert time.monotonic() - started < 15
    assert iam.calls["SetIamPolicy"] >= 3  # retried, then gave up
    assert leftovers(env) == NOTHING


def test_stale_etag_on_a_shared_policy_redoes_the_read_modify_write(env, monkeypatch):
    import grpc

    monkeypatch.setattr(env.emulators["iam"], "propagation_seconds", 0)
    bucket_iam, iam = env.emulators["bucket_iam"], env.emulators["iam"]
    # Another writer changed the policy after our read, twice (the study bucket's group folder is
    # shared by every gateway of the group).
    bucket_iam.fail_next("managedFolders.setIamPolicy", status=412, times=2)
    iam.fail_next("SetIamPolicy", grpc.StatusCode.ABORTED)  # IAM's answer to the same race
    gw = env.prov.create(new_gateway(), "Pat Admin")
    # 3 cycles on the objects bucket's folder (two stale), then 1 on the study bucket's.
    calls = bucket_iam.calls
    assert calls["managedFolders.getIamPolicy"] == calls["managedFolders.setIamPolicy"] == 4
    assert iam.calls["GetIamPolicy"] == iam.calls["SetIamPolicy"] == 2
    member = f"serviceAccount:{gw.service_account_email}"
    assert folder_members(env, env.objects_bucket, f"gateways/{gw.id}/") == {member}


def test_concurrent_grants_on_one_bucket_all_land(env):
    """Eight writers of the one objects-bucket policy at once: each that loses the etag race reads
    again and retries, so every binding is there at the end and none was overwritten."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from shared.adapters.gcs import BucketIam

    barrier = threading.Barrier(8)

    def grant(i: int) -> None:
        adapter = BucketIam(env.function_storage("admin_api"))
        barrier.wait(timeout=60)
        adapter.grant_prefix_reader(env.objects_bucket, f"user:u{i}@example.com", f"gateways/gw-{i}/")

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(grant, range(8)))
    bindings = gateway_bindings(env, env.objects_bucket)
    assert sorted(m for b in bindings for m in b["members"]) == sorted(f"user:u{i}@example.com" for i in range(8))


def test_eight_parallel_gateway_creations_across_two_groups_all_succeed(stack, admin_env):
    """Issue 11 item 8: they used to collide on the objects bucket's IAM policy (412), roll back
    and answer 503, and a new service account could not be bound at once."""
    from concurrent.futures import ThreadPoolExecutor

    for fg in ("fg-1", "fg-2"):
        stack.store.save_facility_group(FacilityGroup(fg, fg))
    stack.topic("archsync-gateway-dead-letter")
    app = load_app("admin_api").application

    def create(i: int):
        fg = ("fg-1", "fg-2")[i % 2]
        r = app.test_client().post(f"/v1/facility-groups/{fg}/gateways", json={"name": f"Gateway {i}"},
                                   headers=admin_env.headers([fg]))
        return fg, r.status_code, r.json

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(create, range(8)))
    assert [code for _, code, _ in results] == [201] * 8, results
    iam = stack.emulators["iam"]
    emails = {body["service_account_email"] for _, _, body in results}
    assert len(emails) == 8 and set(iam.service_accounts) == emails
    assert sum(len(k) for k in iam.keys.values()) == 8
    for _, _, body in results:  # each in its own managed folder of the objects bucket
        assert folder_members(stack, stack.objects_bucket, f"gateways/{body['id']}/") == {
            f"serviceAccount:{body['service_account_email']}"}
    for fg, _, body in results:
        resource = f"projects/{stack.project}/subscriptions/{body['pubsub_subscription_id']}"
        assert f"serviceAccount:{body['service_account_email']}" in iam.policies[resource].bindings[0].members
        assert stack.store.get_gateway(fg, body["id"]).provisioning_state == "READY"
        assert stack.store.get_log(fg, body["id"]).state is LogState.DONE
    # Each may read its own group's studies only (issue 12 item 3): a member of its group's folder.
    for fg in ("fg-1", "fg-2"):
        assert folder_members(stack, stack.study_bucket, f"{fg}/") == {
            f"serviceAccount:{body['service_account_email']}" for g, _, body in results if g == fg}


# -- the study-bucket grant (issue 12 item 3) ------------------------------------------------------

def study_condition(bucket: str, fg: str) -> str:
    """Objects under <fg>/ (checked on the object) or a listing of the bucket whose prefix starts
    with <fg>/ (listing is checked on the bucket, with the request's prefix as an API attribute)."""
    return (f'resource.name.startsWith("projects/_/buckets/{bucket}/objects/{fg}/") || '
            f'(resource.name == "projects/_/buckets/{bucket}" && '
            f'api.getAttribute("storage.googleapis.com/objectListPrefix", "").startsWith("{fg}/"))')


def study_bindings(s) -> list[dict]:
    return gateway_bindings(s, s.study_bucket)


def other_group_gateway(s, gid: str = "gw-abcdefabcd"):
    s.store.save_facility_group(FacilityGroup("fg-2", "Group 2"))
    s.store.save_facility(Facility("fac-b", "fg-2", "Facility B"))
    gw = validate_gateway({"name": "Other gateway", "facility_ids": ["fac-b"]}, gateway_id=gid, facility_group_id="fg-2",
                          group_facility_ids=frozenset({"fac-b"}), topic_id="", subscription_id="")
    return s.prov.create(gw, "Pat Admin")


def test_a_gateway_may_read_and_list_its_own_groups_studies_only(env):
    gw = env.prov.create(new_gateway(), "Pat Admin")
    assert study_bindings(env) == []  # nothing on the study bucket's own policy (docs/scale.md)
    policy = env.emulators["bucket_iam"].folder_policies[(env.study_bucket, "fg-1/")]
    assert policy["bindings"] == [{"role": "roles/storage.objectViewer",
                                   "members": [f"serviceAccount:{gw.service_account_email}"]}]
    assert env.store.get_log("fg-1", gw.id).steps.count("study_binding") == 1


def test_deleting_a_gateway_revokes_its_study_grant_only(env):
    mine, other = env.prov.create(new_gateway(), "Pat Admin"), other_group_gateway(env)
    assert folder_members(env, env.study_bucket, "fg-1/") == {f"serviceAccount:{mine.service_account_email}"}
    env.prov.delete(mine, "Pat Admin", lambda: None)
    assert folder_members(env, env.study_bucket, "fg-1/") == set()
    assert folder_members(env, env.study_bucket, "fg-2/") == {f"serviceAccount:{other.service_account_email}"}


@pytest.mark.parametrize("how", ["failure", "crash"])
def test_a_rolled_back_creation_revokes_its_study_grant_only(env, monkeypatch, how):
    other = other_group_gateway(env)
    real = Provisioner._do

    def breaking(self, s, *a, **k):
        real(self, s, *a, **k)  # the grant took effect, then the next step broke
        if s == "service_account_key":
            raise TransientError("injected") if how == "failure" else SimulatedCrash(s)

    monkeypatch.setattr(Provisioner, "_do", breaking)
    with pytest.raises((ProvisioningFailed, SimulatedCrash)):
        env.prov.create(new_gateway(), "Pat Admin")
    monkeypatch.setattr(Provisioner, "_do", real)
    assert len(folder_members(env, env.study_bucket, "fg-1/")) == (0 if how == "failure" else 1)
    if how == "crash":
        env.clock.advance(seconds=301)
        assert env.prov.finish_stale() == ["gw-0123456789"]
    assert leftovers(env) == NOTHING
    assert folder_members(env, env.study_bucket, "fg-1/") == set()
    assert folder_members(env, env.study_bucket, "fg-2/") == {f"serviceAccount:{other.service_account_email}"}


# -- service-account key rotation as one unit (issue 11 item 16) ---------------------------------

ROTATION_STEPS = ("begin_log", "create_key", "vault_put", "record", "delete_old_key", "log_done")


def key_state(s, gw_id="gw-0123456789"):
    """(active user-managed keys, the key the record tracks, the key id in the vault)."""
    res = GatewayResources("fg-1", gw_id)
    keys = sorted(k for e, ks in s.emulators["iam"].keys.items() if res.account_id in e for k in ks)
    stored = json.loads(s.vault.get(sa_key_object("fg-1", gw_id), fresh=True))
    return keys, s.store.get_gateway("fg-1", gw_id).service_account_key_id, stored["private_key_id"]


def assert_one_tracked_key(s) -> str:
    keys, recorded, stored_id = key_state(s)
    assert keys == [recorded] and recorded.endswith("/keys/" + stored_id), (keys, recorded, stored_id)
    assert s.store.get_log("fg-1", "gw-0123456789").state is LogState.DONE
    return recorded


def _inject(env, monkeypatch, step: str, failure: BaseException) -> None:
    """Make ``step`` of a rotation take effect and then raise ``failure`` (the worst case: the
    caller cannot tell whether it happened), once."""
    targets = {"begin_log": [(env.store, "begin_log")], "create_key": [(env.cloud_.iam, "create_key")],
               "vault_put": [(env.cloud_.vault, "put")],
               "record": [(env.store, "set_gateway_key"), (env.store, "put_gateway")],  # any write of the record
               "delete_old_key": [(env.cloud_.iam, "delete_key")], "log_done": [(env.store, "set_log_state")]}
    fired = []
    for obj, name in targets[step]:
        real = getattr(obj, name, None)
        if real is None:
            continue

        def failing(*a, _real=real, **k):
            out = _real(*a, **k)
            if not fired and (step != "log_done" or a[2] is LogState.DONE):
                fired.append(1)
                raise failure
            return out

        monkeypatch.setattr(obj, name, failing)


def rotate(env, gw_id="gw-0123456789") -> dict:
    """The admin use case, as POST …/service-account-key/rotate runs it."""
    from shared.auth import Caller
    from shared.services.admin import AdminService

    service = AdminService(env.store, env.prov, env.vault, env.cloud_.iam, env.clock)
    return service.rotate_service_account_key(Caller("u-2", "Sam Admin", frozenset({"fg-1"})), "fg-1", gw_id)


@pytest.mark.parametrize("how", ["error", "crash"])
@pytest.mark.parametrize("step", ROTATION_STEPS)
def test_rotation_failing_at_any_step_leaves_no_untracked_active_key(env, monkeypatch, step, how):
    gw = env.prov.create(new_gateway(), "Pat Admin")
    old = assert_one_tracked_key(env)
    _inject(env, monkeypatch, step, TransientError(f"injected after {step}") if how == "error" else SimulatedCrash(step))
    answered = False
    try:
        rotate(env)
        answered = True
    except SimulatedCrash:
        assert how == "crash"
    except TransientError:
        assert how == "error"
    monkeypatch.undo()  # the cloud and the store work again
    if env.store.get_log("fg-1", gw.id).state is not LogState.DONE:
        assert env.prov.finish_stale() == []  # not before the lease ran out: the function may be alive
        env.clock.advance(seconds=301)
        assert env.prov.finish_stale() == [gw.id]
    kept = assert_one_tracked_key(env)
    if answered:  # the caller was told it worked: the new key is the one left
        assert kept != old
    # And the gateway can rotate again afterwards.
    rotate(env)
    assert assert_one_tracked_key(env) != kept


def test_rotation_in_progress_refuses_a_second_rotation_and_a_delete(env, monkeypatch):
    gw = env.prov.create(new_gateway(), "Pat Admin")
    _inject(env, monkeypatch, "create_key", SimulatedCrash("create_key"))
    with pytest.raises(SimulatedCrash):
        rotate(env)
    monkeypatch.undo()
    with pytest.raises(Conflict):
        rotate(env)
    with pytest.raises(Conflict):
        env.prov.delete(gw, "Sam Admin", lambda: None)
    env.clock.advance(seconds=301)
    assert env.prov.finish_stale() == [gw.id]
    assert_one_tracked_key(env)
    env.prov.delete(env.store.get_gateway("fg-1", gw.id), "Sam Admin", lambda: None)
    assert leftovers(env) == NOTHING


# -- Pub/Sub: a gateway pulls its own subscription only (issue 12 item 5) --------------------------

def test_a_gateways_key_may_pull_its_own_subscription_and_no_other(env):
    """The emulator serves any pull, so the local stack checks the subscription policies that
    provisioning sets (devstack/pubsub_iam.py) before an agent may pull; this is that check."""
    from devstack.pubsub_iam import PullDenied, require_consume

    a = env.prov.create(new_gateway("gw-aaaaaaaaaa"), "Pat Admin")
    b = env.prov.create(new_gateway("gw-bbbbbbbbbb"), "Pat Admin")
    policies = env.emulators["iam"].policies
    key_a = json.loads(env.vault.get(sa_key_object("fg-1", a.id)))
    sub_a, sub_b = (env.subscriber.subscription_path(env.project, g.subscription_id) for g in (a, b))
    require_consume(policies, key_a, sub_a)
    with pytest.raises(PullDenied, match="lacks pubsub.subscriptions.consume"):
        require_consume(policies, key_a, sub_b)
    env.prov.delete(a, "Pat Admin", lambda: None)
    with pytest.raises(PullDenied):  # deleting the gateway revokes its grant with the rest
        require_consume(env.emulators["iam"].policies, key_a, sub_a)

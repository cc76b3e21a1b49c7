"""The pure parts of the scale plan (docs/scale.md): where a gateway's service account goes in the
identity pool, which Google errors are quotas, and how the storage front maps managed-folder
requests and applies managed folders' policies. The whole route runs in
tests/integration/test_scale_quotas.py."""
from __future__ import annotations

from collections import Counter

import pytest
from google.api_core import exceptions as gexc

from devstack.gcs import BucketIamStandIn, _HttpError
from devstack.gcs_access import Need, required_access
from shared.adapters.errors import is_quota_exceeded, translated
from shared.domain.errors import PermanentError, QuotaExceeded, TransientError
from shared.domain.provisioning import identity_project_order, project_of_account

POOL = tuple(f"pool-{i:02d}" for i in range(56))


def test_the_pool_order_is_deterministic_starts_by_hash_and_visits_every_project_once():
    order = identity_project_order("gw-0123456789", POOL)
    assert order == identity_project_order("gw-0123456789", POOL)
    assert sorted(order) == sorted(POOL)
    start = POOL.index(order[0])
    assert order == list(POOL[start:] + POOL[:start])  # then in pool order, wrapping around
    assert identity_project_order("gw-0123456789", ()) == []


def test_first_choices_spread_evenly_over_the_pool():
    """5,000 gateways over 56 projects: about 89 each first; none near its quota of 100 at once."""
    firsts = Counter(identity_project_order(f"gw-{i:010x}", POOL)[0] for i in range(5000))
    assert len(firsts) == 56
    assert max(firsts.values()) < 130 and min(firsts.values()) > 55


@pytest.mark.parametrize("email, project", [
    ("archsync-gw-1@pool-a.iam.gserviceaccount.com", "pool-a"),
    ("archsync-gw-1@archsync-prod.iam.gserviceaccount.com", "archsync-prod"),
    ("service-123@gcp-sa-pubsub.iam.gserviceaccount.com", "gcp-sa-pubsub"),
    ("someone@example.com", ""),
    ("", ""),
])
def test_the_project_of_an_account(email, project):
    assert project_of_account(email) == project


@pytest.mark.parametrize("error, quota", [
    (gexc.ResourceExhausted("Maximum number of service accounts on project reached."), True),
    (gexc.TooManyRequests("Maximum number of service accounts on project reached."), True),
    (gexc.BadRequest("PUT https://storage/b/x/iam: The number of members in the policy (1,501) is larger than "
                     "the maximum allowed size 1,500."), True),
    (gexc.InvalidArgument("The number of members in the policy (1,503) is larger than the maximum allowed size 1,500."),
     True),
    (gexc.ResourceExhausted('Your project has exceeded a limit: (type="topics-per-project", current=10000, '
                            'maximum=10000).'), True),
    # A rate limit is not a quota on resources: retried.
    (gexc.ResourceExhausted("Quota exceeded for quota metric 'Write requests' and limit 'Write requests per minute'"),
     False),
    (gexc.TooManyRequests("rate limited"), False),
    (gexc.BadRequest("Service account x does not exist."), False),
])
def test_quota_refusals_are_told_from_rate_limits(error, quota):
    assert is_quota_exceeded(error) is quota
    with pytest.raises(QuotaExceeded if quota else (TransientError, PermanentError)) as raised:
        with translated("a call"):
            raise error
    assert isinstance(raised.value, QuotaExceeded) is quota
    assert isinstance(QuotaExceeded("x"), PermanentError)  # never retried as such


# ---- the storage front's managed folders -----------------------------------------------------------

@pytest.mark.parametrize("method, path, permission, folder", [
    ("POST", "/storage/v1/b/b/managedFolders", "storage.managedFolders.create", None),
    ("GET", "/storage/v1/b/b/managedFolders", "storage.managedFolders.list", None),
    ("GET", "/storage/v1/b/b/managedFolders/fg-1%2F", "storage.managedFolders.get", "fg-1/"),
    ("DELETE", "/storage/v1/b/b/managedFolders/gateways%2Fgw-1%2F", "storage.managedFolders.delete", "gateways/gw-1/"),
    ("GET", "/storage/v1/b/b/managedFolders/fg-1%2F/iam", "storage.managedFolders.getIamPolicy", "fg-1/"),
    ("PUT", "/storage/v1/b/b/managedFolders/fg-1%2F/iam", "storage.managedFolders.setIamPolicy", "fg-1/"),
])
def test_managed_folder_requests_need_their_permission(method, path, permission, folder):
    [need] = required_access(method, path, {}, {}, b"").needs
    assert (need.permission, need.bucket, need.managed_folder) == (permission, "b", folder)
    if folder:
        assert need.resource_name == f"projects/_/buckets/b/managedFolders/{folder}"


def _front_with_folder(members: list[str]) -> BucketIamStandIn:
    front = BucketIamStandIn(principal_of=lambda token: token)
    front.insert_folder("b", b'{"name": "fg-1/"}')
    policy = front.get_folder_policy("b", "fg-1/", 3)
    front.set_folder_policy("b", "fg-1/", {"version": 3, "etag": policy["etag"],
                                           "bindings": [{"role": "roles/storage.objectViewer", "members": members}]})
    return front


def test_a_managed_folders_policy_grants_its_objects_and_listing_inside_it_only():
    front, gw = _front_with_folder(["serviceAccount:gw@p.iam.gserviceaccount.com"]), \
        "serviceAccount:gw@p.iam.gserviceaccount.com"
    assert front.has_permission(gw, Need("storage.objects.get", "b", "fg-1/1.2.3/x.dcm"))
    assert front.has_permission(gw, Need("storage.objects.list", "b", list_prefix="fg-1/1.2.3/"))
    assert not front.has_permission(gw, Need("storage.objects.get", "b", "fg-10/1.2.3/x.dcm"))  # the trailing /
    assert not front.has_permission(gw, Need("storage.objects.list", "b", list_prefix="fg-"))
    assert not front.has_permission(gw, Need("storage.objects.list", "b", list_prefix=""))
    assert not front.has_permission(gw, Need("storage.objects.create", "b", "fg-1/1.2.3/y.dcm"))  # a reader only
    assert not front.has_permission("serviceAccount:other@p.iam.gserviceaccount.com",
                                    Need("storage.objects.get", "b", "fg-1/1.2.3/x.dcm"))
    assert not front.has_permission(gw, Need("storage.objects.get", "other-bucket", "fg-1/1.2.3/x.dcm"))


def test_managed_folder_policies_keep_their_own_principal_limit_etag_and_existence():
    front = _front_with_folder([f"user:u{i}@example.com" for i in range(3)])
    front.max_policy_principals = 3
    policy = front.get_folder_policy("b", "fg-1/", 3)
    with pytest.raises(_HttpError) as too_many:
        front.set_folder_policy("b", "fg-1/", {**policy, "bindings": [
            {"role": "roles/storage.objectViewer", "members": [f"user:u{i}@example.com" for i in range(4)]}]})
    assert too_many.value.status == 400
    assert too_many.value.message == "The number of members in the policy (4) is larger than the maximum allowed size 3."
    with pytest.raises(_HttpError) as stale:
        front.set_folder_policy("b", "fg-1/", {**policy, "etag": "stale"})
    assert stale.value.status == 412
    with pytest.raises(_HttpError) as exists:
        front.insert_folder("b", b'{"name": "fg-1/"}')
    assert exists.value.status == 409
    with pytest.raises(_HttpError) as missing:
        front.get_folder_policy("b", "fg-2/", 3)
    assert missing.value.status == 404
    front.delete_folder("b", "fg-1/", allow_non_empty=False)  # no upstream: empty
    assert ("b", "fg-1/") not in front.folder_policies

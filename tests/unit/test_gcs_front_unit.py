"""The local stack's Cloud Storage IAM front without a server (issue 12 item 2): the CEL subset of
IAM conditions, the request -> permission mapping, and the policy evaluation. The front on the
emulator is tested in tests/integration/test_gcs_front.py."""
from __future__ import annotations

import json

import pytest

from devstack import cel, gcs_access
from devstack.gcs import BucketIamStandIn
from devstack.gcs_access import Need, NotModelled, required_access
from shared.adapters.gcs import prefix_reader_condition

OBJ = {"resource": {"name": "projects/_/buckets/b/objects/fg-1/x.dcm", "type": gcs_access.OBJECT_TYPE,
                    "service": "storage.googleapis.com"}, cel.API_ATTRIBUTES: {}}


def _bucket(prefix: str | None) -> dict:
    attrs = {} if prefix is None else {"storage.googleapis.com/objectListPrefix": prefix}
    return {"resource": {"name": "projects/_/buckets/b", "type": gcs_access.BUCKET_TYPE,
                         "service": "storage.googleapis.com"}, cel.API_ATTRIBUTES: attrs}


# ---- CEL ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("expression, expected", [
    ('resource.name.startsWith("projects/_/buckets/b/objects/fg-1/")', True),
    ("resource.name.startsWith('projects/_/buckets/b/objects/fg-2/')", False),
    ('resource.name.endsWith("/x.dcm")', True),
    ('resource.name.contains("fg-1")', True),
    ('resource.name.matches("^projects/_/buckets/b/objects/fg-[0-9]+/")', True),
    ('resource.type == "storage.googleapis.com/Object"', True),
    ('resource.service != "storage.googleapis.com"', False),
    ('!(resource.name == "projects/_/buckets/b")', True),
    ('resource.name == "projects/_/buckets/b" || resource.name.startsWith("projects/_/buckets/b/")', True),
    ('resource.name.startsWith("projects/") && resource.name.endsWith(".txt")', False),
    ('"a\\"b" == \'a"b\'', True),
    ("'\\x41\\u0042\\101' == \"ABA\"", True),
    ('r"a\\d" == "a\\\\d"', True),
    ('api.getAttribute("storage.googleapis.com/objectListPrefix", "") == ""', True),  # absent: the default
])
def test_cel_on_an_object(expression, expected):
    assert cel.evaluate(expression, OBJ) is expected


@pytest.mark.parametrize("expression", [
    'resource.name.startsWith("a"',           # unbalanced
    'resource.name.startsWith("a") &',         # stray operator
    'request.time < timestamp("2030-01-01T00:00:00Z")',  # outside the subset
    'resource.name.size() > 3',
    "'unterminated",
    '"\\q"',                                   # invalid escape
    "resource.name in ['a']",
])
def test_cel_outside_the_subset_is_an_error_and_does_not_grant(expression):
    with pytest.raises(cel.CelError):
        cel.evaluate(expression, OBJ)
    assert cel.grants(expression, OBJ) is False


@pytest.mark.parametrize("expression", [
    "resource.nam == 'x'",            # no such field
    "resource.name.startsWith(1)",    # wrong argument type
    "resource.name == 1",             # no overload
    "resource.name",                  # not a bool
    "resource.name.matches('(')",     # bad regular expression
])
def test_cel_runtime_errors_do_not_grant(expression):
    assert cel.grants(expression, OBJ) is False


def test_cel_and_or_absorb_errors_like_cel():
    assert cel.evaluate("resource.nam == 'x' || true", OBJ) is True
    assert cel.evaluate("false && resource.nam == 'x'", OBJ) is False
    assert cel.grants("resource.nam == 'x' && true", OBJ) is False


def test_the_projects_conditions():
    study = prefix_reader_condition("b", "fg-1/", listing=True)
    assert cel.grants(study, OBJ)
    assert cel.grants(study, _bucket("fg-1/"))
    assert cel.grants(study, _bucket("fg-1/sub/"))
    assert not cel.grants(study, _bucket("fg-"))        # a wider prefix
    assert not cel.grants(study, _bucket(""))           # no prefix
    assert not cel.grants(study, _bucket(None))         # attribute absent: the default ""
    objects_only = prefix_reader_condition("b", "fg-1/")
    assert not cel.grants(objects_only, _bucket("fg-1/"))
    # infra/iam.tf: the result-endpoint key reader
    assert cel.grants('resource.name.endsWith("/result-endpoint-key")',
                      {"resource": {"name": "projects/_/buckets/k/objects/fg/gw/result-endpoint-key"}})


# ---- request -> permissions -----------------------------------------------------------------------
def _needs(method, path, query=None, body=b"", headers=None):
    access = required_access(method, path, {k: [v] for k, v in (query or {}).items()}, headers or {}, body)
    return [(n.permission, n.resource_name, n.list_prefix, n.if_exists) for n in access.needs]


B = "projects/_/buckets/b"


def test_mapping_of_reads_and_lists():
    assert _needs("GET", "/storage/v1/b/b/o/a%2Fb.txt") == [("storage.objects.get", f"{B}/objects/a/b.txt", None, False)]
    assert _needs("GET", "/download/storage/v1/b/b/o/a%2Fb.txt", {"alt": "media"}) == \
        [("storage.objects.get", f"{B}/objects/a/b.txt", None, False)]
    assert _needs("GET", "/storage/v1/b/b/o", {"prefix": "fg-1/"}) == [("storage.objects.list", B, "fg-1/", False)]
    assert _needs("GET", "/storage/v1/b/b/o") == [("storage.objects.list", B, "", False)]
    assert _needs("GET", "/storage/v1/b/b") == [("storage.buckets.get", B, None, False)]
    assert _needs("PATCH", "/storage/v1/b/b") == [("storage.buckets.update", B, None, False)]
    assert _needs("DELETE", "/storage/v1/b/b") == [("storage.buckets.delete", B, None, False)]
    assert _needs("GET", "/storage/v1/b", {"project": "p"}) == [("storage.buckets.list", "projects/_", None, False)]
    assert _needs("POST", "/storage/v1/b", {"project": "p"}) == [("storage.buckets.create", "projects/_", None, False)]
    assert _needs("GET", "/storage/v1/b/b/iam") == [("storage.buckets.getIamPolicy", B, None, False)]
    assert _needs("PUT", "/b/b/iam") == [("storage.buckets.setIamPolicy", B, None, False)]
    assert required_access("GET", "/storage/v1/b/b/iam/testPermissions", {}, {}, b"").tests_permissions


def test_mapping_of_writes():
    obj = f"{B}/objects/n.txt"
    create, delete = ("storage.objects.create", obj, None, False), ("storage.objects.delete", obj, None, True)
    assert _needs("POST", "/upload/storage/v1/b/b/o", {"uploadType": "media", "name": "n.txt"}) == [create, delete]
    assert _needs("POST", "/upload/storage/v1/b/b/o", {"uploadType": "media", "name": "n.txt",
                                                        "ifGenerationMatch": "0"}) == [create]
    resumable = required_access("POST", "/upload/storage/v1/b/b/o", {"uploadType": ["resumable"]},
                                {"Content-Type": "application/json"}, json.dumps({"name": "n.txt"}).encode())
    assert resumable.starts_upload and [n.resource_name for n in resumable.needs] == [obj, obj]
    body = (b'--XX\r\ncontent-type: application/json; charset=UTF-8\r\n\r\n{"name": "n.txt"}\r\n'
            b'--XX\r\ncontent-type: text/plain\r\n\r\nhello\r\n--XX--\r\n')
    assert _needs("POST", "/upload/storage/v1/b/b/o", {"uploadType": "multipart"}, body,
                  {"content-type": 'multipart/related; boundary="XX"'}) == [create, delete]
    cont = required_access("PUT", "/upload/storage/v1/b/b/o", {"uploadType": ["resumable"], "upload_id": ["u1"]},
                           {}, b"data")
    assert cont.upload_id == "u1" and cont.needs == ()
    assert _needs("DELETE", "/storage/v1/b/b/o/n.txt") == [("storage.objects.delete", obj, None, False)]
    assert _needs("PATCH", "/storage/v1/b/b/o/n.txt") == [("storage.objects.update", obj, None, False)]
    assert _needs("POST", "/storage/v1/b/s/o/a.txt/copyTo/b/b/o/n.txt") == \
        [("storage.objects.get", "projects/_/buckets/s/objects/a.txt", None, False), create, delete]
    assert _needs("POST", "/storage/v1/b/s/o/a.txt/rewriteTo/b/b/o/n.txt", {"ifGenerationMatch": "0"}) == \
        [("storage.objects.get", "projects/_/buckets/s/objects/a.txt", None, False), create]
    compose = json.dumps({"sourceObjects": [{"name": "p1"}, {"name": "p2"}]}).encode()
    assert _needs("POST", "/storage/v1/b/b/o/n.txt/compose", body=compose) == \
        [("storage.objects.get", f"{B}/objects/p1", None, False),
         ("storage.objects.get", f"{B}/objects/p2", None, False), create, delete]


@pytest.mark.parametrize("method, path", [
    ("POST", "/batch/storage/v1"),
    ("GET", "/storage/v1/b/b/o/n.txt/acl"),
    ("GET", "/b/n.txt"),                              # XML API
    ("POST", "/storage/v1/b/b/notificationConfigs"),
    ("HEAD", "/storage/v1/b/b/o/n.txt"),
    ("POST", "/storage/v1/b/b/iam"),
])
def test_requests_not_modelled_are_refused(method, path):
    with pytest.raises(NotModelled, match="not modelled by the local stack"):
        required_access(method, path, {}, {}, b"")


def test_an_upload_without_a_name_is_a_bad_request():
    with pytest.raises(gcs_access.BadRequest):
        required_access("POST", "/upload/storage/v1/b/b/o", {"uploadType": ["media"]}, {}, b"x")


# ---- roles and policy evaluation ------------------------------------------------------------------
def test_roles():
    viewer = gcs_access.role_permissions("roles/storage.objectViewer", {})
    assert viewer == {"storage.objects.get", "storage.objects.list"}
    assert gcs_access.permission_in("storage.buckets.setIamPolicy",
                                    gcs_access.role_permissions("roles/storage.admin", {}))
    admin = gcs_access.role_permissions("roles/storage.objectAdmin", {})
    assert gcs_access.permission_in("storage.objects.setIamPolicy", admin)
    assert not gcs_access.permission_in("storage.buckets.get", admin)
    user = gcs_access.role_permissions("roles/storage.objectUser", {})
    assert "storage.objects.delete" in user and not gcs_access.permission_in("storage.objects.getIamPolicy", user)
    assert gcs_access.role_permissions("roles/storage.nonsense", {}) == frozenset()
    assert gcs_access.role_permissions("projects/p/roles/r", {"projects/p/roles/r": ["storage.objects.get"]}) == \
        {"storage.objects.get"}


def test_policy_evaluation_with_conditions_members_owners_and_custom_roles():
    sa, other = "serviceAccount:gw@p.iam.gserviceaccount.com", "serviceAccount:x@p.iam.gserviceaccount.com"
    front = BucketIamStandIn(principal_of=lambda t: None, owners=["user:owner@example.com"],
                             custom_roles={"projects/p/roles/lister": ["storage.objects.list"]})
    front.seed_policy("b", {"bindings": [
        {"role": "roles/storage.objectViewer", "members": [sa],
         "condition": {"title": "t", "expression": prefix_reader_condition("b", "fg-1/", listing=True)}},
        {"role": "projects/p/roles/lister", "members": ["domain:example.org"]},
        {"role": "roles/storage.objectViewer", "members": [other], "condition": {"expression": "request.time < 3"}},
        {"role": "roles/storage.legacyObjectReader", "members": ["allUsers"],
         "condition": {"expression": 'resource.name.endsWith(".pub")'}},
    ]})
    assert front.policies["b"]["version"] == 3
    ok = front.has_permission
    assert ok(sa, Need("storage.objects.get", "b", "fg-1/a"))
    assert not ok(sa, Need("storage.objects.get", "b", "fg-2/a"))
    assert ok(sa, Need("storage.objects.list", "b", list_prefix="fg-1/"))
    assert not ok(sa, Need("storage.objects.list", "b", list_prefix=""))
    assert not ok(sa, Need("storage.objects.create", "b", "fg-1/a"))
    assert not ok(other, Need("storage.objects.get", "b", "fg-1/a"))  # the condition errors: no grant
    assert ok("user:u@example.org", Need("storage.objects.list", "b", list_prefix=""))
    assert not ok("user:u@example.org", Need("storage.objects.get", "b", "fg-1/a"))
    assert ok(None, Need("storage.objects.get", "b", "k.pub")) and not ok(None, Need("storage.objects.get", "b", "k"))
    assert ok("user:owner@example.com", Need("storage.buckets.create", None))
    assert not ok(sa, Need("storage.buckets.create", None))
    assert front.permitted(sa, "b", ["storage.objects.get", "storage.objects.list"]) == []  # bucket level, no prefix
    assert front.permitted("user:u@example.org", "b", ["storage.objects.list", "storage.objects.get", "bogus"]) == \
        ["storage.objects.list"]
    front.define_role("projects/p/roles/lister", ["storage.objects.get"])
    assert ok("user:u@example.org", Need("storage.objects.get", "b", "fg-1/a"))
    front.reset()
    assert front.policies == {} and "user:owner@example.com" in front.owners

"""The admin API through functions-framework: gateways and destinations (seed 000 Steps 1-2 and
Troubleshooting), validation (422 naming each field, no partial write), keys, authentication and
tenant isolation (rule 8)."""
from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone

import pytest

from shared.domain.jobs import time_out
from shared.domain.messages import exam_status_changed
from shared.domain.models import Facility, FacilityGroup
from shared.domain.rules import TimeoutPolicy
from shared.services.archive_trigger import ArchiveTriggerService
from shared.signing import sign_headers
from tests.support import exam_event, load_app, result_body

BASE = "/v1/facility-groups/fg-1"
DEST = {"name": "Enterprise VNA", "type": "DICOM_SCP", "host": "10.20.0.31", "port": 104,
        "called_ae_title": "VNA_ENT", "calling_ae_title": "GW_SCU", "auto_archive": True, "trigger_status": "COMPLETED"}


@pytest.fixture
def api(stack, admin_env):
    for fg, facs in (("fg-1", ("fac-a", "fac-b", "fac-c")), ("fg-2", ("fac-x",))):
        stack.store.save_facility_group(FacilityGroup(fg, fg))
        for f in facs:
            stack.store.save_facility(Facility(f, fg, f"Facility {f[-1].upper()}"))
    stack.topic("archsync-gateway-dead-letter")
    client = load_app("admin_api")
    auth = admin_env

    class Api:
        def __init__(self):
            self.stack, self.auth = stack, auth

        def call(self, method, path, body=None, groups=("fg-1",), raw=None, **kw):
            headers = auth.headers(groups, **kw)
            data = raw if raw is not None else (json.dumps(body) if body is not None else None)
            return client.open(path, method=method, data=data, headers={**headers, "Content-Type": "application/json"})

        def gateway(self, **body):
            r = self.call("POST", f"{BASE}/gateways", {"name": "Main gateway", **body})
            assert r.status_code == 201, r.json
            return r.json

        def destination(self, gateway_id, **body):
            r = self.call("POST", f"{BASE}/destinations", {**DEST, "gateway_id": gateway_id, **body})
            assert r.status_code == 201, r.json
            return r.json

    return Api()


def archive_now(stack):
    """An exam reaching Completed now (after the destinations were configured)."""
    soon = datetime.now(timezone.utc) + timedelta(seconds=1)
    return ArchiveTriggerService(stack.store, stack.store, stack.job_publisher, stack.clock, TimeoutPolicy()).handle(
        exam_status_changed(exam_event("COMPLETED", event_time=soon)))


def cloud_counts(api):
    iam = api.stack.emulators["iam"]
    topics = [t.name for t in api.stack.publisher_client.list_topics(request={"project": f"projects/{api.stack.project}"})]
    return len(iam.service_accounts), sum(len(k) for k in iam.keys.values()), len([t for t in topics if "gateway-pubsub" in t])


# -- gateways -------------------------------------------------------------------------------

def test_create_and_list_gateways_with_the_seed_columns(api):
    gw = api.gateway(description="Datacenter", facility_ids=["fac-a", "fac-b"])
    assert gw["pubsub_subscription_id"] == f"gateway-pubsub-{gw['id']}-sub"
    assert gw["created_by"] == gw["updated_by"] == "Pat Admin"
    assert gw["facilities"] == "Facility A, Facility B" and gw["active"] is True
    assert gw["sa_json_download"].endswith(f"/gateways/{gw['id']}/service-account-key")
    assert "key" not in json.dumps(gw).replace("sa_json_download", "").replace("service-account-key", "")
    api.gateway(name="Everything")
    r = api.call("GET", f"{BASE}/gateways")
    assert r.status_code == 200
    rows = {g["name"]: g for g in r.json["gateways"]}
    assert rows["Everything"]["facilities"] == "All"
    assert set(rows["Main gateway"]) >= {"name", "description", "pubsub_subscription_id", "created_by", "updated_by",
                                         "facilities", "active", "sa_json_download"}
    assert api.call("GET", f"{BASE}/gateways/{gw['id']}").json == gw


@pytest.mark.parametrize("body,fields", [
    ({}, {"name"}),
    ({"name": "  "}, {"name"}),
    ({"name": "x", "facility_ids": ["fac-x"]}, {"facility_ids"}),  # another group's facility
    ({"name": "x", "facility_ids": "fac-a"}, {"facility_ids"}),
    ({"name": "x", "active": "yes"}, {"active"}),
    ({"name": "x", "surprise": 1}, {"surprise"}),
    ({"name": "x" * 101, "description": 5}, {"name", "description"}),
])
def test_gateway_validation_is_422_with_no_partial_write(api, body, fields):
    r = api.call("POST", f"{BASE}/gateways", body)
    assert r.status_code == 422 and set(r.json["error"]["fields"]) == fields
    assert cloud_counts(api) == (0, 0, 0)
    assert api.call("GET", f"{BASE}/gateways").json == {"gateways": []}


def test_provisioning_failure_is_503_and_leaves_nothing(api):
    import grpc

    api.stack.emulators["iam"].fail_next("CreateServiceAccountKey", grpc.StatusCode.UNAVAILABLE)
    r = api.call("POST", f"{BASE}/gateways", {"name": "Doomed"})
    assert r.status_code == 503 and r.json["error"]["code"] == "unavailable"
    assert "rolled back" in r.json["error"]["message"] and "service_account_key" in r.json["error"]["message"]
    assert cloud_counts(api) == (0, 0, 0)
    assert api.call("GET", f"{BASE}/gateways").json == {"gateways": []}
    assert list(api.stack.gcs.list_blobs(api.stack.key_bucket)) == []


def test_update_gateway(api):
    gw = api.gateway(facility_ids=["fac-a"])
    r = api.call("PATCH", f"{BASE}/gateways/{gw['id']}", {"name": "Renamed", "active": False, "facility_ids": []},
                 name="Sam Other")
    assert r.status_code == 200
    assert (r.json["name"], r.json["active"], r.json["facilities"], r.json["updated_by"], r.json["created_by"]) == \
        ("Renamed", False, "All", "Sam Other", "Pat Admin")
    assert api.call("PATCH", f"{BASE}/gateways/{gw['id']}", {"name": ""}).status_code == 422
    audit = api.stack.store.audit_entries("fg-1")
    assert any(a["action"] == "gateway.update" and a["fields"] == ["active", "facility_ids", "name"] and a["actor"] == "Sam Other"
               for a in audit)


def test_narrowing_gateway_facilities_below_its_destinations_is_refused(api):
    gw = api.gateway()
    api.destination(gw["id"], facility_ids=["fac-b"])
    r = api.call("PATCH", f"{BASE}/gateways/{gw['id']}", {"facility_ids": ["fac-a"]})
    assert r.status_code == 422 and "facility_ids" in r.json["error"]["fields"]


def test_download_keys_and_use_the_result_key(api, capsys):
    gw = api.gateway()
    r = api.call("GET", f"{BASE}/gateways/{gw['id']}/service-account-key")
    assert r.status_code == 200 and "attachment" in r.headers["Content-Disposition"]
    key = json.loads(r.data)
    assert key["client_email"] == gw["service_account_email"] and "PRIVATE KEY" in key["private_key"]
    r = api.call("GET", f"{BASE}/gateways/{gw['id']}/result-endpoint-key")
    result_key = r.data
    assert r.status_code == 200 and len(result_key) >= 43
    # Keys are never logged.
    out = capsys.readouterr().out
    assert key["private_key"][40:80] not in out and result_key.decode() not in out
    actions = [a["action"] for a in api.stack.store.audit_entries("fg-1")]
    assert "gateway.key.download" in actions and "gateway.result_key.download" in actions

    # The downloaded Result Endpoint key authenticates this gateway's callbacks.
    dest = api.destination(gw["id"])
    [out] = archive_now(api.stack)
    assert out.destination_id == dest["id"]
    body = result_body(out.job_id, "COMPLETED")
    results = load_app("on_job_result")
    r = results.post("/", data=body, headers=sign_headers(result_key, "fg-1", gw["id"], body, int(time.time())))
    assert r.status_code == 200 and r.json["job_state"] == "COMPLETED"


def test_rotate_keys(api):
    gw = api.gateway()
    iam = api.stack.emulators["iam"]
    [old_key] = [k for ks in iam.keys.values() for k in ks]
    old_file = api.call("GET", f"{BASE}/gateways/{gw['id']}/service-account-key").data
    r = api.call("POST", f"{BASE}/gateways/{gw['id']}/service-account-key/rotate")
    assert r.status_code == 200
    [new_key] = [k for ks in iam.keys.values() for k in ks]
    assert new_key != old_key  # new one created, old one revoked
    assert api.call("GET", f"{BASE}/gateways/{gw['id']}/service-account-key").data != old_file

    old = api.call("GET", f"{BASE}/gateways/{gw['id']}/result-endpoint-key").data
    assert api.call("POST", f"{BASE}/gateways/{gw['id']}/result-endpoint-key/rotate").status_code == 204
    new = api.call("GET", f"{BASE}/gateways/{gw['id']}/result-endpoint-key").data
    assert new != old
    from shared.domain.errors import Unauthorized
    from shared.signing import verify

    body = b"{}"
    with pytest.raises(Unauthorized):  # the old key no longer verifies against the stored one
        verify(api.stack.secrets.result_key("fg-1", gw["id"], fresh=True),
               sign_headers(old, "fg-1", gw["id"], body, int(time.time())), body, time.time(), 300)


def test_gateway_cannot_be_deleted_with_destinations_or_jobs_in_progress(api):
    """Seed 000 Troubleshooting: "Gateway cannot be deleted"."""
    gw = api.gateway()
    dest = api.destination(gw["id"])
    r = api.call("DELETE", f"{BASE}/gateways/{gw['id']}")
    assert r.status_code == 409 and "linked destinations" in r.json["error"]["message"]

    st = api.stack
    [out] = archive_now(st)
    assert api.call("DELETE", f"{BASE}/destinations/{dest['id']}").status_code == 409  # its job is running
    st.db.collection("facility_groups").document("fg-1").collection("destinations").document(dest["id"]).delete()
    r = api.call("DELETE", f"{BASE}/gateways/{gw['id']}")
    assert r.status_code == 409 and "jobs in progress" in r.json["error"]["message"]
    assert cloud_counts(api) == (1, 1, 1)

    st.store.transact_job("fg-1", out.job_id, lambda j: time_out(j, now=j.deadline))  # the job ends
    r = api.call("DELETE", f"{BASE}/gateways/{gw['id']}")
    assert r.status_code == 204
    assert cloud_counts(api) == (0, 0, 0)
    assert api.call("GET", f"{BASE}/gateways/{gw['id']}").status_code == 404


# -- destinations ---------------------------------------------------------------------------

def test_destination_crud_and_table_columns(api):
    gw = api.gateway(facility_ids=["fac-a", "fac-b"])
    d = api.destination(gw["id"], facility_ids=["fac-b"], trigger_status="PENDING")
    assert (d["archive"], d["gateway_name"], d["facilities"], d["active"], d["type"]) == \
        ("Yes (Pending)", "Main gateway", "Facility B", True, "DICOM_SCP")
    assert (d["max_retries"], d["retry_timeout_seconds"]) == (3, 10)  # seed defaults
    off = api.destination(gw["id"], name="Manual", auto_archive=False, trigger_status=None)
    assert off["archive"] == "No" and off["facilities"] == "All"

    rows = api.call("GET", f"{BASE}/destinations").json["destinations"]
    assert [r["name"] for r in rows] == ["Enterprise VNA", "Manual"]
    r = api.call("PATCH", f"{BASE}/destinations/{d['id']}", {"trigger_status": "INFLIGHT", "port": 11112})
    assert r.status_code == 200 and r.json["archive"] == "Yes (Inflight)" and r.json["port"] == 11112
    r = api.call("POST", f"{BASE}/destinations/{d['id']}/deactivate")
    assert r.status_code == 200 and r.json["active"] is False
    assert api.call("POST", f"{BASE}/destinations/{d['id']}/activate").json["active"] is True
    assert api.call("DELETE", f"{BASE}/destinations/{d['id']}").status_code == 204
    assert api.call("GET", f"{BASE}/destinations/{d['id']}").status_code == 404
    actions = [a["action"] for a in api.stack.store.audit_entries("fg-1")]
    assert actions.count("destination.create") == 2 and "destination.delete" in actions


@pytest.mark.parametrize("change,fields", [
    ({"name": None}, {"name"}),
    ({"type": "HL7"}, {"type"}),
    ({"host": "not a host!"}, {"host"}),
    ({"port": 70000}, {"port"}),
    ({"called_ae_title": "HAS SPACE"}, {"called_ae_title"}),
    ({"calling_ae_title": "X" * 17}, {"calling_ae_title"}),
    ({"moving_ae_title": "BACK\\SLASH"}, {"moving_ae_title"}),
    ({"max_retries": -1}, {"max_retries"}),
    ({"retry_timeout_seconds": 0}, {"retry_timeout_seconds"}),
    # Issue 11 item 4: unbounded values overflowed the job deadline (10**12) or Firestore (10**20: a 500).
    ({"max_retries": 11}, {"max_retries"}),
    ({"max_retries": 10**12}, {"max_retries"}),
    ({"max_retries": 10**20}, {"max_retries"}),
    ({"retry_timeout_seconds": 3601}, {"retry_timeout_seconds"}),
    ({"retry_timeout_seconds": 10**20}, {"retry_timeout_seconds"}),
    ({"transfer_syntax_uid": "1.2.x"}, {"transfer_syntax_uid"}),
    ({"excluded_sop_class_uids": ["1.02"]}, {"excluded_sop_class_uids"}),
    ({"trigger_status": None}, {"trigger_status"}),
    ({"facility_ids": ["fac-c"]}, {"facility_ids"}),  # not served by the gateway
    ({"gateway_id": "gw-missing"}, {"gateway_id"}),
    ({"port": "104", "host": "", "called_ae_title": ""}, {"port", "host", "called_ae_title"}),
])
def test_destination_validation_is_422_naming_each_field(api, change, fields):
    gw = api.gateway(facility_ids=["fac-a", "fac-b"])
    body = {**DEST, "gateway_id": gw["id"], **change}
    r = api.call("POST", f"{BASE}/destinations", {k: v for k, v in body.items() if v is not None or k != "name"})
    assert r.status_code == 422, r.json
    assert set(r.json["error"]["fields"]) == fields
    assert api.call("GET", f"{BASE}/destinations").json == {"destinations": []}


def test_destination_with_a_gateway_of_another_group_is_refused(api):
    """Seed 000 Troubleshooting: "Destination cannot be saved (Gateway error)"."""
    other = api.call("POST", "/v1/facility-groups/fg-2/gateways", {"name": "Theirs"}, groups=("fg-2",)).json
    r = api.call("POST", f"{BASE}/destinations", {**DEST, "gateway_id": other["id"]})
    assert r.status_code == 422 and set(r.json["error"]["fields"]) == {"gateway_id"}


# -- authentication and isolation -----------------------------------------------------------

ROUTES = [
    ("GET", "/gateways"), ("POST", "/gateways"), ("GET", "/gateways/{gw}"), ("PATCH", "/gateways/{gw}"),
    ("DELETE", "/gateways/{gw}"), ("GET", "/gateways/{gw}/service-account-key"),
    ("POST", "/gateways/{gw}/service-account-key/rotate"), ("GET", "/gateways/{gw}/result-endpoint-key"),
    ("POST", "/gateways/{gw}/result-endpoint-key/rotate"), ("GET", "/destinations"), ("POST", "/destinations"),
    ("GET", "/destinations/{d}"), ("PATCH", "/destinations/{d}"), ("DELETE", "/destinations/{d}"),
    ("POST", "/destinations/{d}/activate"), ("POST", "/destinations/{d}/deactivate"),
    ("GET", "/jobs"), ("POST", "/jobs/archive-00000000000000000000000000000001/retry"), ("GET", "/exams/exam-1/archive-states"),
    ("GET", "/facilities"),
]


@pytest.mark.parametrize("method,path", ROUTES)
def test_other_group_gets_404_on_every_endpoint_and_nothing_changes(api, method, path):
    gw = api.gateway()
    d = api.destination(gw["id"])
    before = (api.call("GET", f"{BASE}/gateways").json, api.call("GET", f"{BASE}/destinations").json, cloud_counts(api))
    url = BASE + path.format(gw=gw["id"], d=d["id"])
    body = {"name": "hijack"} if method in ("POST", "PATCH") else None
    r = api.call(method, url, body, groups=("fg-2",))
    assert r.status_code == 404 and r.json["error"]["code"] == "not_found"
    assert "hijack" not in r.get_data(as_text=True)
    after = (api.call("GET", f"{BASE}/gateways").json, api.call("GET", f"{BASE}/destinations").json, cloud_counts(api))
    assert after == before


@pytest.mark.parametrize("case", ["none", "basic", "garbage", "expired", "audience", "issuer", "other_key", "no_groups",
                                  "bad_groups", "future", "alg_none"])
def test_bad_tokens_are_401(api, case):
    from cryptography.hazmat.primitives.asymmetric import rsa
    import jwt

    headers = {
        "none": {},
        "basic": {"Authorization": "Basic dXNlcjpwYXNz"},
        "garbage": {"Authorization": "Bearer not.a.jwt"},
        "expired": api.auth.headers(exp=int(time.time()) - 120),
        "audience": api.auth.headers(aud="someone-else"),
        "issuer": api.auth.headers(iss="https://evil.example"),
        "other_key": api.auth.headers(key=rsa.generate_private_key(public_exponent=65537, key_size=2048)),
        "no_groups": api.auth.headers(facility_groups=None),
        "bad_groups": api.auth.headers(facility_groups="fg-1"),
        "future": api.auth.headers(iat=int(time.time()), nbf=int(time.time()) + 3600),
        "alg_none": {"Authorization": "Bearer " + jwt.encode({"sub": "u", "facility_groups": ["fg-1"], "aud": api.auth.AUDIENCE,
                                                              "iss": api.auth.ISSUER, "exp": int(time.time()) + 60,
                                                              "iat": int(time.time())}, None, algorithm="none")},
    }[case]
    client = load_app("admin_api")
    r = client.get(f"{BASE}/gateways", headers=headers)
    assert r.status_code == 401 and r.json == {"error": {"code": "unauthorized", "message": "authentication failed"}}


def test_unknown_path_wrong_method_and_bad_json(api):
    assert api.call("GET", "/v1/elsewhere").status_code == 404
    assert api.call("PUT", f"{BASE}/gateways").status_code == 405
    r = api.call("POST", f"{BASE}/gateways", raw="{not json")
    assert r.status_code == 400 and r.json["error"]["code"] == "malformed"
    r = api.call("POST", f"{BASE}/destinations", raw="[1, 2]")
    assert r.status_code == 422


def test_widening_a_gateway_with_a_destination_serving_all_it_serves_is_allowed(api):
    gw = api.gateway(facility_ids=["fac-a"])
    api.destination(gw["id"])  # empty list: whatever the gateway serves
    r = api.call("PATCH", f"{BASE}/gateways/{gw['id']}", {"facility_ids": ["fac-a", "fac-b"]})
    assert r.status_code == 200 and r.json["facility_ids"] == ["fac-a", "fac-b"]
    r = api.call("PATCH", f"{BASE}/gateways/{gw['id']}", {"facility_ids": ["fac-b"]})  # narrowing still is not
    assert r.status_code == 422 and "facility_ids" in r.json["error"]["fields"]

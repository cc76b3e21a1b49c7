"""Issue 11 items 7 and 13 through functions-framework: bad input is a 4xx with a JSON body and
writes nothing, a transient failure is a JSON 503 with Retry-After, and nothing ever answers with
the framework's HTML, not even its own 404 or an unforeseen exception (a JSON 500 with an id)."""
from __future__ import annotations

import base64
import json
import time

import pytest

from shared.domain.models import Facility, FacilityGroup
from tests.support import RESULT_KEY, destination, exam_event, gateway, load_app, post_result, result_body

BASE = "/v1/facility-groups/fg-1"
HTTP_FUNCTIONS = ("admin_api", "on_job_result", "lock_status", "sweep_jobs")


@pytest.fixture
def admin(stack, admin_env):
    for fg in ("fg-1", "fg-2"):
        stack.store.save_facility_group(FacilityGroup(fg, fg))
    stack.store.save_facility(Facility("fac-a", "fg-1", "Main Hospital"))
    stack.topic("archsync-gateway-dead-letter")
    client = load_app("admin_api")

    def call(method, path, *, groups=("fg-1",), headers=None, **kw):
        return client.open(path, method=method, headers={**admin_env.headers(groups), **(headers or {})}, **kw)

    stack.call, stack.client, stack.auth = call, client, admin_env
    return stack


def assert_json_error(r, status, code=None):
    assert r.status_code == status, (r.status_code, r.get_data(as_text=True)[:300])
    assert r.is_json and r.headers["Content-Type"] == "application/json", r.get_data(as_text=True)[:300]
    assert set(r.json) == {"error"} and isinstance(r.json["error"]["message"], str)
    if code is not None:
        assert r.json["error"]["code"] == code, r.json


def cursor(**fields) -> str:
    doc = {"v": 1, "g": "fg-1", "q": "x", "o": {"queued_at": None}, "id": "archive-1", **fields}
    doc = {k: v for k, v in doc.items() if v is not ...}
    return base64.urlsafe_b64encode(json.dumps(doc).encode()).decode().rstrip("=")


def fingerprint() -> str:
    from shared.domain import job_query

    return job_query.parse({}).fingerprint


# -- the Jobs tab's query parameters ------------------------------------------------------------

@pytest.mark.parametrize("params", [
    {"page_size": "²"}, {"page_size": "٣"}, {"page_size": "1" * 5000},
    {"queued_from": "0001-01-01T00:00:00+01:00"}, {"completed_to": "9999-12-31T23:59:59-01:00"},
])
def test_bad_query_parameters_are_400(admin, params):
    assert_json_error(admin.call("GET", f"{BASE}/jobs", query_string=params), 400, "malformed")


@pytest.mark.parametrize("fields", [
    {"id": "a/b"}, {"id": "__reserved__"}, {"id": ""}, {"id": 7}, {"id": ...}, {"v": ...}, {"g": ...}, {"q": ...},
    {"o": ...}, {"o": []}, {"o": {}}, {"o": {"queued_at": 10 ** 30}}, {"o": {"queued_at": {"a": 1}}},
    {"o": {"queued_at": "yesterday"}}, {"o": {"queued_at": "0001-01-01T00:00:00+01:00"}},
    {"o": {"queued_at": None, "other": 1}}, {"v": True}, {"v": "1"}, {"g": ["fg-1"]}, {"extra": 1},
])
def test_cursor_with_missing_or_mistyped_fields_is_400(admin, fields):
    fields = {"q": fingerprint(), **fields}
    r = admin.call("GET", f"{BASE}/jobs", query_string={"cursor": cursor(**fields)})
    assert_json_error(r, 400, "malformed")


@pytest.mark.parametrize("raw", ["W10", "bnVsbA", "IiI", "%%%", "é", base64.urlsafe_b64encode(b"[" * 5000).decode()])
def test_cursor_that_is_not_an_object_is_400(admin, raw):
    assert_json_error(admin.call("GET", f"{BASE}/jobs", query_string={"cursor": raw}), 400, "malformed")


def test_a_well_formed_cursor_still_pages(admin):
    r = admin.call("GET", f"{BASE}/jobs", query_string={"cursor": cursor(q=fingerprint(), o={"queued_at": "2026-11-01T08:00:00Z"})})
    assert r.status_code == 200 and r.json == {"jobs": [], "next_cursor": None}


# -- admin JWTs: an algorithm of the other key family ---------------------------------------------

def _ec_key():
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _pem(private) -> str:
    from cryptography.hazmat.primitives import serialization

    return private.public_key().public_bytes(serialization.Encoding.PEM,
                                             serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def _token(auth, key, alg: str, groups=("fg-1",)) -> dict:
    import jwt

    now = int(time.time())
    payload = {"sub": "u-1", "name": "Pat Admin", "iss": auth.ISSUER, "aud": auth.AUDIENCE, "iat": now, "exp": now + 300,
               "facility_groups": list(groups)}
    return {"Authorization": "Bearer " + jwt.encode(payload, key, algorithm=alg)}


def test_token_of_another_algorithm_family_is_401_not_500(admin):
    """Only an RSA key is configured: an ES256 token used to make PyJWT raise TypeError (a 500)."""
    r = admin.client.get(f"{BASE}/gateways", headers=_token(admin.auth, _ec_key(), "ES256"))
    assert_json_error(r, 401, "unauthorized")


def test_rsa_and_ec_keys_configured_together_rotate_between_families(admin, monkeypatch):
    from cryptography.hazmat.primitives.asymmetric import rsa

    ec_key = _ec_key()
    monkeypatch.setenv("ARCHSYNC_ADMIN_JWT_PUBLIC_KEYS", _pem(ec_key) + admin.auth.public_pem)
    client = load_app("admin_api")
    assert client.get(f"{BASE}/gateways", headers=_token(admin.auth, ec_key, "ES256")).status_code == 200
    assert client.get(f"{BASE}/gateways", headers=admin.auth.headers()).status_code == 200  # RS256, the old key
    for key, alg in ((_ec_key(), "ES256"), (rsa.generate_private_key(public_exponent=65537, key_size=2048), "RS256")):
        assert_json_error(client.get(f"{BASE}/gateways", headers=_token(admin.auth, key, alg)), 401, "unauthorized")
    assert_json_error(client.get(f"{BASE}/gateways", headers=_token(admin.auth, "x" * 32, "HS256")), 401, "unauthorized")


# -- request bodies: media types and strict JSON ------------------------------------------------

def _nothing_created(admin) -> bool:
    return admin.call("GET", f"{BASE}/gateways").json == {"gateways": []} and not admin.emulators["iam"].service_accounts


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None,
                                          "application/json; charset=latin-1", "application/jsonx"])
def test_json_body_of_an_undeclared_media_type_is_415(admin, content_type):
    body = json.dumps({"name": "Main gateway"})
    headers = {"Content-Type": content_type} if content_type else {}
    r = admin.call("POST", f"{BASE}/gateways", data=body, headers=headers)
    assert_json_error(r, 415, "unsupported_media_type")
    assert _nothing_created(admin)


def test_declared_media_type_with_utf8_charset_is_accepted(admin):
    r = admin.call("POST", f"{BASE}/gateways", data=json.dumps({"name": "Main gateway"}),
                   headers={"Content-Type": "Application/JSON; charset=UTF-8"})
    assert r.status_code == 201, r.json


def test_body_on_an_operation_that_takes_none_is_415(admin):
    r = admin.call("POST", f"{BASE}/gateways", data=json.dumps({"name": "Main gateway"}),
                   headers={"Content-Type": "application/json"})
    gw = r.json["id"]
    r = admin.call("POST", f"{BASE}/gateways/{gw}/service-account-key/rotate", data="{}",
                   headers={"Content-Type": "application/json"})
    assert_json_error(r, 415, "unsupported_media_type")
    # An empty body with a Content-Type (clients send it out of habit) is fine.
    r = admin.call("POST", f"{BASE}/gateways/{gw}/result-endpoint-key/rotate", headers={"Content-Type": "application/json"})
    assert r.status_code == 204


@pytest.mark.parametrize("raw", [
    b'{"name": "\\ud800"}', b'{"name": "ok", "description": "\\udfff x"}', b'{"name": NaN}', b'{"name": 1e400}',
    b'{"name": ' + b"9" * 5000 + b"}", b"[" * 20000 + b"]" * 20000, b'\xef\xbb\xbf{"name": "bom"}',
    '{"name": "latin"}'.encode("utf-16"),
])
def test_body_that_cannot_be_stored_is_400(admin, raw):
    r = admin.call("POST", f"{BASE}/gateways", data=raw, headers={"Content-Type": "application/json"})
    assert_json_error(r, 400, "malformed")
    assert _nothing_created(admin)


def test_surrogate_pair_escapes_are_ordinary_text(admin):
    r = admin.call("POST", f"{BASE}/gateways", data=b'{"name": "Gateway \\ud83d\\ude00"}',
                   headers={"Content-Type": "application/json"})
    assert r.status_code == 201 and r.json["name"] == "Gateway \U0001F600"


def test_wrong_method_is_405_with_allow(admin):
    r = admin.call("PUT", f"{BASE}/gateways")
    assert_json_error(r, 405, "method_not_allowed")
    assert r.headers["Allow"] == "GET, POST"


# -- the Result Endpoint and the lock endpoint --------------------------------------------------

@pytest.fixture
def result_job(stack, function_env):
    from shared.domain.messages import exam_status_changed
    from shared.domain.rules import TimeoutPolicy
    from shared.services.archive_trigger import ArchiveTriggerService

    stack.add_gateway(gateway("gw-1"))
    stack.secrets.save_result_key("fg-1", "gw-1", RESULT_KEY)
    stack.store.save_destination(destination("dst-1", trigger="PENDING"))
    [out] = ArchiveTriggerService(stack.store, stack.store, stack.job_publisher, stack.clock, TimeoutPolicy()).handle(
        exam_status_changed(exam_event("PENDING")))
    return out.job_id


@pytest.mark.parametrize("content_type", ["text/plain", None, "application/json; charset=utf-16"])
def test_result_of_an_undeclared_media_type_is_415(stack, result_job, content_type):
    headers = {"Content-Type": content_type} if content_type else {"Content-Type": ""}
    r = post_result(load_app("on_job_result"), result_body(result_job, "COMPLETED"), headers=headers)
    assert_json_error(r, 415, "unsupported_media_type")
    assert stack.store.get_job("fg-1", result_job).state.value == "QUEUED"


@pytest.mark.parametrize("body", [
    lambda job: result_body(job, "COMPLETED", counts={"total": 2 ** 63}),
    lambda job: result_body(job, "COMPLETED", attempt=10 ** 20),
    lambda job: result_body(job, "FAILED", reason="\\ud800").replace(b"\\\\ud800", b"\\ud800"),
    lambda job: json.dumps({"schema_version": "1", "job_id": job, "attempt": 1, "state": "COMPLETED",
                            "time": "0001-01-01T00:00:00+01:00"}).encode(),
])
def test_signed_result_that_cannot_be_stored_is_400(stack, result_job, body):
    r = post_result(load_app("on_job_result"), body(result_job))
    assert_json_error(r, 400, "malformed")
    assert stack.store.get_job("fg-1", result_job).state.value == "QUEUED"


def test_lock_status_with_a_body_is_415_and_wrong_method_405(function_env):
    client = load_app("lock_status")
    path = "/v1/facility-groups/fg-1/exams/exam-1/lock"
    assert_json_error(client.get(path, data="x", headers={"Content-Type": "text/plain"}), 415, "unsupported_media_type")
    r = client.post(path)
    assert_json_error(r, 405, "method_not_allowed")
    assert r.headers["Allow"] == "GET"
    assert client.get(path).status_code == 200


# -- the framework's own answers and unforeseen failures ----------------------------------------

@pytest.mark.parametrize("name", HTTP_FUNCTIONS)
@pytest.mark.parametrize("path", ["/robots.txt", "/favicon.ico"])
def test_framework_404s_are_json(function_env, name, path):
    assert_json_error(load_app(name).get(path), 404, "not_found")


@pytest.mark.parametrize("name", HTTP_FUNCTIONS)
def test_misconfiguration_is_a_json_500_with_a_logged_error_id(function_env, monkeypatch, capsys, name):
    monkeypatch.delenv("ARCHSYNC_PROJECT_ID")  # Settings.from_env refuses to start without it
    monkeypatch.delenv("GOOGLE_CLOUD_PROJECT", raising=False)
    monkeypatch.delenv("GCP_PROJECT", raising=False)
    method, path = {"lock_status": ("GET", "/v1/facility-groups/fg-1/exams/e-1/lock"),
                    "admin_api": ("GET", f"{BASE}/gateways")}.get(name, ("POST", "/"))
    r = load_app(name).open(path, method=method, data=b'{"x": 1}' if name == "on_job_result" else None,
                            headers={"Content-Type": "application/json"})
    assert_json_error(r, 500, "internal")
    error_id = r.json["error"]["error_id"]
    logged = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    [entry] = [e for e in logged if e.get("error_id") == error_id]
    assert entry["severity"] == "ERROR" and entry["exception"] == "RuntimeError" and entry["function"] == name


def test_unforeseen_exception_is_a_json_500_that_logs_no_data(admin, monkeypatch, capsys):
    from shared.services.admin import AdminService

    def boom(*_a, **_k):
        raise KeyError("MRN-777 DOE^JANE")  # an exception whose text would leak patient data

    monkeypatch.setattr(AdminService, "list_gateways", boom)
    r = admin.call("GET", f"{BASE}/gateways")
    assert_json_error(r, 500, "internal")
    out = capsys.readouterr().out
    assert r.json["error"]["error_id"] in out and "MRN-777" not in out and "DOE^JANE" not in out
    assert "MRN-777" not in r.get_data(as_text=True)


def test_transient_failure_is_503_with_retry_after(admin):
    import grpc

    admin.emulators["iam"].fail_next("CreateServiceAccountKey", grpc.StatusCode.UNAVAILABLE)
    r = admin.call("POST", f"{BASE}/gateways", json={"name": "Doomed"})
    assert_json_error(r, 503, "unavailable")
    assert r.headers["Retry-After"].isdigit() and int(r.headers["Retry-After"]) >= 1

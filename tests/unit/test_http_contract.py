"""Issue 11 items 7, 8 and 13, the pure parts: the request media types the admin API accepts are
the ones openapi.yaml declares, strict JSON bodies, error mapping (503 + Retry-After, JSON 500),
JWT key families, and the bounded, jittered retries of IAM policy updates."""
from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
import yaml
from google.api_core import exceptions as gexc

from shared import admin_http
from shared.adapters import retrying
from shared.adapters.errors import is_commit_contention, policy_retry_kind
from shared.domain.errors import Contention, MalformedInput, TransientError, Unauthorized
from shared.domain.json_input import parse_json
from shared.http import HttpError, guarded, require_content

DOC = yaml.safe_load((Path(__file__).resolve().parents[2] / "shared/contracts/openapi.yaml").read_text())


def _example(template: str) -> str:
    return re.sub(r"\{[^}]+\}", "x-1", template)


def _operations(tag: str):
    for path, item in DOC["paths"].items():
        for method, op in item.items():
            if method != "parameters" and tag in (op.get("tags") or []):
                yield method.upper(), path, op


def test_admin_request_bodies_are_the_ones_openapi_declares():
    routed = 0
    for method, path, op in _operations("admin"):
        declared = tuple(sorted((op.get("requestBody") or {}).get("content", {})))
        matches = [(p, m) for p, m in admin_http.ROUTES if p.match(_example(path)) and method in m]
        assert len(matches) == 1, (method, path)
        pattern = matches[0][0]
        assert admin_http.REQUEST_BODIES.get((method, pattern.pattern), ()) == declared, (method, path)
        routed += 1
    assert routed == sum(len(m) for _, m in admin_http.ROUTES)  # every route is documented, and vice versa


def test_result_endpoint_declares_json_only():
    assert list(DOC["paths"]["/job-results"]["post"]["requestBody"]["content"]) == ["application/json"]
    assert "requestBody" not in DOC["paths"]["/v1/facility-groups/{facility_group_id}/exams/{exam_id}/lock"]["get"]


def test_every_http_operation_documents_415_or_takes_no_body_and_documents_500():
    for path, item in DOC["paths"].items():
        for method, op in item.items():
            if method == "parameters":
                continue
            if "requestBody" in op:
                assert "415" in op["responses"], (method, path)
            assert "500" in op["responses"] or "default" in op["responses"], (method, path)


@pytest.mark.parametrize("content_type,body,declared,ok", [
    ("application/json", b"{}", ("application/json",), True),
    ("application/json; charset=utf-8", b"{}", ("application/json",), True),
    ('APPLICATION/JSON; Charset="UTF-8"', b"{}", ("application/json",), True),
    ("application/json; charset=iso-8859-1", b"{}", ("application/json",), False),
    ("text/plain", b"{}", ("application/json",), False),
    (None, b"{}", ("application/json",), False),
    ("text/plain", b"", ("application/json",), True),  # nothing sent: the body check answers
    ("application/json", b"{}", (), False),  # the operation takes no body
    ("application/json", b"", (), True),
])
def test_require_content(content_type, body, declared, ok):
    if ok:
        require_content(content_type, body, declared)
    else:
        with pytest.raises(HttpError) as e:
            require_content(content_type, body, declared)
        assert e.value.status == 415


@pytest.mark.parametrize("raw", [b'"\\ud800"', b'{"\\udc00": 1}', b'[NaN]', b'[Infinity]', b'[-1e999]', b'9' * 5000,
                                 b"[" * 100000, b"\xff", b'{"a": 1', b"\xef\xbb\xbf{}", '{"a": 1}'.encode("utf-16")])
def test_parse_json_refuses_what_cannot_be_stored(raw):
    with pytest.raises(MalformedInput):
        parse_json(raw)


def test_parse_json_accepts_ordinary_json():
    assert parse_json(b'{"a": ["\\ud83d\\ude00", 1.5, 10, null, true]}') == {"a": ["\U0001F600", 1.5, 10, None, True]}


def test_guarded_maps_contention_to_503_with_a_short_retry_after():
    def contended():
        raise Contention("Firestore: concurrent updates of one document")

    body, status, headers = guarded(contended, "f")
    assert status == 503 and headers["Retry-After"] == "1" and json.loads(body)["error"]["code"] == "unavailable"
    body, status, headers = guarded(lambda: (_ for _ in ()).throw(TransientError("IAM")), "f")
    assert status == 503 and int(headers["Retry-After"]) >= 1


def test_guarded_answers_unforeseen_errors_with_a_json_500():
    body, status, headers = guarded(lambda: {}["missing"], "f")
    error = json.loads(body)["error"]
    assert status == 500 and headers["Content-Type"] == "application/json"
    assert error["code"] == "internal" and re.fullmatch(r"[0-9a-f]{32}", error["error_id"])


def test_firestore_contention_is_recognised():
    assert is_commit_contention(ValueError("Failed to commit transaction in 5 attempts."))
    assert is_commit_contention(gexc.Aborted("Transaction lock timeout"))
    try:
        try:
            raise ValueError("Failed to commit transaction in 5 attempts.")
        except ValueError:
            raise gexc.InvalidArgument("transaction has expired")  # the rollback failing after it
    except gexc.InvalidArgument as e:
        assert is_commit_contention(e)
    assert not is_commit_contention(ValueError("A document must have an even number of path elements"))


@pytest.mark.parametrize("error,kind", [
    (gexc.PreconditionFailed("412 Precondition Failed"), retrying.STALE_ETAG),
    (gexc.Aborted("There were concurrent policy changes."), retrying.STALE_ETAG),
    (gexc.BadRequest("Service account a@p.iam.gserviceaccount.com does not exist."), retrying.NOT_YET_VISIBLE),
    (gexc.InvalidArgument("Service account a@p.iam.gserviceaccount.com does not exist."), retrying.NOT_YET_VISIBLE),
    (gexc.NotFound("Service account a@p.iam.gserviceaccount.com does not exist."), retrying.NOT_YET_VISIBLE),
    (gexc.NotFound("Resource not found (resource=sub)."), None),
    (gexc.BadRequest("Conditional role bindings require policy version 3."), None),
    (gexc.ServiceUnavailable("down"), None),
])
def test_policy_retry_kinds(error, kind):
    assert policy_retry_kind(error) == kind


class FakeTime:
    def __init__(self):
        self.t, self.sleeps = 0.0, []

    def sleep(self, d: float) -> None:
        self.sleeps.append(d)
        self.t += d


def test_retrying_run_retries_each_kind_within_its_deadline():
    clock = FakeTime()
    failures = [gexc.PreconditionFailed("412")] * 3 + [gexc.BadRequest("x does not exist")] * 4

    def call():
        if failures:
            raise failures.pop(0)
        return "done"

    assert retrying.run(call, policy_retry_kind, retrying.POLICY_RETRIES, "t", sleep=clock.sleep,
                        monotonic=lambda: clock.t, uniform=lambda: 1.0) == "done"
    assert clock.sleeps == pytest.approx([0.05, 0.1, 0.2, 0.2, 0.3, 0.45, 0.675])


def test_retrying_run_gives_up_at_the_deadline_and_never_retries_other_errors():
    clock = FakeTime()

    def never_visible():
        raise gexc.BadRequest("x does not exist")

    with pytest.raises(gexc.BadRequest):
        retrying.run(never_visible, policy_retry_kind, retrying.POLICY_RETRIES, "t", sleep=clock.sleep,
                     monotonic=lambda: clock.t, uniform=lambda: 1.0)
    assert retrying.PROPAGATION_BACKOFF.deadline - 5.0 <= clock.t <= retrying.PROPAGATION_BACKOFF.deadline
    calls = []

    def down():
        calls.append(1)
        raise gexc.ServiceUnavailable("down")

    with pytest.raises(gexc.ServiceUnavailable):
        retrying.run(down, policy_retry_kind, retrying.POLICY_RETRIES, "t", sleep=clock.sleep)
    assert calls == [1]


def test_full_jitter_spreads_concurrent_writers():
    delays = {retrying.ETAG_BACKOFF.delay(3, u / 10) for u in range(10)}
    assert len(delays) == 10 and max(delays) < retrying.ETAG_BACKOFF.initial * 8


# -- admin JWT keys of both families -------------------------------------------------------------

def _keys():
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    keys = {"RS256": rsa.generate_private_key(public_exponent=65537, key_size=2048),
            "ES256": ec.generate_private_key(ec.SECP256R1())}
    pems = {alg: k.public_key().public_bytes(serialization.Encoding.PEM,
                                             serialization.PublicFormat.SubjectPublicKeyInfo).decode()
            for alg, k in keys.items()}
    return keys, pems


def _token(key, alg, **claims):
    import jwt

    now = int(time.time())
    return "Bearer " + jwt.encode({"sub": "u", "iss": "i", "aud": "a", "iat": now, "exp": now + 60,
                                   "facility_groups": ["fg-1"], **claims}, key, algorithm=alg)


def test_jwt_verifier_checks_a_token_only_against_keys_of_its_algorithm():
    from shared.auth import JwtVerifier

    keys, pems = _keys()
    rsa_only = JwtVerifier([pems["RS256"]], "a", "i")
    both = JwtVerifier([pems["RS256"], pems["ES256"]], "a", "i")
    assert rsa_only.verify({"Authorization": _token(keys["RS256"], "RS256")}).user_id == "u"
    with pytest.raises(Unauthorized):  # was TypeError: PyJWT tried the RSA key for ES256
        rsa_only.verify({"Authorization": _token(keys["ES256"], "ES256")})
    for alg, key in keys.items():
        assert both.verify({"Authorization": _token(key, alg)}).facility_group_ids == {"fg-1"}
    for header in ("Bearer x.y.z", "Bearer e30.e30.", "Bearer " + "a" * 10, _token("k" * 32, "HS256")):
        with pytest.raises(Unauthorized):
            both.verify({"Authorization": header})


def test_jwt_verifier_refuses_keys_it_cannot_use_at_start_up():
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from shared.auth import JwtVerifier

    p384 = ec.generate_private_key(ec.SECP384R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    with pytest.raises(RuntimeError, match="P-256"):
        JwtVerifier([p384], "a", "i")

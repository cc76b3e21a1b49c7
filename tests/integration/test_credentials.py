"""Issue 12 item 1, "Real credentials": a key from the IAM stand-in is a usable service-account key.
google-auth's own flow gets access tokens for it at the key's token_uri (the stand-in's token
endpoint); deleted and rotated-out keys get none; the agent downloads with its bearer token."""
from __future__ import annotations

import http.client
import json
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.auth import crypt, jwt
from google.auth.exceptions import RefreshError
from google.auth.transport.requests import Request
from google.cloud import iam_admin_v1
from google.oauth2 import _client, service_account

from devstack.iam_standin import GOOGLE_TOKEN_AUDIENCE, IamStandIn
from devstack.studies import make_study, upload
from gateway_agent.fetch import FetchError, ObjectFetcher
from tests.support import wait_for

READ_ONLY = "https://www.googleapis.com/auth/devstorage.read_only"
STUDY = "1.2.826.0.1.3680043.8.498.9101"


@pytest.fixture
def iam(project_id, emulators) -> IamStandIn:
    return emulators["iam"]


@pytest.fixture
def iam_client(iam) -> iam_admin_v1.IAMClient:
    return iam.iam_client()


def _new_key(iam_client: iam_admin_v1.IAMClient, email: str) -> dict:
    """What the admin API's SA JSON download holds: CreateServiceAccountKey's private_key_data."""
    return json.loads(iam_client.create_service_account_key(name=f"projects/-/serviceAccounts/{email}").private_key_data)


def _delete_key(iam_client: iam_admin_v1.IAMClient, info: dict) -> None:
    iam_client.delete_service_account_key(
        name=f"projects/-/serviceAccounts/{info['client_email']}/keys/{info['private_key_id']}")


def _account(iam_client: iam_admin_v1.IAMClient, project: str, account_id: str = "archsync-gw-1") -> str:
    return iam_client.create_service_account(name=f"projects/{project}", account_id=account_id,
                                             service_account=iam_admin_v1.ServiceAccount(display_name="gw")).email


def _token(info: dict, scopes: tuple[str, ...] = (READ_ONLY,)) -> str:
    creds = service_account.Credentials.from_service_account_info(info, scopes=list(scopes))
    creds.refresh(Request())
    return creds.token


def test_a_downloaded_key_gets_an_access_token_for_its_service_account(iam, iam_client, project_id):
    email = _account(iam_client, project_id)
    info = _new_key(iam_client, email)
    assert info["token_uri"] == iam.token_url and info["type"] == "service_account"
    assert {"project_id", "private_key_id", "private_key", "client_email", "client_id", "auth_uri",
            "auth_provider_x509_cert_url", "client_x509_cert_url", "universe_domain"} <= set(info)
    before = iam.calls["token"]
    creds = service_account.Credentials.from_service_account_info(info, scopes=[READ_ONLY])
    creds.refresh(Request())  # google-auth's own assertion flow, to the key's token_uri
    assert iam.calls["token"] == before + 1 and iam.calls["token_refused"] == 0
    assert creds.token and creds.valid and creds.expiry is not None
    assert iam.principal_for_token(creds.token) == f"serviceAccount:{email}"
    assert iam.principal_for_token("ya29.not-a-token-it-issued") is None
    assert iam.principal_for_token("") is None


def test_no_scope_no_token_as_at_google(iam, iam_client, project_id):
    info = _new_key(iam_client, _account(iam_client, project_id))
    with pytest.raises(RefreshError, match="invalid_scope"):
        service_account.Credentials.from_service_account_info(info).refresh(Request())


def test_a_deleted_key_gets_no_token_but_tokens_it_already_has_live_out_their_lifetime(iam, iam_client, project_id):
    email = _account(iam_client, project_id)
    info = _new_key(iam_client, email)
    token = _token(info)
    _delete_key(iam_client, info)
    with pytest.raises(RefreshError, match=r"invalid_grant: Invalid JWT Signature\."):
        _token(info)
    assert iam.calls["token_refused"] == 1
    assert iam.principal_for_token(token) == f"serviceAccount:{email}"  # Google does not revoke issued tokens
    iam_client.delete_service_account(name=f"projects/-/serviceAccounts/{email}")
    assert iam.principal_for_token(token) is None  # ... but a deleted account's tokens are worthless
    _account(iam_client, project_id)  # the same email again is another account
    assert iam.principal_for_token(token) is None


def test_after_rotation_the_new_key_works_and_the_old_is_refused(iam, iam_client, project_id):
    email = _account(iam_client, project_id)
    old = _new_key(iam_client, email)
    assert iam.principal_for_token(_token(old)) == f"serviceAccount:{email}"
    new = _new_key(iam_client, email)  # rotation: new key first, then the old one goes
    _delete_key(iam_client, old)
    assert iam.principal_for_token(_token(new)) == f"serviceAccount:{email}"
    with pytest.raises(RefreshError, match="Invalid JWT Signature"):
        _token(old)


def _assertion(info: dict, private_pem: str, **claims: Any) -> str:
    now = int(time.time())
    payload = {"iss": info["client_email"], "aud": GOOGLE_TOKEN_AUDIENCE, "scope": READ_ONLY,
               "iat": now, "exp": now + 3600, **claims}
    payload = {k: v for k, v in payload.items() if v is not None}
    return jwt.encode(crypt.RSASigner.from_string(private_pem, info["private_key_id"]), payload).decode()


def _other_pem() -> str:
    return rsa.generate_private_key(public_exponent=65537, key_size=1024).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()


@pytest.mark.parametrize("forge,why", [
    (lambda info: _assertion(info, _other_pem()), "Invalid JWT Signature."),  # right kid, another RSA key
    (lambda info: _assertion(info, info["private_key"], iss="someone-else@x.iam.gserviceaccount.com"),
     "Invalid JWT Signature."),  # the key is not that account's
    (lambda info: _assertion(info, info["private_key"], aud="https://example.com/token"), "Failed audience check"),
    (lambda info: _assertion(info, info["private_key"], iat=int(time.time()) - 7200, exp=int(time.time()) - 3600),
     "short-lived token"),  # expired assertion
    (lambda info: _assertion(info, info["private_key"], exp=int(time.time()) + 7200), "short-lived token"),
    (lambda info: _assertion(info, info["private_key"], iat=int(time.time()) + 600), "short-lived token"),
    (lambda info: _assertion(info, info["private_key"], sub="someone@hospital.example"), "unauthorized"),
    (lambda info: "not.a-jwt", "Invalid JWT"),
])
def test_the_token_endpoint_refuses_bad_assertions(iam, iam_client, project_id, forge, why):
    info = _new_key(iam_client, _account(iam_client, project_id))
    with pytest.raises(RefreshError, match=why.replace(".", r"\.")):
        _client.jwt_grant(Request(), iam.token_url, forge(info), can_retry=False)
    assert iam.calls["token_refused"] == 1
    assert iam.principal_for_token(forge(info)) is None


def test_the_token_endpoint_answers_like_google_to_bad_requests(iam):
    url = urllib.parse.urlsplit(iam.token_url)

    def post(body: str, content_type: str = "application/x-www-form-urlencoded", path: str = url.path):
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
        try:
            conn.request("POST", path, body=body, headers={"Content-Type": content_type})
            resp = conn.getresponse()
            return resp.status, json.loads(resp.read())
        finally:
            conn.close()

    assert post("grant_type=refresh_token&refresh_token=x") == (
        400, {"error": "unsupported_grant_type", "error_description": "Invalid grant_type: refresh_token"})
    assert post("grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer")[1]["error"] == "invalid_request"
    assert post('{"assertion": "x"}', "application/json")[1]["error"] == "invalid_request"
    assert post("", path="/elsewhere")[0] == 404


def test_an_expired_access_token_is_no_principal(iam, iam_client, project_id, monkeypatch):
    monkeypatch.setattr(iam, "token_lifetime_seconds", 5)
    info = _new_key(iam_client, _account(iam_client, project_id))
    token = _token(info)
    assert iam.principal_for_token(token) is not None
    wait_for(lambda: iam.principal_for_token(token) is None, 60, "the token to expire")


def test_reset_forgets_issued_tokens(iam, iam_client, project_id):
    token = _token(_new_key(iam_client, _account(iam_client, project_id)))
    iam.reset()
    assert iam.principal_for_token(token) is None


def test_self_signed_jwts_of_gapic_clients_name_the_account_while_the_key_exists(iam, iam_client, project_id):
    email = _account(iam_client, project_id)
    info = _new_key(iam_client, email)
    before = iam.calls["token"]
    scoped = service_account.Credentials.from_service_account_info(
        info, scopes=["https://www.googleapis.com/auth/pubsub"], always_use_jwt_access=True)
    scoped.refresh(Request())
    audience = service_account.Credentials.from_service_account_info(info)
    audience._create_self_signed_jwt("https://pubsub.googleapis.com/")  # what a GAPIC client does without scopes
    audience.refresh(Request())
    assert iam.calls["token"] == before  # signed locally: no token request
    for creds in (scoped, audience):
        assert iam.principal_for_token(creds.token) == f"serviceAccount:{email}"
    # An assertion for the token endpoint (no sub) is not a bearer token; nor is a JWT with sub != iss.
    assert iam.principal_for_token(_assertion(info, info["private_key"])) is None
    assert iam.principal_for_token(_assertion(info, info["private_key"], sub=email)) == f"serviceAccount:{email}"
    assert iam.principal_for_token(_assertion(info, info["private_key"], sub="other@x.example")) is None
    expired = _assertion(info, info["private_key"], sub=email, iat=int(time.time()) - 120, exp=int(time.time()) - 60)
    assert iam.principal_for_token(expired) is None
    _delete_key(iam_client, info)
    assert iam.principal_for_token(scoped.token) is None  # signed by a key that no longer exists


def test_harness_identities(iam, project_id):
    info = iam.mint_key_info(project_id, "test-owner")
    again = iam.mint_key_info(project_id, "test-owner")  # the account exists: just another key
    assert info["client_email"] == again["client_email"] == f"test-owner@{project_id}.iam.gserviceaccount.com"
    assert info["private_key_id"] != again["private_key_id"] and len(iam.keys[info["client_email"]]) == 2
    creds = iam.credentials(project_id, "fn-runtime")
    creds.refresh(Request())
    assert iam.principal_for_token(creds.token) == f"serviceAccount:fn-runtime@{project_id}.iam.gserviceaccount.com"
    assert iam.calls["CreateServiceAccount"] == 0  # harness identities are not the code under test's calls
    with pytest.raises(ValueError, match="Invalid account id"):
        iam.mint_key_info(project_id, "X")


class _RecordingRelay:
    """Forwards every request to fake-gcs-server and records (method, path, Authorization)."""

    def __init__(self, upstream: str):
        target = urllib.parse.urlsplit(upstream)
        self.seen: list[tuple[str, str, str]] = []
        relay = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                relay.seen.append((self.command, self.path, self.headers.get("Authorization", "")))
                conn = http.client.HTTPConnection(target.hostname, target.port, timeout=60)
                try:
                    conn.request(self.command, self.path, body=body, headers={
                        k: v for k, v in self.headers.items() if k.lower() not in ("connection", "host")})
                    resp = conn.getresponse()
                    data = resp.read()
                    self.send_response(resp.status)
                    for k, v in resp.getheaders():
                        if k.lower() not in ("connection", "transfer-encoding", "content-length"):
                            self.send_header(k, v)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                finally:
                    conn.close()

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _forward

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def relay(emulators):
    r = _RecordingRelay(emulators["gcs"])  # the agent's storage_endpoint in these tests
    yield r
    r.stop()


def test_the_agent_downloads_with_its_service_accounts_bearer_token(stack, relay, tmp_path):
    iam = stack.emulators["iam"]
    info = iam.mint_key_info(stack.project, "archsync-gw-1")
    stack.grant_gateway_reads(info["client_email"])
    files = make_study(STUDY, 3)
    uri = f"gs://{stack.study_bucket}/fg-1/{STUDY}/"
    upload(stack.gcs, uri, files)
    before = iam.calls["token"]
    paths = ObjectFetcher(info, stack.project, relay.url).fetch_prefix(uri, tmp_path / "spool")
    assert sorted(p.read_bytes() for p in paths) == sorted(f.data for f in files)
    assert iam.calls["token"] > before and iam.calls["token_refused"] == 0
    assert len(relay.seen) >= 4  # one listing, three downloads
    for _method, _path, authorization in relay.seen:
        scheme, _, token = authorization.partition(" ")
        assert scheme == "Bearer" and iam.principal_for_token(token) == f"serviceAccount:{info['client_email']}"


def test_a_refused_key_fails_the_fetch_with_a_reason_not_a_crash(stack, relay, tmp_path):
    iam = stack.emulators["iam"]
    info = iam.mint_key_info(stack.project, "archsync-gw-1")
    upload(stack.gcs, f"gs://{stack.study_bucket}/fg-1/{STUDY}/", make_study(STUDY, 1))
    iam.iam_client().delete_service_account_key(
        name=f"projects/-/serviceAccounts/{info['client_email']}/keys/{info['private_key_id']}")
    with pytest.raises(FetchError) as e:
        ObjectFetcher(info, stack.project, relay.url).fetch_prefix(f"gs://{stack.study_bucket}/fg-1/{STUDY}/", tmp_path / "spool")
    assert not e.value.retryable and "service-account key was refused" in e.value.reason
    assert "Invalid JWT Signature" in e.value.reason and "PRIVATE KEY" not in e.value.reason
    assert relay.seen == []  # nothing reached storage without a token

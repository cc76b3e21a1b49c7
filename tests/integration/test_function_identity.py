"""The functions call Cloud Storage as their own runtime service accounts (issue 12 item 2): with
ARCHSYNC_LOCAL_CREDENTIALS_DIR (the function_identities fixture) every storage request an entry
point sends carries an access token obtained with that function's key, the key infra/'s account id
got from the IAM stand-in.

A small relay sits in front of the bucket-IAM stand-in (which relays objects on to fake-gcs-server):
it is the keys' OAuth token endpoint (a JWT-bearer grant, RFC 7523, whose assertion it verifies
against the public key the IAM stand-in holds for the key id) and records, for every storage
request, whose token it carried."""
from __future__ import annotations

import http.client
import json
import os
import secrets
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator, Optional

import jwt
import pytest

from shared.domain.models import Facility, FacilityGroup
from shared.settings import Settings
from shared.signing import sign_headers
from tests.support import load_app, result_body

BASE = "/v1/facility-groups/fg-1"
# google-auth's assertions name Google's token endpoint as audience whatever the key's token_uri.
GOOGLE_TOKEN_AUDIENCE = "https://oauth2.googleapis.com/token"


class IdentityRelay:
    """POST /token: JWT-bearer grant -> access token; anything else: relayed to ``upstream`` and
    recorded as (method, path, service account email of the bearer token, or None)."""

    def __init__(self, upstream: str, iam) -> None:
        self.upstream = urllib.parse.urlsplit(upstream)
        self.iam = iam
        self.tokens: dict[str, str] = {}
        self.requests: list[tuple[str, str, Optional[str]]] = []
        self.grants: list[str] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def grant(self, body: bytes) -> tuple[int, dict]:
        form = urllib.parse.parse_qs(body.decode())
        if form.get("grant_type") != ["urn:ietf:params:oauth:grant-type:jwt-bearer"] or "assertion" not in form:
            return 400, {"error": "unsupported_grant_type"}
        assertion = form["assertion"][0]
        try:
            kid = jwt.get_unverified_header(assertion)["kid"]
            email = jwt.decode(assertion, options={"verify_signature": False})["iss"]
            key = self.iam.iam_client().get_service_account_key(request={
                "name": f"projects/-/serviceAccounts/{email}/keys/{kid}", "public_key_type": "TYPE_RAW_PUBLIC_KEY"})
            claims = jwt.decode(assertion, bytes(key.public_key_data), algorithms=["RS256"],
                                audience=GOOGLE_TOKEN_AUDIENCE)
        except Exception as e:  # any unverifiable assertion is refused, as Google's endpoint does
            return 400, {"error": "invalid_grant", "error_description": f"{type(e).__name__}: {e}"}
        token = secrets.token_urlsafe(24)
        with self._lock:
            self.tokens[token] = claims["iss"]
            self.grants.append(claims["iss"])
        return 200, {"access_token": token, "expires_in": 3600, "token_type": "Bearer"}

    def _handler(self):
        relay = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _body(self) -> bytes:
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _answer(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
                self.send_response(status)
                for k, v in headers:
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _relay(self) -> None:
                body = self._body()
                if self.command == "POST" and self.path == "/token":
                    status, answer = relay.grant(body)
                    self._answer(status, [("Content-Type", "application/json")], json.dumps(answer).encode())
                    return
                auth = self.headers.get("Authorization", "")
                who = relay.tokens.get(auth[len("Bearer "):]) if auth.startswith("Bearer ") else None
                with relay._lock:
                    relay.requests.append((self.command, self.path, who))
                conn = http.client.HTTPConnection(relay.upstream.hostname, relay.upstream.port, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                conn.close()
                self._answer(resp.status, resp.getheaders(), data)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _relay

        return Handler


@pytest.fixture
def relay(stack, emulators, monkeypatch) -> Iterator[IdentityRelay]:
    # After `stack`: the test's own storage client keeps talking to fake-gcs-server directly.
    r = IdentityRelay(emulators["bucket_iam"].url, emulators["iam"])
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", r.url)
    monkeypatch.setenv("ARCHSYNC_STORAGE_IAM_EMULATOR_HOST", r.url)
    yield r
    r.stop()


@pytest.fixture
def function_token_uri(relay) -> str:
    return f"{relay.url}/token"


def _email(account_id: str, project: str) -> str:
    return f"{account_id}@{project}.iam.gserviceaccount.com"


def test_functions_call_storage_with_their_own_runtime_service_accounts(stack, admin_env, relay, function_identities):
    project = stack.project
    assert set(function_identities) >= {"admin_api", "on_job_result", "on_study_changed"}
    stack.store.save_facility_group(FacilityGroup("fg-1", "fg-1"))
    stack.store.save_facility(Facility("fac-a", "fg-1", "Facility A"))
    stack.topic("archsync-gateway-dead-letter")
    admin = load_app("admin_api")
    headers = {**admin_env.headers(("fg-1",)), "Content-Type": "application/json"}

    # admin_api provisions a gateway (keys into the key bucket, conditional grants on the objects
    # and study buckets' IAM policies) and serves the key download: all as archsync-admin-api.
    r = admin.post(f"{BASE}/gateways", data=json.dumps({"name": "Main gateway"}), headers=headers)
    assert r.status_code == 201, r.json
    gw = r.json
    r = admin.get(f"{BASE}/gateways/{gw['id']}/result-endpoint-key", headers=headers)
    assert r.status_code == 200
    result_key = r.data
    admin_calls = list(relay.requests)
    admin_sa = _email("archsync-admin-api", project)
    assert admin_calls and {who for _, _, who in admin_calls} == {admin_sa}, admin_calls
    paths = [(m, urllib.parse.urlsplit(p).path) for m, p, _ in admin_calls]
    assert ("PUT", f"/storage/v1/b/objects-{project}/iam") in paths
    assert ("PUT", f"/storage/v1/b/studies-{project}/iam") in paths
    assert ("POST", f"/upload/storage/v1/b/keys-{project}/o") in paths
    assert any(m == "GET" and p.startswith(f"/download/storage/v1/b/keys-{project}/o/") for m, p in paths)

    # on_job_result reads that Result Endpoint key as archsync-job-result: a signed callback for
    # an unknown job is authenticated with the key read from the key bucket (else 401), then 404.
    results = load_app("on_job_result")
    body = result_body("archive-" + "0" * 32, "COMPLETED")
    before = len(relay.requests)
    r = results.post("/", data=body, headers=sign_headers(result_key, "fg-1", gw["id"], body, int(time.time())))
    assert r.status_code == 404, r.json
    job_result_calls = relay.requests[before:]
    assert job_result_calls and {who for _, _, who in job_result_calls} == {_email("archsync-job-result", project)}

    # Each function got its token with its own key (assertions verified against the IAM stand-in).
    assert set(relay.grants) == {admin_sa, _email("archsync-job-result", project)}


def test_wiring_builds_every_storage_client_with_the_functions_key(function_env, function_identities, emulators):
    from shared import wiring

    for function in ("admin_api", "on_study_changed", "sweep_jobs"):
        settings = Settings.from_env(os.environ, function=function)
        expected = json.loads(function_identities[function].read_text())["client_email"]
        assert expected == _email({"admin_api": "archsync-admin-api", "on_study_changed": "archsync-study-changed",
                                   "sweep_jobs": "archsync-sweep-jobs"}[function], function_env)
        clients = [wiring.key_vault(settings).client, wiring.object_store(settings).client,
                   wiring.bucket_iam(settings).client]
        assert all(c._credentials.service_account_email == expected for c in clients)
        assert wiring.bucket_iam(settings).client._connection.API_BASE_URL == settings.storage_iam_emulator_host

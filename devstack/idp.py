"""A small stand-in for the platform's identity provider (local stack, demo and browser tests):
signs the administrators' JWTs the admin API verifies (RS256, facility_groups claim), and serves
the OAuth 2.0 authorization code flow with PKCE (RFC 6749 4.1, RFC 7636 S256) the console signs in
with: GET /authorize shows a sign-in page (pick a user; no script), POST /authorize redirects back
with a one-time code (60 s), POST /token exchanges it, with the code verifier, for an access token
(CORS for the registered console origin). Codes and tokens are never logged."""
from __future__ import annotations

import base64
import hashlib
import html
import json
import secrets
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Optional
from urllib.parse import parse_qs, urlencode, urlsplit

CODE_SECONDS = 60


@dataclass(frozen=True)
class User:
    sub: str
    name: str
    groups: tuple[str, ...]


class DevIdp:
    ISSUER, AUDIENCE = "https://idp.demo.local", "archsync-admin-api"
    CLIENT_ID = "archsync-console"

    def __init__(self, users: tuple[User, ...] = (), token_seconds: int = 3600):
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.public_pem = self._key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
        self.users = {u.sub: u for u in users}
        self.redirect_uris: set[str] = set()
        self.token_seconds = token_seconds
        self._codes: dict[str, dict] = {}
        self._lock = threading.Lock()
        self._server: Optional[ThreadingHTTPServer] = None
        self.url = ""

    # -- tokens ------------------------------------------------------------------------------
    def token(self, user: Optional[User] = None, *, sub: str = "demo-admin", name: str = "Demo Admin",
              groups: tuple[str, ...] = ()) -> str:
        import jwt

        user = user or User(sub, name, groups)
        now = int(time.time())
        return jwt.encode({"sub": user.sub, "name": user.name, "iss": self.ISSUER, "aud": self.AUDIENCE, "iat": now,
                           "exp": now + self.token_seconds, "facility_groups": list(user.groups)}, self._key,
                          algorithm="RS256")

    # -- the OAuth endpoints ---------------------------------------------------------------------
    def register_redirect(self, uri: str) -> None:
        """Exact redirect URIs only (RFC 6749 3.1.2.2; no prefix matching)."""
        self.redirect_uris.add(uri)

    @property
    def authorize_url(self) -> str:
        return f"{self.url}/authorize"

    @property
    def token_url(self) -> str:
        return f"{self.url}/token"

    def start(self, port: int = 0) -> "DevIdp":
        idp = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # request lines would carry codes: never logged
                pass

            def _send(self, status: int, body: bytes, ctype: str, extra: Optional[dict] = None) -> None:
                self.send_response(status)
                headers = {"Content-Type": ctype, "Cache-Control": "no-store", "X-Content-Type-Options": "nosniff",
                           "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
                           "Referrer-Policy": "no-referrer", "Content-Length": str(len(body)), **(extra or {})}
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def _form(self) -> dict[str, str]:
                n = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(min(n, 65536)).decode("utf-8", "replace")
                return {k: v[0] for k, v in parse_qs(raw).items()}

            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                if parts.path != "/authorize":
                    return self._send(404, b"not found", "text/plain")
                q = {k: v[0] for k, v in parse_qs(parts.query).items()}
                problem = idp._check_request(q)
                if problem:
                    return self._send(400, problem.encode(), "text/plain; charset=utf-8")
                hidden = "".join(f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(q[k])}">'
                                 for k in ("client_id", "redirect_uri", "state", "code_challenge", "code_challenge_method",
                                           "response_type", "scope") if k in q)
                buttons = "".join(f'<button name="user" value="{html.escape(u.sub)}">Sign in as {html.escape(u.name)}</button> '
                                  for u in idp.users.values())
                page = (f"<!doctype html><title>Sign in</title><h1>Platform sign-in (local stand-in)</h1>"
                        f"<form method=post action=/authorize>{hidden}{buttons}</form>")
                self._send(200, page.encode(), "text/html; charset=utf-8")

            def do_POST(self) -> None:
                path = urlsplit(self.path).path
                form = self._form()
                if path == "/authorize":
                    problem = idp._check_request(form)
                    user = idp.users.get(form.get("user", ""))
                    if problem or user is None:
                        return self._send(400, (problem or "unknown user").encode(), "text/plain; charset=utf-8")
                    code = idp._issue_code(form, user)
                    location = form["redirect_uri"] + "?" + urlencode({"code": code, "state": form.get("state", "")})
                    return self._send(303, b"", "text/plain", {"Location": location})
                if path == "/token":
                    status, body = idp._exchange(form)
                    cors = {}
                    origin = self.headers.get("Origin")
                    if origin and origin in {f"{urlsplit(u).scheme}://{urlsplit(u).netloc}" for u in idp.redirect_uris}:
                        cors = {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}
                    return self._send(status, json.dumps(body).encode(), "application/json", cors)
                self._send(404, b"not found", "text/plain")

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()

    # -- flow ------------------------------------------------------------------------------------
    def _check_request(self, q: dict[str, str]) -> Optional[str]:
        if q.get("response_type") != "code":
            return "response_type must be code"
        if q.get("client_id") != self.CLIENT_ID:
            return "unknown client_id"
        if q.get("redirect_uri") not in self.redirect_uris:
            return "redirect_uri is not registered for this client"
        if q.get("code_challenge_method") != "S256" or not 43 <= len(q.get("code_challenge", "")) <= 128:
            return "PKCE with S256 is required"
        return None

    def _issue_code(self, q: dict[str, str], user: User) -> str:
        code = secrets.token_urlsafe(32)
        with self._lock:
            self._codes[code] = {"client_id": q["client_id"], "redirect_uri": q["redirect_uri"],
                                 "challenge": q["code_challenge"], "user": user, "expires": time.monotonic() + CODE_SECONDS}
        return code

    def _exchange(self, form: dict[str, str]) -> tuple[int, dict]:
        if form.get("grant_type") != "authorization_code":
            return 400, {"error": "unsupported_grant_type"}
        with self._lock:
            grant = self._codes.pop(form.get("code", ""), None)  # one use only
        verifier = form.get("code_verifier", "")
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")
        if (grant is None or grant["expires"] < time.monotonic() or grant["client_id"] != form.get("client_id")
                or grant["redirect_uri"] != form.get("redirect_uri") or not secrets.compare_digest(challenge, grant["challenge"])):
            return 400, {"error": "invalid_grant"}
        return 200, {"access_token": self.token(grant["user"]), "token_type": "Bearer", "expires_in": self.token_seconds}

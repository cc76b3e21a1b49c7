"""The Gateway Management console (issue 14): static HTML/CSS/JS served by ``admin_api`` itself
under /console/, on the admin API's own origin, so the browser sends the user's JWT only to the
API that checks it. Files come from a flat allow-list (the console directory's own files: no path
is ever joined from the request), every answer carries a strict Content-Security-Policy (no inline
script or style, nothing but this origin and the identity provider's token endpoint), and
/console/config.json tells the page where the platform's identity provider is (docs/console.md)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional
from urllib.parse import urlsplit

from .http import HttpError, Response

PREFIX = "/console"
CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                 ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml", ".txt": "text/plain; charset=utf-8"}


@dataclass(frozen=True)
class ConsoleConfig:
    """Where the console signs users in: the platform's identity provider, OAuth 2.0 authorization
    code flow with PKCE (RFC 7636) for a public client. Empty URLs: sign-in is not configured."""

    authorize_url: str = ""
    token_url: str = ""
    client_id: str = ""
    scope: str = "openid"

    def as_json(self) -> dict:
        return {"authorize_url": self.authorize_url, "token_url": self.token_url, "client_id": self.client_id,
                "scope": self.scope, "configured": bool(self.authorize_url and self.token_url and self.client_id)}


def is_console_path(path: str) -> bool:
    return path == PREFIX or path.startswith(PREFIX + "/")


def _origin(url: str) -> Optional[str]:
    parts = urlsplit(url)
    if parts.scheme in ("http", "https") and parts.netloc:
        return f"{parts.scheme}://{parts.netloc}"
    return None


def security_headers(config: ConsoleConfig) -> dict[str, str]:
    """CSP without 'unsafe-inline' or 'unsafe-eval': scripts and styles only from this origin;
    fetch only to this origin and the token endpoint; no framing (clickjacking), no base or form
    targets elsewhere, no referrer (the one-time authorization code is in the URL for a moment)."""
    connect = " ".join(["'self'", *([o] if (o := _origin(config.token_url)) else [])])
    csp = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
           f"connect-src {connect}; form-action 'none'; frame-ancestors 'none'; base-uri 'none'")
    return {"Content-Security-Policy": csp, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
            "X-Frame-Options": "DENY", "Cross-Origin-Opener-Policy": "same-origin", "Cache-Control": "no-cache"}


def serve(static_dir: Path, config: ConsoleConfig, method: str, path: str) -> Response:
    if method not in ("GET", "HEAD"):
        raise HttpError(405, "method_not_allowed", "allowed: GET, HEAD", headers={"Allow": "GET, HEAD"})
    headers = security_headers(config)
    if path == PREFIX:  # relative, so it also works under a path prefix (a gateway in front)
        return "", 301, {**headers, "Location": "console/"}
    name = path[len(PREFIX) + 1:] or "index.html"
    if name == "config.json":
        return json.dumps(config.as_json()), 200, {**headers, "Content-Type": "application/json", "Cache-Control": "no-store"}
    files = {p.name: p for p in static_dir.iterdir() if p.is_file() and p.suffix in CONTENT_TYPES}
    target = files.get(name)
    if target is None:
        raise HttpError(404, "not_found", "no such console file")
    return target.read_bytes(), 200, {**headers, "Content-Type": CONTENT_TYPES[target.suffix]}

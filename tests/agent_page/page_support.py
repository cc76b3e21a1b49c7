"""Helpers for the admin page tests: a config file with an admin page, an agent and its page, and a
tiny HTTP client that behaves like a browser's form posts (cookie jar, Origin header)."""
from __future__ import annotations

import http.client
import json
import re
from pathlib import Path
from typing import Any, Optional
from urllib.parse import urlencode, urlsplit

from gateway_agent.admin.passwords import hash_password

PASSWORD = "correct horse battery staple"
# Hashing at the default cost takes ~0.1 s; tests hash once.
PASSWORD_HASH = hash_password(PASSWORD, log2_n=12)  # cheaper than the default: tests sign in often


def write_config(path: Path, deliveries: Optional[list] = None, **extra: Any) -> Path:
    raw = {"job_deliveries": deliveries or [], "admin_page": {"password_hash": PASSWORD_HASH, "port": 0}, **extra}
    path.write_text(json.dumps(raw))
    path.chmod(0o600)
    return path


class Client:
    """Form posts as a browser sends them: cookies kept, Origin set to the page's own origin."""

    def __init__(self, base: str):
        self.base = base
        parts = urlsplit(base)
        self.host, self.port = parts.hostname, parts.port
        self.cookies: dict[str, str] = {}

    def request(self, method: str, path: str, form: Optional[dict] = None, headers: Optional[dict] = None,
                origin: Optional[str] = "self") -> tuple[int, dict, str]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        h = {"Host": f"{self.host}:{self.port}"}
        if self.cookies:
            h["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        body = None
        if form is not None:
            body = urlencode(form)
            h["Content-Type"] = "application/x-www-form-urlencoded"
        if method == "POST" and origin is not None:
            h["Origin"] = self.base if origin == "self" else origin
        h.update(headers or {})
        conn.request(method, path, body=body, headers=h)
        resp = conn.getresponse()
        text = resp.read().decode()
        for value in resp.headers.get_all("Set-Cookie") or []:
            name, _, rest = value.partition("=")
            val = rest.split(";")[0]
            if "Max-Age=0" in value:
                self.cookies.pop(name, None)
            else:
                self.cookies[name] = val
        conn.close()
        return resp.status, dict(resp.headers), text

    def csrf(self, path: str) -> tuple[str, str]:
        status, _, text = self.request("GET", path)
        assert status == 200, (status, text[:300])
        return csrf_in(text), text

    def sign_in(self, password: str = PASSWORD) -> int:
        token, _ = self.csrf("/signin")
        status, headers, _ = self.request("POST", "/signin", {"csrf": token, "password": password})
        return status


def csrf_in(text: str) -> str:
    m = re.search(r'name="csrf" value="([^"]+)"', text)
    assert m, "no CSRF token in the page"
    return m.group(1)


def version_in(text: str) -> str:
    m = re.search(r'name="version" value="([^"]+)"', text)
    assert m, "no version in the page"
    return m.group(1)

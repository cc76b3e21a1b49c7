"""The admin page's HTTP server (standard library ``http.server``), docs/gateway-agent.md "Admin page".

Security (issue 14 item 3):
- Served on loopback unless the config allows otherwise (and then only over TLS); the Host header
  must name this server (a DNS-rebinding page cannot reach it through another name).
- Sign-in with the password whose salted scrypt hash is in the config (constant-time compare);
  failed sign-ins are rate-limited per client and overall. A session is a random id in a cookie
  (HttpOnly, SameSite=Strict, Secure over TLS), replaced at sign-in, ended by idleness.
- Every POST needs the session's synchronizer token (a hidden field, compared in constant time)
  and an Origin (or, without one, a Referer) of this server.
- Content-Security-Policy without inline script (default-src 'none'; script-src 'self'; ...);
  every value from data is escaped (pages.py). Nothing secret goes into a URL, a log or a page:
  secrets are write-only fields.
"""
from __future__ import annotations

import hmac
import http.cookies
import logging
import re
import secrets
import ssl
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional
from urllib.parse import parse_qs, urlsplit

from ..config import AdminPage, ConfigError, JobDelivery, parse
from ..linktest import LinkTest
from . import pages
from .config_file import ConfigFile, StaleConfig
from .forms import SECRETS, DeliveryForm
from .passwords import verify_password

if TYPE_CHECKING:
    from ..agent import Agent

log = logging.getLogger("gateway_agent.admin")

COOKIE = "archsync_gateway_admin"
MAX_FORM = 256 * 1024
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; form-action 'self'; "
       "frame-ancestors 'none'; base-uri 'none'")
STATIC = Path(__file__).parent / "static"
_DELIVERY = re.compile(r"/platform/deliveries/(\d{1,4})/(edit|activate|deactivate)")


@dataclass
class Session:
    sid: str
    csrf: str
    signed_in: bool
    expires: float
    drafts: dict[str, dict[str, str]] = field(default_factory=dict)  # secrets pasted in a failed attempt, per form
    flashes: list[tuple[str, str]] = field(default_factory=list)


class Sessions:
    def __init__(self, minutes: float, now: Callable[[], float] = time.monotonic, limit: int = 1000):
        self._ttl, self._now, self._limit = minutes * 60, now, limit
        self._items: dict[str, Session] = {}
        self._lock = threading.Lock()

    def new(self, signed_in: bool) -> Session:
        s = Session(secrets.token_urlsafe(32), secrets.token_urlsafe(32), signed_in, self._now() + self._ttl)
        with self._lock:
            self._purge()
            while len(self._items) >= self._limit:
                self._items.pop(next(iter(self._items)))
            self._items[s.sid] = s
        return s

    def get(self, sid: Optional[str]) -> Optional[Session]:
        if not sid:
            return None
        with self._lock:
            s = self._items.get(sid)
            if s is None or s.expires <= self._now():
                self._items.pop(sid, None)
                return None
            s.expires = self._now() + self._ttl  # idle timeout
            return s

    def drop(self, sid: str) -> None:
        with self._lock:
            self._items.pop(sid, None)

    def _purge(self) -> None:
        now = self._now()
        for sid in [k for k, s in self._items.items() if s.expires <= now]:
            del self._items[sid]


class SignInLimiter:
    """At most ``per_client`` failed sign-ins per client address within ``window`` seconds, and
    ``overall`` from all clients: then sign-ins are refused (429) until the oldest failure ages out,
    whatever the password (a guess cannot tell whether it was right)."""

    def __init__(self, per_client: int = 5, overall: int = 20, window: float = 300.0,
                 now: Callable[[], float] = time.monotonic):
        self._per, self._all, self._window, self._now = per_client, overall, window, now
        self._failures: dict[str, deque] = {}
        self._global: deque = deque()
        self._lock = threading.Lock()

    def retry_after(self, client: str) -> Optional[int]:
        with self._lock:
            now = self._now()
            waits = []
            for q, limit in ((self._failures.get(client, deque()), self._per), (self._global, self._all)):
                while q and q[0] <= now - self._window:
                    q.popleft()
                if len(q) >= limit:
                    waits.append(q[0] + self._window - now)
            return max(1, int(max(waits)) + 1) if waits else None

    def failed(self, client: str) -> None:
        with self._lock:
            now = self._now()
            self._failures.setdefault(client, deque()).append(now)
            self._global.append(now)
            if len(self._failures) > 10_000:
                self._failures.clear()

    def succeeded(self, client: str) -> None:
        with self._lock:
            self._failures.pop(client, None)


class AdminServer:
    def __init__(self, agent: "Agent", config_file: ConfigFile, page: AdminPage, link_test: Optional[LinkTest] = None):
        self.agent, self.config_file, self.page = agent, config_file, page
        self.link_test = link_test or LinkTest(agent.cfg.pubsub_endpoint, timeout=agent.cfg.network_timeout_seconds,
                                               pull_guard=agent.pull_guard)
        self.sessions = Sessions(page.session_minutes)
        self.limiter = SignInLimiter()
        self._httpd: Optional[ThreadingHTTPServer] = None
        self._thread: Optional[threading.Thread] = None

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> "AdminServer":
        server = self

        class Handler(_Handler):
            admin = server

        httpd = ThreadingHTTPServer((self.page.bind, self.page.port), Handler)
        httpd.daemon_threads = True
        if self.page.tls:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            ctx.load_cert_chain(self.page.tls_cert_file, self.page.tls_key_file)
            httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, name="admin-page", daemon=True)
        self._thread.start()
        log.info("admin page listening", extra={"url": self.url})
        return self

    @property
    def port(self) -> int:
        assert self._httpd is not None
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        host = self.page.bind if ":" not in self.page.bind else f"[{self.page.bind}]"
        return f"{'https' if self.page.tls else 'http'}://{host}:{self.port}"

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def allowed_hosts(self) -> set[str]:
        names = {"127.0.0.1", "localhost", "[::1]", self.page.bind if ":" not in self.page.bind else f"[{self.page.bind}]",
                 *self.page.host_names}
        return {f"{n}:{self.port}".lower() for n in names}

    # -- deliveries ---------------------------------------------------------------------------
    def status_of(self, raw: dict) -> str:
        from ..agent import delivery_fingerprint

        if raw.get("active") is not True:
            return "inactive"
        try:
            delivery = _delivery_of(raw)
        except ConfigError:
            return "error: invalid settings"
        return self.agent.delivery_status().get(delivery_fingerprint(delivery), "starting")

    def save(self, change: Callable[[dict], None], version: Optional[str]) -> None:
        cfg = self.config_file.update(change, version)
        self.agent.apply(cfg)


def _delivery_of(raw: dict) -> JobDelivery:
    return parse({"job_deliveries": [raw]}).deliveries[0]


class _Handler(BaseHTTPRequestHandler):
    admin: AdminServer
    server_version = "gateway-admin"
    sys_version = ""
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the page logs its own JSON lines
        pass

    # -- plumbing -----------------------------------------------------------------------------
    def _send(self, status: int, body: str | bytes, content_type: str = "text/html; charset=utf-8",
              headers: Optional[dict[str, str]] = None, cookie: Optional[str] = None) -> None:
        data = body.encode() if isinstance(body, str) else body
        self.send_response(status)
        for k, v in {"Content-Type": content_type, "Content-Length": str(len(data)), "Content-Security-Policy": CSP,
                     "X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY", "Referrer-Policy": "same-origin",
                     "Cross-Origin-Opener-Policy": "same-origin", "Cache-Control": "no-store", **(headers or {})}.items():
            self.send_header(k, v)
        if cookie is not None:
            self.send_header("Set-Cookie", cookie)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _cookie(self, sid: str, max_age: Optional[int] = None) -> str:
        parts = [f"{COOKIE}={sid}", "Path=/", "HttpOnly", "SameSite=Strict"]
        if self.admin.page.tls:
            parts.append("Secure")
        if max_age is not None:
            parts.append(f"Max-Age={max_age}")
        return "; ".join(parts)

    def _redirect(self, to: str, cookie: Optional[str] = None) -> None:
        self._send(303, b"", "text/plain", {"Location": to}, cookie)

    def _session(self) -> Optional[Session]:
        try:
            jar = http.cookies.SimpleCookie(self.headers.get("Cookie", ""))
        except http.cookies.CookieError:
            return None
        morsel = jar.get(COOKIE)
        return self.admin.sessions.get(morsel.value if morsel else None)

    def _host_ok(self) -> bool:
        return (self.headers.get("Host") or "").lower() in self.admin.allowed_hosts()

    def _origin_ok(self) -> bool:
        own = f"{'https' if self.admin.page.tls else 'http'}://{(self.headers.get('Host') or '').lower()}"
        origin = self.headers.get("Origin")
        if origin is not None:
            return origin.lower() == own
        referer = self.headers.get("Referer") or ""
        return referer.lower().startswith(own + "/")

    def _form(self) -> Optional[dict[str, str]]:
        if (self.headers.get("Content-Type") or "").split(";")[0].strip().lower() != "application/x-www-form-urlencoded":
            return None
        try:
            length = int(self.headers.get("Content-Length") or "0")
        except ValueError:
            return None
        if not 0 <= length <= MAX_FORM:
            return None
        try:
            parsed = parse_qs(self.rfile.read(length).decode("utf-8"), keep_blank_values=True, max_num_fields=50)
        except (UnicodeDecodeError, ValueError):
            return None
        return {k: v[0] for k, v in parsed.items()}

    def _csrf_ok(self, session: Optional[Session], form: Optional[dict[str, str]]) -> bool:
        return (session is not None and form is not None and self._origin_ok()
                and hmac.compare_digest(form.get("csrf", "").encode(), session.csrf.encode()))

    def _refused(self, session: Optional[Session]) -> None:
        log.warning("admin page: form post refused (CSRF check)", extra={"path": urlsplit(self.path).path, "client": self.client_address[0]})
        self._send(403, pages.message("Refused", "This form was not sent from this page (CSRF check failed). Reload the page "
                                      "and try again.", session.csrf if session and session.signed_in else None))

    # -- dispatch -----------------------------------------------------------------------------
    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        if not self._host_ok():
            return self._send(421, "Misdirected request", "text/plain; charset=utf-8")
        path = urlsplit(self.path).path
        if path == "/static/admin.css":
            return self._send(200, (STATIC / "admin.css").read_bytes(), "text/css; charset=utf-8")
        session = self._session()
        if path == "/signin":
            if session is None:
                session = self.admin.sessions.new(signed_in=False)
                return self._send(200, pages.signin(session.csrf), cookie=self._cookie(session.sid))
            if session.signed_in:
                return self._redirect("/platform")
            return self._send(200, pages.signin(session.csrf))
        if session is None or not session.signed_in:
            return self._redirect("/signin")
        if path in ("/", "/platform"):
            return self._platform(session)
        if path == "/platform/deliveries/new":
            return self._show_form(session, None)
        m = _DELIVERY.fullmatch(path)
        if m and m.group(2) == "edit":
            return self._show_form(session, int(m.group(1)))
        self._send(404, pages.message("Not found", "There is no such page.", session.csrf))

    def do_POST(self) -> None:
        if not self._host_ok():
            return self._send(421, "Misdirected request", "text/plain; charset=utf-8")
        path = urlsplit(self.path).path
        session, form = self._session(), self._form()
        if not self._csrf_ok(session, form):
            return self._refused(session)
        assert session is not None and form is not None
        if path == "/signin":
            return self._signin(session, form)
        if path == "/signout":
            self.admin.sessions.drop(session.sid)
            return self._redirect("/signin", cookie=self._cookie("", max_age=0))
        if not session.signed_in:
            return self._refused(session)
        if path == "/platform/deliveries/new":
            return self._save_form(session, None, form)
        m = _DELIVERY.fullmatch(path)
        if m is None:
            return self._send(404, pages.message("Not found", "There is no such page.", session.csrf))
        index, action = int(m.group(1)), m.group(2)
        if action == "edit":
            return self._save_form(session, index, form)
        return self._set_active(session, index, action == "activate", form)

    # -- sign-in ------------------------------------------------------------------------------
    def _signin(self, session: Session, form: dict[str, str]) -> None:
        client = self.client_address[0]
        wait = self.admin.limiter.retry_after(client)
        if wait is not None:
            log.warning("admin page: sign-in refused (too many failures)", extra={"client": client})
            return self._send(429, pages.signin(session.csrf, f"Too many failed sign-ins: try again in {wait} seconds."),
                              headers={"Retry-After": str(wait)})
        if not verify_password(form.get("password", ""), self.admin.page.password_hash):
            self.admin.limiter.failed(client)
            log.warning("admin page: sign-in failed", extra={"client": client})
            return self._send(401, pages.signin(session.csrf, "Wrong password."))
        self.admin.limiter.succeeded(client)
        self.admin.sessions.drop(session.sid)  # a new session id at sign-in (no fixation)
        fresh = self.admin.sessions.new(signed_in=True)
        log.info("admin page: signed in", extra={"client": client})
        self._redirect("/platform", cookie=self._cookie(fresh.sid))

    # -- the Platform tab ---------------------------------------------------------------------
    def _platform(self, session: Session) -> None:
        try:
            raw, version = self.admin.config_file.read()
        except (OSError, ValueError) as e:
            return self._send(500, pages.message("Platform", f"The config file cannot be read ({type(e).__name__}).", session.csrf))
        items = raw.get("job_deliveries") if isinstance(raw.get("job_deliveries"), list) else []
        config_error = None
        try:
            parse(raw)
        except ConfigError as e:
            config_error = str(e)
        rows = [(i, d, self.admin.status_of(d) if isinstance(d, dict) else "error") for i, d in enumerate(items) if isinstance(d, dict)]
        flashes, session.flashes = session.flashes, []
        self._send(200, pages.platform(session.csrf, rows, self.admin.agent.recent.list(), version, flashes, config_error))

    def _raw_delivery(self, index: Optional[int]) -> tuple[Optional[dict], str, list]:
        raw, version = self.admin.config_file.read()
        items = raw.get("job_deliveries") if isinstance(raw.get("job_deliveries"), list) else []
        if index is None:
            return None, version, items
        return (items[index] if index < len(items) and isinstance(items[index], dict) else None), version, items

    def _show_form(self, session: Session, index: Optional[int]) -> None:
        current, version, _ = self._raw_delivery(index)
        if index is not None and current is None:
            return self._send(404, pages.message("Not found", "There is no such job delivery.", session.csrf))
        form = DeliveryForm.from_raw(current) if current else DeliveryForm(active=True)
        kept = {f: bool(current.get(f)) for f in SECRETS} if current else {}
        draft_key = "new" if index is None else f"{index}"
        session.drafts.pop(draft_key, None)
        action = "/platform/deliveries/new" if index is None else f"/platform/deliveries/{index}/edit"
        title = "Add Job Delivery" if index is None else "Edit Job Delivery"
        self._send(200, pages.delivery_form(session.csrf, action, title, form, version, {}, kept, index is not None))

    def _save_form(self, session: Session, index: Optional[int], posted: dict[str, str]) -> None:
        current, version, items = self._raw_delivery(index)
        if index is not None and current is None:
            return self._send(404, pages.message("Not found", "There is no such job delivery.", session.csrf))
        if posted.get("version") != version:
            return self._stale(session)
        form = DeliveryForm.from_post(posted)
        draft_key = "new" if index is None else f"{index}"
        saved = DeliveryForm.from_raw(current).secrets() if current else {}
        kept_values = {**saved, **session.drafts.get(draft_key, {})}
        form.keep_secrets(kept_values)
        others = [d for i, d in enumerate(items) if i != index and isinstance(d, dict)]
        errors = form.validate({f"{d.get('project_id')}/{d.get('subscription_id')}" for d in others},
                               {str(d.get("name")) for d in others})
        if not errors and form.active:
            errors = self.admin.link_test.run(_delivery_of(form.to_raw()))
        if errors:
            session.drafts[draft_key] = form.secrets()  # not shown back; kept for the next attempt in this session
            action = "/platform/deliveries/new" if index is None else f"/platform/deliveries/{index}/edit"
            title = "Add Job Delivery" if index is None else "Edit Job Delivery"
            has = {f: bool(getattr(form, f)) for f in SECRETS}
            return self._send(422, pages.delivery_form(session.csrf, action, title, form, version, errors, has, index is not None))
        entry = form.to_raw()

        def change(raw: dict) -> None:
            lst = raw.setdefault("job_deliveries", [])
            if index is None:
                lst.append(entry)
            else:
                lst[index] = entry

        try:
            self.admin.save(change, version)
        except StaleConfig:
            return self._stale(session)
        except ConfigError as e:
            return self._send(422, pages.message("Not saved", f"The agent refused the new config: {e}", session.csrf))
        session.drafts.pop(draft_key, None)
        log.info("admin page: job delivery saved", extra={"delivery": form.name, "active": form.active, "added": index is None})
        session.flashes.append(("ok", f"Job delivery “{form.name}” saved" + (" and linked: the agent is pulling its jobs."
                                                                           if form.active else " (not active).")))
        self._redirect("/platform")

    def _set_active(self, session: Session, index: int, active: bool, posted: dict[str, str]) -> None:
        current, version, _ = self._raw_delivery(index)
        if current is None:
            return self._send(404, pages.message("Not found", "There is no such job delivery.", session.csrf))
        if posted.get("version") != version:
            return self._stale(session)
        if active:
            try:
                problems = self.admin.link_test.run(_delivery_of({**current, "active": True}))
            except ConfigError as e:
                problems = {"active": f"The saved settings are invalid: {e}. Edit the job delivery."}
            if problems:
                form = DeliveryForm.from_raw({**current, "active": True})
                kept = {f: bool(current.get(f)) for f in SECRETS}
                return self._send(422, pages.delivery_form(session.csrf, f"/platform/deliveries/{index}/edit", "Edit Job Delivery",
                                                           form, version, problems, kept, True))

        def change(raw: dict) -> None:
            raw["job_deliveries"][index]["active"] = active

        try:
            self.admin.save(change, version)
        except StaleConfig:
            return self._stale(session)
        except ConfigError as e:
            return self._send(422, pages.message("Not saved", f"The agent refused the new config: {e}", session.csrf))
        name = str(current.get("name"))
        log.info("admin page: job delivery " + ("activated" if active else "deactivated"), extra={"delivery": name})
        session.flashes.append(("ok", f"Job delivery “{name}” " + ("activated: the agent is pulling its jobs." if active else
                                                                   "deactivated: the agent stopped pulling it (running jobs finish).")))
        self._redirect("/platform")

    def _stale(self, session: Session) -> None:
        self._send(409, pages.message("Not saved", "The configuration changed since this page was shown (another "
                                      "administrator, or an edit of the file). Open the Platform tab again and redo the change.",
                                      session.csrf))

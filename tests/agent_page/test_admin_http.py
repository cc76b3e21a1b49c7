"""The agent's admin page over plain HTTP (issue 14 items 2 and 3): sign-in and its rate limit,
CSRF (token and Origin), Host check, security headers, escaping, secrets never shown back, and the
config file written atomically with mode 0600. The link test is a stand-in here; the browser tests
(test_admin_browser.py) run the real one against the local stack."""
from __future__ import annotations

import json
import os
import stat

import pytest

from gateway_agent.admin.config_file import ConfigFile
from gateway_agent.admin.server import AdminServer
from gateway_agent.agent import Agent
from gateway_agent.config import ConfigError, load, parse
from tests.agent_page.page_support import PASSWORD_HASH, Client, csrf_in, version_in, write_config
from tests.support import local_key_file

SA = local_key_file("archsync-gw-0123456789@test-project.iam.gserviceaccount.com")
SECURE_KEY = "s3cr3t-result-endpoint-key-0123456789"


def delivery(**kw) -> dict:
    base = {"name": "Main datacenter", "project_id": "test-project", "subscription_id": "gateway-pubsub-gw-0123456789-sub",
            "result_endpoint_url": "https://results.example.org/job-results", "result_endpoint_secure_key": SECURE_KEY,
            "service_account_json": SA, "active": False}
    return base | kw


class FakeLinkTest:
    def __init__(self):
        self.problems: dict[str, str] = {}
        self.runs = []

    def run(self, d):
        self.runs.append(d)
        return dict(self.problems)


@pytest.fixture
def page(tmp_path):
    path = write_config(tmp_path / "agent.json", [delivery()])
    agent = Agent(load(path))  # not started: no pulls, apply() only records the config
    link = FakeLinkTest()
    server = AdminServer(agent, ConfigFile(path), load(path).admin_page, link_test=link).start()
    yield server, Client(f"http://127.0.0.1:{server.port}"), path, link
    server.stop()


def form_of(text: str, **fields) -> dict:
    base = {"csrf": csrf_in(text), "version": version_in(text), "name": "East clinic", "project_id": "test-project",
            "subscription_id": "gateway-pubsub-gw-abcdefabcd-sub", "result_endpoint_url": "https://results.example.org/job-results",
            "result_endpoint_secure_key": SECURE_KEY, "service_account_json": json.dumps(SA), "active": "on"}
    base.update(fields)
    return {k: v for k, v in base.items() if v is not None}


def test_pages_need_a_session_and_a_bad_password_is_refused(page):
    _, client, _, _ = page
    status, headers, _ = client.request("GET", "/platform")
    assert status == 303 and headers["Location"] == "/signin"
    assert client.sign_in("wrong password!") == 401
    assert client.request("GET", "/platform")[0] == 303
    assert client.sign_in() == 303
    status, _, text = client.request("GET", "/platform")
    assert status == 200 and "Main datacenter" in text


def test_the_session_cookie_is_httponly_samesite_strict_and_replaced_at_sign_in(page):
    server, client, _, _ = page
    _, headers, _ = client.request("GET", "/signin")
    cookie = headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
    before = dict(client.cookies)
    assert client.sign_in() == 303
    assert client.cookies != before  # a new session id at sign-in
    # The pre-sign-in id is gone: it cannot be used to act as the signed-in administrator.
    old = Client(client.base)
    old.cookies = before
    assert old.request("GET", "/platform")[0] == 303


def test_failed_sign_ins_are_rate_limited_even_for_the_right_password(page):
    _, client, _, _ = page
    for _ in range(5):
        assert client.sign_in("not the password") == 401
    token, _ = client.csrf("/signin")
    status, headers, text = client.request("POST", "/signin", {"csrf": token, "password": "correct horse battery staple"})
    assert status == 429 and int(headers["Retry-After"]) > 0
    assert "Too many failed sign-ins" in text


def test_a_post_without_the_csrf_token_is_refused_and_changes_nothing(page):
    _, client, path, _ = page
    assert client.sign_in() == 303
    before = path.read_bytes()
    _, _, text = client.request("GET", "/platform")
    # A cross-site form would post without the token (and from another origin): both are refused.
    status, _, _ = client.request("POST", "/platform/deliveries/0/activate", {"version": version_in(text)})
    assert status == 403
    status, _, _ = client.request("POST", "/platform/deliveries/0/activate", {"version": version_in(text), "csrf": "x" * 43})
    assert status == 403
    status, _, _ = client.request("POST", "/platform/deliveries/0/activate",
                                  {"version": version_in(text), "csrf": csrf_in(text)}, origin="http://evil.example")
    assert status == 403
    # Without Origin and without Referer: refused too.
    status, _, _ = client.request("POST", "/platform/deliveries/0/activate",
                                  {"version": version_in(text), "csrf": csrf_in(text)}, origin=None)
    assert status == 403
    assert path.read_bytes() == before
    # The sign-in form too: no token, no sign-in.
    fresh = Client(client.base)
    assert fresh.request("POST", "/signin", {"password": "correct horse battery staple"})[0] == 403


def test_another_host_name_is_refused(page):
    _, client, _, _ = page
    status, _, _ = client.request("GET", "/signin", headers={"Host": f"attacker.example:{client.port}"})
    assert status == 421


def test_security_headers_and_no_inline_script(page):
    _, client, _, _ = page
    client.sign_in()
    for path in ("/signin", "/platform", "/platform/deliveries/new", "/platform/deliveries/0/edit"):
        status, headers, text = client.request("GET", path)
        csp = headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "default-src 'none'" in csp and "unsafe-inline" not in csp
        assert "frame-ancestors 'none'" in csp and headers["X-Content-Type-Options"] == "nosniff"
        assert headers["Cache-Control"] == "no-store"
        assert "<script" not in text.lower() and " style=" not in text.lower() and "onclick" not in text.lower()


def test_secrets_are_never_shown_back(page):
    _, client, _, _ = page
    client.sign_in()
    for path in ("/platform", "/platform/deliveries/0/edit"):
        _, _, text = client.request("GET", path)
        assert SECURE_KEY not in text and SA["private_key"].splitlines()[1] not in text and SA["private_key_id"] not in text
    _, _, text = client.request("GET", "/platform/deliveries/0/edit")
    assert "leave blank to keep" in text


def test_edit_with_blank_secrets_keeps_them_and_writes_the_file_atomically_0600(page):
    server, client, path, _ = page
    client.sign_in()
    os.chmod(path, 0o644)  # whatever it was, the admin page writes it 0600 (it holds keys)
    _, _, text = client.request("GET", "/platform/deliveries/0/edit")
    status, headers, _ = client.request("POST", "/platform/deliveries/0/edit", form_of(
        text, name="Main datacenter (renamed)", subscription_id="gateway-pubsub-gw-0123456789-sub",
        result_endpoint_secure_key="", service_account_json="", active=None))
    assert status == 303, headers
    saved = json.loads(path.read_text())["job_deliveries"][0]
    assert saved["name"] == "Main datacenter (renamed)"
    assert saved["result_endpoint_secure_key"] == SECURE_KEY and saved["service_account_json"] == SA
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".agent.json.")]  # no temp file left
    assert server.agent.cfg.deliveries[0].name == "Main datacenter (renamed)"  # applied without a restart


def test_a_failed_link_test_shows_hints_and_saves_nothing_and_keeps_the_pasted_secrets(page):
    _, client, path, link = page
    client.sign_in()
    before = path.read_bytes()
    link.problems = {"subscription_id": "Pub/Sub Subscription ID incorrect: projects/p/subscriptions/x does not exist."}
    _, _, text = client.request("GET", "/platform/deliveries/new")
    status, _, text = client.request("POST", "/platform/deliveries/new", form_of(text))
    assert status == 422 and 'id="subscription_id-error"' in text and "Subscription ID incorrect" in text
    assert path.read_bytes() == before
    assert SECURE_KEY not in text and SA["private_key_id"] not in text
    assert 'id="result_endpoint_secure_key-kept"' in text and 'id="service_account_json-kept"' in text
    # Fixed: the secrets pasted in the failed attempt are kept for this session (left blank now).
    link.problems = {}
    status, _, _ = client.request("POST", "/platform/deliveries/new", form_of(
        text, result_endpoint_secure_key="", service_account_json=""))
    assert status == 303
    added = json.loads(path.read_text())["job_deliveries"][1]
    assert added["name"] == "East clinic" and added["active"] is True and added["result_endpoint_secure_key"] == SECURE_KEY


@pytest.mark.parametrize("field,value,expect", [
    ("name", "", "Required"),
    ("name", "Main datacenter", "Another job delivery has this name"),
    ("project_id", "Bad Project", "Project ID"),
    ("subscription_id", "projects/p/subscriptions/s", "subscription ID alone"),
    ("subscription_id", "gateway-pubsub-gw-0123456789-sub", "already pulls this subscription"),
    ("result_endpoint_url", "ftp://x.example/", "https://"),
    ("result_endpoint_url", "http://results.example.org/", "https://"),
    ("result_endpoint_secure_key", "short", "16-512"),
    ("service_account_json", "{not json", "Not JSON"),
    ("service_account_json", json.dumps({"type": "authorized_user"}), "Not a service account key"),
    ("service_account_json", json.dumps({**SA, "private_key": "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"}),
     "cannot be read"),
])
def test_each_field_is_validated_next_to_itself(page, field, value, expect):
    _, client, _, link = page
    client.sign_in()
    _, _, text = client.request("GET", "/platform/deliveries/new")
    status, _, text = client.request("POST", "/platform/deliveries/new", form_of(text, **{field: value}))
    assert status == 422
    assert f'id="{field}-error"' in text and expect in text
    assert link.runs == []  # an invalid form is not link-tested


def test_a_script_in_a_name_or_a_job_reason_is_rendered_as_text(page):
    server, client, _, _ = page
    client.sign_in()
    _, _, text = client.request("GET", "/platform/deliveries/new")
    assert client.request("POST", "/platform/deliveries/new", form_of(
        text, name="<script>alert('name')</script>", active=None))[0] == 303
    job = {"job_id": "job-<b>1</b>", "attempt": 1, "job_type": "ARCHIVE", "destination": {"name": "<img src=x onerror=alert(1)>"}}
    server.agent.recent.started("<script>alert('delivery')</script>", job)
    server.agent.recent.finished(job, "FAILED", "<script>alert('reason')</script> & more")
    _, _, text = client.request("GET", "/platform")
    assert "<script" not in text and "<img" not in text and "<b>" not in text
    assert "&lt;script&gt;alert(&#x27;name&#x27;)&lt;/script&gt;" in text
    assert "&lt;script&gt;alert(&#x27;reason&#x27;)&lt;/script&gt; &amp; more" in text
    assert "&lt;img src=x onerror=alert(1)&gt;" in text


def test_a_stale_form_is_refused(page):
    _, client, path, _ = page
    client.sign_in()
    _, _, text = client.request("GET", "/platform/deliveries/0/edit")
    raw = json.loads(path.read_text())
    raw["job_deliveries"][0]["name"] = "Edited by hand"
    path.write_text(json.dumps(raw))
    status, _, _ = client.request("POST", "/platform/deliveries/0/edit", form_of(text, name="Mine", active=None,
                                                                                subscription_id="gateway-pubsub-gw-0123456789-sub"))
    assert status == 409
    assert json.loads(path.read_text())["job_deliveries"][0]["name"] == "Edited by hand"


def test_sign_out_ends_the_session(page):
    _, client, _, _ = page
    client.sign_in()
    _, _, text = client.request("GET", "/platform")
    assert client.request("POST", "/signout", {"csrf": csrf_in(text)})[0] == 303
    assert client.request("GET", "/platform")[0] == 303


def test_the_page_stays_on_loopback_unless_allowed_and_then_needs_tls():
    base = {"job_deliveries": [], "admin_page": {"password_hash": PASSWORD_HASH}}
    assert parse(base).admin_page.bind == "127.0.0.1"
    with pytest.raises(ConfigError, match="allow_remote"):
        parse(base | {"admin_page": {"password_hash": PASSWORD_HASH, "bind": "0.0.0.0"}})
    with pytest.raises(ConfigError, match="tls_cert_file"):
        parse(base | {"admin_page": {"password_hash": PASSWORD_HASH, "bind": "0.0.0.0", "allow_remote": True}})
    ok = parse(base | {"admin_page": {"password_hash": PASSWORD_HASH, "bind": "0.0.0.0", "allow_remote": True,
                                      "tls_cert_file": "/etc/gw/cert.pem", "tls_key_file": "/etc/gw/key.pem"}})
    assert ok.admin_page.tls
    with pytest.raises(ConfigError, match="password_hash"):
        parse(base | {"admin_page": {"password_hash": "plain text password"}})
    # Without an admin page, the agent still needs a delivery in the file.
    with pytest.raises(ConfigError, match="job_deliveries"):
        parse({"job_deliveries": []})


def test_the_password_hash_is_salted_and_checked_in_constant_time():
    from gateway_agent.admin.passwords import hash_password, verify_password

    a, b = hash_password("another long password"), hash_password("another long password")
    assert a != b and a.startswith("scrypt$15$8$1$")
    assert verify_password("another long password", a) and not verify_password("another long passworD", a)
    assert not verify_password("x", "not a hash")
    with pytest.raises(ValueError):
        hash_password("short")

"""Gateway health, without the cloud: the view the admin API shows, the write throttle, and the
agent's heartbeat (signed like a result, checked by the cloud's own verifier)."""
from __future__ import annotations

import http.server
import json
import threading
from datetime import timedelta

import pytest

from gateway_agent.heartbeat import Heartbeats, heartbeat_url
from shared import contracts, signing
from shared.domain.health import GatewayHealth, contact_update, health_view
from tests.support import T0


def test_view_states():
    assert health_view(None, T0, 900) == {"state": "never", "last_contact_at": None, "silent_since": None}
    h = GatewayHealth("fg-1", "gw-1", last_result_at=T0, last_heartbeat_at=T0 - timedelta(minutes=3))
    assert health_view(h, T0 + timedelta(seconds=900), 900) == {
        "state": "connected", "last_contact_at": "2026-11-01T08:00:00Z", "silent_since": None}
    assert health_view(h, T0 + timedelta(seconds=901), 900) == {
        "state": "silent", "last_contact_at": "2026-11-01T08:00:00Z", "silent_since": "2026-11-01T08:00:00Z"}
    # The latest of result and heartbeat is the last contact; a pull alone is not a contact.
    h2 = GatewayHealth("fg-1", "gw-1", last_heartbeat_at=T0 + timedelta(minutes=1), last_pull_at=T0 + timedelta(hours=1))
    assert health_view(h2, T0 + timedelta(minutes=2), 900)["last_contact_at"] == "2026-11-01T08:01:00Z"


def test_contact_update_throttles_per_kind():
    h = GatewayHealth("fg-1", "gw-1", last_result_at=T0)
    assert contact_update(h, "result", T0 + timedelta(seconds=59)) is None
    assert contact_update(h, "result", T0 + timedelta(seconds=60)) == {"last_result_at": T0 + timedelta(seconds=60)}
    assert contact_update(h, "heartbeat", T0 + timedelta(seconds=1)) == {"last_heartbeat_at": T0 + timedelta(seconds=1)}
    ahead = T0 + timedelta(hours=1)  # a gateway clock ahead of ours: never a pull in the future
    assert contact_update(None, "heartbeat", T0, last_pull_at=ahead) == {"last_heartbeat_at": T0, "last_pull_at": T0}
    with pytest.raises(ValueError):
        contact_update(None, "pull", T0)


def test_the_agents_heartbeat_is_a_valid_signed_heartbeat_for_the_cloud():
    got: list = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (http.server's name)
            body = self.rfile.read(int(self.headers["Content-Length"]))
            got.append((self.path, dict(self.headers), body))
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"outcome":"recorded"}')

        def log_message(self, *a):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/on_job_result"
        assert heartbeat_url(url + "/") == url + "/heartbeat"
        pulling = {"on": True}
        beats = Heartbeats(300, threading.Event())
        beats.register("main", url, "the-key", None, is_pulling=lambda: pulling["on"])
        assert beats.send("main") is False  # the gateway is not known (not in the subscription id): nothing sent
        beats.learn("main", "fg-1", "gw-1")  # from a job message: sends at once
        assert len(got) == 1
        beats.register("other", url, "the-key", "gw-2", is_pulling=lambda: True)  # from its subscription id
        assert beats.send("other") is True
        other_headers = {k.lower(): v for k, v in got[-1][1].items()}
        assert other_headers["x-archsync-gateway"] == "-/gw-2"  # the cloud looks the group up
        beats.unregister("other")
        assert beats.send("other") is False
        path, headers, body = got[0]
        assert path == "/on_job_result/heartbeat"
        headers = {k.lower(): v for k, v in headers.items()}
        canonical = {signing.GATEWAY_HEADER: headers["x-archsync-gateway"], signing.TIMESTAMP_HEADER:
                     headers["x-archsync-timestamp"], signing.SIGNATURE_HEADER: headers["x-archsync-signature"]}
        assert canonical[signing.GATEWAY_HEADER] == "fg-1/gw-1"
        signing.verify(b"the-key", canonical, body, int(canonical[signing.TIMESTAMP_HEADER]), 300)
        contracts.validate(contracts.GATEWAY_HEARTBEAT, json.loads(body))
        pulling["on"] = False  # its streaming pull ended: no heartbeat claims it runs
        def mains() -> int:
            return sum(1 for _, h, _ in got if {k.lower(): v for k, v in h.items()}["x-archsync-gateway"] == "fg-1/gw-1")

        n = mains()
        assert beats.send("main") is False and mains() == n
    finally:
        server.shutdown()

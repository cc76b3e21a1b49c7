"""Gateway health on the emulators (issue 15 item 3; seed 000 Troubleshooting, "Gateway is not
running or not connected"): never -> connected after a signed result or heartbeat -> silent after
the threshold, with the services' injectable clock; contacts recorded at most once a minute; the
admin API's Gateways list and gateway carry ``health``; the sweeper reports a gateway silent while
jobs wait for it, and only then."""
from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

from shared.auth import Caller
from shared.domain.errors import Unauthorized
from shared.domain.messages import exam_status_changed
from shared.domain.rules import TimeoutPolicy
from shared.services.admin import AdminService
from shared.services.archive_trigger import ArchiveTriggerService
from shared.services.results import ResultService
from shared.services.sweeper import SweepService
from shared.signing import sign_headers
from tests.support import (RESULT_KEY, T0, assert_matches_openapi, destination, exam_event, gateway, load_app,
                           result_body)

CALLER = Caller("u-1", "Pat Admin", frozenset({"fg-1"}))
SILENT_AFTER = 900


def heartbeat(**kw) -> bytes:
    return json.dumps({"schema_version": "1", "time": kw.pop("time", T0.isoformat()), **kw}).encode()


@pytest.fixture
def world(stack):
    stack.add_gateway(gateway("gw-1"))
    stack.add_gateway(gateway("gw-2"))
    for gw in ("gw-1", "gw-2"):
        stack.secrets.save_result_key("fg-1", gw, RESULT_KEY)
    stack.results = ResultService(stack.store, stack.secrets, stack.clock, TimeoutPolicy(), 300, health=stack.store)
    stack.admin = AdminService(stack.store, None, stack.vault, None, stack.clock, health=stack.store,
                               gateway_silent_seconds=SILENT_AFTER)
    return stack


def signed(stack, body: bytes, gw: str = "gw-1", key: bytes = RESULT_KEY) -> dict:
    return sign_headers(key, "fg-1", gw, body, int(stack.clock.now().timestamp()))


def health(stack, gw: str = "gw-1") -> dict:
    return stack.admin.get_gateway(CALLER, "fg-1", gw)["health"]


def test_never_then_connected_after_a_heartbeat_then_silent_after_the_threshold(world):
    s = world
    assert health(s) == {"state": "never", "last_contact_at": None, "silent_since": None}
    body = heartbeat(time=s.clock.now().isoformat())
    assert s.results.heartbeat(signed(s, body), body) == "recorded"
    contact = "2026-11-01T08:00:00Z"
    assert health(s) == {"state": "connected", "last_contact_at": contact, "silent_since": None}
    s.clock.advance(seconds=SILENT_AFTER)
    assert health(s)["state"] == "connected"  # not longer than the threshold yet
    s.clock.advance(seconds=1)
    assert health(s) == {"state": "silent", "last_contact_at": contact, "silent_since": contact}
    assert health(s, "gw-2")["state"] == "never"  # another gateway's contact is not this one's


def test_a_result_is_a_contact_and_recording_is_throttled_to_once_a_minute(world):
    s = world
    s.store.save_destination(destination("dst-1"))
    [out] = ArchiveTriggerService(s.store, s.store, s.job_publisher, s.clock, TimeoutPolicy()).handle(
        exam_status_changed(exam_event("COMPLETED")))
    s.clock.advance(hours=1)
    body = result_body(out.job_id, "IN_PROGRESS", time=s.clock.now())
    s.results.handle(signed(s, body), body)
    first = health(s)
    assert first["state"] == "connected" and first["last_contact_at"] == "2026-11-01T09:00:00Z"
    writes = s.store.ops.writes
    s.clock.advance(seconds=59)  # a busy gateway: results within the minute write no health
    body = result_body(out.job_id, "COMPLETED", time=s.clock.now())
    s.results.handle(signed(s, body), body)
    assert health(s)["last_contact_at"] == "2026-11-01T09:00:00Z"
    assert s.store.ops.writes - writes == 2  # the job and its archive state; no health write
    s.clock.advance(seconds=1)
    body = result_body(out.job_id, "COMPLETED", time=s.clock.now())
    s.results.handle(signed(s, body), body)  # a duplicate result: still a contact
    assert health(s)["last_contact_at"] == "2026-11-01T09:01:00Z"
    # A second instance (no in-process memory of the write) is throttled by the stored record.
    other = ResultService(s.store.__class__(s.db), s.secrets, s.clock, TimeoutPolicy(), 300, health=s.store.__class__(s.db))
    s.clock.advance(seconds=30)
    body = heartbeat(time=s.clock.now().isoformat())
    assert other.heartbeat(signed(s, body), body) == "recorded"  # another kind of contact
    assert other.heartbeat(signed(s, body), body) == "throttled"


def test_an_unauthenticated_heartbeat_records_nothing(world):
    s = world
    body = heartbeat(time=s.clock.now().isoformat())
    with pytest.raises(Unauthorized):
        s.results.heartbeat(signed(s, body, key=b"z" * 32), body)
    assert health(s)["state"] == "never"


def test_heartbeat_through_the_entry_point_and_health_in_the_gateways_api(world, admin_env):
    """The functions run with the system clock: real time here."""
    world.add_gateway(gateway("gw-3"))  # never heard from
    app = load_app("on_job_result")
    now = datetime.now(timezone.utc)
    body = heartbeat(time=now.isoformat(), last_pull_at=now.isoformat(), agent="archsync-gateway-agent/1")
    headers = sign_headers(RESULT_KEY, "fg-1", "gw-1", body, int(now.timestamp()))
    r = app.post("/heartbeat", data=body, headers=headers)
    assert r.status_code == 200 and r.json == {"outcome": "recorded"}, r.json
    assert_matches_openapi(r.json, "/job-results/heartbeat", "post")
    assert app.post("/heartbeat", data=body, headers=headers).json == {"outcome": "throttled"}
    bad = heartbeat(time=now.isoformat(), extra=1)
    assert app.post("/heartbeat", data=bad, headers=sign_headers(RESULT_KEY, "fg-1", "gw-1", bad, int(now.timestamp()))
                    ).status_code == 400
    assert app.post("/heartbeat", data=body, headers={**headers, "X-ArchSync-Signature": "v1=" + "0" * 64}).status_code == 401
    # The agent before a job named its facility group: "-/<gateway>", the group looked up.
    beat2 = heartbeat(time=now.isoformat())
    r = app.post("/heartbeat", data=beat2, headers=sign_headers(RESULT_KEY, "-", "gw-2", beat2, int(now.timestamp())))
    assert r.status_code == 200 and r.json == {"outcome": "recorded"}, r.json
    r = app.post("/heartbeat", data=beat2, headers=sign_headers(RESULT_KEY, "-", "gw-404", beat2, int(now.timestamp())))
    assert r.status_code == 401

    api = load_app("admin_api")
    r = api.get("/v1/facility-groups/fg-1/gateways", headers=admin_env.headers(("fg-1",)))
    assert r.status_code == 200, r.json
    assert_matches_openapi(r.json, "/v1/facility-groups/{facility_group_id}/gateways", "get")
    by_id = {g["id"]: g["health"] for g in r.json["gateways"]}
    assert by_id["gw-1"]["state"] == "connected" and by_id["gw-1"]["silent_since"] is None
    assert by_id["gw-2"]["state"] == "connected"
    assert by_id["gw-3"] == {"state": "never", "last_contact_at": None, "silent_since": None}
    r = api.get("/v1/facility-groups/fg-1/gateways/gw-1", headers=admin_env.headers(("fg-1",)))
    assert r.status_code == 200 and r.json["health"] == by_id["gw-1"]
    assert_matches_openapi(r.json, "/v1/facility-groups/{facility_group_id}/gateways/{gateway_id}", "get")


def test_the_sweeper_reports_a_gateway_silent_only_while_jobs_wait_for_it(world):
    s = world
    s.store.save_destination(destination("dst-1", gateway_id="gw-1"))
    s.store.save_destination(destination("dst-2", gateway_id="gw-2"))
    ArchiveTriggerService(s.store, s.store, s.job_publisher, s.clock, TimeoutPolicy()).handle(
        exam_status_changed(exam_event("COMPLETED")))

    def sweep():
        return SweepService(s.store, s.store, s.job_publisher, s.clock, health=s.store,
                            gateway_silent_seconds=SILENT_AFTER).run().silent_gateways

    assert sweep() == []  # jobs queued just now: nobody is late yet
    s.clock.advance(seconds=SILENT_AFTER + 1)
    body = heartbeat(time=s.clock.now().isoformat())
    s.results.heartbeat(signed(s, body, gw="gw-1"), body)  # gw-1 runs (its job merely waits); gw-2 never spoke
    assert sweep() == ["fg-1/gw-2"]
    s.clock.advance(seconds=SILENT_AFTER + 1)  # now gw-1 is silent too, with a job waiting
    assert sweep() == ["fg-1/gw-1", "fg-1/gw-2"]
    s.clock.advance(hours=24)  # timed out: nothing waits any more
    SweepService(s.store, s.store, s.job_publisher, s.clock).run()
    assert sweep() == []

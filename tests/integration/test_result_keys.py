"""The Result Endpoint's keys on the emulators (issue 11 items 5 and 14): malformed or stale
callbacks are 401 JSON before any key is read, a flood of wrongly signed callbacks costs at most a
couple of key reads, and a rotated key keeps verifying for its grace period only."""
from __future__ import annotations

import os
import time

import pytest

from shared import wiring
from shared.adapters.gcs import KeyVault, VaultSecrets, result_key_object
from shared.auth import Caller
from shared.domain.errors import Conflict, Unauthorized
from shared.domain.rules import TimeoutPolicy
from shared.services.admin import AdminService
from shared.services.archive_trigger import ArchiveTriggerService
from shared.domain.messages import exam_status_changed
from shared.services.results import ResultService
from shared.settings import Settings
from shared.signing import sign_headers
from tests.support import RESULT_KEY, assert_matches_openapi, destination, exam_event, gateway, load_app, post_result, result_body

BASE = "/v1/facility-groups/fg-1/gateways/gw-1"


@pytest.fixture
def job(stack):
    """A published archive job of gateway gw-1, whose Result Endpoint key is RESULT_KEY."""
    stack.add_gateway(gateway("gw-1"))
    stack.secrets.save_result_key("fg-1", "gw-1", RESULT_KEY)
    stack.store.save_destination(destination("dst-1", trigger="PENDING"))
    [out] = ArchiveTriggerService(stack.store, stack.store, stack.job_publisher, stack.clock, TimeoutPolicy()).handle(
        exam_status_changed(exam_event("PENDING")))
    return out.job_id


@pytest.fixture
def results(function_env):
    return load_app("on_job_result")


def vault_reads() -> int:
    """Reads by on_job_result's key vault (wiring caches it per settings, the function's name included)."""
    return wiring.key_vault(Settings.from_env(os.environ, function="on_job_result")).calls


@pytest.mark.parametrize("header,value", [
    ("X-ArchSync-Timestamp", "²"),                      # str.isdigit() said yes, int() said 500
    ("X-ArchSync-Timestamp", "1" * 5000),               # int() refuses more than 4,300 digits
    ("X-ArchSync-Timestamp", str(int(time.time()) - 3600)),  # outside the replay window
    ("X-ArchSync-Signature", "v1=" + "Z" * 64),
    ("X-ArchSync-Signature", "sha256=" + "0" * 64),
    ("X-ArchSync-Gateway", "fg-1/gw-1/extra"),
])
def test_malformed_or_stale_callbacks_are_401_json_without_a_key_read(stack, results, job, header, value):
    before = vault_reads()
    r = post_result(results, result_body(job, "COMPLETED"), headers={header: value})
    assert r.status_code == 401 and r.is_json, r.get_data(as_text=True)
    assert r.json["error"]["code"] == "unauthorized"
    assert_matches_openapi(r.json, "/job-results", "post", "401")
    assert vault_reads() == before
    assert stack.store.get_job("fg-1", job).state.value == "QUEUED"


@pytest.mark.parametrize("gw", ["gw-1", "gw-unknown"])
def test_a_flood_of_wrongly_signed_callbacks_costs_at_most_two_key_reads(stack, results, job, gw):
    before = vault_reads()
    for _ in range(25):
        r = post_result(results, result_body(job, "COMPLETED"), key=b"forged" * 6, gw=gw)
        assert r.status_code == 401
    assert vault_reads() - before <= 2  # one cached read and one (rate-limited) fresh look
    assert stack.store.get_job("fg-1", job).state.value == "QUEUED"
    # The genuine gateway is unaffected.
    assert post_result(results, result_body(job, "IN_PROGRESS")).status_code == 200


def test_after_a_rotation_both_keys_verify_and_the_download_gives_the_new_one(stack, results, job, admin_env):
    admin = load_app("admin_api")
    h = admin_env.headers(("fg-1",))
    assert post_result(results, result_body(job, "IN_PROGRESS")).status_code == 200  # the old key is cached
    r = admin.post(f"{BASE}/result-endpoint-key/rotate", headers=h)
    assert r.status_code == 204, r.get_data(as_text=True)
    new = admin.get(f"{BASE}/result-endpoint-key", headers=h).data
    assert new != RESULT_KEY and len(new) >= 43 and b"{" not in new  # the key text only
    # A gateway not yet switched keeps working; one switched works too, on this warm instance of
    # the Result Endpoint (its own key vault and cache, as admin_api's is another function's) as
    # soon as its rate-limited re-read (every 5 s per gateway, docs/admin-api.md) sees the new key.
    assert post_result(results, result_body(job, "IN_PROGRESS")).status_code == 200
    deadline = time.monotonic() + 30
    while (r := post_result(results, result_body(job, "COMPLETED"), key=new)).status_code == 401 \
            and time.monotonic() < deadline:
        time.sleep(0.5)
    assert r.status_code == 200 and r.json["job_state"] == "COMPLETED"
    # Stored where it was (the private key bucket, the same object), never in Firestore.
    assert [b.name for b in stack.gcs.list_blobs(stack.key_bucket)] == [result_key_object("fg-1", "gw-1")]
    actions = [a["action"] for a in stack.store.audit_entries("fg-1")]
    assert "gateway.result_key.rotate" in actions


def test_a_rotation_with_no_grace_revokes_the_old_key_at_once(stack, results, job, admin_env):
    admin = load_app("admin_api")
    h = admin_env.headers(("fg-1",))
    assert post_result(results, result_body(job, "IN_PROGRESS")).status_code == 200  # the old key is cached
    # A warm instance of the Result Endpoint follows within its cache period (60 s,
    # docs/admin-api.md); a new one (the functions' clients and caches built afresh) at once.
    assert admin.post(f"{BASE}/result-endpoint-key/rotate?grace_seconds=0", headers=h).status_code == 204
    new = admin.get(f"{BASE}/result-endpoint-key", headers=h).data
    wiring.key_vault.cache_clear()
    assert post_result(results, result_body(job, "COMPLETED")).status_code == 401
    assert post_result(results, result_body(job, "COMPLETED"), key=new).status_code == 200


@pytest.mark.parametrize("value", ["-1", "abc", "²", "1" * 50, "86401"])
def test_a_bad_grace_is_422_and_changes_nothing(stack, job, admin_env, function_env, value):
    admin = load_app("admin_api")
    h = admin_env.headers(("fg-1",))
    before = stack.vault.get(result_key_object("fg-1", "gw-1"), fresh=True)
    r = admin.post(f"{BASE}/result-endpoint-key/rotate", query_string={"grace_seconds": value}, headers=h)
    assert r.status_code == 422 and r.is_json and "grace_seconds" in r.json["error"]["fields"], r.get_data(as_text=True)
    assert stack.vault.get(result_key_object("fg-1", "gw-1"), fresh=True) == before


def test_the_old_key_stops_verifying_when_the_grace_ends(stack, job):
    """Services on the emulators with one fake clock: rotation at T0 with a one-hour grace."""
    admin = AdminService(stack.store, None, stack.vault, None, stack.clock, result_key_grace_seconds=3600)
    caller = Caller("u-1", "Pat Admin", frozenset({"fg-1"}))
    admin.rotate_result_endpoint_key(caller, "fg-1", "gw-1")
    new = admin.result_endpoint_key(caller, "fg-1", "gw-1")
    # Another instance of the Result Endpoint, with its own (cold) key cache.
    service = ResultService(stack.store, VaultSecrets(KeyVault(stack.key_bucket, stack.gcs)), stack.clock, TimeoutPolicy(), 300)

    def post(key: bytes, state: str):
        body = result_body(job, state)
        return service.handle(sign_headers(key, "fg-1", "gw-1", body, int(stack.clock.now().timestamp())), body)

    stack.clock.advance(minutes=59)
    assert post(RESULT_KEY, "IN_PROGRESS").outcome == "applied"
    stack.clock.advance(minutes=1)
    with pytest.raises(Unauthorized):
        post(RESULT_KEY, "COMPLETED")
    assert post(new, "COMPLETED").job.state.value == "COMPLETED"


def test_concurrent_rotations_cannot_both_keep_the_same_previous_key(stack, job):
    name = result_key_object("fg-1", "gw-1")
    _, generation = stack.vault.get_versioned(name)
    stack.vault.put(name, b"rotated-by-someone-else" * 2)
    with pytest.raises(Conflict):
        stack.vault.put(name, b"x" * 43, if_generation_match=generation)

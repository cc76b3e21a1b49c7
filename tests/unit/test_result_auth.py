"""Result Endpoint authentication before any key read, the key cache, and the rotation grace
(issue 11 items 5 and 14). Pure: a counting SecretStore, a fake storage client, a fake clock."""
from __future__ import annotations

import json
from datetime import timedelta

import pytest
from google.api_core import exceptions as gexc

from shared import signing
from shared.adapters import gcs
from shared.adapters.gcs import KeyVault, VaultSecrets, decode_result_keys, encode_result_keys, result_key_object
from shared.domain.errors import MalformedInput, Unauthorized
from shared.domain.rules import TimeoutPolicy
from shared.services.results import ResultService
from shared.signing import ResultKeys
from tests.support import T0, FakeClock

KEY, OLD = b"k" * 32, b"o" * 32
NOW = int(T0.timestamp())
BODY = b'{"schema_version":"1"}'


class CountingSecrets:
    """A SecretStore that counts reads (the thing unauthenticated traffic must not cause)."""

    def __init__(self, keys=None):
        self.keys, self.reads = keys, []

    def result_keys(self, facility_group_id, gateway_id, *, fresh=False):
        self.reads.append((facility_group_id, gateway_id, fresh))
        return self.keys


class UntouchableJobs:
    def __getattr__(self, name):
        raise AssertionError(f"an unauthenticated request reached the job store ({name})")


def service(secrets, clock=None) -> ResultService:
    return ResultService(UntouchableJobs(), secrets, clock or FakeClock(T0), TimeoutPolicy(), 300)


def headers(key=KEY, ts=NOW, body=BODY, **override) -> dict:
    h = signing.sign_headers(key, "fg-1", "gw-1", body, ts)
    h.update(override)
    return {k: v for k, v in h.items() if v is not None}


BAD = {
    "superscript two timestamp": {signing.TIMESTAMP_HEADER: "²"},
    "5,000-digit timestamp": {signing.TIMESTAMP_HEADER: "1" * 5000},
    "Arabic-Indic digits": {signing.TIMESTAMP_HEADER: "١٧٩٣٥٢٩٦٠٠"},
    "signed timestamp": {signing.TIMESTAMP_HEADER: f"+{NOW}"},
    "padded timestamp": {signing.TIMESTAMP_HEADER: f" {NOW}"},
    "trailing newline": {signing.TIMESTAMP_HEADER: f"{NOW}\n"},
    "too old": {signing.TIMESTAMP_HEADER: str(NOW - 301)},
    "from the future": {signing.TIMESTAMP_HEADER: str(NOW + 301)},
    "no timestamp": {signing.TIMESTAMP_HEADER: None},
    "no signature": {signing.SIGNATURE_HEADER: None},
    "signature without version": {signing.SIGNATURE_HEADER: "0" * 64},
    "short signature": {signing.SIGNATURE_HEADER: "v1=" + "0" * 63},
    "upper-case signature": {signing.SIGNATURE_HEADER: "v1=" + "A" * 64},
    "signature too long": {signing.SIGNATURE_HEADER: "v1=" + "0" * 5000},
    "no gateway": {signing.GATEWAY_HEADER: None},
    "gateway without group": {signing.GATEWAY_HEADER: "/gw-1"},
    "gateway with a path": {signing.GATEWAY_HEADER: "fg-1/gw-1/x"},
    "gateway id not an id": {signing.GATEWAY_HEADER: "fg-1/gw 1"},
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_malformed_or_stale_requests_are_refused_before_any_key_read(case):
    secrets = CountingSecrets(ResultKeys(KEY))
    with pytest.raises(Unauthorized):
        service(secrets).handle(headers(**BAD[case]), BODY)
    assert secrets.reads == []


def test_a_well_formed_wrong_signature_costs_a_cached_and_a_fresh_look_and_is_refused():
    secrets = CountingSecrets(ResultKeys(KEY))
    with pytest.raises(Unauthorized):
        service(secrets).handle(headers(key=b"x" * 32), BODY)
    assert secrets.reads == [("fg-1", "gw-1", False), ("fg-1", "gw-1", True)]


def test_an_unknown_gateway_is_refused_like_a_wrong_signature():
    with pytest.raises(Unauthorized, match="invalid signature"):
        service(CountingSecrets(None)).handle(headers(), BODY)


def test_check_headers_accepts_the_agents_headers():
    assert signing.check_headers(headers(), NOW, 300) == (str(NOW), headers()[signing.SIGNATURE_HEADER])


def test_previous_key_verifies_only_during_its_grace():
    keys = ResultKeys(KEY, OLD, T0 + timedelta(hours=24))
    assert keys.valid_at(T0) == (KEY, OLD)
    assert keys.valid_at(T0 + timedelta(hours=24)) == (KEY,)
    ts, sig = str(NOW), signing.signature(OLD, str(NOW), BODY)
    assert signing.matches(keys.valid_at(T0), ts, sig, BODY)
    assert not signing.matches(keys.valid_at(T0 + timedelta(hours=25)), ts, sig, BODY)
    assert not signing.matches((), ts, sig, BODY)


def test_the_service_accepts_the_previous_key_until_the_grace_ends():
    """The signature check itself, up to the body (which the untouchable job store refuses)."""
    clock = FakeClock(T0)
    secrets = CountingSecrets(ResultKeys(KEY, OLD, T0 + timedelta(hours=24)))
    with pytest.raises(MalformedInput):  # authenticated: it went on to check the body
        service(secrets, clock).handle(headers(key=OLD), BODY)
    clock.advance(hours=24)
    later = int(clock.now().timestamp())
    with pytest.raises(Unauthorized):
        service(secrets, clock).handle(headers(key=OLD, ts=later), BODY)


def test_stored_forms_round_trip_and_a_bare_key_is_read():
    assert decode_result_keys(b"abc_-123") == ResultKeys(b"abc_-123")
    assert encode_result_keys(ResultKeys(KEY)) == KEY
    both = ResultKeys(KEY, OLD, T0 + timedelta(hours=24))
    data = encode_result_keys(both)
    assert json.loads(data)["previous_valid_until"] == "2026-11-02T08:00:00+00:00"
    assert decode_result_keys(data) == both
    assert decode_result_keys(b'{"current": 1}') is None
    assert "kkkk" not in repr(both) and "oooo" not in repr(both)  # key material never reaches logs via repr


# -- the in-process key cache ------------------------------------------------------------------

class FakeBlob:
    def __init__(self, store, name):
        self.store, self.name, self.generation = store, name, None

    def download_as_bytes(self):
        self.store.downloads.append(self.name)
        if self.name not in self.store.objects:
            raise gexc.NotFound("no such object")
        data, self.generation = self.store.objects[self.name]
        return data

    def upload_from_string(self, data, content_type=None, if_generation_match=None):
        current = self.store.objects.get(self.name, (None, 0))[1]
        if if_generation_match is not None and if_generation_match != current:
            raise gexc.PreconditionFailed("generation mismatch")
        self.store.objects[self.name] = (data, current + 1)


class FakeStorage:
    def __init__(self):
        self.objects, self.downloads = {}, []

    def bucket(self, name):
        return self

    def blob(self, name):
        return FakeBlob(self, name)


@pytest.fixture
def clock(monkeypatch):
    t = [1000.0]
    monkeypatch.setattr(gcs.time, "monotonic", lambda: t[0])
    return t


def test_keys_are_cached_briefly_missing_ones_too(clock):
    storage = FakeStorage()
    vault = KeyVault("keys", storage, cache_seconds=60)
    secrets = VaultSecrets(vault)
    secrets.save_result_key("fg-1", "gw-1", KEY)
    for _ in range(50):
        assert secrets.result_keys("fg-1", "gw-1") == ResultKeys(KEY)
        assert secrets.result_keys("fg-1", "gw-unknown") is None
    assert len(storage.downloads) == 2
    clock[0] += 61
    secrets.result_keys("fg-1", "gw-1")
    assert len(storage.downloads) == 3


def test_fresh_looks_are_rate_limited_per_key(clock):
    storage = FakeStorage()
    secrets = VaultSecrets(KeyVault("keys", storage))
    secrets.save_result_key("fg-1", "gw-1", KEY)
    secrets.result_keys("fg-1", "gw-1")
    for _ in range(50):  # a stream of well-formed, wrongly signed callbacks
        secrets.result_keys("fg-1", "gw-1", fresh=True)
    assert len(storage.downloads) == 1
    clock[0] += VaultSecrets.REFRESH_SECONDS
    secrets.result_keys("fg-1", "gw-1", fresh=True)
    assert len(storage.downloads) == 2


def test_the_cache_is_bounded(clock):
    storage = FakeStorage()
    vault = KeyVault("keys", storage, cache_entries=3)
    for i in range(10):
        vault.get(f"fg-1/gw-{i}/result-endpoint-key")
    assert len(vault._cache) == 3
    vault.get("fg-1/gw-9/result-endpoint-key")  # still cached: the most recent ones stay
    assert len(storage.downloads) == 10


def test_a_write_invalidates_and_an_admin_read_is_always_fresh(clock):
    storage = FakeStorage()
    vault = KeyVault("keys", storage)
    name = result_key_object("fg-1", "gw-1")
    vault.put(name, KEY)
    assert vault.get(name) == KEY
    vault.put(name, OLD)
    assert vault.get(name) == OLD
    vault.get(name, fresh=True)
    assert len(storage.downloads) == 3


def test_rotation_keeps_the_replaced_key_and_drops_the_older_one(clock):
    storage = FakeStorage()
    secrets = VaultSecrets(KeyVault("keys", storage))
    secrets.save_result_key("fg-1", "gw-1", b"k0" * 16)
    until = T0 + timedelta(hours=24)
    secrets.rotate_result_key("fg-1", "gw-1", b"k1" * 16, until)
    assert secrets.result_keys("fg-1", "gw-1") == ResultKeys(b"k1" * 16, b"k0" * 16, until)
    secrets.rotate_result_key("fg-1", "gw-1", b"k2" * 16, until)
    assert secrets.result_keys("fg-1", "gw-1") == ResultKeys(b"k2" * 16, b"k1" * 16, until)
    secrets.rotate_result_key("fg-1", "gw-1", b"k3" * 16, None)  # revoke at once
    assert secrets.result_keys("fg-1", "gw-1") == ResultKeys(b"k3" * 16)

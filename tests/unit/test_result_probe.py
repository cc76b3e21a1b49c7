"""The Result Endpoint's link probe (issue 14 item 2): a signed no-op the gateway agent's admin page
sends to check the Result Endpoint URL and Secure Key. It needs a valid signature, writes nothing,
and may name only the gateway (``-/<gateway_id>``): the seed's fields give the agent no facility group."""
from __future__ import annotations

import json

import pytest

from shared import signing
from shared.domain.errors import MalformedInput, Unauthorized
from shared.domain.rules import TimeoutPolicy
from shared.services.results import ResultService
from shared.signing import ResultKeys
from tests.support import T0, FakeClock

KEY = b"k" * 32
NOW = int(T0.timestamp())
PROBE = json.dumps(signing.PROBE_BODY).encode()


class Secrets:
    def __init__(self):
        self.reads = []

    def result_keys(self, facility_group_id, gateway_id, *, fresh=False):
        self.reads.append((facility_group_id, gateway_id))
        return ResultKeys(KEY) if (facility_group_id, gateway_id) == ("fg-1", "gw-0123456789") else None


class Directory:
    def __init__(self):
        self.asked = []

    def gateway_group(self, gateway_id):
        self.asked.append(gateway_id)
        return {"gw-0123456789": "fg-1"}.get(gateway_id)


class NoJobs:
    def __getattr__(self, name):
        raise AssertionError(f"a probe reached the job store ({name})")


def service(directory=None) -> tuple[ResultService, Secrets]:
    secrets = Secrets()
    return ResultService(NoJobs(), secrets, FakeClock(T0), TimeoutPolicy(), 300, directory=directory), secrets


def signed(group: str, gateway: str = "gw-0123456789", key: bytes = KEY, body: bytes = PROBE, ts: int = NOW) -> dict:
    return signing.sign_headers(key, group, gateway, body, ts)


@pytest.mark.parametrize("group", ["fg-1", "-"])
def test_a_signed_probe_answers_probe_and_touches_no_job(group):
    svc, secrets = service(Directory())
    assert svc.handle(signed(group), PROBE).outcome == "probe"
    assert secrets.reads == [("fg-1", "gw-0123456789")]


@pytest.mark.parametrize("group", ["fg-1", "-"])
def test_a_probe_with_a_wrong_key_is_refused(group):
    svc, _ = service(Directory())
    with pytest.raises(Unauthorized):
        svc.handle(signed(group, key=b"x" * 32), PROBE)


def test_an_unknown_gateway_looks_like_a_wrong_key():
    svc, secrets = service(Directory())
    with pytest.raises(Unauthorized, match="invalid signature"):
        svc.handle(signed("-", gateway="gw-ffffffffff"), PROBE)
    assert secrets.reads == []


def test_the_directory_is_asked_only_after_the_replay_window():
    directory = Directory()
    svc, _ = service(directory)
    with pytest.raises(Unauthorized):
        svc.handle(signed("-", ts=NOW - 1000), PROBE)
    assert directory.asked == []


def test_without_a_directory_a_group_less_probe_is_refused():
    svc, _ = service(None)
    with pytest.raises(Unauthorized):
        svc.handle(signed("-"), PROBE)


def test_only_a_probe_may_omit_the_group():
    body = json.dumps({"schema_version": "1", "job_id": "job-1", "attempt": 1, "state": "COMPLETED",
                       "time": T0.isoformat()}).encode()
    svc, _ = service(Directory())
    with pytest.raises(MalformedInput):
        svc.handle(signed("-", body=body), body)


@pytest.mark.parametrize("body", [{"schema_version": "1", "probe": True}, {**signing.PROBE_BODY, "job_id": "j"}])
def test_a_near_probe_is_not_a_probe(body):
    raw = json.dumps(body).encode()
    svc, _ = service(Directory())
    with pytest.raises(MalformedInput):
        svc.handle(signed("-", body=raw), raw)

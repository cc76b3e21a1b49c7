"""Dead-letter redrive (issue 15 item 4), the pure parts: what a record shows and replays, the
operator role in the JWT, the operations routes against openapi.yaml, and the service's rules
(check every id before publishing anything; record before ack) with in-memory ports."""
from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import pytest
import yaml

from shared import operator_http
from shared.domain import dead_letters as dl
from shared.domain.errors import Conflict, NotFound, PermanentError, Unauthorized, ValidationFailed
from shared.services.redrive import DeadLetterSource, RedriveService
from tests.support import FakeClock, exam_event

DOC = yaml.safe_load((Path(__file__).resolve().parents[2] / "shared/contracts/openapi.yaml").read_text())
NOW = datetime(2026, 11, 1, 9, 0, tzinfo=timezone.utc)
SOURCE = "//pubsub.googleapis.com/projects/prj/topics/archsync-exam-status"


def _rejected(data: bytes = b"{}", **attrs: str) -> dl.ParkedMessage:
    a = {"reason": "exam: missing exam_id", "function": "on_exam_status_changed", "original_message_id": "41",
         "source": SOURCE, "event_id": "ev-1", **attrs}
    return dl.ParkedMessage("7", data, a, NOW)


def _describe(message: dl.ParkedMessage, kind: str = "inbound", subscription_topic: Optional[str] = None) -> dl.DeadLetterRecord:
    return dl.describe(kind, message, dead_letter_topic="archsync-dead-letter", project_id="prj",
                       subscription_topic=subscription_topic, collected_at=NOW)


# -- records -------------------------------------------------------------------------------------

def test_a_rejected_event_goes_back_to_its_source_topic_without_the_rejection_attributes():
    event = exam_event()
    r = _describe(_rejected(json.dumps(event).encode()))
    assert (r.id, r.original_topic, r.function, r.reason_code) == ("inbound-7", "archsync-exam-status", "on_exam_status_changed", "REJECTED")
    assert r.original_message_id == "41" and r.data == json.dumps(event).encode()
    assert dl.replay_attributes(r) == {"archsync_redrive_id": "inbound-7"}
    summary = json.dumps(r.summary())
    for secret in ("MRN-777", "DOE", "ACC-0001", "data", "replay_attributes"):
        assert secret not in summary
    assert r.summary()["event_id"] == event["event_id"] and r.summary()["facility_group_id"] == "fg-1"


def test_a_source_in_another_project_is_never_replayed_into():
    r = _describe(_rejected(source="//pubsub.googleapis.com/projects/other/topics/archsync-exam-status"))
    assert r.original_topic == "" and r.summary()["replayable"] is False


def test_a_pubsub_dead_letter_keeps_its_own_attributes_and_drops_pubsubs():
    m = dl.ParkedMessage("9", b'{"job_id": "archive-1", "facility_group_id": "fg-1", "hl7": "PID|1||MRN-777"}',
                         {"origin": "x", dl.SOURCE_SUBSCRIPTION: "gateway-pubsub-gw-1-sub", dl.SOURCE_PROJECT: "prj",
                          dl.SOURCE_DELIVERIES: "20", "CloudPubSubDeadLetterSourceTopicPublishTime": "t"}, NOW)
    r = _describe(m, "gateway", subscription_topic="gateway-pubsub-gw-1")
    assert (r.original_topic, r.reason_code, r.delivery_attempts) == ("gateway-pubsub-gw-1", "DELIVERY_ATTEMPTS_EXHAUSTED", 20)
    assert dl.replay_attributes(r) == {"origin": "x", "archsync_redrive_id": "gateway-9"}
    assert "20 deliveries" in r.reason and "gateway-pubsub-gw-1-sub" in r.reason
    assert r.summary()["job_id"] == "archive-1" and "MRN-777" not in json.dumps(r.summary())
    gone = _describe(m, "gateway", subscription_topic=None)
    assert gone.original_topic == "" and "no longer exists" in gone.reason


@pytest.mark.parametrize("attrs,code", [
    ({"reason_code": "MALFORMED_INPUT"}, "MALFORMED_INPUT"),  # the publisher's own code wins
    ({"reason_code": "not a code"}, "REJECTED"),
    ({"reason": "not a Pub/Sub message envelope"}, "BAD_ENVELOPE"),
    ({"reason": "message data is not base64"}, "BAD_ENVELOPE"),
])
def test_reason_codes(attrs, code):
    assert _describe(_rejected(**attrs)).reason_code == code


def test_only_identifiers_of_the_payload_are_read():
    assert dl.payload_ids(b'{"facility_group_id": "fg/../x", "event_id": 5, "job_id": "j-1", "mrn": "MRN-777"}') == {"job_id": "j-1"}
    assert dl.payload_ids(b"\xff") == dl.payload_ids(b"[1]") == {}


@pytest.mark.parametrize("value,ok", [("inbound-123", True), ("gateway-abc_D-1", True), ("outbound-1", False),
                                      ("inbound-", False), ("inbound-../x", False), (7, False)])
def test_record_ids(value, ok):
    assert dl.is_record_id(value) is ok


# -- the operator role -----------------------------------------------------------------------------

def test_only_the_json_true_operator_claim_makes_an_operator(admin_auth):
    from shared.auth import JwtVerifier

    v = JwtVerifier([admin_auth.public_pem], admin_auth.AUDIENCE, admin_auth.ISSUER)
    assert v.verify(admin_auth.headers(("fg-1",))).operator is False
    assert v.verify(admin_auth.headers(("fg-1",), archsync_operator="true")).operator is False
    assert v.verify(admin_auth.headers(("fg-1",), archsync_operator=1)).operator is False
    op = v.verify(admin_auth.headers((), archsync_operator=True, facility_groups=None))
    assert op.operator is True and op.facility_group_ids == frozenset()
    with pytest.raises(Unauthorized):  # everyone else still needs the groups claim
        v.verify(admin_auth.headers((), facility_groups=None))


# -- routes ----------------------------------------------------------------------------------------

def test_operations_routes_are_the_ones_openapi_declares():
    routed = 0
    for path, item in DOC["paths"].items():
        for method, op in item.items():
            if method == "parameters" or "operations" not in (op.get("tags") or []):
                continue
            example = re.sub(r"\{[^}]+\}", "inbound-1", path)
            matches = [(p, m) for p, m in operator_http.ROUTES if p.match(example) and method.upper() in m]
            assert matches and matches[0][0].match(example), (method, path)
            pattern = matches[0][0]
            declared = tuple(sorted((op.get("requestBody") or {}).get("content", {})))
            assert operator_http.REQUEST_BODIES.get((method.upper(), pattern.pattern), ()) == declared, (method, path)
            assert "403" in op["responses"] and op["security"] == [{"adminJwt": []}]
            routed += 1
    assert routed == sum(len(m) for _, m in operator_http.ROUTES)
    assert operator_http.handles("/v1/operations/dead-letters") and not operator_http.handles("/v1/facility-groups")


# -- the service, with in-memory ports -------------------------------------------------------------

class Inbox:
    def __init__(self, messages: dict[str, list[dl.ParkedMessage]], topics: Optional[dict] = None):
        self.waiting = {k: list(v) for k, v in messages.items()}
        self.leased: dict[str, dl.ParkedMessage] = {}
        self.acked: list[str] = []
        self.topics = topics or {}

    def pull(self, subscription_id, max_messages):
        out = []
        for m in self.waiting.get(subscription_id, [])[:max_messages]:
            ack = f"{subscription_id}/{m.message_id}/{len(self.acked)}/{len(self.leased)}"
            self.leased[ack] = m
            out.append((ack, m))
        self.waiting[subscription_id] = self.waiting.get(subscription_id, [])[len(out):]
        return out

    def ack(self, subscription_id, ack_ids):
        for a in ack_ids:
            self.acked.append(self.leased.pop(a).message_id)

    def release(self, subscription_id, ack_ids):
        for a in ack_ids:
            self.waiting.setdefault(subscription_id, []).append(self.leased.pop(a))

    def topic_of(self, project_id, subscription_id):
        return self.topics.get(subscription_id)


class Index:
    def __init__(self):
        self.records: dict[str, dl.DeadLetterRecord] = {}

    def create(self, record):
        if record.id in self.records:
            return False
        self.records[record.id] = record
        return True

    def get(self, record_id):
        return self.records.get(record_id)

    def list(self, kind, state, limit, after):
        rows = sorted((r for r in self.records.values() if (not kind or r.kind == kind) and (not state or r.state.value == state)),
                      key=lambda r: r.id)
        return [r for r in rows if not after or r.id > after][:limit]

    def mark_replayed(self, record_id, at, by, message_id):
        import dataclasses

        r = self.records[record_id]
        self.records[record_id] = dataclasses.replace(r, state=dl.DeadLetterState.REPLAYED, replay_count=r.replay_count + 1,
                                                      last_replayed_at=at, last_replayed_by=by)
        return self.records[record_id]


class Bus:
    def __init__(self, missing: tuple[str, ...] = ()):
        self.published: list[tuple[str, bytes, dict]] = []
        self.missing = missing

    def publish(self, topic_id, data, attributes):
        if topic_id in self.missing:
            raise PermanentError(f"topic {topic_id} does not exist")
        self.published.append((topic_id, data, dict(attributes)))
        return str(len(self.published))


SOURCES = [DeadLetterSource("inbound", "archsync-dead-letter", "archsync-dead-letter-audit"),
           DeadLetterSource("gateway", "archsync-gateway-dead-letter", "archsync-gateway-dead-letter-audit")]


def _service(inbox, index=None, bus=None, **kw):
    return RedriveService(inbox, index or Index(), bus or Bus(), FakeClock(NOW), "prj", SOURCES, **kw)


def _parked(mid: str, **attrs: str) -> dl.ParkedMessage:
    return dl.ParkedMessage(mid, b"{}", {**_rejected().attributes, **attrs}, NOW)


def test_collecting_records_before_it_acks_and_twice_is_once():
    inbox = Inbox({"archsync-dead-letter-audit": [_parked("1"), _parked("2")]})
    index = Index()
    report = _service(inbox, index).collect()
    assert report.collected == {"inbound": 2, "gateway": 0} and inbox.acked == ["1", "2"]
    inbox.waiting["archsync-dead-letter-audit"] = [_parked("1")]  # redelivered: the ack was lost
    assert _service(inbox, index).collect().collected["inbound"] == 0
    assert inbox.acked == ["1", "2", "1"] and sorted(index.records) == ["inbound-1", "inbound-2"]


def test_a_message_too_large_to_index_is_left_in_its_subscription():
    big = dl.ParkedMessage("3", b"x" * (dl.MAX_STORED_BYTES + 1), _rejected().attributes, NOW)
    inbox = Inbox({"archsync-dead-letter-audit": [big, _parked("4")]})
    report = _service(inbox).collect()
    assert report.oversized["inbound"] == 1 and report.collected["inbound"] == 1
    assert [m.message_id for m in inbox.waiting["archsync-dead-letter-audit"]] == ["3"] and not inbox.leased


def test_collection_is_capped_per_call():
    inbox = Inbox({"archsync-dead-letter-audit": [_parked(str(i)) for i in range(5)]})
    report = _service(inbox, max_collect=3).collect()
    assert report.more_pending and report.collected["inbound"] == 3


def test_replay_checks_every_id_before_publishing_anything():
    inbox = Inbox({"archsync-dead-letter-audit": [_parked("1"), _parked("2", source="//pubsub.googleapis.com/projects/other/topics/t")]})
    bus = Bus()
    service = _service(inbox, bus=bus)
    service.collect()
    with pytest.raises(NotFound):
        service.replay({"ids": ["inbound-1", "inbound-99"]}, "op")
    with pytest.raises(Conflict):
        service.replay({"ids": ["inbound-1", "inbound-2"]}, "op")
    assert bus.published == []
    result = service.replay({"ids": ["inbound-1", "inbound-1"]}, "op")
    assert [r["outcome"] for r in result["results"]] == ["replayed"] and len(bus.published) == 1


def test_a_topic_deleted_since_fails_that_id_alone():
    inbox = Inbox({"archsync-gateway-dead-letter-audit": [
        dl.ParkedMessage(str(i), b"{}", {dl.SOURCE_SUBSCRIPTION: f"gateway-pubsub-gw-{i}-sub"}, NOW) for i in (1, 2)]},
        topics={"gateway-pubsub-gw-1-sub": "gateway-pubsub-gw-1", "gateway-pubsub-gw-2-sub": "gateway-pubsub-gw-2"})
    bus = Bus(missing=("gateway-pubsub-gw-1",))
    service = _service(inbox, bus=bus)
    result = service.replay({"ids": ["gateway-1", "gateway-2"]}, "op")["results"]
    assert [(r["outcome"], r["topic"]) for r in result] == [("failed", "gateway-pubsub-gw-1"), ("replayed", "gateway-pubsub-gw-2")]
    assert "does not exist" in result[0]["reason"]


@pytest.mark.parametrize("body", [None, [], {"ids": None}, {"ids": []}, {"ids": ["x"]}, {"ids": ["inbound-1"], "all": True},
                                  {"ids": [f"inbound-{i}" for i in range(101)]}])
def test_replay_bodies_are_validated(body):
    with pytest.raises(ValidationFailed):
        _service(Inbox({})).replay(body, "op")

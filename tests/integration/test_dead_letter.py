"""Rule 2: a malformed exam event is dead-lettered with its reason (never retried forever, never
dropped) and writes nothing; the entry point runs through functions-framework's CloudEvent path."""
from __future__ import annotations

import base64
import json

import pytest

from tests.support import cloud_event_headers, destination, exam_event, gateway, load_app, pubsub_envelope


@pytest.fixture
def app(function_env, stack):
    stack.add_gateway(gateway("gw-1"))
    stack.store.save_destination(destination("dst-1", trigger="COMPLETED"))
    return load_app("on_exam_status_changed")


def post(app, envelope, stack):
    return app.post("/", data=json.dumps(envelope), headers=cloud_event_headers(project=stack.project))


def jobs(stack):
    return list(stack.db.collection("facility_groups").document("fg-1").collection("jobs").stream())


def test_valid_event_through_the_entry_point_creates_the_job(app, stack):
    r = post(app, pubsub_envelope(exam_event("COMPLETED")), stack)
    assert r.status_code == 200
    assert len(jobs(stack)) == 1
    assert len(stack.pull(gateway("gw-1").subscription_id, expect=1)) == 1
    assert stack.pull("dead-letter-audit", wait=0.3) == []


def test_a_study_storage_uri_without_its_slash_is_sent_as_the_study_folder(app, stack):
    """Issue 11 item 2: …/1.2.3 would also list …/1.2.34/ (another patient's study). The job names
    the folder …/1.2.3/ and is a valid job-message.v1."""
    from shared import contracts

    e = exam_event("COMPLETED")
    e["exam"]["study_storage_uri"] = e["exam"]["study_storage_uri"].rstrip("/")
    assert post(app, pubsub_envelope(e), stack).status_code == 200
    [msg] = stack.pull(gateway("gw-1").subscription_id, expect=1)
    body = json.loads(msg.data)
    contracts.validate(contracts.JOB_MESSAGE, body)
    assert body["study"]["storage_uri"] == e["exam"]["study_storage_uri"] + "/"
    assert stack.pull("dead-letter-audit", wait=0.3) == []


def _missing_exam_id():
    e = exam_event()
    del e["exam"]["exam_id"]
    return e


def _bad(**patch):
    e = exam_event()
    for k, v in patch.items():
        if k.startswith("exam_"):
            e["exam"][k[5:]] = v
        else:
            e[k] = v
    return e


CASES = {
    "not json": (None, b"{not json", "not UTF-8 JSON"),
    "not utf-8": (None, b"\xff\xfe", "not UTF-8 JSON"),
    "missing exam id": (_missing_exam_id(), None, "exam: missing exam_id"),
    "bad uid": (_bad(exam_study_instance_uid="1.02.3"), None, "exam/study_instance_uid"),
    "naive time": (_bad(event_time="2026-11-01T08:00:00"), None, "event_time"),
    "unknown version": (_bad(schema_version="2"), None, "schema_version"),
    "path in id": (_bad(facility_group_id="fg/../x"), None, "facility_group_id"),
    "extra field": (_bad(surprise=1), None, "unexpected property"),
    # Issue 11 items 2 and 12.
    "impossible time": (_bad(exam_status_first_reached_at="2026-02-30T00:00:00Z"), None,
                        "exam/status_first_reached_at: is not a valid date-time"),
    "bucket alone": (_bad(exam_study_storage_uri="gs://platform-studies"), None, "exam/study_storage_uri: fails 'pattern'"),
    "empty folder": (_bad(exam_study_storage_uri="gs://platform-studies//1.2.3/"), None,
                     "exam/study_storage_uri: fails 'pattern'"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_malformed_event_goes_to_dead_letter_with_reason(app, stack, case):
    payload, raw, expected = CASES[case]
    r = post(app, pubsub_envelope(payload, raw=raw, message_id="msg-42"), stack)
    assert r.status_code == 200  # acknowledged: never redelivered forever
    [dl] = stack.pull("dead-letter-audit", expect=1)
    assert expected in dl.attributes["reason"]
    assert dl.attributes["function"] == "on_exam_status_changed"
    assert dl.attributes["original_message_id"] == "msg-42"
    assert dl.attributes["source"].endswith("/topics/archsync-exam-status")
    assert dl.data == (raw if raw is not None else json.dumps(payload).encode())  # parked unchanged
    # The reason names the field, never its (patient) value.
    for secret in ("MRN-777", "DOE", "ACC-0001"):
        assert secret not in dl.attributes["reason"]
    assert jobs(stack) == []


def test_envelope_without_message_is_dead_lettered(app, stack):
    r = post(app, {"subscription": "x"}, stack)
    assert r.status_code == 200
    [dl] = stack.pull("dead-letter-audit", expect=1)
    assert "envelope" in dl.attributes["reason"]


def test_bad_base64_is_dead_lettered(app, stack):
    env = pubsub_envelope(exam_event())
    env["message"]["data"] = "!!!" + base64.b64encode(b"x").decode()
    assert post(app, env, stack).status_code == 200
    [dl] = stack.pull("dead-letter-audit", expect=1)
    assert "base64" in dl.attributes["reason"]


def test_transient_failure_is_not_acknowledged(function_env, stack, monkeypatch):
    """No dead-letter topic reachable and a Firestore outage: the function must fail (HTTP 500)
    so Pub/Sub redelivers, instead of acknowledging a message it did not process."""
    stack.add_gateway(gateway("gw-1"))
    stack.store.save_destination(destination("dst-1", trigger="COMPLETED"))
    app = load_app("on_exam_status_changed")
    from shared.adapters.firestore_store import FirestoreStore
    from shared.domain.errors import TransientError

    def outage(*a, **k):
        raise TransientError("Firestore unavailable: ServiceUnavailable")

    monkeypatch.setattr(FirestoreStore, "archiving_destinations", outage)
    r = post(app, pubsub_envelope(exam_event()), stack)
    assert r.status_code == 500
    assert stack.pull("dead-letter-audit", wait=0.3) == []

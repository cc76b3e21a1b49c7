"""on_job_result (the Result Endpoint URL) through functions-framework against the emulators:
authentication, error answers, monotonic state, archive state and lock release (rule 4)."""
from __future__ import annotations

import itertools
import json
import random
import time

import pytest

from shared import contracts
from shared.domain.messages import exam_status_changed
from shared.domain.rules import TimeoutPolicy
from shared.services.archive_trigger import ArchiveTriggerService
from tests.support import RESULT_KEY, assert_matches_openapi, destination, exam_event, gateway, load_app, post_result, result_body


@pytest.fixture
def app(function_env):
    return load_app("on_job_result")


@pytest.fixture
def job(stack):
    """A published PENDING-triggered archive job (holds the order lock) of gateway gw-1."""
    gw = gateway("gw-1")
    stack.add_gateway(gw)
    stack.secrets.save_result_key("fg-1", "gw-1", RESULT_KEY)
    stack.store.save_destination(destination("dst-1", trigger="PENDING"))
    [out] = ArchiveTriggerService(stack.store, stack.store, stack.job_publisher, stack.clock, TimeoutPolicy()).handle(
        exam_status_changed(exam_event("PENDING")))
    return out.job_id


def state(stack, job_id):
    job = stack.store.get_job("fg-1", job_id)
    archive = {a.destination_id: a.state.value for a in stack.store.archive_states("fg-1", "exam-1")}
    return job, archive.get("dst-1"), bool(stack.store.lock_holders("fg-1", "exam-1"))


def test_in_progress_then_completed(stack, app, job):
    r = post_result(app, result_body(job, "IN_PROGRESS"))
    assert r.status_code == 200 and r.json == {"outcome": "applied", "job_state": "IN_PROGRESS"}
    assert_matches_openapi(r.json, "/job-results", "post")
    j, archive, locked = state(stack, job)
    assert j.started_at is not None and archive is None and locked

    counts = {"total": 10, "sent": 8, "already_present": 2, "failed": 0}
    r = post_result(app, result_body(job, "COMPLETED", counts=counts))
    assert r.status_code == 200 and r.json["job_state"] == "COMPLETED"
    j, archive, locked = state(stack, job)
    assert (j.state.value, archive, locked, j.counts) == ("COMPLETED", "ARCHIVED", False, counts)
    assert j.completed_at >= j.started_at


def test_failed_records_reason_archive_state_and_releases_lock(stack, app, job):
    reason = "Association rejected: called AE title not recognized (A-ASSOCIATE-RJ reason 7)"
    assert post_result(app, result_body(job, "FAILED", reason=reason)).status_code == 200
    j, archive, locked = state(stack, job)
    assert (j.state.value, j.failure_reason, archive, locked) == ("FAILED", reason, "FAILED", False)


FINAL = {"COMPLETED": ("COMPLETED", "ARCHIVED"), "FAILED": ("FAILED", "FAILED")}


@pytest.mark.parametrize("sequence", list(itertools.permutations(["IN_PROGRESS", "COMPLETED", "FAILED"])))
def test_every_callback_order_ends_in_the_first_final_state(stack, app, job, sequence):
    for s in sequence:
        assert post_result(app, result_body(job, s, reason="x" if s == "FAILED" else None)).status_code == 200
    first_final = next(s for s in sequence if s != "IN_PROGRESS")
    j, archive, locked = state(stack, job)
    assert (j.state.value, archive) == FINAL[first_final]
    assert not locked and j.started_at is not None


@pytest.mark.parametrize("final", ["COMPLETED", "FAILED"])
def test_repeated_and_late_callbacks_never_move_backwards(stack, app, job, final):
    for s in ("IN_PROGRESS", final, final, "IN_PROGRESS", "IN_PROGRESS", final):
        assert post_result(app, result_body(job, s, reason="boom")).status_code == 200
    j, archive, locked = state(stack, job)
    assert (j.state.value, archive, locked) == (*FINAL[final], False)


def test_result_for_another_attempt_is_ignored(stack, app, job):
    r = post_result(app, result_body(job, "COMPLETED", attempt=2))
    assert r.status_code == 200 and r.json["outcome"] == "stale"
    assert state(stack, job)[0].state.value == "QUEUED"


@pytest.mark.parametrize("tamper", ["signature", "key", "timestamp_old", "timestamp_future", "no_headers", "gateway_header"])
def test_bad_authentication_is_401_and_writes_nothing(stack, app, job, tamper):
    body = result_body(job, "COMPLETED")
    if tamper == "signature":
        r = post_result(app, body, headers={"X-ArchSync-Signature": "v1=" + "0" * 64})
    elif tamper == "key":
        r = post_result(app, body, key=b"wrong" * 8)
    elif tamper == "timestamp_old":
        r = post_result(app, body, ts=int(time.time()) - 301)
    elif tamper == "timestamp_future":
        r = post_result(app, body, ts=int(time.time()) + 301)
    elif tamper == "no_headers":
        r = app.post("/", data=body, headers={"Content-Type": "application/json"})
    else:
        r = post_result(app, body, gw="gw-unknown")
    assert r.status_code == 401
    assert r.json["error"]["code"] == "unauthorized"
    assert_matches_openapi(r.json, "/job-results", "post", "401")
    assert state(stack, job)[0].state.value == "QUEUED"


def test_body_changed_after_signing_is_401(stack, app, job):
    from shared.signing import sign_headers

    headers = sign_headers(RESULT_KEY, "fg-1", "gw-1", result_body(job, "FAILED", reason="x"), int(time.time()))
    r = app.post("/", data=result_body(job, "COMPLETED"), headers=headers)
    assert r.status_code == 401


def test_unknown_job_is_404(stack, app, job):
    r = post_result(app, result_body("archive-" + "0" * 32, "COMPLETED"))
    assert r.status_code == 404 and r.json["error"]["code"] == "not_found"


def test_job_of_another_gateway_is_404(stack, app, job):
    stack.secrets.save_result_key("fg-1", "gw-2", b"other-key" * 4)
    r = post_result(app, result_body(job, "COMPLETED"), key=b"other-key" * 4, gw="gw-2")
    assert r.status_code == 404
    assert state(stack, job)[0].state.value == "QUEUED"


@pytest.mark.parametrize("body", [
    b"not json",
    b"[]",
    json.dumps({"schema_version": "1", "job_id": "x", "attempt": 1, "state": "COMPLETED", "time": "2026-01-01T00:00:00Z"}).encode(),
    None,  # missing state
    "bad_state",
    "naive_time",
])
def test_malformed_body_is_400_and_writes_nothing(stack, app, job, body):
    if body is None:
        body = json.dumps({"schema_version": "1", "job_id": job, "attempt": 1, "time": "2026-01-01T00:00:00Z"}).encode()
    elif body == "bad_state":
        body = result_body(job, "DONE")
    elif body == "naive_time":
        body = json.dumps({"schema_version": "1", "job_id": job, "attempt": 1, "state": "COMPLETED",
                           "time": "2026-11-01T08:00:00"}).encode()
    r = post_result(app, body)
    assert r.status_code == 400, r.json
    assert r.json["error"]["code"] == "malformed"
    assert state(stack, job)[0].state.value == "QUEUED"


def test_wrong_method_is_405_json(app):
    r = app.get("/")
    assert r.status_code == 405 and r.json["error"]["code"] == "method_not_allowed"


def test_real_payloads_match_the_result_schema(job):
    for s in ("IN_PROGRESS", "COMPLETED", "FAILED"):
        contracts.validate(contracts.JOB_RESULT, json.loads(result_body(job, s, reason="r", counts={"sent": 1})))


def test_concurrent_results_answer_json_and_end_in_one_consistent_final_state(stack, function_env, job):
    """Issue 11 item 7: a burst of IN_PROGRESS, COMPLETED and FAILED posts for one job, from many
    threads at once. Firestore contention used to escape as an HTML 500; now every answer is JSON,
    200 or 503 with Retry-After (the gateway retries those, as the agent does), and the job ends in
    exactly one final state that its archive state and lock agree with."""
    from concurrent.futures import ThreadPoolExecutor

    app = load_app("on_job_result").application
    states = ["IN_PROGRESS", "COMPLETED", "FAILED"] * 6
    answers: list = []

    def post(state: str):
        client = app.test_client()
        body = result_body(job, state, reason="association aborted" if state == "FAILED" else None)
        deadline = time.monotonic() + 300  # generous: emulator lock waits grow with machine load
        while True:
            r = post_result(client, body)
            answers.append((state, r.status_code, r.is_json, r.headers.get("Retry-After")))
            if r.status_code != 503 or time.monotonic() > deadline:
                return state, r.status_code, r.json
            time.sleep(int(r.headers["Retry-After"]) * random.uniform(0.5, 1.5))  # jittered, as a gateway should

    with ThreadPoolExecutor(max_workers=len(states)) as pool:
        final_answers = list(pool.map(post, states))
    assert all(is_json for _, _, is_json, _ in answers), answers
    assert {code for _, code, _, _ in answers} <= {200, 503}, answers
    assert all(retry_after and retry_after.isdigit() for _, code, _, retry_after in answers if code == 503), answers
    assert all(code == 200 for _, code, _ in final_answers), final_answers
    applied_finals = [(s, body["job_state"]) for s, _, body in final_answers
                      if body["outcome"] == "applied" and s != "IN_PROGRESS"]
    assert len(applied_finals) == 1, final_answers  # the first final result wins, once
    winner = applied_finals[0][0]
    j, archive, locked = state(stack, job)
    assert (j.state.value, archive, locked) == (*FINAL[winner], False)
    assert {body["outcome"] for _, _, body in final_answers} <= {"applied", "duplicate", "ignored"}
    assert sum(1 for _, code, _, _ in answers if code == 503) == len(answers) - len(states)  # each retried until 200

"""Dead-letter redrive (issue 15 item 4), end to end on the emulators: messages dead-lettered for a
real reason (a misconfigured destination; a gateway whose agent cannot reach its Result Endpoint;
Pub/Sub giving up on a subscriber) are listed with their reasons through the operations endpoint
of admin_api, replayed into their original topic after the fix, and replaying again changes
nothing. Also: who may call it, bad input, and the command (python -m scripts.redrive)."""
from __future__ import annotations

import io
import json
import threading
from pathlib import Path

import pytest

from devstack.processes import free_port
from tests.support import (
    assert_matches_openapi,
    destination,
    exam_event,
    gateway,
    load_app,
    wait_for,
)

EXAM_TOPIC = "archsync-exam-status"
DLQ, GATEWAY_DLQ = "archsync-dead-letter", "archsync-gateway-dead-letter"
LIST = "/v1/operations/dead-letters"
REPLAY = "/v1/operations/dead-letters/replay"
PATIENT_DATA = ("MRN-777", "DOE", "JANE", "ACC-0001")


class CountingFunction:
    """A functions-framework app on a loopback port, for push delivery; counts the requests it
    answered (how a test knows a replay was delivered and handled)."""

    def __init__(self, name: str):
        import functions_framework
        from werkzeug.serving import make_server

        source = Path(__file__).resolve().parents[2] / "functions" / name / "main.py"
        app = functions_framework.create_app(target=name, source=str(source))
        self.answered: list[int] = []

        def counted(environ, start_response):
            def start(status, headers, exc_info=None):
                self.answered.append(int(status.split()[0]))
                return start_response(status, headers, exc_info)
            return app(environ, start)

        self._server = make_server("127.0.0.1", free_port(), counted, threaded=True)
        self.url = f"http://127.0.0.1:{self._server.server_port}/"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self._server.shutdown()


class Ops:
    """The platform team at the operations endpoint, and the Pub/Sub plumbing around it."""

    def __init__(self, stack, auth):
        self.stack, self.auth = stack, auth
        self.admin = load_app("admin_api")
        self.headers = auth.headers((), archsync_operator=True, name="Olly Operator")

    def audit(self, topic: str) -> None:
        """The audit subscription infra/pubsub.tf gives a dead-letter topic ("<topic>-audit")."""
        s = self.stack.subscriber
        s.create_subscription(name=s.subscription_path(self.stack.project, f"{topic}-audit"),
                              topic=self.stack.publisher_client.topic_path(self.stack.project, topic))

    def list(self, **query) -> dict:
        r = self.admin.get(LIST, query_string=query, headers=self.headers)
        assert r.status_code == 200, r.get_data(as_text=True)
        body = r.get_json()
        assert_matches_openapi(body, LIST, "get")
        for secret in PATIENT_DATA:
            assert secret not in r.get_data(as_text=True)
        return body

    def replay(self, *ids: str) -> list[dict]:
        r = self.admin.post(REPLAY, json={"ids": list(ids)}, headers=self.headers)
        assert r.status_code == 200, r.get_data(as_text=True)
        assert_matches_openapi(r.get_json(), REPLAY, "post")
        return r.get_json()["results"]

    def nack_until_dead_lettered(self, subscription: str, attempts: int) -> None:
        """A subscriber that can never process the message: nack every delivery until Pub/Sub
        stops delivering it (the subscription's dead-letter policy)."""
        s = self.stack.subscriber
        path = s.subscription_path(self.stack.project, subscription)
        seen: list[int] = []

        def nack_one():
            resp = s.pull(request={"subscription": path, "max_messages": 10, "return_immediately": True}, timeout=10)
            for m in resp.received_messages:
                seen.append(m.delivery_attempt)
                s.modify_ack_deadline(request={"subscription": path, "ack_ids": [m.ack_id], "ack_deadline_seconds": 0})
            # Pub/Sub dead-letters a message when it would deliver it once more than allowed.
            return len(seen) >= attempts and not resp.received_messages

        wait_for(nack_one, 60, "the deliveries")


@pytest.fixture
def ops(stack, admin_env):
    return Ops(stack, admin_env)


def _jobs(stack, fg: str = "fg-1") -> list[dict]:
    return [d.to_dict() for d in stack.db.collection("facility_groups").document(fg).collection("jobs").stream()]


# -- a platform event a function rejected ------------------------------------------------------------

def test_an_event_dead_lettered_for_a_misconfigured_destination_is_replayed_after_the_fix(stack, ops):
    """Real push delivery from the emulator to on_exam_status_changed. A destination stored with
    out-of-range retry settings (before the bounds existed) gets no job and the event is
    dead-lettered naming it; the other destination gets its job. After the fix, the replay
    creates only the missing job; replaying again creates nothing."""
    ops.audit(DLQ)
    gw = gateway("gw-1")
    stack.add_gateway(gw)
    stack.store.save_destination(destination("dst-good"))
    stack.store.save_destination(destination("dst-bad", max_retries=10**12))
    fn = CountingFunction("on_exam_status_changed")
    try:
        stack.topic(EXAM_TOPIC)
        s, p = stack.subscriber, stack.publisher_client
        s.create_subscription(request={
            "name": s.subscription_path(stack.project, "exam-status-push"), "topic": p.topic_path(stack.project, EXAM_TOPIC),
            "push_config": {"push_endpoint": f"{fn.url}projects/{stack.project}/topics/{EXAM_TOPIC}"},
            "ack_deadline_seconds": 30,
            "dead_letter_policy": {"dead_letter_topic": p.topic_path(stack.project, DLQ), "max_delivery_attempts": 5}})
        event = exam_event("COMPLETED", exam_id="exam-1")
        published_id = p.publish(p.topic_path(stack.project, EXAM_TOPIC), json.dumps(event).encode()).result(timeout=30)

        rows = wait_for(lambda: ops.list()["dead_letters"], 60, "the dead-lettered event")
        [row] = rows
        assert row["kind"] == "inbound" and row["state"] == "PARKED" and row["replayable"] is True
        assert row["function"] == "on_exam_status_changed" and row["reason_code"] == "REJECTED"
        assert "dst-bad" in row["reason"]
        assert row["original_topic"] == EXAM_TOPIC and row["original_message_id"] == published_id
        assert row["event_id"] == event["event_id"] and row["facility_group_id"] == "fg-1"
        assert row["dead_letter_topic"] == DLQ and row["dead_lettered_at"]
        assert [j["destination_id"] for j in _jobs(stack)] == ["dst-good"]
        # Listing consumed nothing: the dead letter is still there, once, on the next look.
        assert [r["id"] for r in ops.list()["dead_letters"]] == [row["id"]]
        r = ops.admin.get(f"{LIST}/{row['id']}", headers=ops.headers)
        assert r.status_code == 200 and r.get_json()["reason"] == row["reason"]
        assert_matches_openapi(r.get_json(), f"{LIST}/{{dead_letter_id}}", "get")
        assert len(stack.pull(gw.subscription_id, expect=1)) == 1  # dst-good's job message

        # The fix, then the redrive.
        stack.store.save_destination(destination("dst-bad", max_retries=3))
        answered = len(fn.answered)
        [result] = ops.replay(row["id"])
        assert result["outcome"] == "replayed" and result["topic"] == EXAM_TOPIC and result["message_id"]
        wait_for(lambda: len(_jobs(stack)) == 2, 60, "the missing job")
        wait_for(lambda: len(fn.answered) > answered, 60, "the replay's delivery")
        assert sorted(j["destination_id"] for j in _jobs(stack)) == ["dst-bad", "dst-good"]
        [msg] = stack.pull(gw.subscription_id, expect=1)
        assert json.loads(msg.data)["destination"]["id"] == "dst-bad"

        # Replayed again: delivered and handled, and nothing new (deterministic job ids).
        answered = len(fn.answered)
        [again] = ops.replay(row["id"])
        assert again["outcome"] == "replayed" and again["message_id"] != result["message_id"]
        wait_for(lambda: len(fn.answered) > answered, 60, "the second replay's delivery")
        assert fn.answered[-1] in (200, 204)
        assert sorted(j["destination_id"] for j in _jobs(stack)) == ["dst-bad", "dst-good"]
        assert stack.pull(gw.subscription_id, wait=1.0) == []
        [after] = ops.list(state="REPLAYED")["dead_letters"]
        assert after["id"] == row["id"] and after["replay_count"] == 2 and after["last_replayed_by"] == "u-1 (Olly Operator)"
        assert ops.list(state="PARKED")["dead_letters"] == []  # the replays themselves were not dead-lettered
    finally:
        fn.stop()


# -- a message Pub/Sub gave up on ----------------------------------------------------------------------

def test_a_message_pubsub_dead_lettered_goes_back_to_the_topic_of_its_subscription(stack, ops):
    """The subscriber never acks: after max_delivery_attempts Pub/Sub moves the message to the
    dead-letter topic with CloudPubSubDeadLetterSource* attributes. The record finds the original
    topic through that subscription; the replay carries the original data and attributes."""
    ops.audit(DLQ)
    topic = "archsync-study-changed"
    stack.topic(topic)
    s, p = stack.subscriber, stack.publisher_client
    s.create_subscription(request={
        "name": s.subscription_path(stack.project, "study-pull"), "topic": p.topic_path(stack.project, topic),
        "dead_letter_policy": {"dead_letter_topic": p.topic_path(stack.project, DLQ), "max_delivery_attempts": 5}})
    data = json.dumps({"event_id": "ev-1", "facility_group_id": "fg-1", "patient": {"name": "DOE^JANE"}}).encode()
    p.publish(p.topic_path(stack.project, topic), data, origin="platform").result(timeout=30)
    ops.nack_until_dead_lettered("study-pull", 5)

    [row] = wait_for(lambda: ops.list()["dead_letters"], 60, "the dead letter")
    assert row["reason_code"] == "DELIVERY_ATTEMPTS_EXHAUSTED" and row["function"] is None
    assert row["source_subscription"] == "study-pull" and row["delivery_attempts"] == 5
    assert row["original_topic"] == topic and "study-pull" in row["reason"]
    assert row["event_id"] == "ev-1" and row["facility_group_id"] == "fg-1"

    [result] = ops.replay(row["id"])
    assert result["outcome"] == "replayed"
    [back] = stack.pull("study-pull", expect=1)
    assert back.data == data
    assert dict(back.attributes) == {"origin": "platform", "archsync_redrive_id": row["id"]}


def test_a_dead_letter_whose_topic_is_unknown_is_refused_and_nothing_is_published(stack, ops):
    ops.audit(DLQ)
    topic = "archsync-patient-updated"
    stack.topic(topic)
    s, p = stack.subscriber, stack.publisher_client
    s.create_subscription(request={
        "name": s.subscription_path(stack.project, "patient-pull"), "topic": p.topic_path(stack.project, topic),
        "dead_letter_policy": {"dead_letter_topic": p.topic_path(stack.project, DLQ), "max_delivery_attempts": 5}})
    p.publish(p.topic_path(stack.project, topic), b"{}").result(timeout=30)
    ops.nack_until_dead_lettered("patient-pull", 5)
    wait_for(lambda: stack.subscriber.pull(request={"subscription": s.subscription_path(stack.project, "dead-letter-audit"),
                                                    "max_messages": 1, "return_immediately": True}, timeout=10).received_messages,
             60, "the message in the dead-letter topic")
    s.delete_subscription(subscription=s.subscription_path(stack.project, "patient-pull"))
    # A readable record of something good, to show the 409 publishes none of the ids.
    from shared.pubsub_events import PubSubMessage
    from shared.services.dead_letter import DeadLetter

    DeadLetter(stack.bus, DLQ, "on_patient_updated").send(
        PubSubMessage("m-9", b"{}", {}, f"//pubsub.googleapis.com/projects/{stack.project}/topics/{topic}"), "x: bad")
    rows = wait_for(lambda: (lambda r: r if len(r) == 2 else None)(ops.list()["dead_letters"]), 60, "both dead letters")
    orphan = next(r for r in rows if r["reason_code"] == "DELIVERY_ATTEMPTS_EXHAUSTED")
    good = next(r for r in rows if r["reason_code"] == "REJECTED")
    assert orphan["replayable"] is False and orphan["original_topic"] is None
    assert "no longer exists" in orphan["reason"]
    sub = s.create_subscription(name=s.subscription_path(stack.project, "patient-watch"), topic=p.topic_path(stack.project, topic))
    r = ops.admin.post(REPLAY, json={"ids": [good["id"], orphan["id"]]}, headers=ops.headers)
    assert r.status_code == 409 and r.get_json()["error"]["code"] == "conflict"
    assert orphan["id"] in r.get_json()["error"]["message"]
    assert stack.pull("patient-watch", wait=1.0) == []  # not even the good one
    assert sub.name.endswith("patient-watch")


# -- a job the gateway could not process -----------------------------------------------------------------

def test_a_job_the_agent_could_not_process_goes_back_to_its_gateway(stack, ops, admin_env, tmp_path, monkeypatch):
    """The gateway's agent does the job but cannot report it: its Result Endpoint answers 503 for
    longer than the subscription's dead-letter budget, so the agent nacks and after the
    subscription's max delivery attempts the job message is dead-lettered. The endpoint is fixed;
    the redrive puts the job message back on the gateway's topic; the agent reports the job it
    already did (nothing is stored twice) and it completes once. A second replay is acked by the
    agent without any work and changes nothing in the cloud."""
    from devstack.archive_scp import EmbeddedArchive
    from gateway_agent.agent import Agent
    from gateway_agent.config import parse
    from tests.e2e.harness import E2E
    from tests.integration.test_result_outage import FlakyProxy

    archive = EmbeddedArchive(commitment=False).start()
    e2e = E2E(stack, tmp_path, admin_env, host="127.0.0.1", port=archive.port, called_ae_title=archive.ae_title,
              provisioning={"max_delivery_attempts": 5, "min_retry_backoff_seconds": 1, "max_retry_backoff_seconds": 2})
    proxy = FlakyProxy(e2e.result_endpoint.url)
    ops.audit(GATEWAY_DLQ)
    handled: list[tuple] = []  # (job id, attempt, what the agent answered Pub/Sub)
    handle = Agent.handle

    def spy(self, delivery, runner, reporter, data, *args, **kw):
        answer = handle(self, delivery, runner, reporter, data, *args, **kw)
        job = json.loads(data)
        handled.append((job["job_id"], job["attempt"], answer))
        return answer

    monkeypatch.setattr(Agent, "handle", spy)
    try:
        study = "1.2.826.0.1.3680043.8.498.7701"
        files = e2e.study(study, 3)
        cfg = e2e.config()
        cfg["job_deliveries"][0]["result_endpoint_url"] = proxy.url
        cfg["result_retry"] = {"initial_seconds": 0.1, "max_interval_seconds": 0.2, "max_seconds": 0.5}
        e2e.agent = Agent(parse(cfg)).start()
        proxy.mode = "503"  # the Result Endpoint is down
        e2e.exam_completed("exam-1", study)

        [row] = wait_for(lambda: ops.list(kind="gateway")["dead_letters"], 120, "the job message in the gateway dead-letter topic")
        [job] = e2e.jobs("ARCHIVE")
        assert job["state"] == "QUEUED"  # no result ever reached the cloud
        assert row["kind"] == "gateway" and row["reason_code"] == "DELIVERY_ATTEMPTS_EXHAUSTED"
        assert row["source_subscription"] == e2e.gw.subscription_id and row["delivery_attempts"] == 5
        assert row["original_topic"] == e2e.gw.topic_id
        assert (row["job_id"], row["facility_group_id"], row["gateway_id"]) == (job["id"], e2e.FG, e2e.GW)
        assert [answer for _, _, answer in handled] == ["nack"] * 5
        assert archive.study(study) == {f.sop_instance_uid for f in files}  # the work was done, not reported
        stores = archive.stores

        proxy.mode = "up"  # the fix
        [result] = ops.replay(row["id"])
        assert result["outcome"] == "replayed" and result["topic"] == e2e.gw.topic_id
        done = e2e.wait_job("ARCHIVE", {"COMPLETED", "FAILED"}, timeout=120)
        assert done["state"] == "COMPLETED", done.get("failure_reason")
        assert e2e.archive_state("exam-1") == "ARCHIVED"
        assert archive.stores == stores  # nothing stored twice
        wait_for(lambda: handled[-1][2] == "ack", 60, "the agent's ack")

        n = len(handled)
        [again] = ops.replay(row["id"])
        assert again["outcome"] == "replayed"
        wait_for(lambda: len(handled) > n, 60, "the second replay's delivery")
        assert handled[n:] == [(job["id"], 1, "ack")]
        [still] = e2e.jobs("ARCHIVE")
        assert (still["state"], still["attempt"], still["completed_at"]) == ("COMPLETED", 1, done["completed_at"])
        assert archive.stores == stores
        assert ops.list(kind="gateway", state="PARKED")["dead_letters"] == []
    finally:
        e2e.close()
        proxy.stop()
        archive.stop()


# -- who may, and bad input ----------------------------------------------------------------------------

def test_only_operator_tokens_reach_the_operations_endpoints(ops, admin_env):
    group_admin = admin_env.headers(("fg-1",))
    as_text = admin_env.headers(("fg-1",), archsync_operator="true")  # only JSON true grants the role
    for method, path, body in (("get", LIST, None), ("get", f"{LIST}/inbound-1", None), ("post", REPLAY, {"ids": ["inbound-1"]})):
        call = getattr(ops.admin, method)
        r = call(path, json=body) if body else call(path)
        assert r.status_code == 401 and r.get_json()["error"]["code"] == "unauthorized", path
        for headers in (group_admin, as_text):
            r = call(path, json=body, headers=headers) if body else call(path, headers=headers)
            assert r.status_code == 403, (path, r.get_data(as_text=True))
            assert r.get_json()["error"]["code"] == "forbidden"
    # An operator who administers a group too keeps that group's admin API, and nothing more.
    both = admin_env.headers(("fg-1",), archsync_operator=True)
    assert ops.admin.get(LIST, headers=both).status_code == 200
    assert ops.admin.get("/v1/facility-groups/fg-2/gateways", headers=both).status_code == 404


@pytest.mark.parametrize("case,status", [
    ({"data": b"{\"ids\": [\"inbound-1\"]}", "content_type": "text/plain"}, 415),
    ({"data": b"{not json", "content_type": "application/json"}, 400),
    ({"data": b"", "content_type": "application/json"}, 400),
    ({"json": {"ids": "inbound-1"}}, 422),
    ({"json": {"ids": []}}, 422),
    ({"json": {"ids": ["../../etc"]}}, 422),
    ({"json": {"ids": ["outbound-1"]}}, 422),
    ({"json": {"ids": [f"inbound-{i}" for i in range(101)]}}, 422),
    ({"json": {"ids": ["inbound-1"], "force": True}}, 422),
    ({"json": ["inbound-1"]}, 422),
    ({"json": {"ids": ["inbound-404"]}}, 404),
    ({"data": b"x" * (65 * 1024), "content_type": "application/json"}, 413),
])
def test_bad_replay_requests_get_a_clear_json_4xx(ops, case, status):
    r = ops.admin.post(REPLAY, headers=ops.headers, **case)
    assert r.status_code == status, r.get_data(as_text=True)
    assert r.is_json and set(r.get_json()["error"]) >= {"code", "message"}


@pytest.mark.parametrize("method,path,query,status", [
    ("get", LIST, {"limit": "0"}, 422),
    ("get", LIST, {"limit": "501"}, 422),
    ("get", LIST, {"limit": "ten"}, 422),
    ("get", LIST, {"kind": "outbound"}, 422),
    ("get", LIST, {"state": "GONE"}, 422),
    ("get", LIST, {"page_token": "../x"}, 422),
    ("get", LIST, {"mrn": "MRN-777"}, 422),
    ("get", f"{LIST}/inbound-404", {}, 404),
    ("get", f"{LIST}/not-an-id", {}, 404),
    ("delete", LIST, {}, 405),
    ("get", REPLAY, {}, 405),
    ("get", "/v1/operations/other", {}, 404),
])
def test_bad_listing_requests_get_a_clear_json_4xx(ops, method, path, query, status):
    r = getattr(ops.admin, method)(path, query_string=query, headers=ops.headers)
    assert r.status_code == status, r.get_data(as_text=True)
    assert r.is_json and set(r.get_json()["error"]) >= {"code", "message"}


def test_listing_pages_through_the_index(stack, ops):
    from shared.pubsub_events import PubSubMessage
    from shared.services.dead_letter import DeadLetter

    ops.audit(DLQ)
    source = f"//pubsub.googleapis.com/projects/{stack.project}/topics/{EXAM_TOPIC}"
    for i in range(5):
        DeadLetter(stack.bus, DLQ, "on_exam_status_changed").send(PubSubMessage(f"m-{i}", b"{}", {}, source), f"exam: missing exam_id {i}")
    wait_for(lambda: len(ops.list()["dead_letters"]) == 5, 60, "five dead letters")
    seen, token = [], None
    while True:
        page = ops.list(limit="2", **({"page_token": token} if token else {}))
        assert len(page["dead_letters"]) <= 2
        seen += [r["id"] for r in page["dead_letters"]]
        token = page["next_page_token"]
        if not token:
            break
    assert len(seen) == len(set(seen)) == 5
    assert ops.list(kind="gateway")["dead_letters"] == []


# -- the command ---------------------------------------------------------------------------------------

def test_the_command_lists_and_replays(stack, ops, function_env):
    from scripts import redrive
    from shared.pubsub_events import PubSubMessage
    from shared.services.dead_letter import DeadLetter

    ops.audit(DLQ)
    stack.topic(EXAM_TOPIC, subscription="exam-watch")
    event = exam_event("COMPLETED")
    data = json.dumps(event).encode()
    DeadLetter(stack.bus, DLQ, "on_exam_status_changed").send(
        PubSubMessage("m-1", data, {}, f"//pubsub.googleapis.com/projects/{stack.project}/topics/{EXAM_TOPIC}"),
        "exam/study_instance_uid: fails 'pattern'", event["event_id"])

    def listed():
        out = io.StringIO()
        assert redrive.main(["list", "--json"], out=out) == 0
        return json.loads(out.getvalue())["dead_letters"]

    [row] = wait_for(listed, 60, "the dead letter, listed by the command")
    assert row["reason"] == "exam/study_instance_uid: fails 'pattern'" and row["event_id"] == event["event_id"]
    out = io.StringIO()
    assert redrive.main(["list"], out=out) == 0
    assert row["id"] in out.getvalue() and "original_topic=archsync-exam-status" in out.getvalue()
    for secret in PATIENT_DATA:
        assert secret not in out.getvalue()

    out = io.StringIO()
    assert redrive.main(["replay", row["id"], "--operator", "pat@platform"], out=out) == 0
    assert f"{row['id']}: replayed -> {EXAM_TOPIC}" in out.getvalue()
    [back] = stack.pull("exam-watch", expect=1)
    assert back.data == data and back.attributes["archsync_redrive_id"] == row["id"]
    shown = io.StringIO()
    assert redrive.main(["show", row["id"], "--json"], out=shown) == 0
    assert json.loads(shown.getvalue())["last_replayed_by"] == "pat@platform"

    err = io.StringIO()
    assert redrive.main(["replay", "inbound-404"], out=io.StringIO(), err=err) == 2
    assert "no such dead letter" in err.getvalue()
    assert redrive.main(["replay", "bogus"], out=io.StringIO(), err=io.StringIO()) == 2

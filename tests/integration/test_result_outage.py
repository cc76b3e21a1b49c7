"""A Result Endpoint outage loses no job (issue 11 item 5), end to end on the emulators: a gateway
provisioned for real (its subscription with the production retry and dead-letter policies), the
reference agent on a real streaming pull, the embedded archive, and on_job_result behind a proxy
that answers 503 and then drops connections for the length of the outage.

Time is scaled 1:60: the outage lasts 30 s for the production case's 30 minutes, and the agent
re-posts with a 1 s cap (60 s in production) for up to 90 s (45 minutes in production, widened
here so a loaded machine cannot make the test flaky). The streaming pull leases a message for
10 s at a time, so holding the result through the outage relies on its lease extension."""
from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from devstack.archive_scp import EmbeddedArchive
from gateway_agent.agent import Agent
from gateway_agent.config import parse
from shared.services.provisioning import Provisioner, ProvisioningSettings
from tests.e2e.harness import E2E, wait_for
from tests.support import gateway

STUDY = "1.2.826.0.1.3680043.8.498.9101"
GATEWAY_DLQ = "archsync-gateway-dead-letter"
OUTAGE_SECONDS = 30.0


class FlakyProxy:
    """Forwards result callbacks to the Result Endpoint, unless it is "503" (answers 503) or "drop"
    (closes the connection without an answer, as an unreachable endpoint behind a load balancer)."""

    def __init__(self, upstream: str):
        self.mode, self.refused = "up", []  # refused: (mode, reported state) of each refused post
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                mode = proxy.mode
                if mode != "up":
                    proxy.refused.append((mode, json.loads(body)["state"]))
                    if mode == "drop":
                        self.close_connection = True
                        return
                    return self._answer(503, b'{"error": {"code": "unavailable", "message": "down"}}')
                headers = {k: v for k, v in self.headers.items() if k.lower().startswith("x-archsync") or k == "Content-Type"}
                req = urllib.request.Request(upstream, data=body, method="POST", headers=headers)
                try:
                    with urllib.request.urlopen(req, timeout=30) as resp:
                        self._answer(resp.status, resp.read())
                except urllib.error.HTTPError as e:
                    self._answer(e.code, e.read())

            def _answer(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_port}/"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def world(stack, admin_env, tmp_path):
    archive = EmbeddedArchive(commitment=False).start()
    e2e = E2E(stack, tmp_path, admin_env, host="127.0.0.1", port=archive.port, called_ae_title=archive.ae_title)
    proxy = FlakyProxy(e2e.result_endpoint.url)
    yield e2e, archive, proxy
    e2e.close()
    proxy.stop()
    archive.stop()


def test_a_30_minute_result_endpoint_outage_loses_no_job_and_burns_no_delivery(world, monkeypatch):
    e2e, archive, proxy = world
    deliveries: list = []  # Pub/Sub's delivery attempt of each job message the agent was handed
    handle = Agent.handle

    def spy(self, delivery, runner, reporter, data, *args, **kw):
        deliveries.append(kw.get("delivery_attempt"))
        return handle(self, delivery, runner, reporter, data, *args, **kw)

    monkeypatch.setattr(Agent, "handle", spy)
    files = e2e.study(STUDY, 4)
    cfg = e2e.config()
    cfg["job_deliveries"][0]["result_endpoint_url"] = proxy.url
    cfg["result_retry"] = {"initial_seconds": 0.25, "max_interval_seconds": 1, "max_seconds": 90}
    e2e.agent = Agent(parse(cfg)).start()

    proxy.mode = "503"  # the outage starts before the job exists
    e2e.exam_completed("exam-1", STUDY)
    wait_for(lambda: proxy.refused, 90, "the agent's first post during the outage")
    started = time.monotonic()
    while time.monotonic() - started < OUTAGE_SECONDS / 2:
        time.sleep(0.2)
    proxy.mode = "drop"
    while time.monotonic() - started < OUTAGE_SECONDS:
        time.sleep(0.2)
    proxy.mode = "up"

    job = e2e.wait_job("ARCHIVE", {"COMPLETED", "FAILED"}, timeout=120)
    assert job["state"] == "COMPLETED", job.get("failure_reason")
    assert e2e.archive_state("exam-1") == "ARCHIVED"
    # One delivery: the message stayed leased while the agent backed off (nothing was nacked),
    # far below the subscription's max_delivery_attempts; the DICOM work was done once.
    assert len(deliveries) == 1, f"the job message was delivered {len(deliveries)} times"
    assert deliveries == [1], deliveries
    # The final result was refused throughout the outage, in both ways, and held meanwhile.
    assert {("503", "COMPLETED"), ("drop", "COMPLETED")} <= set(proxy.refused)
    assert ProvisioningSettings(objects_bucket="x", study_bucket="y").max_delivery_attempts > max(deliveries)
    assert archive.study(STUDY) == {f.sop_instance_uid for f in files} and archive.stores == len(files)
    assert e2e.stack.pull("gateway-dead-letter-audit", wait=3.0) == []


def test_provisioned_subscriptions_back_off_between_redeliveries(stack):
    """The Pub/Sub emulator applies the provisioned retry policy: nacked job messages come back after
    the backoff (here at least 3 s), not at once, and their delivery attempts are counted. Measured
    quirk of the emulator: it redelivers the first nack at once and backs off from the second on
    (production backs off from the first), so three nacks take at least 2 x 3 s; without a retry
    policy they take a fraction of a second."""
    stack.topic(GATEWAY_DLQ)
    settings = ProvisioningSettings(objects_bucket=stack.objects_bucket, study_bucket=stack.study_bucket,
                                    gateway_dead_letter_topic=GATEWAY_DLQ,
                                    min_retry_backoff_seconds=3, max_retry_backoff_seconds=10)
    gw = Provisioner(stack.store, stack.cloud(), stack.clock, settings).create(gateway("gw-1", topic_id="", subscription_id=""), "Pat")
    sub = stack.subscriber.get_subscription(subscription=stack.subscriber.subscription_path(stack.project, gw.subscription_id))
    assert (sub.retry_policy.minimum_backoff.total_seconds(), sub.retry_policy.maximum_backoff.total_seconds()) == (3, 10)
    stack.publisher_client.publish(stack.publisher_client.topic_path(stack.project, gw.topic_id), b"{}").result(timeout=30)
    path = stack.subscriber.subscription_path(stack.project, gw.subscription_id)

    def pull():
        resp = stack.subscriber.pull(request={"subscription": path, "max_messages": 1, "return_immediately": True}, timeout=10)
        return resp.received_messages[0] if resp.received_messages else None

    message = wait_for(pull, 30, "the job message")
    attempts, started = [message.delivery_attempt], time.monotonic()
    for _ in range(3):
        stack.subscriber.modify_ack_deadline(request={"subscription": path, "ack_ids": [message.ack_id], "ack_deadline_seconds": 0})
        message = wait_for(pull, 60, "the redelivery")
        attempts.append(message.delivery_attempt)
    assert time.monotonic() - started >= 2 * 3 - 0.5  # a loaded machine only makes it later
    assert attempts == [1, 2, 3, 4]
    stack.subscriber.acknowledge(subscription=path, ack_ids=[message.ack_id])

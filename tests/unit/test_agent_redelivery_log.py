"""A redelivered job message is logged with Pub/Sub's delivery attempt (issue 13 item 3): a lapsed
lease handed back to the agent still running the job is otherwise invisible (it is held, neither
acked nor nacked), and so is a redelivery of a job already settled here (acked)."""
from __future__ import annotations

import json
import logging
import threading
from datetime import datetime, timedelta, timezone

from gateway_agent.agent import Agent
from gateway_agent.config import parse
from gateway_agent.results import Outcome
from tests.support import local_key_file

JOB = {"job_id": "archive-" + "d" * 32, "job_type": "ARCHIVE", "attempt": 1, "facility_group_id": "fg-1",
       "gateway_id": "gw-1", "destination": {"id": "dst-1"},
       "result_deadline": (datetime.now(timezone.utc) + timedelta(hours=1)).isoformat()}


class _Reporter:
    def post(self, job, state, reason=None, counts=None, patient=False):
        return "applied"


class _SlowRunner:
    def __init__(self):
        self.started, self.release = threading.Event(), threading.Event()

    def run(self, job, progress=lambda counts: None):
        self.started.set()
        assert self.release.wait(30)
        return Outcome("COMPLETED", None, {"total": 1, "sent": 1})


def test_a_redelivered_job_message_is_logged_with_its_delivery_attempt(caplog):
    agent = Agent(parse({"job_deliveries": [{"name": "gw", "project_id": "p", "subscription_id": "s",
                                             "result_endpoint_url": "https://x/r", "result_endpoint_secure_key": "k",
                                             "service_account_json": local_key_file(), "active": True}]}))
    d, runner, reporter, data = agent.cfg.deliveries[0], _SlowRunner(), _Reporter(), json.dumps(JOB).encode()
    verdicts: list[str] = []
    first = threading.Thread(target=lambda: verdicts.append(agent.handle(d, runner, reporter, data, delivery_attempt=1)))
    first.start()
    assert runner.started.wait(30)
    with caplog.at_level(logging.INFO, logger="gateway_agent"):
        assert agent.handle(d, runner, reporter, data, delivery_attempt=2) == "hold"
        runner.release.set()
        first.join(30)
        assert verdicts == ["ack"]
        assert agent.handle(d, runner, reporter, data, delivery_attempt=3) == "ack"
    logged = [(r.getMessage(), r.delivery_attempt) for r in caplog.records if "redelivered" in r.getMessage()]
    assert logged == [("job message redelivered while its job runs here; held (neither acked nor nacked)", 2),
                      ("job message redelivered after its job settled here; acked", 3)]

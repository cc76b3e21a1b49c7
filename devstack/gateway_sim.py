"""A stand-in for the on-prem gateway in the local run: pulls job messages from its subscription
and posts signed results to the Result Endpoint. (The reference gateway agent that really speaks
DICOM is issue 6; this one only plays the protocol.)"""
from __future__ import annotations

import json
import time
import urllib.request
from datetime import datetime, timezone
from typing import Callable, Optional

from shared.signing import sign_headers

# decide(job message) -> None (stay silent: simulate a gateway that dies mid-job) or
# (final state, reason)
Decider = Callable[[dict], Optional[tuple[str, Optional[str]]]]


class SimulatedGateway:
    def __init__(self, subscriber, project: str, facility_group_id: str, gateway_id: str, subscription_id: str,
                 key: bytes, result_url: str, decide: Decider):
        self._sub = subscriber
        self._path = subscriber.subscription_path(project, subscription_id)
        self.fg, self.gateway_id, self._key, self._url, self._decide = facility_group_id, gateway_id, key, result_url, decide
        self.handled: list[dict] = []

    def post(self, job: dict, state: str, reason: Optional[str] = None, counts: Optional[dict] = None) -> int:
        body = {"schema_version": "1", "job_id": job["job_id"], "attempt": job["attempt"], "state": state,
                "time": datetime.now(timezone.utc).isoformat()}
        if reason:
            body["reason"] = reason
        if counts:
            body["counts"] = counts
        data = json.dumps(body).encode()
        req = urllib.request.Request(self._url, data=data, method="POST",
                                     headers=sign_headers(self._key, self.fg, self.gateway_id, data, int(time.time())))
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status

    def poll_once(self, on_started: Callable[[dict], None] = lambda job: None) -> int:
        """Handle what is waiting; ack each message only after its final result was accepted."""
        resp = self._sub.pull(request={"subscription": self._path, "max_messages": 50, "return_immediately": True}, timeout=10)
        for received in resp.received_messages:
            job = json.loads(received.message.data)
            self.post(job, "IN_PROGRESS")
            on_started(job)
            verdict = self._decide(job)
            if verdict is not None:
                state, reason = verdict
                self.post(job, state, reason, {"total": 12, "sent": 12 if state == "COMPLETED" else 3,
                                               "failed": 0 if state == "COMPLETED" else 9})
            self.handled.append(job)
            self._sub.acknowledge(request={"subscription": self._path, "ack_ids": [received.ack_id]})
        return len(resp.received_messages)

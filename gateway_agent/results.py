"""Posting signed job results to the Result Endpoint (contract job-result.v1).

The signature is the one ``shared/signing.py`` checks, restated here because the agent ships
without the cloud package: HMAC-SHA256 with the Result Endpoint secure key (its UTF-8 bytes) over
"<unix timestamp>.<raw body>"; a test proves the two agree."""
from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import logging
import random
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable, Optional

log = logging.getLogger("gateway_agent.results")

# Statuses that a resend cannot change: the job is gone (404) or the body is wrong (400/422).
_FINAL_REFUSALS = (400, 404, 413, 422)


@dataclass(frozen=True)
class Outcome:
    """How a job ended at the agent: COMPLETED or FAILED, a precise reason and counts."""

    state: str
    reason: Optional[str] = None
    counts: Optional[dict] = None


class ResultRefused(Exception):
    """The endpoint answered that this result can never be accepted (e.g. unknown job)."""


class ResultNotDelivered(Exception):
    """The endpoint could not be reached or refused the signature: keep the message for redelivery."""


def sign_headers(key: str, facility_group_id: str, gateway_id: str, body: bytes, now_unix: int) -> dict[str, str]:
    ts = str(int(now_unix))
    sig = hmac.new(key.encode(), ts.encode() + b"." + body, hashlib.sha256).hexdigest()
    return {"X-ArchSync-Gateway": f"{facility_group_id}/{gateway_id}", "X-ArchSync-Timestamp": ts,
            "X-ArchSync-Signature": f"v1={sig}", "Content-Type": "application/json"}


def result_body(job: dict, state: str, reason: Optional[str] = None, counts: Optional[dict] = None,
                at: Optional[datetime] = None) -> bytes:
    body = {"schema_version": "1", "job_id": job["job_id"], "attempt": job["attempt"], "state": state,
            "time": (at or datetime.now(timezone.utc)).isoformat()}
    if reason:
        body["reason"] = reason[:2000]
    if counts:
        body["counts"] = counts
    return json.dumps(body, separators=(",", ":")).encode()


@dataclass(frozen=True)
class RetryPolicy:
    """How a final result is re-posted while the Result Endpoint is unavailable (issue 11 item 5):
    capped exponential backoff with jitter, for up to ``max_seconds`` in all. The default outlasts
    a 30-minute outage with a 15-minute margin; meanwhile the job message stays leased."""

    initial_seconds: float = 1.0
    max_interval_seconds: float = 60.0
    max_seconds: float = 45 * 60.0

    def delay(self, retry: int, rand: Callable[[], float] = random.random) -> float:
        """The wait before re-post number ``retry`` (1, 2, ...): half fixed, half random, so gateways
        that lost the endpoint together do not all come back in the same second."""
        cap = min(self.max_interval_seconds, self.initial_seconds * 2 ** min(retry - 1, 32))
        return cap / 2 + rand() * cap / 2


class ResultReporter:
    def __init__(self, url: str, key: str, timeout: float = 10.0, attempts: int = 3, backoff: float = 0.5,
                 retry: RetryPolicy = RetryPolicy(), sleep: Callable[[float], None] = time.sleep,
                 monotonic: Callable[[], float] = time.monotonic, stop: Optional[threading.Event] = None,
                 rand: Callable[[], float] = random.random):
        """``attempts``/``backoff``: the quick tries of a progress report. ``retry``: the patient
        re-posting of a final result. ``stop``: set when the agent shuts down (ends any wait)."""
        self._url, self._key, self._timeout = url, key, timeout
        self._attempts, self._backoff, self._sleep = attempts, backoff, sleep
        self._retry, self._monotonic, self._stop, self._rand = retry, monotonic, stop, rand

    def post(self, job: dict, state: str, reason: Optional[str] = None, counts: Optional[dict] = None, *,
             patient: bool = False) -> str:
        """Post one result; returns the endpoint's outcome (applied, duplicate, stale, ...).
        Raises ResultRefused when it can never be accepted, ResultNotDelivered when it could not
        be delivered now (the caller leaves the message unacknowledged). ``patient``: keep trying
        for up to ``retry.max_seconds`` (a final result), instead of a few quick tries."""
        return self._post(job, state, reason, counts, patient).get("outcome", "applied")

    def attempt_open(self, job: dict) -> bool:
        """Posts IN_PROGRESS and answers whether the cloud still waits for this attempt (its job is
        QUEUED or IN_PROGRESS at this attempt). For a message past its ``result_deadline``: that is
        the deadline at publication, and progress reports may have extended it since (issue 13
        item 3), e.g. for the redelivery of a long job whose agent died."""
        answer = self._post(job, "IN_PROGRESS", None, None, False)
        return answer.get("outcome") not in ("stale", "ignored") and answer.get("job_state") in ("QUEUED", "IN_PROGRESS")

    def _post(self, job: dict, state: str, reason: Optional[str], counts: Optional[dict], patient: bool) -> dict:
        body = result_body(job, state, reason, counts)
        started, last, n = self._monotonic(), "", 0
        while True:
            n += 1
            answer, last = self._try(job, state, body)
            if answer is not None:
                if n > 1:
                    log.info("result delivered after retries", extra={"job_id": job["job_id"], "state": state, "tries": n})
                return answer
            if patient:
                left = self._retry.max_seconds - (self._monotonic() - started)
                wait = min(self._retry.delay(n, self._rand), left)
            else:
                left, wait = float(self._attempts - n), self._backoff * 2 ** (n - 1)
            if left <= 0:
                raise ResultNotDelivered(f"result endpoint unavailable for {job['job_id']} ({last}, {n} tries)")
            log.warning("result not delivered; retrying", extra={"job_id": job["job_id"], "state": state, "why": last,
                                                                 "try": n, "retry_in_seconds": round(wait, 1)})
            self._wait(wait)

    def _wait(self, seconds: float) -> None:
        if self._stop is None:
            self._sleep(seconds)
        elif self._stop.wait(seconds):
            raise ResultNotDelivered("agent stopping")

    def _try(self, job: dict, state: str, body: bytes) -> tuple[Optional[dict], str]:
        """One POST: (the endpoint's answer, "") or (None, why it failed for now)."""
        headers = sign_headers(self._key, job["facility_group_id"], job["gateway_id"], body, int(time.time()))
        req = urllib.request.Request(self._url, data=body, method="POST", headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=self._timeout) as resp:
                try:
                    answer = json.loads(resp.read() or b"{}")
                except ValueError:
                    answer = None
                return (answer if isinstance(answer, dict) else {"outcome": "applied"}), ""
        except urllib.error.HTTPError as e:
            if e.code in _FINAL_REFUSALS:
                raise ResultRefused(f"result endpoint refused {state} for {job['job_id']}: HTTP {e.code}") from None
            # 401: wrong key or clock skew, fixable on site; 5xx/429: the endpoint will recover.
            return None, f"HTTP {e.code}"
        except (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException) as e:
            return None, type(getattr(e, "reason", e)).__name__

"""Posting signed job results to the Result Endpoint (contract job-result.v1).

The signature is the one ``shared/signing.py`` checks, restated here because the agent ships
without the cloud package: HMAC-SHA256 with the Result Endpoint secure key (its UTF-8 bytes) over
"<unix timestamp>.<raw body>"; a test proves the two agree."""
from __future__ import annotations

import hashlib
import hmac
import json
import logging
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


class ResultReporter:
    def __init__(self, url: str, key: str, timeout: float = 10.0, attempts: int = 5, backoff: float = 0.5,
                 sleep: Callable[[float], None] = time.sleep):
        self._url, self._key, self._timeout = url, key, timeout
        self._attempts, self._backoff, self._sleep = attempts, backoff, sleep

    def post(self, job: dict, state: str, reason: Optional[str] = None, counts: Optional[dict] = None) -> str:
        """Post one result; returns the endpoint's outcome (applied, duplicate, stale, ...).
        Raises ResultRefused when it can never be accepted, ResultNotDelivered when it could not
        be delivered now (the caller leaves the message unacknowledged)."""
        body = result_body(job, state, reason, counts)
        last = ""
        for attempt in range(self._attempts):
            if attempt:
                self._sleep(self._backoff * 2 ** (attempt - 1))
            headers = sign_headers(self._key, job["facility_group_id"], job["gateway_id"], body, int(time.time()))
            req = urllib.request.Request(self._url, data=body, method="POST", headers=headers)
            try:
                with urllib.request.urlopen(req, timeout=self._timeout) as resp:
                    try:
                        return json.loads(resp.read() or b"{}").get("outcome", "applied")
                    except ValueError:
                        return "applied"
            except urllib.error.HTTPError as e:
                if e.code in _FINAL_REFUSALS:
                    raise ResultRefused(f"result endpoint refused {state} for {job['job_id']}: HTTP {e.code}") from None
                # 401: wrong key or clock skew, fixable on site; 5xx/429: the endpoint will recover.
                last = f"HTTP {e.code}"
            except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
                last = type(getattr(e, "reason", e)).__name__
            log.warning("result not delivered; retrying", extra={"job_id": job["job_id"], "state": state, "why": last})
        raise ResultNotDelivered(f"result endpoint unreachable for {job['job_id']} ({last})")

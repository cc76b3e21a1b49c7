"""Rate-limited progress reports while a job's data flows (issue 13 item 3).

The job's loops (fetch, C-STORE) call the reporter after each file; at most one IN_PROGRESS with
the counts so far is posted per ``interval`` seconds, on a background thread, so a slow or
unavailable Result Endpoint never slows the send. Each report extends the cloud's result window
(docs/jobs-api.md "Result window"); one that is lost costs nothing but that extension."""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Optional

log = logging.getLogger("gateway_agent.progress")


class ProgressReporter:
    def __init__(self, post: Callable[[dict], object], interval_seconds: float,
                 monotonic: Callable[[], float] = time.monotonic):
        self._post, self._interval, self._monotonic = post, interval_seconds, monotonic
        self._last = monotonic()  # the IN_PROGRESS posted when the job started counts as the first
        self._busy, self._lock = False, threading.Lock()
        self._thread: Optional[threading.Thread] = None
        self.posted = 0

    def __call__(self, counts: dict) -> None:
        now = self._monotonic()
        with self._lock:
            if self._busy or now - self._last < self._interval:
                return
            self._busy, self._last = True, now
            self._thread = threading.Thread(target=self._send, args=(dict(counts),), daemon=True, name="progress")
        self._thread.start()

    def _send(self, counts: dict) -> None:
        try:
            self._post(counts)
            self.posted += 1
        except Exception as e:  # ResultNotDelivered/ResultRefused: progress is best effort
            log.warning("progress report not delivered", extra={"why": str(e)[:200]})
        finally:
            with self._lock:
                self._busy = False

    def join(self, timeout: float = 30.0) -> None:
        """Wait for a report in flight (before the final result, so it cannot arrive after it)."""
        t = self._thread
        if t is not None:
            t.join(timeout)

"""The agent's recent jobs, for the admin page's Platform tab (issue 14 item 2): a bounded
in-memory log of the last jobs, newest first, with their state and reason. Job messages carry no
patient demographics (ADT messages are not kept here), so neither does this log."""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Callable, Optional


@dataclass(frozen=True)
class RecentJob:
    job_id: str
    attempt: int
    job_type: str
    delivery: str  # the job delivery (seed 000 "Name") it came through
    destination: str  # the destination's name, else its id
    state: str  # IN_PROGRESS, COMPLETED, FAILED, or NOT_REPORTED (the result could not be posted yet)
    reason: str
    updated_at: datetime


class RecentJobs:
    """The last ``size`` (job id, attempt) seen, each with its latest state (thread-safe)."""

    def __init__(self, size: int = 200, now: Callable[[], datetime] = lambda: datetime.now(timezone.utc)):
        self._items: OrderedDict[tuple[str, int], RecentJob] = OrderedDict()
        self._size, self._now, self._lock = size, now, threading.Lock()

    def started(self, delivery: str, job: dict) -> None:
        dest = job.get("destination") if isinstance(job.get("destination"), dict) else {}
        item = RecentJob(str(job["job_id"]), int(job["attempt"]), str(job.get("job_type", "")), delivery,
                         str(dest.get("name") or dest.get("id") or ""), "IN_PROGRESS", "", self._now())
        with self._lock:
            self._items.pop((item.job_id, item.attempt), None)
            self._items[(item.job_id, item.attempt)] = item
            while len(self._items) > self._size:
                self._items.popitem(last=False)

    def finished(self, job: dict, state: str, reason: Optional[str] = None) -> None:
        key = (str(job["job_id"]), int(job["attempt"]))
        with self._lock:
            item = self._items.get(key)
            if item is not None:
                self._items[key] = replace(item, state=state, reason=reason or "", updated_at=self._now())

    def list(self) -> list[RecentJob]:
        """Newest first (by when the job was last started)."""
        with self._lock:
            return list(reversed(self._items.values()))

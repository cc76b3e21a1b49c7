"""Signed heartbeats to the Result Endpoint (contract gateway-heartbeat.v1; issue 15 item 3), so the
Gateways table tells a running gateway from one that is not, even when no job flows.

Every ``heartbeat_seconds`` while the agent runs, for each active job delivery whose streaming pull
is open, it POSTs ``{"schema_version": "1", "time": ..., "agent": ...}`` to
``<result_endpoint_url>/heartbeat``, signed like a result. The seed's delivery fields name the
gateway (its Subscription ID) but not its facility group, so until a job message of the delivery
names both, the header is ``-/<gateway_id>`` as in the link probe and the cloud looks the group up
(docs/operations.md "Gateway health"). A heartbeat that fails is logged and tried again at the next
interval: it never affects jobs.
"""
from __future__ import annotations

import json
import logging
import threading
import urllib.error
import urllib.request
from datetime import datetime, timezone
from typing import Callable, Optional

from .results import sign_headers

log = logging.getLogger("gateway_agent.heartbeat")
AGENT = "archsync-gateway-agent/1"


def heartbeat_body(at: Optional[datetime] = None) -> bytes:
    body = {"schema_version": "1", "time": (at or datetime.now(timezone.utc)).isoformat(), "agent": AGENT}
    return json.dumps(body, separators=(",", ":")).encode()


def heartbeat_url(result_endpoint_url: str) -> str:
    return result_endpoint_url.rstrip("/") + "/heartbeat"


class Heartbeats:
    """One thread sending each known delivery's heartbeat every ``interval`` seconds."""

    def __init__(self, interval: float, stop: threading.Event, timeout: float = 10.0,
                 clock: Callable[[], float] = lambda: datetime.now(timezone.utc).timestamp()):
        self._interval, self._stop, self._timeout, self._clock = interval, stop, timeout, clock
        self._lock = threading.Lock()
        # delivery key -> [url, key, facility group id ("-": not known yet), gateway id, is_pulling]
        self._targets: dict[str, list] = {}
        self._thread: Optional[threading.Thread] = None

    def register(self, name: str, url: str, key: str, gateway_id: Optional[str], is_pulling: Callable[[], bool]) -> None:
        """A delivery that pulls. ``gateway_id``: from its Subscription ID (None: unknown until a
        job names it). Sends its first heartbeat at once when the gateway is known."""
        with self._lock:
            self._targets[name] = [url, key, "-", gateway_id, is_pulling]
        if gateway_id:
            threading.Thread(target=self.send, args=(name,), name="heartbeat", daemon=True).start()

    def unregister(self, name: str) -> None:
        with self._lock:
            self._targets.pop(name, None)

    def learn(self, name: str, facility_group_id: str, gateway_id: str) -> None:
        """The gateway a delivery serves, as one of its job messages names it."""
        with self._lock:
            target = self._targets.get(name)
            if target is None or target[2:4] == [facility_group_id, gateway_id]:
                return
            first = target[3] is None
            target[2:4] = [facility_group_id, gateway_id]
        if first:
            self.send(name)  # the gateway shows connected without waiting an interval

    def send(self, name: str) -> bool:
        """Post one heartbeat of delivery ``name``; whether the endpoint accepted it."""
        with self._lock:
            target = list(self._targets.get(name) or ())
        if not target or not target[3]:
            return False
        url, key, fg, gw, is_pulling = target
        if not is_pulling():
            return False  # its streaming pull ended: the gateway is not taking jobs, say nothing
        body = heartbeat_body()
        req = urllib.request.Request(heartbeat_url(url), data=body, method="POST",
                                     headers=sign_headers(key, fg, gw, body, int(self._clock())))
        try:
            with urllib.request.urlopen(req, timeout=self._timeout) as resp:
                resp.read()
            return True
        except (urllib.error.URLError, OSError, ValueError) as e:
            log.warning("heartbeat not delivered", extra={"delivery": name, "why": type(getattr(e, "reason", e)).__name__})
            return False

    def start(self) -> "Heartbeats":
        self._thread = threading.Thread(target=self._run, name="heartbeats", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            with self._lock:
                names = list(self._targets)
            for name in names:
                self.send(name)

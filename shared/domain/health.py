"""Gateway health (issue 15 item 3; seed 000 Troubleshooting, "Gateway is not running or not
connected"): when the cloud last heard from each gateway, and what the Gateways table shows.

A gateway is in contact when it posts a signed result or a signed heartbeat to the Result
Endpoint (the reference agent sends one every few minutes while it runs, idle or not). Pub/Sub
tells no one when a subscriber pulls, so a gateway that only pulls and has nothing to report is
seen through its heartbeats (docs/operations.md "Gateway health").
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Optional

CONTACT_KINDS = ("result", "heartbeat")
# Firestore sustains about one write per second per document: a busy gateway posts many results a
# second, so its health document is written at most once per this interval per kind of contact.
# The "silent" threshold is minutes, so a last contact up to a minute old loses nothing.
MIN_WRITE_INTERVAL_SECONDS = 60


@dataclass(frozen=True)
class GatewayHealth:
    facility_group_id: str
    gateway_id: str
    last_result_at: Optional[datetime] = None
    last_heartbeat_at: Optional[datetime] = None
    # When the agent last pulled its subscription, as its heartbeat reports it (None: not reported).
    last_pull_at: Optional[datetime] = None

    @property
    def last_contact_at(self) -> Optional[datetime]:
        times = [t for t in (self.last_result_at, self.last_heartbeat_at) if t is not None]
        return max(times) if times else None


def contact_update(stored: Optional[GatewayHealth], kind: str, at: datetime, *, last_pull_at: Optional[datetime] = None,
                   min_interval_seconds: int = MIN_WRITE_INTERVAL_SECONDS) -> Optional[dict]:
    """The fields to write for a contact of ``kind`` at ``at``, or None when the stored record is
    recent enough (throttle: at most one write per ``min_interval_seconds`` and kind)."""
    if kind not in CONTACT_KINDS:
        raise ValueError(f"unknown contact kind {kind!r}")
    current = getattr(stored, f"last_{kind}_at") if stored is not None else None
    if current is not None and (at - current).total_seconds() < min_interval_seconds:
        return None
    fields: dict = {f"last_{kind}_at": at}
    if last_pull_at is not None:
        fields["last_pull_at"] = min(last_pull_at, at)  # a gateway's clock may run ahead
    return fields


def _iso(t: Optional[datetime]) -> Optional[str]:
    return None if t is None else t.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def health_view(health: Optional[GatewayHealth], now: datetime, silent_after_seconds: int) -> dict:
    """``{"state": "connected"|"silent"|"never", "last_contact_at", "silent_since"}`` (ISO 8601 or
    null), the ``health`` field of the admin API's Gateway. Silent: no contact for more than
    ``silent_after_seconds``; it has been silent since its last contact."""
    last = health.last_contact_at if health is not None else None
    if last is None:
        return {"state": "never", "last_contact_at": None, "silent_since": None}
    if (now - last).total_seconds() > silent_after_seconds:
        return {"state": "silent", "last_contact_at": _iso(last), "silent_since": _iso(last)}
    return {"state": "connected", "last_contact_at": _iso(last), "silent_since": None}

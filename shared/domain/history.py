"""The configuration history that decides "no retroactive archiving" (rule 1 of ARCHITECTURE.md;
seed 000 "Configure Auto Archive" and Troubleshooting row 1; issue 11 item 6).

A destination archives an exam only if, at the instant T the exam *first* reached the trigger
status (``status_first_reached_at`` of the exam-status event), all of these held: auto archive on
with that trigger, the destination active, its gateway active, and the exam's facility in scope.
Judging at T instead of "now" makes the answer independent of when a message is processed:
reactivating a destination or gateway, or widening a scope, is never retroactive, and a redelivered
event gets the same answer as the first delivery.

Each destination and gateway document therefore carries its history: a list of intervals, each the
eligibility-relevant settings in effect from ``since`` until the next interval's ``since``. An
interval is appended (in the same write as the change) only when one of those settings changes;
other edits (host, AE titles, retry policy, name) add nothing. The list is bounded (see
``MAX_INTERVALS`` and ``MAX_BYTES``): beyond the bound the oldest intervals are dropped, and an exam
that first reached its status before the oldest retained interval is not archived (the safe side of
the no-retroactive rule; logged with its reason). Pure code: no ``google.*``.
"""
from __future__ import annotations

import dataclasses
from datetime import datetime, timezone
from typing import Optional, Sequence, TypeVar

from .models import Destination, DestinationInterval, Gateway, GatewayInterval

# Bounds of one document's history. Eligibility-relevant changes are rare (a few a year), so 100
# intervals reach back years; MAX_BYTES keeps a document with long facility lists far below
# Firestore's 1 MiB limit whatever the count.
MAX_INTERVALS = 100
MAX_BYTES = 200 * 1024
# Documents written before histories existed and without any instant: "since forever", which is
# what the rule before issue 11 item 6 did with them.
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)

Interval = TypeVar("Interval", DestinationInterval, GatewayInterval)


def destination_interval(d: Destination, since: datetime) -> DestinationInterval:
    on = d.auto_archive and d.trigger_status is not None
    return DestinationInterval(since=since, active=d.active, auto_archive=on,
                               trigger_status=d.trigger_status if on else None, gateway_id=d.gateway_id,
                               facility_ids=tuple(d.facility_ids))


def gateway_interval(g: Gateway, since: datetime) -> GatewayInterval:
    return GatewayInterval(since=since, active=g.active, facility_ids=tuple(g.facility_ids))


def destination_history(d: Destination) -> tuple[DestinationInterval, ...]:
    """The recorded history; for a document written before histories existed, one interval of its
    current settings from ``auto_archive_since`` (auto archive on) or ``created_at`` — exactly what
    the rule decided before."""
    if d.history:
        return d.history
    since = d.auto_archive_since if d.auto_archive else d.created_at
    if since is None:
        return () if d.auto_archive else (destination_interval(d, EPOCH),)
    return (destination_interval(d, since),)


def gateway_history(g: Gateway) -> tuple[GatewayInterval, ...]:
    return g.history or (gateway_interval(g, g.created_at or EPOCH),)


def _same(a: Interval, b: Interval) -> bool:
    return dataclasses.replace(a, since=b.since) == b


def _size(interval: Interval) -> int:
    """Rough encoded size of one interval in a Firestore document (field names, values, overhead)."""
    return 160 + len(getattr(interval, "gateway_id", "")) + sum(len(f) + 16 for f in interval.facility_ids)


def bounded(history: Sequence[Interval]) -> tuple[Interval, ...]:
    """Drop the oldest intervals beyond MAX_INTERVALS or MAX_BYTES (the newest is always kept)."""
    kept = list(history)
    size = sum(_size(i) for i in kept)
    while len(kept) > 1 and (len(kept) > MAX_INTERVALS or size > MAX_BYTES):
        size -= _size(kept.pop(0))
    return tuple(kept)


def _appended(past: tuple[Interval, ...], entry: Interval) -> tuple[Interval, ...]:
    if past and _same(past[-1], entry):
        return past  # nothing that decides eligibility changed
    if past and entry.since < past[-1].since:
        # Clocks of two function instances may differ slightly: never record a change before the
        # previous one (the history must stay ordered).
        entry = dataclasses.replace(entry, since=past[-1].since)
    return bounded(past + (entry,))


def recorded_destination(previous: Optional[Destination], new: Destination, at: datetime) -> Destination:
    """``new`` with its history: ``previous``'s, plus an interval from ``at`` if the change affects
    eligibility. Called on every admin write of a destination, in the same write."""
    past = destination_history(previous) if previous is not None else ()
    return dataclasses.replace(new, history=_appended(past, destination_interval(new, at)))


def recorded_gateway(previous: Optional[Gateway], new: Gateway, at: datetime) -> Gateway:
    past = gateway_history(previous) if previous is not None else ()
    return dataclasses.replace(new, history=_appended(past, gateway_interval(new, at)))


def as_of(history: Sequence[Interval], t: datetime) -> Optional[Interval]:
    """The interval in effect at ``t`` (the last one with ``since <= t``), or None if ``t`` is before
    the history begins (the destination or gateway did not exist yet, or that part was dropped)."""
    found = None
    for interval in history:
        if interval.since > t:
            break
        found = interval
    return found


def archive_triggers(d: Destination) -> list[str]:
    """Trigger statuses auto archive was on with at some point of the retained history: the
    destinations an exam-status event of that status must look at (a currently inactive destination
    may have been active when the exam reached the status)."""
    return sorted({i.trigger_status.value for i in destination_history(d) if i.auto_archive and i.trigger_status})

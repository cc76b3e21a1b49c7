"""Bounded retries with jittered exponential backoff, for the two IAM situations that a retry
resolves (issue 11 item 8):

* a read-modify-write of a shared IAM policy lost the race for its etag (another writer changed
  the policy between our read and our write: GCS answers 412, IAM/Pub/Sub 409 ABORTED). IAM's
  advice is to redo the whole read-modify-write with exponential backoff;
* a service account created moments ago is not yet visible to the policy APIs (IAM is eventually
  consistent: Google documents delays of up to a minute and more; the APIs answer 400/404
  "... does not exist").

Anything else is raised at once. Every sleep is jittered so concurrent writers spread out."""
from __future__ import annotations

import random
import time
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Mapping, Optional, TypeVar

from .. import logs

T = TypeVar("T")

STALE_ETAG = "stale_etag"
NOT_YET_VISIBLE = "not_yet_visible"


@dataclass(frozen=True)
class Backoff:
    """Delays ``initial * multiplier**n`` capped at ``maximum``, jittered; no retry once
    ``deadline`` seconds would have passed since the first try."""

    initial: float
    maximum: float
    deadline: float
    multiplier: float = 2.0
    full_jitter: bool = True  # uniform(0, d): spreads concurrent writers; else uniform(d/2, d)

    def delay(self, attempt: int, u: float) -> float:
        d = min(self.maximum, self.initial * self.multiplier ** attempt)
        return d * u if self.full_jitter else d / 2 + d / 2 * u


# Etag races: one writer wins each round, so a few short, widely jittered rounds settle many
# concurrent writers (8 parallel gateway creations share the objects bucket's policy).
ETAG_BACKOFF = Backoff(initial=0.05, maximum=2.0, deadline=30.0)
# A new service account usually becomes usable within seconds, but Google says it can take a
# minute or more; the admin function's timeout (120 s, infra/functions.tf) leaves room for that.
PROPAGATION_BACKOFF = Backoff(initial=0.2, maximum=5.0, deadline=60.0, multiplier=1.5, full_jitter=False)
POLICY_RETRIES: Mapping[str, Backoff] = {STALE_ETAG: ETAG_BACKOFF, NOT_YET_VISIBLE: PROPAGATION_BACKOFF}


def run(call: Callable[[], T], classify: Callable[[Exception], Optional[str]], policies: Mapping[str, Backoff], what: str,
        *, sleep: Callable[[float], None] = time.sleep, monotonic: Callable[[], float] = time.monotonic,
        uniform: Callable[[], float] = random.random) -> T:
    """``call()``, again after a delay while ``classify`` names a kind of failure that ``policies``
    retries and that kind's deadline is not reached; the last failure is raised unchanged."""
    start = monotonic()
    attempts: Counter[str] = Counter()
    while True:
        try:
            return call()
        except Exception as e:
            kind = classify(e)
            policy = policies.get(kind) if kind is not None else None
            if policy is None:
                raise
            delay = policy.delay(attempts[kind], uniform())
            attempts[kind] += 1
            if monotonic() - start + delay > policy.deadline:
                logs.warning("giving up retrying", what=what, kind=kind, attempts=attempts[kind])
                raise
            sleep(delay)

"""Result-callback authentication (ARCHITECTURE.md "Contracts": signature over timestamp and body,
constant-time check, replay window).

The gateway sends three headers with each POST:
  X-ArchSync-Gateway:   "<facility_group_id>/<gateway_id>"  (which key to check against)
  X-ArchSync-Timestamp: Unix seconds when it signed
  X-ArchSync-Signature: "v1=" + hex(HMAC-SHA256(key, "<timestamp>." + raw body))

Everything that needs no key (header shapes, the replay window) is checked first, by
``check_headers``: unauthenticated traffic must not cost a key read (issue 11 item 14).
"""
from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Mapping, Optional, Sequence

from .domain.errors import Unauthorized

GATEWAY_HEADER = "X-ArchSync-Gateway"
TIMESTAMP_HEADER = "X-ArchSync-Timestamp"
SIGNATURE_HEADER = "X-ArchSync-Signature"

# ASCII digits only (str.isdigit() also accepts '²' and other Unicode digits, which int() then
# refuses) and at most 12 of them: Unix seconds have 10 digits until the year 2286, and int() of a
# 5,000-digit string raises instead of answering 401.
# The group part of X-ArchSync-Gateway in a link probe that names only the gateway.
ANY_GROUP = "-"
# The body of a link probe (a signed no-op; the server writes nothing for it).
PROBE_BODY = {"schema_version": "1", "probe": "link-test"}

_TIMESTAMP = re.compile(r"[0-9]{1,12}")
_SIGNATURE = re.compile(r"v1=[0-9a-f]{64}")


@dataclass(frozen=True)
class ResultKeys:
    """A gateway's Result Endpoint keys: the current one and, for a grace period after a rotation,
    the one it replaced (docs/admin-api.md "Keys and secrets")."""

    current: bytes = field(repr=False)
    previous: Optional[bytes] = field(default=None, repr=False)
    previous_valid_until: Optional[datetime] = None

    def valid_at(self, now: datetime) -> tuple[bytes, ...]:
        """The keys that verify a signature made at ``now``: the previous key only until its grace ends."""
        if self.previous and self.previous_valid_until is not None and now < self.previous_valid_until:
            return (self.current, self.previous)
        return (self.current,)


class StaleTimestamp(Unauthorized):
    """The signature's timestamp is outside the replay window (often a gateway clock that drifted)."""


def signature(key: bytes, timestamp: str, body: bytes) -> str:
    return "v1=" + hmac.new(key, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def sign_headers(key: bytes, facility_group_id: str, gateway_id: str, body: bytes, now_unix: int) -> dict[str, str]:
    ts = str(int(now_unix))
    return {
        GATEWAY_HEADER: f"{facility_group_id}/{gateway_id}",
        TIMESTAMP_HEADER: ts,
        SIGNATURE_HEADER: signature(key, ts, body),
        "Content-Type": "application/json",
    }


def is_probe(payload: object) -> bool:
    """Whether a (signature-checked) result body is a gateway's link probe, exactly."""
    return payload == PROBE_BODY


def parse_gateway_header(headers: Mapping[str, str]) -> tuple[str, str]:
    value = headers.get(GATEWAY_HEADER) or ""
    group, _, gateway = value.partition("/")
    if not group or not gateway or "/" in gateway:
        raise Unauthorized(f"missing or malformed {GATEWAY_HEADER} header")
    return group, gateway


def check_headers(headers: Mapping[str, str], now_unix: float, max_skew: int) -> tuple[str, str]:
    """The (timestamp, signature) header values if they are well formed and the timestamp is within
    the replay window; Unauthorized otherwise. Needs no key."""
    ts = headers.get(TIMESTAMP_HEADER) or ""
    sig = headers.get(SIGNATURE_HEADER) or ""
    if not _TIMESTAMP.fullmatch(ts) or not _SIGNATURE.fullmatch(sig):
        raise Unauthorized("missing or malformed signature headers")
    if abs(now_unix - int(ts)) > max_skew:
        raise StaleTimestamp("timestamp outside the replay window")
    return ts, sig


def matches(keys: Sequence[bytes], timestamp: str, sig: str, body: bytes) -> bool:
    """Whether any of ``keys`` made ``sig``. Every key is tried (no early exit) and an empty list
    still pays for one HMAC, so timing says nothing about which key matched or whether the gateway
    exists."""
    ok = False
    for key in keys or (b"\0" * 32,):
        ok |= hmac.compare_digest(signature(key, timestamp, body).encode(), sig.encode())
    return ok and bool(keys)


def verify(key: Optional[bytes], headers: Mapping[str, str], body: bytes, now_unix: float, max_skew: int) -> None:
    """Raise Unauthorized unless the signature is valid and fresh. The same message is used for
    an unknown gateway and a wrong signature so the endpoint tells an attacker nothing."""
    ts, sig = check_headers(headers, now_unix, max_skew)
    if not matches((key,) if key else (), ts, sig, body):
        raise Unauthorized("invalid signature")

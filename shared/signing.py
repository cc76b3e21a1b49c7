"""Result-callback authentication (ARCHITECTURE.md "Contracts": signature over timestamp and body,
constant-time check, replay window).

The gateway sends three headers with each POST:
  X-ArchSync-Gateway:   "<facility_group_id>/<gateway_id>"  (which key to check against)
  X-ArchSync-Timestamp: Unix seconds when it signed
  X-ArchSync-Signature: "v1=" + hex(HMAC-SHA256(key, "<timestamp>." + raw body))
"""
from __future__ import annotations

import hashlib
import hmac
from typing import Mapping, Optional

from .domain.errors import Unauthorized

GATEWAY_HEADER = "X-ArchSync-Gateway"
TIMESTAMP_HEADER = "X-ArchSync-Timestamp"
SIGNATURE_HEADER = "X-ArchSync-Signature"


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


def parse_gateway_header(headers: Mapping[str, str]) -> tuple[str, str]:
    value = headers.get(GATEWAY_HEADER) or ""
    group, _, gateway = value.partition("/")
    if not group or not gateway or "/" in gateway:
        raise Unauthorized(f"missing or malformed {GATEWAY_HEADER} header")
    return group, gateway


def verify(key: Optional[bytes], headers: Mapping[str, str], body: bytes, now_unix: float, max_skew: int) -> None:
    """Raise Unauthorized unless the signature is valid and fresh. The same message is used for
    an unknown gateway and a wrong signature so the endpoint tells an attacker nothing."""
    ts = headers.get(TIMESTAMP_HEADER) or ""
    sig = headers.get(SIGNATURE_HEADER) or ""
    if not ts.isdigit() or not sig:
        raise Unauthorized("missing signature headers")
    if abs(now_unix - int(ts)) > max_skew:
        raise Unauthorized("timestamp outside the replay window")
    expected = signature(key or b"\0" * 32, ts, body)
    # Constant-time compare; an unknown gateway still pays for one HMAC.
    if not hmac.compare_digest(expected.encode(), sig.encode()) or key is None:
        raise Unauthorized("invalid signature")

"""The admin page's password: only a salted scrypt hash is stored in the agent's config, in the
form ``scrypt$<log2 N>$<r>$<p>$<salt, base64>$<hash, base64>``; checked in constant time."""
from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets

# N = 2^15, r = 8: 32 MiB and about 0.1 s per check on a small server; failed sign-ins are also
# rate-limited (server.py), so guessing stays slow. Stored per hash, so it can be raised later.
LOG2_N, R, P = 15, 8, 1
_FORMAT = re.compile(r"scrypt\$(\d{1,2})\$(\d{1,2})\$(\d{1,2})\$([A-Za-z0-9+/=]{16,})\$([A-Za-z0-9+/=]{40,})")
MIN_LENGTH = 12


def hash_password(password: str, *, log2_n: int = LOG2_N) -> str:
    if len(password) < MIN_LENGTH:
        raise ValueError(f"the admin page password needs at least {MIN_LENGTH} characters")
    salt = secrets.token_bytes(16)
    digest = _scrypt(password, salt, log2_n, R, P)
    return "$".join(["scrypt", str(log2_n), str(R), str(P), base64.b64encode(salt).decode(), base64.b64encode(digest).decode()])


def is_password_hash(value: object) -> bool:
    if not isinstance(value, str):
        return False
    m = _FORMAT.fullmatch(value)
    return bool(m) and 10 <= int(m.group(1)) <= 20 and 1 <= int(m.group(2)) <= 32 and 1 <= int(m.group(3)) <= 4


def verify_password(password: str, stored: str) -> bool:
    m = _FORMAT.fullmatch(stored or "")
    if not m or not is_password_hash(stored):
        return False
    log2_n, r, p = int(m.group(1)), int(m.group(2)), int(m.group(3))
    salt, expected = base64.b64decode(m.group(4)), base64.b64decode(m.group(5))
    return hmac.compare_digest(_scrypt(password, salt, log2_n, r, p, len(expected)), expected)


def _scrypt(password: str, salt: bytes, log2_n: int, r: int, p: int, length: int = 32) -> bytes:
    n = 1 << log2_n
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p, dklen=length,
                          maxmem=128 * r * n * p + 1024 * 1024 * 8)

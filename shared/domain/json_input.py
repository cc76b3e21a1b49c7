"""Strict parsing of JSON request bodies (RFC 8259), so that what reaches the services can be
stored: UTF-8 only, no NaN/Infinity, no number too large for a float or too long for an int, and
no lone surrogate escape (``"\\ud800"`` parses in Python but cannot be encoded to UTF-8, so
Firestore's client would fail on it later with a 500). Each is a 400 naming the rule, never the
value (issue 11 item 13)."""
from __future__ import annotations

import json
import math
import re
from typing import Any

from .errors import MalformedInput

_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("number out of range")
    return value


def parse_json(raw: bytes, what: str = "body") -> Any:
    try:
        value = json.loads(raw.decode("utf-8"), parse_constant=_constant, parse_float=_float)
    except (ValueError, RecursionError):  # JSONDecodeError, UnicodeDecodeError, int digit limit, nesting
        raise MalformedInput(f"{what} is not JSON (UTF-8, RFC 8259)") from None
    if _SURROGATE_ESCAPE.search(raw) and _has_lone_surrogate(value):
        raise MalformedInput(f"{what}: a string holds a lone surrogate escape (not Unicode text)")
    return value


def _has_lone_surrogate(value: Any) -> bool:
    stack = [value]
    while stack:  # iterative: nesting depth is the caller's (bounded by the body size)
        v = stack.pop()
        if isinstance(v, str):
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
    return False

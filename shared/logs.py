"""Structured JSON logs for Cloud Logging: one line per entry with ``severity`` and ``message``.

Only ids and counts go in here: never patient data (MRN, names, accession), keys or secrets.
"""
from __future__ import annotations

import json
import sys
from typing import Any

_FORBIDDEN = frozenset({"mrn", "patient_name", "accession_number", "secret", "key", "signature", "private_key"})


def log(severity: str, message: str, **fields: Any) -> None:
    entry = {"severity": severity, "message": message}
    for k, v in fields.items():
        if k in _FORBIDDEN:  # defence in depth: a caller passing these is a bug, not a log line
            continue
        entry[k] = v
    sys.stdout.write(json.dumps(entry, default=str, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def info(message: str, **fields: Any) -> None:
    log("INFO", message, **fields)


def warning(message: str, **fields: Any) -> None:
    log("WARNING", message, **fields)


def error(message: str, **fields: Any) -> None:
    log("ERROR", message, **fields)

"""Versioned contracts: JSON Schemas for Pub/Sub payloads and the result callback, and the
OpenAPI document of the HTTP endpoints (``openapi.yaml``). Payloads are validated against these
schemas at runtime, so the documents cannot drift from the code."""
from __future__ import annotations

import copy
import functools
import json
import re
from datetime import datetime
from pathlib import Path
from typing import Any

from ..domain.errors import MalformedInput

HERE = Path(__file__).parent
EXAM_STATUS_CHANGED = "exam-status-changed.v1"
STUDY_CHANGED = "study-changed.v1"
PATIENT_UPDATED = "patient-updated.v1"
FACILITY_CHANGED = "facility-changed.v1"
JOB_MESSAGE = "job-message.v1"
JOB_RESULT = "job-result.v1"
GATEWAY_HEARTBEAT = "gateway-heartbeat.v1"
DEAD_LETTER = "dead-letter.v1"
INSTANCE_LIST = "instance-list.v1"


@functools.lru_cache(maxsize=None)
def _validator(name: str) -> Any:
    import jsonschema  # imported on first use: keeps cold start of functions that never validate small

    schema = json.loads((HERE / f"{name}.schema.json").read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema, format_checker=_format_checker(cls))


# RFC 3339 section 5.6 date-time (T, Z case-insensitive), ASCII digits only.
_DATE_TIME = re.compile(r"^([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt]([0-9]{2}):([0-9]{2}):([0-9]{2})(\.[0-9]+)?"
                        r"([Zz]|[+-]([0-9]{2}):([0-9]{2}))$")


def is_date_time(value: object) -> bool:
    """RFC 3339 date-time that is a real instant: 2026-02-30T00:00:00Z matches every pattern but
    no calendar. jsonschema checks the "date-time" format only with an optional package that is not
    installed, and otherwise lets any string pass: this stdlib check is registered instead. A leap
    second (:60) is refused too: no handler could parse it."""
    if not isinstance(value, str):
        return True  # formats constrain strings only (JSON Schema 2020-12 section 7.1)
    m = _DATE_TIME.match(value)
    if not m:
        return False
    try:
        datetime(*(int(m.group(i)) for i in range(1, 7)))
    except ValueError:
        return False
    return m.group(9) is None or (int(m.group(9)) <= 23 and int(m.group(10)) <= 59)


def _format_checker(cls: Any) -> Any:
    checker = copy.copy(cls.FORMAT_CHECKER)
    checker.checkers = dict(cls.FORMAT_CHECKER.checkers)
    checker.checks("date-time")(is_date_time)
    return checker


def schema(name: str) -> dict:
    return json.loads((HERE / f"{name}.schema.json").read_text())


def validate(name: str, payload: Any) -> None:
    """Raise MalformedInput naming where and which rule failed. The message never quotes the
    offending value: payloads carry patient data and the reason is logged and dead-lettered."""
    errors = sorted(_validator(name).iter_errors(payload), key=lambda e: list(e.absolute_path))
    if errors:
        parts = []
        for e in errors[:5]:
            where = "/".join(str(p) for p in e.absolute_path) or "(root)"
            what = e.validator
            if what == "required":
                missing = [m for m in e.validator_value if isinstance(e.instance, dict) and m not in e.instance]
                parts.append(f"{where}: missing {', '.join(missing)}")
            elif what == "additionalProperties":
                parts.append(f"{where}: unexpected property")
            elif what == "format":
                parts.append(f"{where}: is not a valid {e.validator_value}")
            else:
                parts.append(f"{where}: fails '{what}'")
        raise MalformedInput(f"{name}: " + "; ".join(dict.fromkeys(parts)))

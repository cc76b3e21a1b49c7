"""Versioned contracts: JSON Schemas for Pub/Sub payloads and the result callback, and the
OpenAPI document of the HTTP endpoints (``openapi.yaml``). Payloads are validated against these
schemas at runtime, so the documents cannot drift from the code."""
from __future__ import annotations

import functools
import json
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
DEAD_LETTER = "dead-letter.v1"


@functools.lru_cache(maxsize=None)
def _validator(name: str) -> Any:
    import jsonschema  # imported on first use: keeps cold start of functions that never validate small

    schema = json.loads((HERE / f"{name}.schema.json").read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


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
            else:
                parts.append(f"{where}: fails '{what}'")
        raise MalformedInput(f"{name}: " + "; ".join(dict.fromkeys(parts)))

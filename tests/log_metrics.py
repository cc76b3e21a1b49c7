"""The log-based metrics of infra/monitoring.tf, read offline, and an evaluator for the subset of
the Cloud Logging query language their filters use, applied to captured JSON log records.

Supported (anything else raises UnsupportedFilter, so a filter this evaluator cannot judge turns
a test red instead of passing unseen): comparisons ``jsonPayload.<field>[.<field>...]="<text>"``
joined by ``AND``; label and value extractors ``EXTRACT(jsonPayload.<field>)``.
"""
from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import hcl2

REPO = Path(__file__).resolve().parent.parent
INFRA = REPO / "infra"
USER_METRIC_PREFIX = "logging.googleapis.com/user/"

_COMPARISON = re.compile(r'^jsonPayload\.([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)="((?:[^"\\]|\\.)*)"$')
_EXTRACT = re.compile(r"^EXTRACT\(jsonPayload\.([A-Za-z_][A-Za-z0-9_]*)\)$")


class UnsupportedFilter(ValueError):
    pass


def unquote(value: Any) -> Any:
    """python-hcl2 keeps an HCL string's quotes and escapes: the string's value."""
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return re.sub(r'\\(.)', r"\1", value[1:-1])
    return value


def _field(record: dict, path: str) -> Any:
    value: Any = record
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


@functools.lru_cache(maxsize=None)
def compile_filter(text: str) -> Callable[[dict], bool]:
    """A predicate over a structured log record (its jsonPayload: the JSON line the code writes)."""
    terms = [t.strip() for t in re.split(r"\s+AND\s+", text.strip())]
    checks = []
    for term in terms:
        m = _COMPARISON.match(term)
        if not m:
            raise UnsupportedFilter(f"term {term!r} of filter {text!r}")
        path, expected = m.group(1), re.sub(r"\\(.)", r"\1", m.group(2))
        checks.append((path, expected))

    def matches(record: dict) -> bool:
        return all(isinstance(v := _field(record, p), (str, int, float, bool)) and _text(v) == e for p, e in checks)

    return matches


def _text(value: Any) -> str:
    # jsonPayload fields compare as their text: true/false for booleans, as Cloud Logging shows them.
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def extracted_field(extractor: str) -> str:
    m = _EXTRACT.match(extractor)
    if not m:
        raise UnsupportedFilter(f"extractor {extractor!r}")
    return m.group(1)


@dataclass(frozen=True)
class LogMetric:
    name: str
    filter: str
    labels: tuple[str, ...]  # label keys, each extracted from jsonPayload.<key> (monitoring.tf)
    value_field: Optional[str]  # distribution: the field its values come from; None: a counter

    @property
    def metric_type(self) -> str:
        return USER_METRIC_PREFIX + self.name

    def matches(self, record: dict) -> bool:
        return compile_filter(self.filter)(record)


@functools.lru_cache(maxsize=1)
def parsed_infra() -> tuple[dict, ...]:
    """infra/*.tf parsed (python-hcl2 is slow: once per session; callers must not modify it)."""
    out = []
    for tf in sorted(INFRA.glob("*.tf")):
        with tf.open() as f:
            out.append(hcl2.load(f))
    return tuple(out)


@functools.lru_cache(maxsize=1)
def _log_metrics() -> tuple[tuple[str, LogMetric], ...]:
    for doc in parsed_infra():
        for block in doc.get("locals", []):
            if "log_metrics" in block:
                out = {}
                for key, spec in block["log_metrics"].items():
                    name = unquote(key)
                    value = unquote(spec["value"])
                    out[name] = LogMetric(name, unquote(spec["filter"]), tuple(unquote(k) for k in spec["labels"]),
                                          None if value in (None, "null") else value)
                return tuple(out.items())
    raise AssertionError("infra/monitoring.tf declares no local.log_metrics")


def log_metrics() -> dict[str, LogMetric]:
    """local.log_metrics of infra/monitoring.tf, by name."""
    return dict(_log_metrics())


def resources(kind: str) -> dict[str, dict]:
    out = {}
    for doc in parsed_infra():
        for block in doc.get("resource", []):
            for k, body in block.items():
                if unquote(k) == kind:
                    for name, attrs in body.items():
                        out[unquote(name)] = attrs
    return out


def records(text: str) -> list[dict]:
    """The JSON log records in captured output (other lines are skipped)."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                value = json.loads(line)
            except ValueError:
                continue
            if isinstance(value, dict):
                out.append(value)
    return out

"""Jobs tab queries (seed 000 "Monitoring Archive Jobs", "Filtering and Searching Jobs"; issue 5):
request parameters -> a validated query shape, and the composite indexes every shape needs.

Shapes (all on one facility group's ``jobs`` collection, newest first):
- any combination of equality filters on EQUALITY_FIELDS, ordered by queued_at DESC;
- plus at most one date range (queued, started or completed), then ordered by that date DESC;
- or plus a case-insensitive patient-name prefix (a range on patient_name_lower), ordered by
  name then queued_at DESC. A name prefix and a date range together would need two range fields:
  refused with 400 (narrow by MRN instead).
Firestore serves any combination of equality filters by merging one composite index per filter
(field ASC + the order fields), so the index count grows linearly, not with the combinations.
"""
from __future__ import annotations

import base64
import hashlib
import json
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Mapping, Optional

from ..clock import iso, parse_time
from .errors import MalformedInput
from .models import JobState, JobType
from .validation import is_valid_id

# query parameter -> stored field
EQUALITY_PARAMS = {
    "type": "type",
    "state": "state",
    "mrn": "mrn",
    "accession": "accession_number",
    "study_uid": "study_instance_uid",
    "facility": "facility_id",
    "destination": "destination_id",
}
EQUALITY_FIELDS = tuple(EQUALITY_PARAMS.values())
DATE_FIELDS = {"queued": "queued_at", "started": "started_at", "completed": "completed_at"}
NAME_FIELD = "patient_name_lower"
OTHER_PARAMS = {"patient_name", "page_size", "cursor", "tz"}
PARAMS = set(EQUALITY_PARAMS) | {f"{d}_{e}" for d in DATE_FIELDS for e in ("from", "to")} | OTHER_PARAMS
DEFAULT_PAGE, MAX_PAGE = 50, 200
# Labels of the seed's Type and State columns.
TYPE_LABELS = {"ARCHIVE": "Archive", "DICOM": "DICOM", "IOCM": "IOCM", "KOS": "KOS", "ADT": "ADT"}
STATE_LABELS = {"QUEUED": "Queued", "IN_PROGRESS": "In Progress", "COMPLETED": "Completed", "FAILED": "Failed"}


@dataclass(frozen=True)
class JobQuery:
    equalities: tuple[tuple[str, str], ...]  # (field, value), sorted by field
    range_field: Optional[str]  # a date field, NAME_FIELD, or None
    range_from: Any = None  # inclusive
    range_to: Any = None  # exclusive for names, inclusive for dates
    page_size: int = DEFAULT_PAGE

    @property
    def order(self) -> tuple[tuple[str, str], ...]:
        if self.range_field == NAME_FIELD:
            return ((NAME_FIELD, "ASCENDING"), ("queued_at", "DESCENDING"))
        return ((self.range_field or "queued_at", "DESCENDING"),)

    @property
    def fingerprint(self) -> str:
        """Identifies the query (not the page): a cursor is only valid for the same fingerprint."""
        key = json.dumps([self.equalities, self.range_field, str(self.range_from), str(self.range_to)], default=str)
        return hashlib.sha256(key.encode()).hexdigest()[:16]


def _date(value: str, param: str) -> datetime:
    try:
        return parse_time(value)
    except (ValueError, TypeError):
        raise MalformedInput(f"{param}: expected an ISO 8601 date-time with a UTC offset") from None


def parse(params: Mapping[str, str]) -> JobQuery:
    unknown = sorted(set(params) - PARAMS)
    if unknown:
        raise MalformedInput(f"unknown filter(s): {', '.join(unknown)}")
    equalities = []
    for param, field in EQUALITY_PARAMS.items():
        value = params.get(param)
        if value is None:
            continue
        if not value or len(value) > 128:
            raise MalformedInput(f"{param}: must be 1-128 characters")
        if param == "type":
            value = value.upper()
            if value not in JobType.__members__:
                raise MalformedInput(f"type: one of {', '.join(TYPE_LABELS.values())}")
        if param == "state":
            value = value.upper().replace(" ", "_")
            if value not in JobState.__members__:
                raise MalformedInput(f"state: one of {', '.join(STATE_LABELS.values())}")
        equalities.append((field, value))

    ranges = []
    for name, field in DATE_FIELDS.items():
        lo, hi = params.get(f"{name}_from"), params.get(f"{name}_to")
        if lo is None and hi is None:
            continue
        lo_t = _date(lo, f"{name}_from") if lo is not None else None
        hi_t = _date(hi, f"{name}_to") if hi is not None else None
        if lo_t and hi_t and lo_t > hi_t:
            raise MalformedInput(f"{name}_from is after {name}_to")
        ranges.append((field, lo_t, hi_t))
    name = params.get("patient_name")
    if name is not None:
        name = name.strip().lower()
        if not name or len(name) > 64:
            raise MalformedInput("patient_name: a prefix of 1-64 characters")
        ranges.append((NAME_FIELD, name, name + "\uf8ff"))
    if len(ranges) > 1:
        raise MalformedInput("combine at most one date filter or the patient name search with the other filters")

    raw_size = params.get("page_size", str(DEFAULT_PAGE))
    # ASCII digits only: str.isdigit() accepts "²", which int() refuses (issue 11 item 13).
    if not re.fullmatch(r"[0-9]{1,4}", raw_size) or not 1 <= int(raw_size) <= MAX_PAGE:
        raise MalformedInput(f"page_size: an integer from 1 to {MAX_PAGE}")
    field, lo, hi = ranges[0] if ranges else (None, None, None)
    return JobQuery(tuple(sorted(equalities)), field, lo, hi, int(raw_size))


def indexes_for(query: JobQuery) -> list[tuple[tuple[str, str], ...]]:
    """Composite indexes (fields in order) Firestore needs for ``query``: one per equality filter,
    merged by Firestore at run time. Shapes served by single-field indexes need none."""
    if not query.equalities and query.range_field != NAME_FIELD:
        return []
    order = query.order
    if not query.equalities:
        return [order]
    return [((field, "ASCENDING"), *order) for field, _ in query.equalities]


def all_shapes() -> list[JobQuery]:
    """Every shape the API can issue, up to merging: each single equality filter (or none) with
    each ordering. Multi-filter queries merge these indexes."""
    ranges = [None, *DATE_FIELDS.values(), NAME_FIELD]
    shapes = []
    for field in (None, *EQUALITY_FIELDS):
        for r in ranges:
            shapes.append(JobQuery(((field, "x"),) if field else (), r))
    return shapes


# -- cursors ---------------------------------------------------------------------------------

def encode_cursor(facility_group_id: str, query: JobQuery, last: Mapping[str, Any], doc_id: str) -> str:
    values = {f: (iso(last.get(f)) if isinstance(last.get(f), datetime) else last.get(f)) for f, _ in query.order}
    raw = json.dumps({"v": 1, "g": facility_group_id, "q": query.fingerprint, "o": values, "id": doc_id})
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str, facility_group_id: str, query: JobQuery) -> tuple[dict, str]:
    """(order values, document id) of the last row of the previous page. A cursor comes back
    from the client, so every field is checked for presence and type (issue 11 item 13): a
    missing field, a value of the wrong type or an id that is not a document id (``a/b``) is a
    400, never a failure in Firestore."""
    raw: Any = None
    try:
        raw = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, RecursionError):  # binascii.Error, UnicodeDecodeError and JSONDecodeError are ValueErrors
        pass
    if not (isinstance(raw, dict) and set(raw) == {"v", "g", "q", "o", "id"} and type(raw["v"]) is int and raw["v"] == 1
            and isinstance(raw["g"], str) and isinstance(raw["q"], str) and isinstance(raw["o"], dict)
            and is_valid_id(raw["id"])):
        raise MalformedInput("cursor: malformed")
    if raw["g"] != facility_group_id or raw["q"] != query.fingerprint:
        raise MalformedInput("cursor: belongs to another query")
    if set(raw["o"]) != {f for f, _ in query.order}:
        raise MalformedInput("cursor: malformed")
    values = {}
    for f, _ in query.order:
        v = raw["o"][f]
        if v is not None and not isinstance(v, str):
            raise MalformedInput("cursor: malformed")
        if f in DATE_FIELDS.values() and v is not None:
            v = _date(v, "cursor")
        values[f] = v
    return values, raw["id"]


# -- display -----------------------------------------------------------------------------------

def display_date(t: Optional[datetime], tz: Any = None) -> Optional[str]:
    """The seed's date format: 21-OCT-2025 6:38 PM."""
    if t is None:
        return None
    local = t.astimezone(tz) if tz is not None else t
    hour = local.hour % 12 or 12
    return f"{local.day:02d}-{local.strftime('%b').upper()}-{local.year} {hour}:{local.minute:02d} {'AM' if local.hour < 12 else 'PM'}"


# -- counts, chart and bulk retry (the console's Jobs tab, issue 14) -----------------------------

STATES = tuple(STATE_LABELS)
MAX_CHART_DAYS = 31
FILTER_PARAMS = PARAMS - {"page_size", "cursor", "tz"}  # what a bulk retry's "filters" may hold


def with_state(query: JobQuery, state: str) -> JobQuery:
    """``query`` narrowed to one state (a count per state). A query already filtered by state
    keeps it: the other states then count 0 without asking the database (see ``state_of``)."""
    others = tuple(e for e in query.equalities if e[0] != "state")
    return JobQuery(tuple(sorted((*others, ("state", state)))), query.range_field, query.range_from,
                    query.range_to, query.page_size)


def state_of(query: JobQuery) -> Optional[str]:
    return next((v for f, v in query.equalities if f == "state"), None)


def chart_query(params: Mapping[str, str]) -> tuple[JobQuery, int]:
    """The chart of jobs per day by state: the equality filters of ``params`` (a date range or a
    name prefix is not combinable with the per-day queued_at range: refused, as for the list) and
    ``days`` (1-31, default 14)."""
    rest = {k: v for k, v in params.items() if k not in ("days", "tz")}
    query = parse(rest)
    if query.range_field is not None:
        raise MalformedInput("the chart takes the equality filters only (not a date range or a name search)")
    raw = params.get("days", "14")
    if not re.fullmatch(r"[0-9]{1,2}", raw) or not 1 <= int(raw) <= MAX_CHART_DAYS:
        raise MalformedInput(f"days: an integer from 1 to {MAX_CHART_DAYS}")
    return query, int(raw)


def day_range(query: JobQuery, start: datetime, end: datetime) -> JobQuery:
    """``query`` limited to jobs queued in [start, end) (end is applied by the adapter: exclusive)."""
    return JobQuery(query.equalities, "queued_at", start, None, query.page_size)

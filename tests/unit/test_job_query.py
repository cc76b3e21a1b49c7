"""Jobs tab query shapes: parameter validation, and every shape the code can issue has its index
declared (the emulator never asks for one; production refuses the query without it)."""
from __future__ import annotations

from datetime import datetime, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.adapters.firestore_store import COMPOSITE_INDEXES
from shared.domain import job_query
from shared.domain.errors import MalformedInput

DECLARED = {tuple(f) for c, s, f in COMPOSITE_INDEXES if c == "jobs" and s == "COLLECTION"}
DATE = "2026-11-01T08:00:00Z"

params = st.fixed_dictionaries({}, optional={
    **{p: st.sampled_from(["x", "ARCHIVE", "FAILED", "In Progress"]) for p in job_query.EQUALITY_PARAMS},
    "patient_name": st.sampled_from(["doe", "O'B"]),
    **{f"{d}_{e}": st.just(DATE) for d in job_query.DATE_FIELDS for e in ("from", "to")},
})


@settings(max_examples=400, deadline=None)
@given(params)
def test_every_query_the_api_accepts_has_its_indexes(p):
    try:
        q = job_query.parse(p)
    except MalformedInput:
        return  # refused with 400: never issued
    for index in job_query.indexes_for(q):
        assert index in DECLARED, (p, index)


def test_shapes_cover_one_index_per_field_and_order():
    assert len(DECLARED) == len(job_query.EQUALITY_FIELDS) * 4 + 1
    q = job_query.parse({"type": "archive", "mrn": "M1", "facility": "f"})
    assert len(job_query.indexes_for(q)) == 3  # merged at run time
    assert job_query.indexes_for(job_query.parse({})) == []
    assert job_query.indexes_for(job_query.parse({"completed_from": DATE})) == []  # single-field index


@pytest.mark.parametrize("p", [{"x": "1"}, {"page_size": "0"}, {"page_size": "201"}, {"queued_to": "nope"},
                               {"queued_from": DATE, "started_from": DATE}, {"patient_name": "a", "queued_from": DATE},
                               {"state": "Done"}, {"type": ""}, {"mrn": "x" * 129}])
def test_bad_parameters(p):
    with pytest.raises(MalformedInput):
        job_query.parse(p)


def test_cursor_round_trip_and_binding():
    q = job_query.parse({"type": "archive"})
    t = datetime(2026, 11, 1, 8, 0, tzinfo=timezone.utc)
    c = job_query.encode_cursor("fg-1", q, {"queued_at": t}, "archive-1")
    assert job_query.decode_cursor(c, "fg-1", q) == ({"queued_at": t}, "archive-1")
    for fg, other in (("fg-2", q), ("fg-1", job_query.parse({"type": "dicom"}))):
        with pytest.raises(MalformedInput):
            job_query.decode_cursor(c, fg, other)


def test_display_date_matches_the_seed():
    assert job_query.display_date(datetime(2025, 10, 21, 18, 38, tzinfo=timezone.utc)) == "21-OCT-2025 6:38 PM"
    assert job_query.display_date(datetime(2025, 1, 2, 0, 5, tzinfo=timezone.utc)) == "02-JAN-2025 12:05 AM"
    assert job_query.display_date(None) is None


@pytest.mark.parametrize("size", ["²", "٣", "1" * 5000, "+5", " 5", "5.0", "-1"])
def test_page_size_is_ascii_digits_only(size):
    """Issue 11 item 13: "²".isdigit() is True but int("²") raises (a 500 before)."""
    with pytest.raises(MalformedInput, match="page_size"):
        job_query.parse({"page_size": size})


def _raw_cursor(doc) -> str:
    import base64
    import json

    return base64.urlsafe_b64encode(json.dumps(doc).encode()).decode().rstrip("=")


@pytest.mark.parametrize("change", [
    {"id": "a/b"}, {"id": "__reserved__"}, {"id": ".."}, {"id": None}, {"v": True}, {"o": {"queued_at": 1}},
    {"o": {"queued_at": [DATE]}}, {"o": {}}, {"o": {"queued_at": DATE, "x": DATE}}, {"g": 1}, {"extra": 0},
    {"o": {"queued_at": "0001-01-01T00:00:00+01:00"}},
])
def test_cursor_fields_are_checked_for_presence_and_type(change):
    q = job_query.parse({})
    doc = {"v": 1, "g": "fg-1", "q": q.fingerprint, "o": {"queued_at": DATE}, "id": "archive-1", **change}
    with pytest.raises(MalformedInput, match="cursor"):
        job_query.decode_cursor(_raw_cursor(doc), "fg-1", q)
    for missing in ("v", "g", "q", "o", "id"):
        with pytest.raises(MalformedInput, match="cursor"):
            job_query.decode_cursor(_raw_cursor({k: v for k, v in doc.items() if k != missing}), "fg-1", q)

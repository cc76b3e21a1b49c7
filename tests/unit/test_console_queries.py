"""The console's Jobs tab queries (issue 14): every count() the counts, chart and bulk-retry
endpoints issue has its composite indexes declared (the emulator never asks for one; production
refuses a query without it), and the console's static serving rules."""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest
from hypothesis import given, settings

from shared import console
from shared.domain import job_query
from shared.domain.errors import MalformedInput
from shared.http import HttpError
from tests.unit.test_job_query import DECLARED, params

CONSOLE = Path(__file__).resolve().parents[2] / "functions" / "admin_api" / "console"


@settings(max_examples=300, deadline=None)
@given(params)
def test_every_count_query_has_its_indexes(p):
    try:
        q = job_query.parse(p)
    except MalformedInput:
        return
    shapes = [job_query.with_state(q, s) for s in job_query.STATES]  # counts per state
    shapes.append(job_query.parse({**p, "state": "FAILED"}))  # bulk retry
    chart, _ = job_query.chart_query({k: v for k, v in p.items() if k in job_query.EQUALITY_PARAMS})  # the console sends these
    day = datetime(2026, 11, 1, tzinfo=timezone.utc)
    shapes += [job_query.with_state(job_query.day_range(chart, day, day), s) for s in job_query.STATES]
    for shape in shapes:
        for index in job_query.indexes_for(shape):
            assert index in DECLARED, (p, index)


def test_with_state_replaces_a_state_filter_and_the_chart_refuses_ranges():
    q = job_query.parse({"state": "QUEUED", "mrn": "M"})
    assert dict(job_query.with_state(q, "FAILED").equalities) == {"state": "FAILED", "mrn": "M"}
    assert job_query.state_of(q) == "QUEUED"
    with pytest.raises(MalformedInput):
        job_query.chart_query({"queued_from": "2026-11-01T00:00:00Z"})
    with pytest.raises(MalformedInput):
        job_query.chart_query({"days": "32"})
    assert job_query.chart_query({"type": "ARCHIVE", "days": "7", "tz": "UTC"})[1] == 7


def test_console_files_carry_the_policy_and_nothing_else_is_served():
    config = console.ConsoleConfig("https://idp.example/authorize", "https://idp.example:8443/token", "c", "openid")
    body, status, headers = console.serve(CONSOLE, config, "GET", "/console/")
    assert status == 200 and b"<script type=\"module\" src=\"app.js\"></script>" in body
    assert "connect-src 'self' https://idp.example:8443;" in headers["Content-Security-Policy"]
    assert console.serve(CONSOLE, config, "GET", "/console")[2]["Location"] == "console/"
    for bad in ("/console/../main.py", "/console/main.py", "/console/x/app.js", "/console/.hidden"):
        with pytest.raises(HttpError) as e:
            console.serve(CONSOLE, config, "GET", bad)
        assert e.value.status == 404, bad
    with pytest.raises(HttpError):
        console.serve(CONSOLE, config, "DELETE", "/console/")
    unset = console.ConsoleConfig()
    assert unset.as_json()["configured"] is False
    assert "connect-src 'self';" in console.security_headers(unset)["Content-Security-Policy"]
    assert console.is_console_path("/console") and console.is_console_path("/console/app.js")
    assert not console.is_console_path("/consoles") and not console.is_console_path("/v1/console")

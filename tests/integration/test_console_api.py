# ruff: noqa: F811 - the shared ``api`` fixture is imported and used as a parameter
"""The admin API endpoints the console's Jobs tab and exam view need (issue 14): counts per state
for a filter (Firestore count()), jobs per day by state, one job by id, bulk retry by filter
(bounded, idempotent, audited) and the exam view with its order lock."""
from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta, timezone

import pytest

from shared.domain.jobs import Transition
from shared.domain.models import LOCK_MESSAGE, JobState
from tests.integration.test_jobs_api import BASE, api, make_job  # noqa: F401 - the fixture
from tests.support import assert_matches_openapi

JOBS = [make_job(i) for i in range(40)]


def _count(pred) -> int:
    return sum(1 for j in JOBS if pred(j))


@pytest.mark.parametrize("params,pred", [
    ({}, lambda j: True),
    ({"type": "ARCHIVE"}, lambda j: j.type.value == "ARCHIVE"),
    ({"facility": "fac-a", "mrn": "MRN1"}, lambda j: j.facility_id == "fac-a" and j.mrn == "MRN1"),
    ({"patient_name": "doe"}, lambda j: j.patient_name.lower().startswith("doe")),
    ({"state": "FAILED"}, lambda j: j.state is JobState.FAILED),
])
def test_counts_per_state_for_the_filter(api, params, pred):
    r = api.get(path=f"{BASE}/jobs/counts", **params)
    assert r.status_code == 200, r.json
    assert_matches_openapi(r.json, "/v1/facility-groups/{facility_group_id}/jobs/counts", "get")
    want = {s.value: _count(lambda j: pred(j) and j.state is s) for s in JobState}
    assert r.json["counts"] == want and r.json["total"] == sum(want.values())


def test_counts_refuse_what_the_list_refuses(api):
    r = api.get(path=f"{BASE}/jobs/counts", patient_name="doe", queued_from="2026-11-01T00:00:00Z")
    assert r.status_code == 400
    assert api.get(path=f"{BASE}/jobs/counts", groups=("fg-2",)).status_code == 404


def test_per_day_counts_by_state_in_the_viewers_zone(api):
    now = datetime.now(timezone.utc)
    for n, (days_ago, state) in enumerate([(0, JobState.COMPLETED), (0, JobState.FAILED), (1, JobState.COMPLETED),
                                          (3, JobState.QUEUED), (20, JobState.FAILED)]):
        job = dataclasses.replace(make_job(200 + n), queued_at=now - timedelta(days=days_ago), state=state)
        api.store.create_job(job)
    r = api.get(path=f"{BASE}/jobs/per-day", days="7", tz="UTC")
    assert r.status_code == 200, r.json
    assert_matches_openapi(r.json, "/v1/facility-groups/{facility_group_id}/jobs/per-day", "get")
    days = r.json["days"]
    assert len(days) == 7 and days[-1]["day"] == now.date().isoformat()
    assert days[-1]["counts"] == {"QUEUED": 0, "IN_PROGRESS": 0, "COMPLETED": 1, "FAILED": 1}
    assert days[-2]["counts"]["COMPLETED"] == 1 and days[-4]["counts"]["QUEUED"] == 1
    assert sum(sum(d["counts"].values()) for d in days) == 4  # 20 days ago is outside the window
    only_failed = api.get(path=f"{BASE}/jobs/per-day", days="7", state="FAILED").json["days"]
    assert sum(sum(d["counts"].values()) for d in only_failed) == 1
    for bad in ({"days": "0"}, {"days": "32"}, {"queued_from": "2026-11-01T00:00:00Z"}, {"tz": "Nowhere/City"}):
        assert api.get(path=f"{BASE}/jobs/per-day", **bad).status_code == 400, bad


def test_one_job_by_id(api):
    job = JOBS[7]
    r = api.get(path=f"{BASE}/jobs/{job.id}", tz="America/New_York")
    assert r.status_code == 200 and r.json["id"] == job.id and r.json["queued_date"] == "01-NOV-2026 3:07 AM"
    assert api.get(path=f"{BASE}/jobs/{job.id}", colour="red").status_code == 400
    assert api.get(path=f"{BASE}/jobs/archive-{'f' * 32}").status_code == 404
    assert api.get(path=f"/v1/facility-groups/fg-2/jobs/{job.id}", groups=("fg-2",)).status_code == 404


def _bulk(api, body):
    return api.client.post(f"{BASE}/jobs/bulk-retry", json=body, headers=api.auth.headers())


def test_bulk_retry_by_filter_is_idempotent_and_audited(api):
    failed_a = [j for j in JOBS if j.state is JobState.FAILED and j.facility_id == "fac-a"]
    failed_b = [j for j in JOBS if j.state is JobState.FAILED and j.facility_id == "fac-b"]
    target = [j for j in JOBS if j.state is JobState.FAILED and j.mrn == "MRN3"]
    assert target and len(target) < len(failed_a + failed_b)
    r = _bulk(api, {"request_id": "req-00000001", "filters": {"mrn": "MRN3"}})
    assert r.status_code == 200, r.json
    assert_matches_openapi(r.json, "/v1/facility-groups/{facility_group_id}/jobs/bulk-retry", "post")
    assert r.json["retried"] == len(target) and r.json["remaining_failed"] == 0 and r.json["replayed"] is False
    assert sorted(r.json["job_ids"]) == sorted(j.id for j in target)
    for j in target:
        assert api.store.get_job("fg-1", j.id).state is JobState.QUEUED
    others = [j for j in failed_a + failed_b if j not in target]
    assert all(api.store.get_job("fg-1", j.id).state is JobState.FAILED for j in others)
    # The same request again: its stored answer, nothing retried a second time.
    again = _bulk(api, {"request_id": "req-00000001", "filters": {"mrn": "MRN3"}})
    assert again.status_code == 200 and again.json["replayed"] is True and again.json["retried"] == len(target)
    assert all(api.store.get_job("fg-1", j.id).attempt == 2 for j in target)
    # A new request with the same filter: they are no longer failed, so none is retried.
    fresh = _bulk(api, {"request_id": "req-00000002", "filters": {"mrn": "MRN3"}})
    assert fresh.json["retried"] == 0 and all(api.store.get_job("fg-1", j.id).attempt == 2 for j in target)
    audit = api.store.audit_entries("fg-1")
    bulk = [a for a in audit if a["action"] == "job.bulk_retry"]
    assert [a["target_id"] for a in bulk] == ["req-00000001", "req-00000002"] and bulk[0]["fields"] == ["mrn"]
    assert sum(1 for a in audit if a["action"] == "job.retry") == len(target)
    record = api.store.get_bulk_action("fg-1", "req-00000001")
    assert record["actor"] == "Pat Admin" and record["filters"] == {"mrn": "MRN3"} and record["result"]["retried"] == len(target)


@pytest.mark.parametrize("body,field", [
    ({"filters": {}}, "request_id"), ({"request_id": "short"}, "request_id"),
    ({"request_id": "req-00000009", "filters": {"colour": "red"}}, "filters"),
    ({"request_id": "req-00000009", "filters": {"state": "COMPLETED"}}, "filters"),
    ({"request_id": "req-00000009", "filters": {"type": "NOPE"}}, "filters"),
    ({"request_id": "req-00000009", "filters": {"mrn": 3}}, "filters"),
    ({"request_id": "req-00000009", "extra": 1}, "extra"),
])
def test_bulk_retry_bad_body_is_422_and_retries_nothing(api, body, field):
    r = _bulk(api, body)
    assert r.status_code == 422 and field in r.json["error"]["fields"], r.json
    assert all(api.store.get_job("fg-1", j.id).attempt == 1 for j in JOBS)


def test_exam_view_shows_archive_states_and_the_order_lock(api):
    job = JOBS[0]  # ARCHIVE, triggered at Pending: holds the lock while open
    api.store.transact_job("fg-1", job.id, lambda j: Transition("applied", dataclasses.replace(j, lock_held=True)))
    api.store.record_exam("fg-1", {"exam_id": job.exam_id, "accession_number": "ACC0", "facility_id": "fac-a",
                                   "study_instance_uid": "1.2.3.1", "mrn": "MRN0", "patient_name": "DOE^JANE"})
    r = api.get(path=f"{BASE}/exams/{job.exam_id}")
    assert r.status_code == 200, r.json
    assert_matches_openapi(r.json, "/v1/facility-groups/{facility_group_id}/exams/{exam_id}", "get")
    assert r.json["lock"]["locked"] is True and r.json["lock"]["message"] == LOCK_MESSAGE
    assert [x["job_id"] for x in r.json["lock"]["jobs"]] == [job.id]
    assert (r.json["mrn"], r.json["patient_name"]) == ("MRN0", "DOE^JANE")
    assert {d["destination_id"] for d in r.json["destinations"]} == {"dst-0", "dst-1", "dst-2"}
    unlocked = api.get(path=f"{BASE}/exams/exam-nothing").json
    assert unlocked["lock"] == {"locked": False, "message": None, "blocked_actions": [], "jobs": []}
    assert api.get(path=f"{BASE}/exams/{job.exam_id}", groups=("fg-2",)).status_code == 404

"""The Jobs tab through the admin API (issue 5; seed 000 "Monitoring Archive Jobs", "Archive
States", "Retrying Failed Jobs"): filters, searches, cursor pagination, retry and bad input."""
from __future__ import annotations

import base64
import dataclasses
import json
from datetime import timedelta

import pytest

from shared.domain.jobs import Transition
from shared.domain.models import Facility, FacilityGroup, Job, JobState, JobType
from tests.support import T0, destination, gateway, load_app

BASE = "/v1/facility-groups/fg-1"
NAMES = ["DOE^JANE", "Doe^John", "SMITH^ANNA", "smithers^bob", "O'BRIEN^PAT"]
TYPES = [JobType.ARCHIVE, JobType.DICOM, JobType.IOCM, JobType.ADT]
STATES = [JobState.QUEUED, JobState.IN_PROGRESS, JobState.COMPLETED, JobState.FAILED]


def make_job(i: int, fg: str = "fg-1") -> Job:
    queued = T0 + timedelta(minutes=i)
    state = STATES[i % 4]
    return Job(
        id=f"archive-{i:032x}", facility_group_id=fg, type=TYPES[i % 4], state=state,
        destination_id=f"dst-{i % 3}", destination_name=f"VNA {i % 3}", gateway_id="gw-1", exam_id=f"exam-{i}",
        accession_number=f"ACC{i % 7}", mrn=f"MRN{i % 5}", patient_name=NAMES[i % 5],
        study_instance_uid=f"1.2.3.{i % 6 + 1}", facility_id=f"fac-{'ab'[i % 2]}", queued_at=queued,
        started_at=queued + timedelta(seconds=30) if state is not JobState.QUEUED else None,
        completed_at=queued + timedelta(minutes=2) if state.is_final else None,
        failure_reason="Association rejected: called AE title not recognized" if state is JobState.FAILED else None,
        deadline=queued + timedelta(hours=1), trigger_status="PENDING" if i % 4 == 0 else "COMPLETED", published=True)


@pytest.fixture
def api(stack, admin_env):
    for fg in ("fg-1", "fg-2"):
        stack.store.save_facility_group(FacilityGroup(fg, fg))
    stack.store.save_facility(Facility("fac-a", "fg-1", "Main Hospital"))
    stack.store.save_facility(Facility("fac-b", "fg-1", "East Clinic"))
    stack.add_gateway(gateway("gw-1"))
    for d in range(3):
        stack.store.save_destination(destination(f"dst-{d}", max_retries=d, retry_timeout_seconds=5 + d))
    for i in range(40):
        stack.store.create_job(make_job(i))
    for i in range(5):
        stack.store.create_job(make_job(100 + i, fg="fg-2"))
    client = load_app("admin_api")

    def get(path=f"{BASE}/jobs", groups=("fg-1",), **params):
        return client.get(path, query_string=params, headers=admin_env.headers(groups))

    def post(path, groups=("fg-1",)):
        return client.post(path, headers=admin_env.headers(groups))

    stack.get, stack.post, stack.client, stack.auth = get, post, client, admin_env
    return stack


def all_pages(api, **params):
    rows, cursor, pages = [], None, 0
    while True:
        r = api.get(**params, **({"cursor": cursor} if cursor else {}))
        assert r.status_code == 200, r.json
        rows += r.json["jobs"]
        pages += 1
        cursor = r.json["next_cursor"]
        if cursor is None:
            return rows, pages


def expected(pred, order=lambda j: -j.queued_at.timestamp()):
    return [j.id for j in sorted((make_job(i) for i in range(40) if pred(make_job(i))), key=order)]


def test_newest_first_with_every_column(api):
    r = api.get(page_size="3")
    rows = r.json["jobs"]
    assert [x["id"] for x in rows] == expected(lambda j: True)[:3]
    row = rows[0]  # job 39: FAILED DICOM... check the seed's columns
    assert set(row) >= {"mrn", "accession", "patient_name", "type", "type_label", "queued_at", "queued_date", "started_at",
                        "started_date", "completed_at", "completed_date", "study_instance_uid", "facility", "destination",
                        "state", "state_label", "reason"}
    j = make_job(39)
    assert (row["type_label"], row["state_label"], row["facility"], row["destination"]) == ("ADT", "Failed", "East Clinic", "VNA 0")
    assert row["reason"] == "Association rejected: called AE title not recognized"  # full text
    assert row["queued_at"] == "2026-11-01T08:39:00Z" and row["queued_date"] == "01-NOV-2026 8:39 AM"
    assert row["completed_date"] == "01-NOV-2026 8:41 AM" and j.completed_at is not None


def test_display_dates_in_a_time_zone(api):
    row = api.get(page_size="1", tz="America/New_York").json["jobs"][0]
    assert row["queued_date"] == "01-NOV-2026 3:39 AM" and row["queued_at"] == "2026-11-01T08:39:00Z"


@pytest.mark.parametrize("page_size", ["1", "7", "40", "200"])
def test_pagination_visits_every_job_once(api, page_size):
    rows, pages = all_pages(api, page_size=page_size)
    assert [x["id"] for x in rows] == expected(lambda j: True)
    assert pages in (-(-40 // int(page_size)), -(-40 // int(page_size)) + 1)


FILTERS = [
    ({"type": "Archive"}, lambda j: j.type is JobType.ARCHIVE),
    ({"type": "dicom"}, lambda j: j.type is JobType.DICOM),
    ({"state": "In Progress"}, lambda j: j.state is JobState.IN_PROGRESS),
    ({"state": "FAILED"}, lambda j: j.state is JobState.FAILED),
    ({"mrn": "MRN3"}, lambda j: j.mrn == "MRN3"),
    ({"accession": "ACC2"}, lambda j: j.accession_number == "ACC2"),
    ({"study_uid": "1.2.3.4"}, lambda j: j.study_instance_uid == "1.2.3.4"),
    ({"facility": "fac-a"}, lambda j: j.facility_id == "fac-a"),
    ({"destination": "dst-1"}, lambda j: j.destination_id == "dst-1"),
    ({"type": "ARCHIVE", "facility": "fac-a"}, lambda j: j.type is JobType.ARCHIVE and j.facility_id == "fac-a"),
    ({"mrn": "MRN1", "destination": "dst-2", "facility": "fac-b"},
     lambda j: j.mrn == "MRN1" and j.destination_id == "dst-2" and j.facility_id == "fac-b"),
    ({"queued_from": (T0 + timedelta(minutes=10)).isoformat(), "queued_to": (T0 + timedelta(minutes=20)).isoformat()},
     lambda j: T0 + timedelta(minutes=10) <= j.queued_at <= T0 + timedelta(minutes=20)),
    ({"state": "COMPLETED", "queued_from": (T0 + timedelta(minutes=5)).isoformat()},
     lambda j: j.state is JobState.COMPLETED and j.queued_at >= T0 + timedelta(minutes=5)),
]


@pytest.mark.parametrize("params,pred", FILTERS)
@pytest.mark.parametrize("page_size", ["3", "50"])
def test_filters_with_pagination(api, params, pred, page_size):
    rows, _ = all_pages(api, page_size=page_size, **params)
    assert [x["id"] for x in rows] == expected(pred)


@pytest.mark.parametrize("field", ["started", "completed"])
def test_started_and_completed_date_ranges_are_newest_first_by_that_date(api, field):
    lo, hi = T0 + timedelta(minutes=8), T0 + timedelta(minutes=30)
    rows, _ = all_pages(api, page_size="4", **{f"{field}_from": lo.isoformat(), f"{field}_to": hi.isoformat()})
    attr = f"{field}_at"
    assert [x["id"] for x in rows] == expected(
        lambda j: getattr(j, attr) is not None and lo <= getattr(j, attr) <= hi, order=lambda j: -getattr(j, attr).timestamp())


@pytest.mark.parametrize("prefix,names", [("doe", {"DOE^JANE", "Doe^John"}), ("SMITH", {"SMITH^ANNA", "smithers^bob"}),
                                          ("smith^", {"SMITH^ANNA"}), ("o'b", {"O'BRIEN^PAT"}), ("zz", set())])
def test_patient_name_is_a_case_insensitive_prefix(api, prefix, names):
    rows, _ = all_pages(api, page_size="4", patient_name=prefix)
    assert {x["patient_name"] for x in rows} == names
    want = [j.id for j in sorted((make_job(i) for i in range(40) if make_job(i).patient_name in names),
                                 key=lambda j: (j.patient_name.lower(), -j.queued_at.timestamp()))]
    assert [x["id"] for x in rows] == want
    rows, _ = all_pages(api, page_size="2", patient_name=prefix, type="ARCHIVE")
    assert all(x["type"] == "ARCHIVE" and x["patient_name"] in names for x in rows)


def test_other_group_sees_only_its_jobs_and_cannot_read_ours(api):
    assert api.get(path=f"{BASE}/jobs", groups=("fg-2",)).status_code == 404
    rows, _ = all_pages(api)
    assert all(r["id"].startswith("archive-") and int(r["id"][8:], 16) < 100 for r in rows)
    theirs = api.get(path="/v1/facility-groups/fg-2/jobs", groups=("fg-2",)).json["jobs"]
    assert len(theirs) == 5


def _cursor(api, **params):
    return api.get(page_size="2", **params).json["next_cursor"]


@pytest.mark.parametrize("params", [
    {"colour": "red"}, {"queued_from": "yesterday"}, {"queued_from": "2026-11-01T08:00:00"},
    {"queued_from": "2026-11-02T00:00:00Z", "queued_to": "2026-11-01T00:00:00Z"}, {"page_size": "0"},
    {"page_size": "201"}, {"page_size": "ten"}, {"type": "SOMETHING"}, {"state": "DONE"}, {"cursor": "garbage!"},
    {"patient_name": "doe", "queued_from": "2026-11-01T00:00:00Z"}, {"patient_name": " "}, {"tz": "Mars/Olympus"},
])
def test_bad_input_is_400_json(api, params):
    r = api.get(**params)
    assert r.status_code == 400 and r.json["error"]["code"] == "malformed", r.json


def test_cursor_from_another_query_or_group_is_400(api):
    cursor = _cursor(api, type="ARCHIVE")
    assert api.get(cursor=cursor, type="ARCHIVE").status_code == 200
    assert api.get(cursor=cursor, type="DICOM").status_code == 400
    other = api.get(path="/v1/facility-groups/fg-2/jobs", groups=("fg-2",), page_size="2").json["next_cursor"]
    r = api.get(cursor=other)
    assert r.status_code == 400 and "another query" in r.json["error"]["message"]
    forged = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    forged["g"] = "fg-2"
    tampered = base64.urlsafe_b64encode(json.dumps(forged).encode()).decode()
    assert api.get(path="/v1/facility-groups/fg-2/jobs", groups=("fg-2",), cursor=tampered, type="ARCHIVE").status_code == 200
    assert api.get(cursor=tampered, type="ARCHIVE").status_code == 400


def test_repeated_parameter_is_400(api):
    r = api.client.get(f"{BASE}/jobs?type=ARCHIVE&type=DICOM", headers=api.auth.headers())
    assert r.status_code == 400 and "once" in r.json["error"]["message"]


# -- retry ----------------------------------------------------------------------------------

def test_retry_failed_job_requeues_and_republishes_with_current_destination_settings(api):
    failed = make_job(3)  # FAILED, dst-0
    api.store.save_destination(destination("dst-0", max_retries=7, retry_timeout_seconds=42))
    r = api.post(f"{BASE}/jobs/{failed.id}/retry")
    assert r.status_code == 200, r.json
    assert (r.json["state"], r.json["attempt"], r.json["reason"], r.json["started_at"]) == ("QUEUED", 2, None, None)
    job = api.store.get_job("fg-1", failed.id)
    assert (job.max_retries, job.retry_timeout_seconds, job.published) == (7, 42, True)
    [msg] = api.pull(gateway("gw-1").subscription_id, expect=1)
    body = json.loads(msg.data)
    assert body["attempt"] == 2 and body["destination"]["retry"] == {"max_retries": 7, "retry_timeout_seconds": 42}
    assert msg.attributes["attempt"] == "2"
    assert any(a["action"] == "job.retry" and a["target_id"] == failed.id for a in api.store.audit_entries("fg-1"))


@pytest.mark.parametrize("i", [0, 1, 2])  # QUEUED, IN_PROGRESS, COMPLETED
def test_retry_of_a_job_that_is_not_failed_is_409(api, i):
    r = api.post(f"{BASE}/jobs/{make_job(i).id}/retry")
    assert r.status_code == 409 and "Only a failed job can be retried" in r.json["error"]["message"]
    assert api.store.get_job("fg-1", make_job(i).id).attempt == 1


def test_retry_unknown_or_other_groups_job_is_404(api):
    assert api.post(f"{BASE}/jobs/archive-{'f' * 32}/retry").status_code == 404
    assert api.post(f"/v1/facility-groups/fg-2/jobs/{make_job(103).id}/retry").status_code == 404


def test_retry_of_pending_triggered_archive_job_locks_the_exam_again(api):
    job = make_job(0)
    api.store.transact_job("fg-1", job.id, lambda j: Transition("applied", dataclasses.replace(
        j, state=JobState.FAILED, failure_reason="x")))
    assert api.post(f"{BASE}/jobs/{job.id}/retry").status_code == 200
    assert [j.id for j in api.store.lock_holders("fg-1", job.exam_id)] == [job.id]


# -- archive state of an exam ---------------------------------------------------------------

def test_exam_archive_states_across_all_destinations(api):
    for dest, state in (("dst-0", "ARCHIVED"), ("dst-1", "UNKNOWN")):
        api.db.document(f"facility_groups/fg-1/exams/exam-9/archive_states/{dest}").set(
            {"facility_group_id": "fg-1", "exam_id": "exam-9", "destination_id": dest, "state": state, "job_id": "j",
             "updated_at": T0})
    r = api.get(path=f"{BASE}/exams/exam-9/archive-states")
    assert r.status_code == 200
    got = {d["destination_id"]: (d["label"], d["iocm"]) for d in r.json["destinations"]}
    assert got == {"dst-0": ("Archived", "IOCM messages are generated for subsequent changes."),
                   "dst-1": ("Unknown", "IOCM suppressed."), "dst-2": ("Not Archived", "IOCM suppressed.")}
    assert api.get(path=f"{BASE}/exams/exam-9/archive-states", groups=("fg-2",)).status_code == 404

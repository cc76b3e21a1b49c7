"""Pure rules of issue 11 items 3, 11 and 17: instance-list objects, which jobs accept deferred
images, held jobs and timeouts, and failure reasons across attempts (cloud) and tries (agent)."""
from __future__ import annotations

import dataclasses
import json
from datetime import timedelta

import pytest

from gateway_agent.jobs import REASON_MAX, final_reason
from shared import contracts
from shared.domain import instance_lists
from shared.domain.errors import MalformedInput
from shared.domain.jobs import (FAILURE_HISTORY_MAX, FAILURE_REASON_MAX, GatewayResult, accepts_deferrals, apply_result,
                                failure, record_failure, render_failures, time_out)
from shared.domain.models import Job, JobState, JobType
from shared.domain.rules import TimeoutPolicy
from tests.support import T0

UID = "1.2.826.0.1.3680043.8.498"


def inst(n: int) -> dict:
    return {"series_instance_uid": f"{UID}.10.1", "sop_class_uid": "1.2.840.10008.5.1.4.1.1.2",
            "sop_instance_uid": f"{UID}.20.{n}"}


def job(**kw) -> Job:
    base = dict(id="archive-" + "a" * 32, facility_group_id="fg-1", type=JobType.ARCHIVE, state=JobState.QUEUED,
                destination_id="d", destination_name="VNA", gateway_id="gw-1", exam_id="e", accession_number="A",
                mrn="M", patient_name="P", study_instance_uid=f"{UID}.1", facility_id="f", queued_at=T0,
                deadline=T0 + timedelta(hours=1))
    base.update(kw)
    return Job(**base)


# -- instance lists ---------------------------------------------------------------------------

def test_instance_list_round_trip_is_deterministic_and_matches_its_schema():
    items = [inst(1), inst(2)]
    data = instance_lists.encode(f"{UID}.1", items)
    assert data == instance_lists.encode(f"{UID}.1", [dict(reversed(list(i.items()))) for i in items])
    contracts.validate(contracts.INSTANCE_LIST, json.loads(data))
    assert instance_lists.decode(data) == (f"{UID}.1", items)


def test_instance_list_bounds_and_garbage():
    with pytest.raises(MalformedInput):
        instance_lists.encode(f"{UID}.1", [inst(1)] * (instance_lists.MAX_INSTANCES + 1))
    for bad in (b"not json", b"[]", b'{"schema_version": "2", "study_instance_uid": "1.2", "instances": []}',
                b'{"schema_version": "1", "study_instance_uid": "1.2", "instances": [{"x": 1}]}'):
        with pytest.raises(MalformedInput):
            instance_lists.decode(bad)


def test_instance_list_names_and_rehoming_stay_under_a_gateway_prefix():
    assert instance_lists.object_name("gw-1", "dicom-x") == "gateways/gw-1/instances/dicom-x.json"
    uri = "gs://objects/gateways/gw-1/iocm/iocm-x.dcm"
    assert instance_lists.gateway_of(uri) == "gw-1" and instance_lists.gateway_of("gs://objects/other/x") == ""
    assert instance_lists.rehomed_name(uri, "gw-2") == "gateways/gw-2/iocm/iocm-x.dcm"
    with pytest.raises(ValueError):
        instance_lists.rehomed_name("gs://objects/keys/x", "gw-2")


def test_merge_keeps_the_first_of_each_instance():
    assert instance_lists.merge([[inst(1), inst(2)], [inst(2), inst(3)]]) == [inst(1), inst(2), inst(3)]


# -- deferrals and held jobs ------------------------------------------------------------------

@pytest.mark.parametrize("state,timed_out,accepts", [
    (JobState.QUEUED, False, True), (JobState.IN_PROGRESS, False, True),
    (JobState.FAILED, True, True),  # UNKNOWN: its late COMPLETED may still come (item 11)
    (JobState.FAILED, False, False), (JobState.COMPLETED, False, False)])
def test_which_archive_jobs_accept_deferred_images(state, timed_out, accepts):
    assert accepts_deferrals(job(state=state, timed_out=timed_out)) is accepts
    assert accepts_deferrals(job(type=JobType.DICOM, state=state, timed_out=timed_out)) is False


def test_a_held_job_is_never_timed_out():
    held = job(type=JobType.IOCM, held=True, waits_for="dicom-" + "b" * 32)
    assert time_out(held, now=T0 + timedelta(days=30)).outcome == "ignored"
    assert time_out(dataclasses.replace(held, held=False), now=T0 + timedelta(days=30)).outcome == "applied"


# -- failure reasons (item 17) ----------------------------------------------------------------

def test_one_failure_is_its_reason_several_are_named_by_attempt():
    h = record_failure([], 1, "A")
    assert render_failures(h) == "A"
    h = record_failure(h, 2, "B")
    h = record_failure(h, 3, "A")
    assert render_failures(h) == "attempts 1, 3: A; attempt 2: B"
    assert render_failures(record_failure(h, 3, "C")) == "attempt 1: A; attempt 2: B; attempt 3: C"  # same attempt: replaced


def test_a_late_result_replaces_the_timeout_reason_of_its_attempt():
    j = job(max_retries=0)
    t = time_out(j, now=T0 + timedelta(hours=2)).job
    assert "No result from the gateway" in t.failure_reason
    late = apply_result(t, GatewayResult(j.id, 1, JobState.FAILED, T0, "Association rejected"), now=T0 + timedelta(hours=3),
                        policy=TimeoutPolicy()).job
    assert late.failure_reason == "Association rejected"
    retried = dataclasses.replace(late, attempt=2, state=JobState.QUEUED, failure_reason=None)
    done = apply_result(retried, GatewayResult(j.id, 2, JobState.COMPLETED, T0), now=T0 + timedelta(hours=3),
                        policy=TimeoutPolicy()).job
    assert done.failure_reason is None and done.failure_history == late.failure_history  # earlier attempts stay


def test_reasons_are_bounded():
    h: list = []
    for n in range(1, 40):
        h = record_failure(h, n, f"reason {n} " + "x" * 300)
    assert len(h) == FAILURE_HISTORY_MAX and h[0]["attempts"] == [1] and h[-1]["attempts"] == [39]
    text = render_failures(h)
    assert len(text) <= FAILURE_REASON_MAX and text.startswith("attempt 1: reason 1 ") and "attempt 39: reason 39 " in text
    assert "more reasons omitted" in text
    assert len(failure(job(), "y" * 10_000)["failure_reason"]) == 2000


def test_the_agent_reason_lists_distinct_failures_in_order_and_fits_the_contract():
    assert final_reason({"A": [1, 2, 3]}, "after 3 attempts") == "A (after 3 attempts)"
    assert final_reason({"A": [1], "B": [2, 3]}, "after 3 attempts") == "try 1: A; tries 2, 3: B (after 3 attempts)"
    long = {f"{c}" * 1500: [n] for n, c in enumerate("ABCD", 1)}
    text = final_reason(long, "after 4 attempts")
    assert len(text) <= REASON_MAX and text.startswith("try 1: AAA") and "try 4: DDD" in text and "(2 more)" in text
    assert text.endswith("(after 4 attempts)")

"""Study changes as large as the contract allows (study-changed.v1: 50,000 instances) against the
emulators (issue 11 item 3): no instance list in a Firestore document (1 MiB) or a job message
(10 MB); the job holds the list's URI and a count, the list is in Cloud Storage under the gateway's
own prefix. The Firestore emulator refuses documents over 1 MiB ("maximum entity size is 1048576
bytes"), as production does, so the old design fails these tests."""
from __future__ import annotations

import json

import pytest

from shared.domain import instance_lists
from tests.integration.test_study_changed import CT, UID, _archive_running, event, handle, jobs, post, set_state, study_world
from tests.support import destination, firestore_document_size

N = 50_000
SMALL = 8 * 1024  # a job document or message that names 50,000 instances stays below this


@pytest.fixture
def world(stack):
    return study_world(stack)


def many(n: int = N, *, base: int = 100_000, series: int = 1) -> list[dict]:
    """``n`` instances, 500 per series (a large CT/MR study)."""
    return [{"series_instance_uid": f"{UID}.10.{series}.{i // 500}", "sop_class_uid": CT,
             "sop_instance_uid": f"{UID}.20.{base + i}"} for i in range(n)]


def doc_size(world, job: dict) -> int:
    return firestore_document_size(f"facility_groups/fg-1/jobs/{job['id']}", job)


def listed(world, uri: str) -> list[str]:
    study, items = instance_lists.decode(world.objects.get(uri))
    return [i["sop_instance_uid"] for i in items]


def raw_messages(world, gw="gw-1", expect=None):
    return [m.data for m in world.pull(f"gw-fg-1-{gw}-jobs-sub", expect=expect)]


def test_series_deleted_of_50000_instances_through_the_entry_point(world, function_env):
    """Was dead-lettered from 6,000 instances on (the job document held the list) and left the note
    in Cloud Storage as an orphan."""
    from tests.support import cloud_event_headers, load_app, pubsub_envelope

    world.store.save_destination(destination("ok"))
    set_state(world, "ok", "ARCHIVED")
    instances = many()
    r = load_app("on_study_changed").post("/", data=json.dumps(pubsub_envelope(event("SERIES_DELETED", instances))),
                                          headers=cloud_event_headers("archsync-study-changed", world.project))
    assert r.status_code == 200
    [job] = jobs(world)
    assert (job["type"], job["instance_count"], job["state"]) == ("IOCM", N, "QUEUED")
    assert doc_size(world, job) < SMALL
    [data] = raw_messages(world, expect=1)
    msg = json.loads(data)
    assert len(data) < SMALL and msg["instance_count"] == N and msg["object_uri"] == job["object_uri"]
    note = world.objects.get(job["object_uri"])
    assert len(note) > N * 100  # the note references every instance
    assert world.pull("dead-letter-audit", wait=0.5) == []


def test_split_of_50000_instances_pushes_one_copy_job_with_its_list_in_storage(world):
    # A plain store, so no rejection note is built: the 50,000-reference note is the test above.
    world.store.save_destination(destination("plain", support_iocm=False))
    set_state(world, "plain", "ARCHIVED")
    originals, copies = many(), many(base=500_000, series=2)
    target = {"exam_id": "exam-2", "study_instance_uid": f"{UID}.2", "storage_uri": "gs://platform-studies/fg-1/study2/",
              "instances": copies}
    assert handle(world, event("STUDY_SPLIT", originals, target=target))["plain"].action == "push"
    [copy] = jobs(world, "DICOM")
    assert doc_size(world, copy) < SMALL and copy["instance_count"] == N
    assert copy["instances_uri"] == f"gs://{world.objects_bucket}/gateways/gw-1/instances/{copy['id']}.json"
    assert listed(world, copy["instances_uri"]) == [i["sop_instance_uid"] for i in copies]
    [data] = raw_messages(world, expect=1)
    assert len(data) < SMALL and json.loads(data)["instances_uri"] == copy["instances_uri"]


def test_50000_late_images_pushed_where_archived_and_deferred_where_archiving(world):
    archive_id = _archive_running(world, "running")  # its archive job is QUEUED
    world.store.save_destination(destination("archived", trigger=None))
    set_state(world, "archived", "ARCHIVED")
    added = many()
    out = handle(world, event("INSTANCES_ADDED", added, event_id="late-1"))
    assert (out["archived"].action, out["running"].action) == ("push", "deferred")
    [push] = jobs(world, "DICOM")
    assert push["destination_id"] == "archived" and doc_size(world, push) < SMALL and push["instance_count"] == N
    assert listed(world, push["instances_uri"]) == [i["sop_instance_uid"] for i in added]
    [deferral] = world.store.deferrals("fg-1", archive_id)
    assert deferral.instance_count == N
    archive = world.store.get_job("fg-1", archive_id)
    assert "deferred_instances" not in world.db.document(f"facility_groups/fg-1/jobs/{archive_id}").get().to_dict()
    assert archive.instance_count == 0  # the archive job's document did not grow
    assert len(raw_messages(world, expect=1)) == 1

    post(world, archive_id, "COMPLETED")
    pushed = {j["destination_id"]: j for j in jobs(world, "DICOM")}
    later = pushed["running"]
    assert doc_size(world, later) < SMALL and later["instance_count"] == N
    assert listed(world, later["instances_uri"]) == [i["sop_instance_uid"] for i in added]
    [data] = raw_messages(world, expect=1)
    assert len(data) < SMALL and json.loads(data)["job_id"] == later["id"]

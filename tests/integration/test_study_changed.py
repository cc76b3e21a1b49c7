"""on_study_changed against the emulators: seed 000 "When IOCM Messages Are Generated", "IOCM
Suppression Rules", "Multi-Destination IOCM"; late images; split/merge ordering; bad input."""
from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from shared.adapters.gcs import ObjectStore
from shared.domain.messages import exam_status_changed, study_changed
from shared.domain.models import JobState
from shared.domain.rules import TimeoutPolicy
from shared.services.archive_trigger import ArchiveTriggerService
from shared.services.followups import FollowUps
from shared.services.results import ResultService
from shared.services.study_changes import StudyChangeService
from tests.support import RESULT_KEY, STUDY_UID, T0, destination, exam_event, gateway, result_body

UID = "1.2.826.0.1.3680043.8.498"
CT = "1.2.840.10008.5.1.4.1.1.2"


def inst(n: int, series: int = 1) -> dict:
    return {"series_instance_uid": f"{UID}.10.{series}", "sop_class_uid": CT, "sop_instance_uid": f"{UID}.20.{n}"}


def event(change: str, instances=None, *, event_id: str = "evt-1", target=None, **kw) -> dict:
    e = {"schema_version": "1", "event_type": "study.changed", "event_id": event_id, "event_time": T0.isoformat(),
         "facility_group_id": "fg-1", "facility_id": "fac-a", "change": change, "exam_id": "exam-1",
         "patient": {"patient_id": "MRN-777", "name": "DOE^JANE", "birth_date": "19700101", "sex": "F"},
         "study": {"study_instance_uid": STUDY_UID, "accession_number": "ACC-0001", "study_date": "20261101",
                   "storage_uri": "gs://platform-studies/fg-1/study/"},
         "instances": instances if instances is not None else [inst(1), inst(2)], **kw}
    if target is not None:
        e["target"] = target
    return e


SPLIT_TARGET = {"exam_id": "exam-2", "study_instance_uid": f"{UID}.2", "storage_uri": "gs://platform-studies/fg-1/study2/",
                "instances": [{**inst(101), "series_instance_uid": f"{UID}.30.1"}, {**inst(102), "series_instance_uid": f"{UID}.30.1"}]}


def set_state(stack, dest_id: str, state: str) -> None:
    stack.db.document(f"facility_groups/fg-1/exams/exam-1/archive_states/{dest_id}").set(
        {"facility_group_id": "fg-1", "exam_id": "exam-1", "destination_id": dest_id, "state": state,
         "job_id": "archive-x", "updated_at": T0})


@pytest.fixture
def world(stack):
    return study_world(stack)


def study_world(stack):
    """Two gateways, the exam, and the study-change, follow-up and result services on ``stack``."""
    for g in ("gw-1", "gw-2"):
        stack.add_gateway(gateway(g))
    stack.secrets.save_result_key("fg-1", "gw-1", RESULT_KEY)
    stack.store.record_exam("fg-1", {"exam_id": "exam-1", "study_instance_uid": STUDY_UID, "facility_id": "fac-a",
                                     "accession_number": "ACC-0001", "mrn": "MRN-777", "patient_name": "DOE^JANE"})
    policy = TimeoutPolicy()
    stack.objects = ObjectStore(stack.objects_bucket, stack.gcs)
    stack.followups = FollowUps(stack.store, stack.store, stack.job_publisher, stack.clock, policy, objects=stack.objects)
    stack.service = StudyChangeService(stack.store, stack.store, stack.job_publisher, stack.followups, stack.objects,
                                       stack.clock, policy)
    stack.results = ResultService(stack.store, stack.secrets, stack.clock, policy, 10**9, followups=lambda: stack.followups)
    return stack


def handle(world, payload):
    return {o.destination_id: o for o in world.service.handle(study_changed(payload))}


def jobs(world, type_=None):
    docs = [d.to_dict() for d in world.db.collection("facility_groups/fg-1/jobs").stream()]
    return [d for d in docs if type_ is None or d["type"] == type_]


def listed(world, job_or_msg) -> list[str]:
    """The SOP Instance UIDs of a job's (or message's) instance list in Cloud Storage."""
    from shared.domain import instance_lists

    uri = job_or_msg["instances_uri"]
    study, items = instance_lists.decode(world.objects.get(uri))
    assert len(items) == job_or_msg["instance_count"]
    return [i["sop_instance_uid"] for i in items]


def messages(world, gw="gw-1", expect=None):
    return [json.loads(m.data) for m in world.pull(gateway(gw).subscription_id, expect=expect)]


def post(world, job_id, state, gw="gw-1", **kw):
    import time

    from shared.signing import sign_headers

    body = result_body(job_id, state, time=T0, **kw)
    return world.results.handle(sign_headers(RESULT_KEY, "fg-1", gw, body, int(time.time())), body)


def test_deletion_goes_only_to_active_iocm_destinations_where_archived(world):
    """Seed 000 IOCM Suppression Rules, one destination per rule, and the eligible one."""
    for did, kw, state in (("ok", {}, "ARCHIVED"), ("no-iocm", {"support_iocm": False}, "ARCHIVED"),
                           ("failed", {}, "FAILED"), ("unknown", {}, "UNKNOWN"), ("never", {}, None),
                           ("inactive", {"active": False}, "ARCHIVED")):
        world.store.save_destination(destination(did, **kw))
        if state:
            set_state(world, did, state)
    out = handle(world, event("INSTANCES_DELETED"))
    assert out["ok"].action == "rejection_note"
    assert {k: v.reason for k, v in out.items() if k != "ok"} == {
        "no-iocm": "destination does not support IOCM", "failed": "archive state FAILED",
        "unknown": "archive state UNKNOWN", "never": "never archived here", "inactive": "destination inactive"}
    [job] = jobs(world)
    assert (job["type"], job["destination_id"], job["state"]) == ("IOCM", "ok", "QUEUED")
    assert job["object_uri"] == f"gs://{world.objects_bucket}/gateways/gw-1/iocm/{job['id']}.dcm"
    [msg] = messages(world, expect=1)
    assert msg["job_type"] == "IOCM" and msg["object_uri"] == job["object_uri"]
    assert msg["instance_count"] == 2 and "instances" not in msg and "instances" not in job  # the note is the list


def test_series_deleted_and_redelivery_make_one_note(world):
    world.store.save_destination(destination("ok"))
    set_state(world, "ok", "ARCHIVED")
    e = event("SERIES_DELETED", [inst(1), inst(2), inst(3)])
    handle(world, e)
    handle(world, e)  # redelivered
    assert len(jobs(world)) == 1 and len(messages(world, expect=1)) == 1


def test_multi_destination_each_gets_its_own_note_under_its_gateway(world):
    world.store.save_destination(destination("a", gateway_id="gw-1"))
    world.store.save_destination(destination("b", gateway_id="gw-2"))
    for d in ("a", "b"):
        set_state(world, d, "ARCHIVED")
    handle(world, event("INSTANCES_DELETED"))
    uris = sorted(j["object_uri"] for j in jobs(world))
    assert "/gateways/gw-1/" in uris[0] and "/gateways/gw-2/" in uris[1]
    blobs = [world.gcs.bucket(world.objects_bucket).blob(u.split("/", 3)[3]).download_as_bytes() for u in uris]
    assert blobs[0] == blobs[1]  # the same note (one per affected study), stored where each gateway may read it
    assert len(messages(world, "gw-1", 1)) == 1 and len(messages(world, "gw-2", 1)) == 1


def test_rejection_note_passes_dciodvfy_and_dsrdump(world, tmp_path):
    world.store.save_destination(destination("ok"))
    set_state(world, "ok", "ARCHIVED")
    handle(world, event("INSTANCES_DELETED", rejection_reason="PATIENT_SAFETY"))
    [job] = jobs(world)
    path = tmp_path / "note.dcm"
    path.write_bytes(world.gcs.bucket(world.objects_bucket).blob(job["object_uri"].split("/", 3)[3]).download_as_bytes())
    assert shutil.which("dciodvfy") and shutil.which("dsrdump"), "install dicom3tools and dcmtk (./run test does)"
    v = subprocess.run(["dciodvfy", "-new", str(path)], capture_output=True, text=True)
    assert not [line for line in (v.stdout + v.stderr).splitlines() if line.startswith("Error")], v.stdout + v.stderr
    d = subprocess.run(["dsrdump", str(path)], capture_output=True, text=True)
    assert d.returncode == 0 and "Rejected for Patient Safety Reasons" in d.stdout
    refs = subprocess.run(["dsrdump", "+Pu", "+Psu", str(path)], capture_output=True, text=True).stdout
    assert f"{UID}.20.1" in refs and f"{UID}.20.2" in refs and CT in refs  # exactly what was rejected


def test_added_instances_are_pushed_where_archived_without_iocm_support(world):
    world.store.save_destination(destination("plain", support_iocm=False))
    world.store.save_destination(destination("never"))
    set_state(world, "plain", "ARCHIVED")
    out = handle(world, event("INSTANCES_ADDED", [inst(7)]))
    assert out["plain"].action == "push" and out["never"].action == "skipped"
    [job] = jobs(world)
    assert job["type"] == "DICOM" and listed(world, job) == [f"{UID}.20.7"]
    assert job["instances_uri"] == f"gs://{world.objects_bucket}/gateways/gw-1/instances/{job['id']}.json"
    [msg] = messages(world, expect=1)
    assert msg["job_type"] == "DICOM" and msg["instances_uri"] == job["instances_uri"] and msg["instance_count"] == 1


def _archive_running(world, dest_id="run"):
    world.store.save_destination(destination(dest_id, trigger="COMPLETED"))
    svc = ArchiveTriggerService(world.store, world.store, world.job_publisher, world.clock, TimeoutPolicy())
    [out] = svc.handle(exam_status_changed(exam_event("COMPLETED")))
    messages(world, expect=1)
    return out.job_id


def test_instances_added_while_archiving_are_pushed_when_it_completes(world):
    archive_id = _archive_running(world)
    assert handle(world, event("INSTANCES_ADDED", [inst(7)], event_id="e1"))["run"].action == "deferred"
    handle(world, event("INSTANCES_ADDED", [inst(7), inst(8)], event_id="e2"))  # overlaps: no duplicate
    handle(world, event("INSTANCES_ADDED", [inst(7)], event_id="e1"))  # redelivery
    assert jobs(world, "DICOM") == [] and messages(world) == []
    post(world, archive_id, "COMPLETED")
    [dicom] = jobs(world, "DICOM")
    assert listed(world, dicom) == [f"{UID}.20.7", f"{UID}.20.8"]
    assert len(messages(world, expect=1)) == 1
    post(world, archive_id, "COMPLETED")  # a repeated callback: no second push
    assert len(jobs(world, "DICOM")) == 1 and messages(world) == []
    # After completion the exam is ARCHIVED: a later image goes straight out.
    assert handle(world, event("INSTANCES_ADDED", [inst(9)], event_id="e3"))["run"].action == "push"


def test_instances_added_while_archiving_that_then_fails_are_not_pushed(world):
    archive_id = _archive_running(world)
    handle(world, event("INSTANCES_ADDED", [inst(7)]))
    post(world, archive_id, "FAILED", reason="association rejected")
    assert jobs(world, "DICOM") == []  # retrying the archive job sends the whole study, new images included


@pytest.mark.parametrize("change", ["STUDY_SPLIT", "STUDY_MERGED"])
def test_split_and_merge_push_copies_before_the_rejection_note(world, change):
    world.store.save_destination(destination("iocm"))
    world.store.save_destination(destination("plain", support_iocm=False))
    for d in ("iocm", "plain"):
        set_state(world, d, "ARCHIVED")
    out = handle(world, event(change, target=SPLIT_TARGET))
    assert out["iocm"].action == "push_then_rejection_note" and out["plain"].action == "push"
    copies = {j["destination_id"]: j for j in jobs(world, "DICOM")}
    [note] = jobs(world, "IOCM")
    assert set(copies) == {"iocm", "plain"}
    assert copies["iocm"]["study_instance_uid"] == SPLIT_TARGET["study_instance_uid"]
    assert copies["iocm"]["exam_id"] == "exam-2" and copies["iocm"]["dependents"] == [note["id"]]
    assert listed(world, copies["iocm"]) == [f"{UID}.20.101", f"{UID}.20.102"]
    assert note["held"] is True and note["waits_for"] == copies["iocm"]["id"]
    assert note["instance_count"] == 2 and "instances" not in note  # the originals: the note lists them
    assert {m["job_type"] for m in messages(world, expect=2)} == {"DICOM"}  # the note waits

    post(world, copies["iocm"]["id"], "COMPLETED")
    [released] = messages(world, expect=1)
    assert released["job_type"] == "IOCM" and released["job_id"] == note["id"]
    assert world.store.get_job("fg-1", note["id"]).held is False


def test_rejection_note_fails_when_the_copies_fail(world):
    world.store.save_destination(destination("iocm"))
    set_state(world, "iocm", "ARCHIVED")
    handle(world, event("STUDY_SPLIT", target=SPLIT_TARGET))
    [copy] = jobs(world, "DICOM")
    messages(world, expect=1)
    post(world, copy["id"], "FAILED", reason="C-STORE status 0xA700")
    [note] = jobs(world, "IOCM")
    assert note["state"] == JobState.FAILED.value and "copies of the moved instances were not stored" in note["failure_reason"]
    assert messages(world) == []


def test_held_note_is_not_published_by_the_outbox_sweep_nor_timed_out(world):
    from shared.services.sweeper import SweepService

    world.store.save_destination(destination("iocm"))
    set_state(world, "iocm", "ARCHIVED")
    handle(world, event("STUDY_SPLIT", target=SPLIT_TARGET))
    messages(world, expect=1)
    world.clock.advance(days=2)
    report = SweepService(world.store, world.store, world.job_publisher, world.clock, followups=world.followups).run()
    [note] = jobs(world, "IOCM")
    [copy] = jobs(world, "DICOM")
    assert report.republished == [] and copy["id"] in report.timed_out
    # The copy timed out, so the note that waited for it failed instead of rejecting the originals.
    assert note["state"] == "FAILED" and messages(world) == []


@pytest.mark.parametrize("mutate,reason", [
    (lambda e: e.update(exam_id="exam-404"), "unknown exam"),
    (lambda e: e["study"].update(study_instance_uid="1.2.3.4"), "not the exam's study"),
    (lambda e: e.update(change="STUDY_SPLIT"), "without a target"),
    (lambda e: e.update(instances=[]), "instances"),
    (lambda e: e.update(instances=[inst(1), inst(1)]), "listed twice"),
    (lambda e: e.update(target=SPLIT_TARGET), "takes no target"),
    (lambda e: e.update(change="STUDY_MERGED", target={**SPLIT_TARGET, "instances": SPLIT_TARGET["instances"][:1]}),
     "one copy per moved instance"),
    (lambda e: e.update(change="STUDY_SPLIT", target={**SPLIT_TARGET, "study_instance_uid": STUDY_UID}), "original study"),
    # Issue 11 item 12: schema-valid values the rejection note builder refuses; each used to fail
    # after reads, be retried 10 times and be dead-lettered without a reason.
    (lambda e: e["patient"].update(birth_date="20241399"), "patient/birth_date: must be a real date YYYYMMDD"),
    (lambda e: e["patient"].update(issuer_oid="HOSP"), "patient/issuer_oid: fails 'pattern'"),
    (lambda e: e["patient"].update(name="DOE^JANE^Q^DR^JR^X"), "patient/name: must be a DICOM person name"),
    (lambda e: e["patient"].update(name="\ud800"), "patient/name: must be a DICOM person name"),
    (lambda e: e["study"].update(study_time="250000"), "study/study_time: must be a time"),
    (lambda e: e.update(event_time="2026-02-30T00:00:00Z"), "event_time: is not a valid date-time"),
    # Issue 11 item 2: a bucket alone is no study folder.
    (lambda e: e["study"].update(storage_uri="gs://platform-studies"), "study/storage_uri: fails 'pattern'"),
    (lambda e: e.update(change="STUDY_SPLIT", target={**SPLIT_TARGET, "storage_uri": "gs://platform-studies/"}),
     "target/storage_uri: fails 'pattern'"),
])
def test_bad_study_events_are_dead_lettered_and_nothing_is_sent(world, function_env, mutate, reason):
    from tests.support import cloud_event_headers, load_app, pubsub_envelope

    world.store.save_destination(destination("ok"))
    set_state(world, "ok", "ARCHIVED")
    e = event("INSTANCES_DELETED")
    mutate(e)
    r = load_app("on_study_changed").post("/", data=json.dumps(pubsub_envelope(e)),
                                          headers=cloud_event_headers("archsync-study-changed", world.project))
    assert r.status_code == 200
    [dl] = world.pull("dead-letter-audit", expect=1)
    assert reason in dl.attributes["reason"] and "MRN-777" not in dl.attributes["reason"]
    assert "DOE" not in dl.attributes["reason"] and "20241399" not in dl.attributes["reason"]
    assert jobs(world) == [] and messages(world) == []
    assert list(world.gcs.list_blobs(world.objects_bucket)) == []


def test_a_study_storage_uri_without_its_slash_is_pushed_as_the_study_folder(world):
    """Issue 11 item 2: gs://…/study would also list gs://…/study2/ (another patient): the job
    message names the folder, gs://…/study/, and is a valid job-message.v1."""
    from shared import contracts

    world.store.save_destination(destination("plain", support_iocm=False))
    set_state(world, "plain", "ARCHIVED")
    e = event("INSTANCES_ADDED", [inst(5)])
    e["study"]["storage_uri"] = "gs://platform-studies/fg-1/study"
    handle(world, e)
    [msg] = messages(world, expect=1)
    contracts.validate(contracts.JOB_MESSAGE, msg)
    assert msg["study"]["storage_uri"] == "gs://platform-studies/fg-1/study/"


def test_entry_point_valid_event(world, function_env):
    from tests.support import cloud_event_headers, load_app, pubsub_envelope

    world.store.save_destination(destination("plain", support_iocm=False))
    set_state(world, "plain", "ARCHIVED")
    r = load_app("on_study_changed").post("/", data=json.dumps(pubsub_envelope(event("INSTANCES_ADDED", [inst(5)]))),
                                          headers=cloud_event_headers("archsync-study-changed", world.project))
    assert r.status_code == 200
    assert len(jobs(world, "DICOM")) == 1 and len(messages(world, expect=1)) == 1


def test_archive_job_completing_between_read_and_deferral_still_pushes(world):
    """The race: archive states were read before the archive job completed; the deferral then
    finds the job final and pushes the images itself instead of parking them on a finished job."""
    archive_id = _archive_running(world)
    post(world, archive_id, "COMPLETED")
    e = study_changed(event("INSTANCES_ADDED", [inst(7)]))
    exam = world.store.get_exam("fg-1", "exam-1")
    d = world.store.get_destination("fg-1", "run")
    template = world.service._template(e, exam, d, gateway("gw-1"))
    out = world.service._added(e, template, archived=False)  # as if the state read was stale
    assert out.action == "push"
    [dicom] = jobs(world, "DICOM")
    assert listed(world, dicom) == [f"{UID}.20.7"]
    assert world.store.deferrals("fg-1", archive_id) == []

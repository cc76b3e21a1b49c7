"""The whole loop against an archive no one here wrote (issue 6): platform event -> cloud function
-> job message on the gateway's Pub/Sub topic (emulator) -> the reference agent (real streaming
pull) -> fetch from Cloud Storage (emulator) -> C-FIND / C-STORE / Storage Commitment into Orthanc
-> signed result to on_job_result served over HTTP -> archive state in Firestore. Orthanc's own REST
API is the witness of what arrived."""
from __future__ import annotations

import io
import time

import pytest
from pydicom import dcmread

from devstack.orthanc import Orthanc
from tests.e2e.harness import E2E


STUDY = "1.2.826.0.1.3680043.8.498.7001"


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    # A real archive is the point of these tests: missing Orthanc is a failure, not a skip.
    assert Orthanc.available(), "Orthanc is not installed: ./run test installs it (system_tools in run)"
    o = Orthanc(tmp_path_factory.mktemp("orthanc"), ae_title="ORTHANC_AR")
    o.start()
    yield o
    o.stop()


@pytest.fixture
def e2e(stack, admin_env, orthanc, tmp_path, monkeypatch):
    orthanc.delete_all()
    world = E2E(stack, tmp_path, admin_env, host="127.0.0.1", port=orthanc.dicom_port, called_ae_title="ORTHANC_AR")
    yield world
    world.close()


def test_completed_exam_is_archived_into_orthanc(e2e, orthanc):
    files = e2e.study(STUDY, 12, series=3)
    e2e.start_agent()
    e2e.exam_completed("exam-1", STUDY)
    job = e2e.wait_job("ARCHIVE", {"COMPLETED", "FAILED"})
    assert job["state"] == "COMPLETED", job.get("failure_reason")
    assert orthanc.study_instances(STUDY) == {f.sop_instance_uid for f in files}
    assert e2e.archive_state("exam-1") == "ARCHIVED"
    assert job["counts"] == {"total": 12, "sent": 12, "already_present": 0, "excluded": 0, "failed": 0}
    assert job["started_at"] and job["completed_at"]
    # The agent authenticated to Pub/Sub and Cloud Storage with its own key on the production path
    # (its own authorized channel, not the library's anonymous emulator mode): the IAM stand-in
    # issued its account a token for each scope.
    issued = {scope for t in e2e.stack.emulators["iam"]._issued.values()
              if t.email == e2e.sa_key["client_email"] for scope in t.scopes}
    assert {"https://www.googleapis.com/auth/pubsub", "https://www.googleapis.com/auth/devstorage.read_only"} <= issued


def test_instances_the_archive_holds_are_not_sent_again(e2e, orthanc):
    files = e2e.study(STUDY, 6)
    e2e.start_agent()
    e2e.store_directly(files[:4])  # e.g. the modality also sent them to the archive
    e2e.exam_completed("exam-1", STUDY)
    job = e2e.wait_job("ARCHIVE", {"COMPLETED", "FAILED"})
    assert job["counts"]["sent"] == 2 and job["counts"]["already_present"] == 4
    assert orthanc.study_instances(STUDY) == {f.sop_instance_uid for f in files}


def test_wrong_called_ae_title_fails_the_job_with_that_reason(e2e, orthanc):
    e2e.study(STUDY, 2)
    e2e.set_destination(called_ae_title="NOT_ORTHANC", max_retries=2)
    e2e.start_agent()
    e2e.exam_completed("exam-1", STUDY)
    job = e2e.wait_job("ARCHIVE", {"COMPLETED", "FAILED"})
    assert job["state"] == "FAILED"
    assert "Association rejected by NOT_ORTHANC@127.0.0.1" in job["failure_reason"]
    assert "Called AE title not recognised" in job["failure_reason"]
    assert "not retried: permanent" in job["failure_reason"]
    assert e2e.archive_state("exam-1") == "FAILED"
    assert orthanc.study_instances(STUDY) == set()


def test_deleted_instances_get_a_rejection_note_in_orthanc_referencing_exactly_them(e2e, orthanc):
    files = e2e.study(STUDY, 5)
    e2e.start_agent()
    e2e.exam_completed("exam-1", STUDY)
    assert e2e.wait_job("ARCHIVE", {"COMPLETED", "FAILED"})["state"] == "COMPLETED"
    deleted = files[1:3]
    e2e.study_changed("exam-1", STUDY, "INSTANCES_DELETED", [f.ref() for f in deleted])
    job = e2e.wait_job("IOCM", {"COMPLETED", "FAILED"})
    assert job["state"] == "COMPLETED", job.get("failure_reason")
    notes = orthanc.study_instances(STUDY) - {f.sop_instance_uid for f in files}
    assert len(notes) == 1
    note = dcmread(io.BytesIO(orthanc.instance_file(notes.pop())))
    assert note.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.59"  # Key Object Selection Document
    assert note.ConceptNameCodeSequence[0].CodeValue == "113001"  # Rejected for Quality Reasons
    referenced = {str(i.ReferencedSOPInstanceUID) for s in note.CurrentRequestedProcedureEvidenceSequence
                  for se in s.ReferencedSeriesSequence for i in se.ReferencedSOPSequence}
    assert referenced == {f.sop_instance_uid for f in deleted}


def test_a_late_image_arrives(e2e, orthanc):
    files = e2e.study(STUDY, 3)
    e2e.start_agent()
    e2e.exam_completed("exam-1", STUDY)
    assert e2e.wait_job("ARCHIVE", {"COMPLETED", "FAILED"})["state"] == "COMPLETED"
    late = e2e.study(STUDY, 1, start=3)
    e2e.study_changed("exam-1", STUDY, "INSTANCES_ADDED", [f.ref() for f in late])
    job = e2e.wait_job("DICOM", {"COMPLETED", "FAILED"})
    assert job["state"] == "COMPLETED", job.get("failure_reason")
    assert job["counts"]["sent"] == 1
    assert orthanc.study_instances(STUDY) == {f.sop_instance_uid for f in files + late}


def test_archive_down_retries_then_fails_then_a_manual_retry_archives(e2e, orthanc):
    files = e2e.study(STUDY, 4)
    e2e.set_destination(max_retries=2, retry_timeout_seconds=1)
    orthanc.stop()
    try:
        e2e.start_agent()
        started = time.monotonic()
        e2e.exam_completed("exam-1", STUDY)
        job = e2e.wait_job("ARCHIVE", {"COMPLETED", "FAILED"})
        assert job["state"] == "FAILED"
        assert "Cannot connect to ORTHANC_AR@127.0.0.1" in job["failure_reason"] and "after 3 attempts" in job["failure_reason"]
        assert time.monotonic() - started >= 2  # two retry delays of 1 s
        assert e2e.archive_state("exam-1") == "FAILED"
    finally:
        orthanc.start()
    retried = e2e.retry(job["id"])
    assert retried["state"] == "QUEUED"
    job = e2e.wait_job("ARCHIVE", {"COMPLETED"}, attempt=2)
    assert orthanc.study_instances(STUDY) == {f.sop_instance_uid for f in files}
    assert e2e.archive_state("exam-1") == "ARCHIVED"


def test_storage_commitment_with_orthanc(e2e, orthanc):
    files = e2e.study(STUDY, 4)
    # Orthanc sends its N-EVENT-REPORT on a new association to the calling AE it knows.
    e2e.set_destination(storage_commitment=True)
    agent = e2e.start_agent(commitment_port=True)
    orthanc.stop()
    orthanc.modalities = {"GW_SCU": ("127.0.0.1", agent.cfg.storage_commitment.port)}
    orthanc.start()
    e2e.exam_completed("exam-1", STUDY)
    job = e2e.wait_job("ARCHIVE", {"COMPLETED", "FAILED"})
    assert job["state"] == "COMPLETED", job.get("failure_reason")
    assert orthanc.study_instances(STUDY) == {f.sop_instance_uid for f in files}
    assert agent.waiter.reports_received == 1
    orthanc.stop()
    orthanc.modalities = {}
    orthanc.start()

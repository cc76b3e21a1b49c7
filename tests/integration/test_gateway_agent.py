"""The reference agent's job handling against the GCS emulator and the embedded pynetdicom archive
(fast; the Orthanc runs are in tests/e2e): what is sent, what is skipped, retries, precise
reasons, storage commitment, MLLP, and when a Pub/Sub message is acked."""
from __future__ import annotations

import json
import socket
import threading
from types import SimpleNamespace
from datetime import datetime, timedelta, timezone

import pytest
from pynetdicom import evt

from devstack.archive_scp import EmbeddedArchive
from devstack.studies import make_study, upload
from gateway_agent.agent import Agent
from gateway_agent.config import parse
from gateway_agent.dimse import CommitmentListener, CommitmentWaiter, Network
from gateway_agent.fetch import ObjectFetcher
from gateway_agent.jobs import JobRunner
from gateway_agent.results import Outcome, ResultNotDelivered, ResultRefused, result_body
from shared.contracts import validate
from shared.domain.errors import MalformedInput
from tests.support import local_key_file

STUDY = "1.2.826.0.1.3680043.8.498.8001"
CT = "1.2.840.10008.5.1.4.1.1.2"
IMPLICIT, EXPLICIT = "1.2.840.10008.1.2", "1.2.840.10008.1.2.1"


def job(kind: str = "ARCHIVE", *, port: int, called: str = "ARCHIVE", uri: str = f"gs://studies/fg-1/{STUDY}/", max_retries: int = 2,
        check: bool = True, **kw) -> dict:
    body = {
        "schema_version": "1", "job_id": f"{kind.lower()}-{'a' * 32}", "job_type": kind, "attempt": 1,
        "facility_group_id": "fg-1", "gateway_id": "gw-1", "queued_at": datetime.now(timezone.utc).isoformat(),
        "result_deadline": (datetime.now(timezone.utc) + timedelta(hours=1)).isoformat(),
        "destination": {"id": "dst-1", "name": "VNA", "type": "DICOM_SCP", "host": "127.0.0.1", "port": port,
                        "called_ae_title": called, "calling_ae_title": "GW_SCU", "moving_ae_title": None,
                        "transfer_syntax_uid": None, "excluded_sop_class_uids": [], "storage_commitment": False,
                        "retry": {"max_retries": max_retries, "retry_timeout_seconds": 3}},
    }
    if kind != "ADT":
        body["study"] = {"exam_id": "exam-1", "facility_id": "fac-a", "study_instance_uid": STUDY, "storage_uri": uri}
    for k, v in kw.items():
        if k in body["destination"]:
            body["destination"][k] = v
        else:
            body[k] = v
    if check:  # False: a message that breaks the contract, which the agent must refuse by itself
        validate("job-message.v1", body)
    return body


@pytest.fixture
def world(stack, tmp_path):
    waiter = CommitmentWaiter()
    listener = CommitmentListener(waiter, "GW_SCU", "127.0.0.1", 0).start()
    archive = EmbeddedArchive(peers={"GW_SCU": ("127.0.0.1", listener.port)}).start()
    sleeps: list[float] = []
    sa_key = stack.emulators["iam"].mint_key_info(stack.project, "archsync-gw-1")  # a real key: real tokens
    stack.grant_gateway_reads(sa_key["client_email"])  # and only what provisioning would grant it
    runner = JobRunner(ObjectFetcher(sa_key, stack.project, stack.emulators["gcs"]), Network(5, 3, 3), waiter, commitment_timeout=5,
                       hl7_timeout=3, work_dir=str(tmp_path), sleep=sleeps.append)
    bucket = stack.study_bucket

    w = SimpleNamespace(stack=stack, archive=archive, runner=runner, sleeps=sleeps, uri=f"gs://{bucket}/fg-1/{STUDY}/",
                        sa_key=sa_key)

    def study(count: int, **kw):
        files = make_study(STUDY, count, **kw)
        upload(stack.gcs, w.uri, files)
        return files

    w.study = study
    yield w
    archive.stop()
    listener.stop()


def test_archive_job_sends_the_whole_study_then_a_rerun_sends_nothing(world):
    files = world.study(5, series=2)
    msg = job(port=world.archive.port, uri=world.uri)
    out = world.runner.run(msg)
    assert out == Outcome("COMPLETED", None, {"total": 5, "sent": 5, "already_present": 0, "excluded": 0, "failed": 0})
    assert world.archive.study(STUDY) == {f.sop_instance_uid for f in files}
    stores = world.archive.stores
    again = world.runner.run(msg)  # a redelivered message: the C-FIND finds everything
    assert again.counts == {"total": 5, "sent": 0, "already_present": 5, "excluded": 0, "failed": 0}
    assert world.archive.stores == stores


def test_a_store_only_archive_gets_everything_and_refuses_commitment_clearly(world):
    files = world.study(2)
    world.archive.stop()
    store_only = EmbeddedArchive(query=False, commitment=False).start()
    try:
        msg = job(port=store_only.port, uri=world.uri)
        out = world.runner.run(msg)
        assert out.state == "COMPLETED" and out.counts["sent"] == 2 and out.counts["cfind_fallback"] == 1
        assert out.reason == (f"C-FIND failed (ARCHIVE@127.0.0.1:{store_only.port} accepted no Study Root "
                              "Query/Retrieve context); sent every instance")
        _checked_result(msg, out)
        assert store_only.study(STUDY) == {f.sop_instance_uid for f in files}
        out = world.runner.run(job(port=store_only.port, uri=world.uri, storage_commitment=True))
        assert out.state == "FAILED" and "does not accept Storage Commitment Push Model (not retried: permanent)" in out.reason
    finally:
        store_only.stop()


def _checked_result(msg: dict, out: Outcome) -> dict:
    """The result the agent would post, valid against contract job-result.v1."""
    body = json.loads(result_body(msg, out.state, out.reason, out.counts))
    validate("job-result.v1", body)
    return body


@pytest.mark.parametrize("mode,why", [
    ("reject", "Association rejected by ARCHIVE@127.0.0.1"),
    ("status", "SERIES C-FIND to ARCHIVE@127.0.0.1"),
    ("timeout", "within the DIMSE timeout"),
    ("abort", "the association was aborted"),
])
def test_any_c_find_failure_falls_back_to_sending_everything_and_says_so(world, mode, why):
    """Seed 000 Troubleshooting: "C-FIND failed and no fallback push occurred". The archive holds
    the study already; with C-FIND failing the agent cannot know that, so it sends every instance
    (harmless for an archive) and the result says why in its counts and reason."""
    files = world.study(3, series=2)
    msg = job(port=world.archive.port, uri=world.uri)
    assert world.runner.run(msg).counts["sent"] == 3
    stores = world.archive.stores
    world.archive.find_fails = mode
    out = world.runner.run(msg)
    assert out.state == "COMPLETED"
    assert out.counts == {"total": 3, "sent": 3, "already_present": 0, "excluded": 0, "failed": 0, "cfind_fallback": 1}
    assert out.reason.startswith("C-FIND failed (") and out.reason.endswith("); sent every instance")
    assert why in out.reason
    if mode == "status":
        assert "0xC000" in out.reason
    assert world.archive.stores == stores + 3 and world.archive.study(STUDY) == {f.sop_instance_uid for f in files}
    assert world.sleeps == []
    assert _checked_result(msg, out)["counts"]["cfind_fallback"] == 1


def test_an_unreachable_archive_is_not_a_c_find_fallback(world):
    """No TCP connection at all: no C-STORE can work either, so the attempt fails and is retried
    (the seed's retry policy) instead of being reported as a C-FIND fallback."""
    world.study(1)
    port = world.archive.port
    world.archive.stop()
    out = world.runner.run(job(port=port, uri=world.uri, max_retries=0))
    assert out.state == "FAILED" and out.reason.startswith("Cannot connect to ARCHIVE@127.0.0.1")
    assert "C-FIND" not in out.reason and "cfind_fallback" not in (out.counts or {})


# -- only the job's own study reaches the archive (ARCHITECTURE rule 9) -------------------------

SIBLING = STUDY + "4"  # 1.2.…8001 is a string prefix of 1.2.…80014


@pytest.fixture
def sibling(world):
    """Another patient's study stored beside the job's: gs://…/fg-1/<STUDY>4/."""
    other = make_study(SIBLING, 2, patient_id="OTHER-PATIENT")
    upload(world.stack.gcs, world.uri[:-1] + "4/", other)
    return other


@pytest.mark.parametrize("uri", ["{bucket}", "{bucket}/", "{bucket}/fg-1/{study}", "{bucket}/fg-1//{study}/",
                                 "{bucket}//"])
def test_a_study_prefix_must_end_in_a_slash_and_name_a_folder(world, sibling, uri):
    """A bare bucket lists every study; …/1.2.3 without its '/' also lists …/1.2.34/. Both used to
    send another patient's images. The agent refuses them itself (the contract refuses them too)."""
    world.study(2)
    bucket = world.uri[:world.uri.index("/fg-1/")]
    bad = uri.format(bucket=bucket, study=STUDY)
    with pytest.raises(MalformedInput, match="study/storage_uri"):
        job(port=world.archive.port, uri=bad)  # not a job-message.v1
    out = world.runner.run(job(port=world.archive.port, uri=bad, check=False))
    assert out.state == "FAILED"
    assert out.reason == f"{bad}: not a study prefix (gs://<bucket>/<study prefix>/, ending in '/') (not retried: permanent)"
    assert world.archive.stores == 0 and world.sleeps == []


def test_the_study_prefix_sends_only_its_own_study_beside_a_sibling(world, sibling):
    files = world.study(2)
    out = world.runner.run(job(port=world.archive.port, uri=world.uri))
    assert out.state == "COMPLETED" and out.counts["total"] == 2
    assert world.archive.study(STUDY) == {f.sop_instance_uid for f in files}
    assert world.archive.study(SIBLING) == set() and world.archive.stores == 2


@pytest.mark.parametrize("kind", ["ARCHIVE", "DICOM"])
def test_a_file_of_another_study_inside_the_prefix_stops_the_job_and_is_never_sent(world, kind):
    """Storing overlaps fetching (issue 13 item 1), so instances of the job's own study may go out
    before the stray file is read; the stray never does (rule 9), the job stops without retry and
    the reason and counts say what was sent."""
    files = world.study(3)
    stray = make_study(SIBLING, 1, patient_id="OTHER-PATIENT")
    upload(world.stack.gcs, world.uri + "misfiled/", stray)
    listed = {"instances": [f.ref() for f in files]} if kind == "DICOM" else {}
    out = world.runner.run(job(kind, port=world.archive.port, uri=world.uri, **listed))
    assert out.state == "FAILED"
    sent = world.archive.stores
    done = "nothing was sent" if sent == 0 else (
        f"sending stopped after {sent} instances of the job's study; none of another study was sent")
    assert out.reason == f"a file under {world.uri} belongs to another study; {done} (not retried: permanent)"
    assert "OTHER-PATIENT" not in out.reason and "SYNTHETIC" not in out.reason
    assert world.archive.study(SIBLING) == set() and stray[0].sop_instance_uid not in world.archive.instances
    assert out.counts["sent"] == sent <= 3 and world.archive.study(STUDY) <= {f.sop_instance_uid for f in files}
    assert world.sleeps == []


def test_a_rejection_note_of_another_study_is_not_sent(world):
    note = make_study(SIBLING, 1, start=90)[0]
    world.stack.gcs.bucket(world.stack.objects_bucket).blob("gateways/gw-1/iocm/other.dcm").upload_from_string(note.data)
    uri = f"gs://{world.stack.objects_bucket}/gateways/gw-1/iocm/other.dcm"
    out = world.runner.run(job("IOCM", port=world.archive.port, uri=world.uri, object_uri=uri))
    assert out.state == "FAILED"
    assert out.reason == f"a file under {uri} belongs to another study; nothing was sent (not retried: permanent)"
    assert world.archive.stores == 0


def test_excluded_sop_classes_are_not_sent(world):
    world.study(3)
    out = world.runner.run(job(port=world.archive.port, uri=world.uri, excluded_sop_class_uids=[CT]))
    assert out.state == "COMPLETED" and out.counts["excluded"] == 3 and out.counts["sent"] == 0
    assert "excludes" in out.reason
    assert world.archive.stores == 0


def test_destination_transfer_syntax_is_honoured(world):
    files = world.study(2)
    out = world.runner.run(job(port=world.archive.port, uri=world.uri, transfer_syntax_uid=IMPLICIT))
    assert out.state == "COMPLETED"
    assert {world.archive.transfer_syntaxes[f.sop_instance_uid] for f in files} == {IMPLICIT}


def test_a_compressed_file_is_converted_to_the_destinations_syntax(world):
    files = world.study(1, source="SC_rgb_rle.dcm")  # RLE Lossless (more in test_transcoding.py)
    out = world.runner.run(job(port=world.archive.port, uri=world.uri, transfer_syntax_uid=EXPLICIT))
    assert out.state == "COMPLETED", out.reason
    assert world.archive.transfer_syntaxes[files[0].sop_instance_uid] == EXPLICIT


def test_a_lossy_file_the_destination_wants_re_encoded_fails_without_retry(world):
    world.study(1, source="SC_rgb_jpeg_dcmtk.dcm")  # JPEG Baseline: lossy
    out = world.runner.run(job(port=world.archive.port, uri=world.uri, transfer_syntax_uid="1.2.840.10008.1.2.5"))
    assert out.state == "FAILED"
    assert "clinical record" in out.reason and "not retried" in out.reason
    assert world.sleeps == []


def test_wrong_called_ae_title_is_permanent_and_named(world):
    world.study(1)
    out = world.runner.run(job(port=world.archive.port, uri=world.uri, called="WRONG_AE"))
    assert out.state == "FAILED"
    assert out.reason.startswith("Association rejected by WRONG_AE@127.0.0.1")
    assert "Called AE title not recognised" in out.reason and "reason 7" in out.reason
    assert world.sleeps == []


def test_archive_down_is_retried_with_the_destinations_policy(world):
    world.study(1)
    port = world.archive.port
    world.archive.stop()
    out = world.runner.run(job(port=port, uri=world.uri, max_retries=2))
    assert out.state == "FAILED" and "Cannot connect to ARCHIVE@127.0.0.1" in out.reason and "after 3 attempts" in out.reason
    assert world.sleeps == [3, 3]


def test_c_store_error_status_is_reported_after_retries(world):
    world.study(2)
    world.archive.fail_store_with = 0xA700
    out = world.runner.run(job(port=world.archive.port, uri=world.uri, max_retries=1))
    assert out.state == "FAILED"
    assert "2 of 2 instances not stored" in out.reason and "C-STORE status 0xA700 (out of resources)" in out.reason
    assert out.counts["failed"] == 2 and world.sleeps == [3]


def test_a_retry_sends_only_what_is_missing(world):
    files = world.study(3)
    calls = {"n": 0}
    original = world.archive._on_store

    def flaky(event):  # the archive refuses the second instance once
        calls["n"] += 1
        return 0xA700 if calls["n"] == 2 else original(event)

    world.archive._server.unbind(evt.EVT_C_STORE, original)
    world.archive._server.bind(evt.EVT_C_STORE, flaky)
    out = world.runner.run(job(port=world.archive.port, uri=world.uri, max_retries=1))
    assert out.state == "COMPLETED"
    assert out.counts == {"total": 3, "sent": 3, "already_present": 0, "excluded": 0, "failed": 0}
    assert calls["n"] == 4 and world.archive.study(STUDY) == {f.sop_instance_uid for f in files}


def test_dicom_job_sends_exactly_the_listed_instances(world):
    files = world.study(4)
    listed = [f.ref() for f in files[2:]]
    out = world.runner.run(job("DICOM", port=world.archive.port, uri=world.uri, instances=listed))
    assert out.counts["total"] == 2 and out.counts["sent"] == 2
    assert world.archive.study(STUDY) == {f.sop_instance_uid for f in files[2:]}


def put_list(world, files, name: str = "dicom-list") -> str:
    """An instance-list.v1 object under the gateway's prefix, as the cloud writes it."""
    from shared.domain import instance_lists

    blob = f"gateways/gw-1/instances/{name}.json"
    world.stack.gcs.bucket(world.stack.objects_bucket).blob(blob).upload_from_string(
        instance_lists.encode(STUDY, [f.ref() for f in files]))
    return f"gs://{world.stack.objects_bucket}/{blob}"


def test_dicom_job_sends_exactly_the_instances_of_its_list_in_storage(world):
    """Issue 11 item 3: the list is an object beside the note, not in the message."""
    files = world.study(4)
    uri = put_list(world, files[1:3])
    out = world.runner.run(job("DICOM", port=world.archive.port, uri=world.uri, instances_uri=uri, instance_count=2))
    assert out.state == "COMPLETED" and out.counts["total"] == 2 and out.counts["sent"] == 2
    assert world.archive.study(STUDY) == {f.sop_instance_uid for f in files[1:3]}


@pytest.mark.parametrize("count,uri,why", [
    (3, None, "lists 2 instances, the job says 3; nothing sent"),
    (2, "gateways/gw-1/instances/absent.json", "not found in Cloud Storage"),
])
def test_a_corrupt_or_missing_instance_list_fails_without_sending(world, count, uri, why):
    files = world.study(2)
    uri = f"gs://{world.stack.objects_bucket}/{uri}" if uri else put_list(world, files)
    out = world.runner.run(job("DICOM", port=world.archive.port, uri=world.uri, instances_uri=uri, instance_count=count))
    assert out.state == "FAILED" and why in out.reason and "not retried: permanent" in out.reason
    assert world.archive.stores == 0 and world.sleeps == []


def test_the_failure_reason_names_every_distinct_failure_of_the_tries(world):
    """Issue 11 item 17: the first try's cause is not replaced by the last try's."""
    world.study(2)
    world.archive.fail_store_with = 0xA700
    runner = JobRunner(ObjectFetcher(world.sa_key, world.stack.project, world.stack.emulators["gcs"]), Network(5, 3, 3), CommitmentWaiter(),
                       work_dir=str(world.runner._work_dir),
                       sleep=lambda s: setattr(world.archive, "fail_store_with", 0xA702))  # another cause from try 2 on
    out = runner.run(job(port=world.archive.port, uri=world.uri, max_retries=2))
    assert out.state == "FAILED"
    assert out.reason.startswith("try 1: 2 of 2 instances not stored") and "0xA700" in out.reason
    assert "; tries 2, 3: 2 of 2 instances not stored" in out.reason and out.reason.endswith("(after 3 attempts)")
    assert out.reason.index("0xA700") < out.reason.index("0xA702")


def test_dicom_job_for_instances_not_yet_in_storage_fails_after_retries(world):
    world.study(1)
    missing = {"series_instance_uid": "1.2.3", "sop_class_uid": CT, "sop_instance_uid": "1.2.3.4"}
    out = world.runner.run(job("DICOM", port=world.archive.port, uri=world.uri, instances=[missing], max_retries=1))
    assert out.state == "FAILED" and "1 of 1 instances named by the job are not in the study's storage" in out.reason


def test_iocm_job_stores_the_generated_note(world):
    note = make_study(STUDY, 1, start=90)[0]
    world.stack.gcs.bucket(world.stack.objects_bucket).blob("gateways/gw-1/iocm/note.dcm").upload_from_string(note.data)
    out = world.runner.run(job("IOCM", port=world.archive.port, uri=world.uri,
                               object_uri=f"gs://{world.stack.objects_bucket}/gateways/gw-1/iocm/note.dcm"))
    assert out.state == "COMPLETED" and out.counts["sent"] == 1
    assert world.archive.study(STUDY) == {note.sop_instance_uid}


def test_storage_commitment_completes_only_when_everything_is_committed(world):
    files = world.study(3)
    ok = world.runner.run(job(port=world.archive.port, uri=world.uri, storage_commitment=True))
    assert ok.state == "COMPLETED"
    world.archive.commit_refuse = {files[0].sop_instance_uid}
    out = world.runner.run(job(port=world.archive.port, uri=world.uri, storage_commitment=True, max_retries=0))
    assert out.state == "FAILED"
    assert "did not commit to 1 of 3 instances (Storage Commitment failure reason 0x0112)" in out.reason


class _Mllp:
    """A one-shot HL7 listener answering with ``ack`` (MSA-1)."""

    def __init__(self, code: str):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port, self.received = self.sock.getsockname()[1], []
        threading.Thread(target=self._serve, args=(code,), daemon=True).start()

    def _serve(self, code: str) -> None:
        conn, _ = self.sock.accept()
        with conn:
            data = b""
            while b"\x1c\r" not in data:
                data += conn.recv(65536)
            self.received.append(data)
            conn.sendall(b"\x0bMSH|^~\\&|VNA|X|ARCHSYNC|Y|20261124||ACK^A08|R1|P|2.5.1\rMSA|" + code.encode()
                         + b"|CTRL-1|" + (b"unknown patient" if code != "AA" else b"") + b"\r\x1c\r")


@pytest.mark.parametrize("code,state", [("AA", "COMPLETED"), ("AE", "FAILED")])
def test_adt_job_is_sent_over_mllp_and_its_ack_checked(world, code, state):
    peer = _Mllp(code)
    message = "MSH|^~\\&|ARCHSYNC|X|VNA|Y|20261124||ADT^A08^ADT_A01|CTRL-1|P|2.5.1\rPID|1||MRN-1"
    out = world.runner.run(job("ADT", port=world.archive.port, max_retries=0,
                               hl7={"host": "127.0.0.1", "port": peer.port, "message": message, "control_id": "CTRL-1"}))
    assert out.state == state
    assert peer.received[0].startswith(b"\x0bMSH|") and peer.received[0].endswith(b"\x1c\r")
    if code == "AE":
        assert out.reason.startswith("HL7 AE from the archive: unknown patient")


# -- when the Pub/Sub message is acked --------------------------------------------------------

class _Reporter:
    def __init__(self, fail_on=None, error=None):
        self.posted, self.fail_on, self.error, self.open = [], fail_on, error, False

    def post(self, job, state, reason=None, counts=None, patient=False):
        if state == self.fail_on:
            raise self.error
        self.posted.append(state)
        return "applied"

    def attempt_open(self, job):  # the cloud's answer for a message past its deadline
        if self.fail_on == "IN_PROGRESS":
            raise self.error
        self.posted.append("IN_PROGRESS?")
        return self.open


class _Runner:
    def __init__(self):
        self.runs = 0

    def run(self, job, progress=lambda counts: None):
        self.runs += 1
        return Outcome("COMPLETED", None, {"total": 1, "sent": 1})


def _agent():
    return Agent(parse({"job_deliveries": [{"name": "gw", "project_id": "p", "subscription_id": "s",
                                            "result_endpoint_url": "https://x/r", "result_endpoint_secure_key": "k",
                                            "service_account_json": local_key_file(), "active": True}]}))  # not started: never used


def test_ack_only_after_the_final_result_is_accepted():
    agent, runner, reporter = _agent(), _Runner(), _Reporter()
    data = json.dumps(job(port=1)).encode()
    d = agent.cfg.deliveries[0]
    assert agent.handle(d, runner, reporter, data) == "ack"
    assert reporter.posted == ["IN_PROGRESS", "COMPLETED"]
    assert agent.handle(d, runner, reporter, data) == "ack" and runner.runs == 1  # redelivery: not redone


def test_an_unreachable_result_endpoint_leaves_the_message_for_redelivery_without_redoing_the_job():
    agent, runner = _agent(), _Runner()
    reporter = _Reporter("COMPLETED", ResultNotDelivered("down"))
    d = agent.cfg.deliveries[0]
    assert agent.handle(d, runner, reporter, json.dumps(job(port=1)).encode()) == "nack"
    again = _Reporter()
    assert agent.handle(d, runner, again, json.dumps(job(port=1)).encode()) == "ack"  # redelivered later
    assert runner.runs == 1 and again.posted == ["COMPLETED"]  # the remembered outcome, posted again


def test_an_undelivered_progress_report_does_not_stop_the_job():
    agent, runner = _agent(), _Runner()
    reporter = _Reporter("IN_PROGRESS", ResultNotDelivered("down"))
    assert agent.handle(agent.cfg.deliveries[0], runner, reporter, json.dumps(job(port=1)).encode()) == "ack"
    assert runner.runs == 1 and reporter.posted == ["COMPLETED"]


def test_a_result_refused_for_good_acks_and_malformed_or_expired_messages_are_settled():
    agent, runner = _agent(), _Runner()
    d = agent.cfg.deliveries[0]
    assert agent.handle(d, runner, _Reporter("IN_PROGRESS", ResultRefused("404")), json.dumps(job(port=1)).encode()) == "ack"
    assert runner.runs == 0
    assert agent.handle(d, runner, _Reporter(), b"not json") == "nack"  # to the gateway dead-letter topic
    expired = job(port=1, job_id="archive-" + "b" * 32,
                  result_deadline=(datetime.now(timezone.utc) - timedelta(minutes=1)).isoformat())
    reporter = _Reporter()
    assert agent.handle(d, runner, reporter, json.dumps(expired).encode()) == "ack"
    assert reporter.posted == ["IN_PROGRESS?"] and runner.runs == 0  # the cloud closed it: skipped


def test_an_expired_message_whose_window_progress_extended_is_still_done():
    """Issue 13 item 3: the redelivery of a long job whose agent died may come after the deadline
    written in the message; the cloud's window was extended by progress, so the job goes on."""
    agent, runner = _agent(), _Runner()
    d = agent.cfg.deliveries[0]
    expired = job(port=1, result_deadline=(datetime.now(timezone.utc) - timedelta(minutes=1)).isoformat())
    reporter = _Reporter()
    reporter.open = True
    assert agent.handle(d, runner, reporter, json.dumps(expired).encode()) == "ack"
    assert runner.runs == 1 and reporter.posted == ["IN_PROGRESS?", "COMPLETED"]
    # The endpoint cannot say: left for redelivery, not dropped and not done blindly.
    down = _Reporter("IN_PROGRESS", ResultNotDelivered("down"))
    other = job(port=1, job_id="archive-" + "c" * 32, result_deadline=expired["result_deadline"])
    assert agent.handle(d, runner, down, json.dumps(other).encode()) == "nack" and runner.runs == 1


# -- jobs that last hours, mid-study failures (issue 13 items 3 and 4) --------------------------

def test_the_archive_going_away_mid_study_and_coming_back_within_the_retries_stores_each_instance_once(world):
    """Issue 13 item 4: after 50 of 200 instances the archive disappears (associations aborted,
    connections refused) and comes back within the destination's retries: the job completes and
    the archive took each instance exactly once."""
    import time

    files = world.study(200)
    archive = world.archive
    gone = threading.Event()
    original = archive._on_store

    once = threading.Lock()

    def store_then_vanish(event):
        status = original(event)
        # ">=" and a lock: with several store associations, stores land concurrently and the
        # count may pass 50 between two handlers' checks.
        with once:
            if archive.stores >= 50 and not gone.is_set():
                gone.set()
                threading.Thread(target=archive.stop, daemon=True).start()  # not from its own association thread
        return status

    archive._server.unbind(evt.EVT_C_STORE, original)
    archive._server.bind(evt.EVT_C_STORE, store_then_vanish)
    runner = JobRunner(ObjectFetcher(world.sa_key, world.stack.project, world.stack.emulators["gcs"]), Network(5, 3, 3), CommitmentWaiter(),
                       work_dir=world.runner._work_dir, sleep=time.sleep)  # real waits between tries
    result: dict = {}
    msg = job(port=archive.port, uri=world.uri, max_retries=10)  # the contract's maximum, 1 s apart
    msg["destination"]["retry"]["retry_timeout_seconds"] = 1
    worker = threading.Thread(target=lambda: result.setdefault("out", runner.run(msg)), daemon=True)
    worker.start()
    deadline = time.monotonic() + 600  # 200 files fetched first, on a loaded machine
    while archive._server is not None or not gone.is_set():  # wait until it is really gone
        assert time.monotonic() < deadline and worker.is_alive(), "the archive never went away"
        time.sleep(0.05)
    time.sleep(1.5)  # stays away long enough for at least one try to find it gone
    archive.restart()
    archive._server.unbind(evt.EVT_C_STORE, original)  # the restarted server has the plain handler
    archive._server.bind(evt.EVT_C_STORE, original)
    worker.join(300)
    out = result["out"]
    assert out.state == "COMPLETED", out.reason
    assert archive.study(STUDY) == {f.sop_instance_uid for f in files}
    assert archive.stores_by_uid == {f.sop_instance_uid: 1 for f in files}  # exactly once each
    # The instance in flight when the archive went away may have been kept without its response
    # reaching the agent: the next try's C-FIND finds it (already_present), it is not sent again.
    c = out.counts
    assert c["total"] == 200 and c["sent"] + c["already_present"] == 200 and c["sent"] >= 199 and c["failed"] == 0


def test_a_study_larger_than_the_free_disk_space_is_not_fetched_and_says_so(world, tmp_path):
    world.study(2)
    runner = JobRunner(ObjectFetcher(world.sa_key, world.stack.project, world.stack.emulators["gcs"], free_disk_margin_mb=10**9), Network(5, 3, 3),
                       CommitmentWaiter(), work_dir=str(tmp_path), sleep=world.sleeps.append)
    out = runner.run(job(port=world.archive.port, uri=world.uri, max_retries=1))
    assert out.state == "FAILED" and "after 2 attempts" in out.reason  # retryable: space may be freed
    assert "not enough free disk space in WORK_DIR" in out.reason and "need 1000000001 MB" in out.reason
    assert "have " in out.reason and world.archive.stores == 0
    assert list(tmp_path.iterdir()) == []  # nothing downloaded, spool removed


def test_progress_is_reported_as_files_are_fetched_and_stored(world):
    world.study(5)
    seen: list[dict] = []
    out = world.runner.run(job(port=world.archive.port, uri=world.uri), seen.append)
    assert out.state == "COMPLETED"
    # Fetching and storing overlap (several associations): reports come from both, in any order.
    assert {c["total"] for c in seen} == {5} and len(seen) >= 10  # one per file fetched, one per instance stored
    assert max(c["fetched"] for c in seen) == 5 and max(c["sent"] for c in seen) == 5
    assert all(c["sent"] <= c["fetched"] <= c["total"] for c in seen)
    for c in seen:
        validate("job-result.v1", json.loads(result_body(job(port=1), "IN_PROGRESS", counts=c)))


def test_progress_reports_are_rate_limited_and_never_block_the_send():
    from gateway_agent.progress import ProgressReporter

    clock = [0.0]
    release, posted = threading.Event(), []

    def post(counts):
        posted.append(counts["sent"])
        release.wait(10)

    p = ProgressReporter(post, 60, monotonic=lambda: clock[0])
    for sent in range(1, 200):  # 199 files stored within the first minute: nothing (the start post counts)
        p({"total": 1000, "sent": sent})
    assert posted == []
    clock[0] = 61
    p({"total": 1000, "sent": 200})  # due: posted on a background thread, which is held...
    clock[0] = 200
    p({"total": 1000, "sent": 201})  # ...so this one is dropped, without waiting
    release.set()
    p.join()
    assert posted == [200]
    clock[0] = 262
    p({"total": 1000, "sent": 300})
    p.join()
    assert posted == [200, 300] and p.posted == 2


def test_stale_spool_directories_of_a_dead_run_are_removed_at_start_up_and_nothing_else(tmp_path):
    import os
    import subprocess
    import sys

    from gateway_agent.spool import ROOT_NAME, Spool

    live = Spool(str(tmp_path))  # another agent on the same work_dir, still running
    live_dir = live.open()
    (live_dir / "job-1").mkdir()
    # A run whose agent was killed: its process held the lock until it died.
    code = ("import sys; from gateway_agent.spool import Spool; s = Spool(sys.argv[1]); d = s.open(); "
            "(d / 'archive-x-abc').mkdir(); (d / 'archive-x-abc' / '000001.dcm').write_bytes(b'x' * 1000); "
            "print(d, flush=True); import os; os._exit(0)")
    dead_dir = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True,
                              check=True, cwd=os.getcwd()).stdout.strip()
    assert os.path.isdir(dead_dir)
    (tmp_path / "operator-notes").mkdir()  # not the agent's
    (tmp_path / ROOT_NAME / "readme.txt").write_text("not a run directory")
    mine = Spool(str(tmp_path))
    mine.open()
    assert not os.path.exists(dead_dir)
    assert (live_dir / "job-1").is_dir() and (tmp_path / "operator-notes").is_dir()
    assert (tmp_path / ROOT_NAME / "readme.txt").exists()
    mine.close()
    live.close()
    assert sorted(p.name for p in (tmp_path / ROOT_NAME).iterdir()) == ["readme.txt"]

"""Transcoding in the gateway agent (issue 13 item 2), end to end from the GCS emulator: dcmtk's
storescp with its default settings (uncompressed only) receives pydicom's compressed test files
with their SOP Instance UIDs and, for lossless sources, the same decoded pixels; a destination
requiring JPEG 2000 lossless gets exactly that; a lossy image is never re-encoded."""
from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
from pydicom import dcmread

from devstack.archive_scp import EmbeddedArchive
from devstack.storescp import StoreSCP
from devstack.studies import make_study, upload
from tests.support import wait_for
from gateway_agent import transcode as t
from gateway_agent.dimse import CommitmentWaiter, Network
from gateway_agent.fetch import ObjectFetcher
from gateway_agent.jobs import JobRunner
from tests.integration.test_gateway_agent import STUDY, job

LOSSLESS = ["MR_small_RLE.dcm", "SC_rgb_rle_2frame.dcm", "MR_small_jpeg_ls_lossless.dcm", "SC_rgb_jpeg_gdcm.dcm",
            "MR_small_jp2klossless.dcm", "examples_jpeg2k.dcm", "image_dfl.dcm"]
LOSSY = ["SC_rgb_jpeg_dcmtk.dcm", "SC_rgb_dcmtk_+eb+cy+np.dcm", "JPGExtended.dcm", "JPEG2000.dcm",
         "JPEGLSNearLossless_16.dcm"]


def pixels(data) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = data if not isinstance(data, bytes) else dcmread(io.BytesIO(data))
        return ds.pixel_array


@pytest.fixture
def env(stack, tmp_path):
    sleeps: list[float] = []
    key = stack.emulators["iam"].mint_key_info(stack.project, "archsync-gw-1")
    stack.grant_gateway_reads(key["client_email"])  # what provisioning grants the gateway (strict storage)
    runner = JobRunner(ObjectFetcher(key, stack.project, stack.emulators["gcs"]), Network(30, 10, 10), CommitmentWaiter(), commitment_timeout=5,
                       hl7_timeout=3, work_dir=str(tmp_path), sleep=sleeps.append)
    uri = f"gs://{stack.study_bucket}/fg-1/{STUDY}/"

    def study(sources: list[str]) -> dict[str, tuple[str, bytes]]:
        """One instance per source file; SOP Instance UID -> (source name, file bytes)."""
        files = [make_study(STUDY, 1, start=n, source=name)[0] for n, name in enumerate(sources)]
        upload(stack.gcs, uri, files)
        return {f.sop_instance_uid: (name, f.data) for f, name in zip(files, sources)}

    return runner, uri, study, sleeps, tmp_path


def test_storescp_defaults_receive_every_compressed_test_file_uncompressed_with_the_same_uids(env):
    runner, uri, study, sleeps, tmp = env
    sent = study(LOSSLESS + LOSSY)
    scp = StoreSCP(tmp / "storescp").start()
    try:
        out = runner.run(job(port=scp.port, called=scp.ae_title, uri=uri))
        # storescp answers no C-FIND: the agent falls back to sending everything and says so.
        assert out.state == "COMPLETED", out.reason
        assert out.counts["sent"] == len(sent) and out.counts["failed"] == 0
        files = wait_for(lambda: (fs := scp.files()) and len(fs) >= len(sent) and fs, timeout=120, what="storescp's files")
    finally:
        scp.stop()
    received = {str(ds.SOPInstanceUID): ds for ds in (dcmread(p) for p in files)}
    assert set(received) == set(sent)
    for uid, (name, data) in sent.items():
        ds = received[uid]
        assert str(ds.file_meta.TransferSyntaxUID) in (t.EXPLICIT_LE, t.IMPLICIT_LE), name
        if name in LOSSLESS:
            assert np.array_equal(pixels(ds), pixels(data)), f"{name}: decoded pixels differ"
        else:
            assert ds.LossyImageCompression == "01", name
        assert ds.PhotometricInterpretation != "YBR_FULL_422", name  # decoded chroma is full resolution
    assert sleeps == []


def test_a_destination_requiring_jpeg_2000_lossless_gets_it_with_the_same_pixels(env):
    runner, uri, study, sleeps, _ = env
    sent = study(LOSSLESS + ["CT_small.dcm"])
    archive = EmbeddedArchive(storage_syntaxes=[t.J2K_LOSSLESS], keep_pixels=True).start()
    try:
        out = runner.run(job(port=archive.port, uri=uri, transfer_syntax_uid=t.J2K_LOSSLESS))
        assert out.state == "COMPLETED", out.reason
    finally:
        archive.stop()
    assert set(archive.received) == set(sent)
    for uid, (name, data) in sent.items():
        ds = archive.received[uid]
        assert str(ds.file_meta.TransferSyntaxUID) == t.J2K_LOSSLESS, name
        assert np.array_equal(pixels(ds), pixels(data)), f"{name}: decoded pixels differ"


def test_an_archive_accepting_the_original_syntax_gets_it_unchanged(env):
    runner, uri, study, _, _ = env
    sent = study(["MR_small_RLE.dcm", "SC_rgb_jpeg_dcmtk.dcm", "MR_small_jp2klossless.dcm"])
    archive = EmbeddedArchive(keep_pixels=True).start()  # accepts every syntax
    try:
        assert runner.run(job(port=archive.port, uri=uri)).state == "COMPLETED"
    finally:
        archive.stop()
    for uid, (name, data) in sent.items():
        assert archive.transfer_syntaxes[uid] == str(dcmread(io.BytesIO(data)).file_meta.TransferSyntaxUID), name


def test_a_lossy_image_for_a_lossless_compressed_destination_is_refused_for_good(env):
    runner, uri, study, sleeps, _ = env
    study(["SC_rgb_jpeg_dcmtk.dcm"])  # JPEG Baseline: lossy
    archive = EmbeddedArchive(storage_syntaxes=[t.J2K_LOSSLESS]).start()
    try:
        out = runner.run(job(port=archive.port, uri=uri, transfer_syntax_uid=t.J2K_LOSSLESS))
    finally:
        archive.stop()
    assert out.state == "FAILED"
    assert "lossy" in out.reason and "clinical record" in out.reason and "not retried" in out.reason, out.reason
    assert archive.stores == 0 and sleeps == []

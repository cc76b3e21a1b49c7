"""The agent's transcoding rules (gateway_agent/transcode.py, issue 13 item 2): what is proposed
and in which order, which accepted syntax is used, what is refused, and conversions of pydicom's
compressed test files (lossless: same pixels; always the same SOP Instance UID)."""
from __future__ import annotations

import shutil
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file

from gateway_agent import transcode as t
from gateway_agent.dimse import MAX_CONTEXTS, _batches

CT = "1.2.840.10008.5.1.4.1.1.2"


def test_own_syntax_first_then_uncompressed_as_separate_contexts():
    assert t.proposals(t.RLE_LOSSLESS) == [(t.RLE_LOSSLESS,), (t.EXPLICIT_LE, t.IMPLICIT_LE)]
    assert t.proposals(t.J2K) == [(t.J2K,), (t.EXPLICIT_LE, t.IMPLICIT_LE)]
    assert t.proposals(t.DEFLATED_LE) == [(t.DEFLATED_LE,), (t.EXPLICIT_LE, t.IMPLICIT_LE)]
    assert t.proposals(t.IMPLICIT_LE) == [(t.EXPLICIT_LE, t.IMPLICIT_LE)]


def test_a_destination_that_names_a_syntax_gets_only_that_one():
    assert t.proposals(t.RLE_LOSSLESS, t.J2K_LOSSLESS) == [(t.J2K_LOSSLESS,)]
    assert t.proposals(t.EXPLICIT_LE, t.IMPLICIT_LE) == [(t.IMPLICIT_LE,)]


@pytest.mark.parametrize("accepted, used", [
    ({t.RLE_LOSSLESS, t.EXPLICIT_LE}, t.RLE_LOSSLESS),  # both accepted: the original, no conversion
    ({t.EXPLICIT_LE}, t.EXPLICIT_LE),  # own refused: fall back to uncompressed
    ({t.IMPLICIT_LE}, t.IMPLICIT_LE),
    ({t.J2K_LOSSLESS}, None),  # nothing offered was accepted
    (set(), None),
])
def test_the_first_accepted_offer_is_used(accepted, used):
    assert t.choose(t.RLE_LOSSLESS, t.proposals(t.RLE_LOSSLESS), accepted) == used


def test_an_uncompressed_file_keeps_its_own_syntax_when_the_archive_accepts_it():
    assert t.choose(t.IMPLICIT_LE, t.proposals(t.IMPLICIT_LE), {t.IMPLICIT_LE, t.EXPLICIT_LE}) == t.IMPLICIT_LE


@pytest.mark.parametrize("own, target, flag, refused", [
    (t.JPEG_BASELINE, t.EXPLICIT_LE, None, False),  # decoding lossy adds no loss
    (t.JPEG_BASELINE, t.J2K_LOSSLESS, None, True),  # lossy re-encoded
    (t.JPEG_LS_NEAR_LOSSLESS, t.RLE_LOSSLESS, None, True),
    (t.J2K, t.JPEG_LS_LOSSLESS, "01", True),  # 4.91 holding a lossy codestream
    (t.J2K, t.JPEG_LS_LOSSLESS, "00", False),  # 4.91 holding a lossless one
    (t.EXPLICIT_LE, t.J2K_LOSSLESS, "01", True),  # decoded earlier, still a lossy image
    (t.RLE_LOSSLESS, t.J2K_LOSSLESS, None, False),
    (t.EXPLICIT_LE, t.JPEG_BASELINE, None, True),  # a lossy target
    (t.EXPLICIT_LE, t.J2K, None, True),
    (t.JPEG_BASELINE, t.JPEG_BASELINE, None, False),  # as stored: no conversion at all
])
def test_lossy_re_encoding_is_refused(own, target, flag, refused):
    why = t.refusal(own, target, flag)
    assert (why is not None) == refused
    if refused:
        assert "lossless" in why or "clinical record" in why


LOSSLESS = ["MR_small_RLE.dcm", "SC_rgb_rle.dcm", "SC_rgb_rle_2frame.dcm", "MR_small_jpeg_ls_lossless.dcm",
            "SC_rgb_jpeg_gdcm.dcm", "MR_small_jp2klossless.dcm", "examples_jpeg2k.dcm", "image_dfl.dcm", "CT_small.dcm"]


def _pixels(path) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return dcmread(path).pixel_array


TARGETS = [t.EXPLICIT_LE, t.IMPLICIT_LE, t.RLE_LOSSLESS, t.JPEG_LS_LOSSLESS, t.J2K_LOSSLESS]
PAIRS = [(n, ts) for n in LOSSLESS for ts in TARGETS
         if str(dcmread(get_testdata_file(n), stop_before_pixels=True).file_meta.TransferSyntaxUID) != ts]


@pytest.mark.parametrize("name, target", PAIRS)
def test_lossless_sources_convert_with_the_same_uid_and_pixels(tmp_path, name, target):
    src = Path(get_testdata_file(name))
    before = dcmread(src, stop_before_pixels=True)
    out = t.convert(src, target, tmp_path)
    after = dcmread(out)
    assert str(after.file_meta.TransferSyntaxUID) == target
    assert after.SOPInstanceUID == before.SOPInstanceUID == after.file_meta.MediaStorageSOPInstanceUID
    assert np.array_equal(_pixels(out), _pixels(src))
    # YBR_RCT is a reversible colour transform inside the JPEG 2000 codestream: decoded, it is RGB.
    assert after.PhotometricInterpretation == ("RGB" if before.PhotometricInterpretation == "YBR_RCT"
                                               else before.PhotometricInterpretation)
    assert "LossyImageCompression" not in after or after.LossyImageCompression == before.get("LossyImageCompression")


LOSSY = ["SC_rgb_jpeg_dcmtk.dcm", "SC_rgb_dcmtk_+eb+cy+np.dcm", "SC_rgb_dcmtk_+eb+cy+s2.dcm", "JPGExtended.dcm",
         "JPEG2000.dcm", "JPEGLSNearLossless_16.dcm", "SC_rgb_jls_lossy_line.dcm"]


@pytest.mark.parametrize("name", LOSSY)
def test_lossy_sources_decode_to_uncompressed_keeping_uid_flag_and_a_true_photometric_interpretation(tmp_path, name):
    src = Path(get_testdata_file(name))
    before = dcmread(src, stop_before_pixels=True)
    out = t.convert(src, t.EXPLICIT_LE, tmp_path)
    after = dcmread(out)
    assert after.SOPInstanceUID == before.SOPInstanceUID
    assert after.LossyImageCompression == "01"  # PS3.3 C.7.6.1.1.5
    # Native YBR_FULL_422 would mean subsampled chroma; the decoded samples are full resolution.
    assert after.PhotometricInterpretation == {"YBR_FULL_422": "YBR_FULL"}.get(before.PhotometricInterpretation,
                                                                               before.PhotometricInterpretation)
    frames, spp = int(after.get("NumberOfFrames", 1) or 1), after.SamplesPerPixel
    assert len(after.PixelData) >= frames * after.Rows * after.Columns * spp * (after.BitsAllocated // 8)
    if str(before.file_meta.TransferSyntaxUID) in (t.JPEG_BASELINE, t.JPEG_EXTENDED):
        # dcmtk's decoder as an independent reference ("+cn": no colour conversion).
        ref = tmp_path / "dcmdjpeg.dcm"
        subprocess.run([shutil.which("dcmdjpeg"), "+cn", str(src), str(ref)], check=True, capture_output=True)
        theirs = dcmread(ref)
        assert theirs.PhotometricInterpretation == after.PhotometricInterpretation
        assert np.array_equal(_pixels(out), _pixels(ref))


@pytest.mark.parametrize("name, target", [("SC_rgb_jpeg_dcmtk.dcm", t.J2K_LOSSLESS), ("JPEG2000.dcm", t.RLE_LOSSLESS),
                                          ("JPEGLSNearLossless_16.dcm", t.JPEG_LS_LOSSLESS),
                                          ("CT_small.dcm", t.JPEG_BASELINE)])
def test_lossy_re_encoding_of_a_file_is_refused_and_nothing_written(tmp_path, name, target):
    with pytest.raises(t.TranscodeRefused) as e:
        t.convert(Path(get_testdata_file(name)), target, tmp_path / "out")
    assert "clinical record" in e.value.reason
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_a_file_without_pixel_data_is_rewritten_in_a_compressed_target(tmp_path):
    src = Path(get_testdata_file("rtplan.dcm"))
    out = t.convert(src, t.J2K_LOSSLESS, tmp_path)
    after = dcmread(out)
    assert str(after.file_meta.TransferSyntaxUID) == t.J2K_LOSSLESS
    assert after.SOPInstanceUID == dcmread(src).SOPInstanceUID


def test_contexts_are_batched_under_the_association_limit():
    keys = [(f"1.2.3.{i}", tuple(t.proposals(t.RLE_LOSSLESS))) for i in range(100)]  # 2 contexts each
    batches = list(_batches(keys))
    assert [k for b in batches for k in b] == keys
    assert all(len({(k[0], o) for k in b for o in k[1]}) <= MAX_CONTEXTS for b in batches)
    assert len(batches) == 2
    shared = [(CT, tuple(t.proposals(ts))) for ts in (t.RLE_LOSSLESS, t.J2K, t.JPEG_BASELINE, t.EXPLICIT_LE)]
    assert list(_batches(shared)) == [shared]  # one uncompressed CT context serves them all

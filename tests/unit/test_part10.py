"""The agent's raw Part-10 header walker (gateway_agent/part10.py) answers exactly what pydicom
answers, for every file in pydicom's test data and for nested sequences of defined and
undefined length in both VR encodings, and hands pydicom whatever it cannot read itself."""
from __future__ import annotations

from io import BytesIO
from pathlib import Path

import pytest
import pydicom.data
from pydicom import dcmread
from pydicom.filereader import read_dataset
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from gateway_agent.fetch import _read_instance_pydicom, read_instance
from gateway_agent.part10 import HEAD, Unsupported, dataset_offset, identity

# The files pydicom ships (never its optional downloads: nothing is fetched at test time).
FILES = sorted(p for p in (Path(pydicom.data.__file__).parent / "test_files").rglob("*") if p.is_file())


def test_same_identity_as_pydicom_for_every_test_file():
    fast = 0
    for path in FILES:
        assert read_instance(path) == _read_instance_pydicom(path), path.name
        try:
            identity(path.read_bytes()[:HEAD])
            fast += 1
        except Unsupported:
            pass
    assert fast >= len(FILES) // 2  # the raw walker really answers most of them


def _nested(undefined: bool) -> Dataset:
    inner = Dataset()
    inner.CodeValue, inner.CodingSchemeDesignator = "X1", "99LOCAL"
    inner.PurposeOfReferenceCodeSequence = Sequence([Dataset()])
    item = Dataset()
    item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = "1.2.840.10008.5.1.4.1.1.2", "1.2.3.4.5"
    item.ConceptCodeSequence = Sequence([inner])
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.2", "1.2.826.0.1.3680043.8.498.1"
    ds.ReferencedImageSequence = Sequence([item, item])  # (0008,1140): between the SOP and study UIDs
    ds.PatientName = "Doe^Jane"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.2", "1.2.826.0.1.3680043.8.498.3"
    ds.Rows = 1
    for elem in (ds["ReferencedImageSequence"], item["ConceptCodeSequence"], inner["PurposeOfReferenceCodeSequence"]):
        elem.is_undefined_length = undefined
        for it in elem.value:
            it.is_undefined_length_sequence_item = undefined
    return ds


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
@pytest.mark.parametrize("undefined", [True, False])
def test_sequences_before_the_identity_are_skipped(tmp_path, syntax, undefined):
    ds = _nested(undefined)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    path = tmp_path / "f.dcm"
    ds.save_as(path, enforce_file_format=True)
    raw = path.read_bytes()
    if undefined:
        assert b"\xfe\xff\xdd\xe0" in raw  # the file really has a sequence delimitation item
    assert identity(raw)[1] == {0x00080016: ds.SOPClassUID, 0x00080018: ds.SOPInstanceUID,
                                0x0020000D: ds.StudyInstanceUID, 0x0020000E: ds.SeriesInstanceUID}
    assert read_instance(path) == _read_instance_pydicom(path)


def test_what_the_walker_cannot_read_goes_to_pydicom(tmp_path):
    unusual = [p for p in FILES if p.name in ("MR_small_bigendian.dcm", "image_dfl.dcm")]
    assert len(unusual) == 2
    for path in unusual:
        with pytest.raises(Unsupported):
            identity(path.read_bytes()[:HEAD])
        assert read_instance(path) is not None and read_instance(path) == _read_instance_pydicom(path)
    with pytest.raises(Unsupported):
        dataset_offset(b"\0" * 200)  # no DICM
    (tmp_path / "x.dcm").write_bytes(b"not dicom")
    assert read_instance(tmp_path / "x.dcm") is None


def test_dataset_offset_is_where_pydicom_reads_the_data_set():
    checked = 0
    for path in FILES:
        raw = path.read_bytes()
        try:
            offset = dataset_offset(raw[:HEAD])
            syntax = identity(raw[:HEAD])[0]
        except Unsupported:
            continue
        rest = read_dataset(BytesIO(raw[offset:]), is_implicit_VR=syntax == ImplicitVRLittleEndian,
                            is_little_endian=True, stop_when=lambda tag, vr, length: tag > 0x00080018)
        assert rest.SOPInstanceUID == dcmread(path, stop_before_pixels=True).SOPInstanceUID, path.name
        checked += 1
    assert checked >= 40

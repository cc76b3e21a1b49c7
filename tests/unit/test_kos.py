"""IOCM rejection note (Key Object Selection Document, PS3.3 A.35.4 / TID 2010): digest Part A.

Every generated file is checked by two independent validators, dciodvfy (Debian dicom3tools) and
dsrdump (dcmtk). They are required: CI installs them, so a missing tool fails the test.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian

from shared.iocm import (
    InstanceRef,
    PatientInfo,
    RejectionNoteError,
    RejectionReason,
    StudyInfo,
    build_rejection_note,
    content_value_type,
    to_part10_bytes,
)

REPO = Path(__file__).resolve().parents[2]
KOS = "1.2.840.10008.5.1.4.1.1.88.59"
CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
SR = "1.2.840.10008.5.1.4.1.1.88.33"  # Comprehensive SR
ECG = "1.2.840.10008.5.1.4.1.1.9.1.1"  # 12-lead ECG waveform
PR = "1.2.840.10008.5.1.4.1.1.11.1"  # Grayscale softcopy presentation state
NOW = datetime(2024, 5, 6, 7, 8, 9)
STUDY_UID = "1.2.826.0.1.3680043.10.1.1"
NOTE_SOP_UID = "1.2.826.0.1.3680043.10.9.1"
NOTE_SERIES_UID = "1.2.826.0.1.3680043.10.9.2"

PATIENT = PatientInfo(patient_id="MRN-0042", name="Doe^Jane", issuer="HOSP", issuer_oid="1.2.3.4.5",
                      birth_date="19700101", sex="F")
STUDY = StudyInfo(study_instance_uid=STUDY_UID, accession_number="ACC-1", study_date="20240505",
                  study_time="101112", study_id="S1", referring_physician_name="Ref^Doc")


def refs(series: int, sop_class: str, count: int) -> list[InstanceRef]:
    series_uid = f"{STUDY_UID}.{series}"
    return [InstanceRef(series_uid, sop_class, f"{series_uid}.{i}") for i in range(1, count + 1)]


def build(instances, patient=PATIENT, study=STUDY, reason=RejectionReason.QUALITY, **kw):
    kw.setdefault("now", NOW)
    kw.setdefault("sop_instance_uid", NOTE_SOP_UID)
    kw.setdefault("series_instance_uid", NOTE_SERIES_UID)
    return build_rejection_note(patient, study, instances, reason, **kw)


# --- Validation with dciodvfy and dsrdump -------------------------------------------------------


def tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: apt-get install -y --no-install-recommends {package}", pytrace=False)
    return path


def dciodvfy(path: Path) -> str:
    """Runs ``dciodvfy -new``; fails on any "Error" line, prints the warnings. It reports on stderr."""
    run = subprocess.run([tool("dciodvfy", "dicom3tools"), "-new", str(path)], capture_output=True,
                         text=True, errors="replace", timeout=120)
    out = run.stdout + run.stderr
    errors = [line for line in out.splitlines() if line.startswith("Error")]
    warnings = [line for line in out.splitlines() if line.startswith("Warning")]
    for line in warnings:
        print(f"dciodvfy: {line}")
    assert not errors, "dciodvfy found errors:\n" + "\n".join(errors)
    assert "KeyObjectSelectionDocument" in out, out
    return out


def dsrdump(path: Path) -> str:
    """Runs ``dsrdump`` with referenced SOP class and instance UIDs; it must exit 0 without errors."""
    run = subprocess.run([tool("dsrdump", "dcmtk"), "+Psu", "+Pu", "+Pt", str(path)], capture_output=True,
                         text=True, errors="replace", timeout=120)
    for line in run.stderr.splitlines():
        if line.startswith("W:"):
            print(f"dsrdump: {line}")
    errors = [line for line in run.stderr.splitlines() if line[:2] in ("E:", "F:")]
    assert run.returncode == 0 and not errors, f"dsrdump exit {run.returncode}:\n{run.stderr}"
    return run.stdout


@dataclass
class Case:
    instances: list[InstanceRef]
    reason: RejectionReason = RejectionReason.QUALITY
    patient: PatientInfo = PATIENT
    study: StudyInfo = STUDY
    kw: dict = field(default_factory=dict)


MIXED = refs(1, CT, 3) + refs(2, SR, 1) + refs(3, ECG, 1) + refs(4, PR, 2) + refs(5, MR, 2)
# One class from each family, all known to dcmtk 3.6.7: checks the IMAGE / WAVEFORM / COMPOSITE table.
FAMILIES = [
    "1.2.840.10008.5.1.4.1.1.1.1",  # DX for presentation
    "1.2.840.10008.5.1.4.1.1.2.1",  # enhanced CT
    "1.2.840.10008.5.1.4.1.1.4.2",  # MR spectroscopy
    "1.2.840.10008.5.1.4.1.1.6.1",  # US
    "1.2.840.10008.5.1.4.1.1.7",  # secondary capture
    "1.2.840.10008.5.1.4.1.1.9.4.1",  # basic voice audio waveform
    "1.2.840.10008.5.1.4.1.1.11.2",  # color softcopy PR
    "1.2.840.10008.5.1.4.1.1.12.1",  # XA
    "1.2.840.10008.5.1.4.1.1.20",  # NM
    "1.2.840.10008.5.1.4.1.1.66",  # raw data
    "1.2.840.10008.5.1.4.1.1.66.1",  # spatial registration
    "1.2.840.10008.5.1.4.1.1.66.4",  # segmentation
    "1.2.840.10008.5.1.4.1.1.77.1.6",  # whole slide microscopy
    "1.2.840.10008.5.1.4.1.1.78.1",  # lensometry measurements
    "1.2.840.10008.5.1.4.1.1.88.11",  # basic text SR
    KOS,
    "1.2.840.10008.5.1.4.1.1.104.1",  # encapsulated PDF
    "1.2.840.10008.5.1.4.1.1.128",  # PET
    "1.2.840.10008.5.1.4.1.1.481.1",  # RT image
    "1.2.840.10008.5.1.4.1.1.481.2",  # RT dose
    "1.2.840.10008.5.1.4.1.1.481.3",  # RT structure set
    "1.2.840.10008.5.1.4.1.1.481.5",  # RT plan
    "1.2.840.10008.5.1.4.34.7",  # RT beams delivery instruction (outside the storage root)
]

CASES = {
    "one-ct": Case(refs(1, CT, 1)),
    "mixed-series": Case(MIXED, RejectionReason.WRONG_WORKLIST, kw={"description": "Wrong MWL entry selected"}),
    "with-description": Case(refs(1, CT, 2), kw={"description": "Motion blur; repeated.\r\nSee tech notes."}),
    "non-ascii": Case(refs(1, CT, 2), RejectionReason.PATIENT_SAFETY,
                      patient=PatientInfo("MRN-0043", "Müller^Jürgen=ミュラー^ユルゲン", sex="M"),
                      study=StudyInfo(STUDY_UID, referring_physician_name="Øre^Åsa"),
                      kw={"description": "Falsche Seitenmarkierung"}),
    "empty-optional-fields": Case(refs(1, CT, 1), RejectionReason.RETENTION_EXPIRED,
                                  patient=PatientInfo("MRN-0044"), study=StudyInfo(STUDY_UID)),
    "all-families": Case([InstanceRef(f"{STUDY_UID}.{i}", c, f"{STUDY_UID}.{i}.1") for i, c in enumerate(FAMILIES, 7)]),
    **{f"reason-{r.code}": Case(refs(1, CT, 2), r) for r in RejectionReason},
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_validators_accept_the_note(name, tmp_path):
    case = CASES[name]
    ds = build(case.instances, case.patient, case.study, case.reason, **case.kw)
    path = tmp_path / f"{name}.dcm"
    path.write_bytes(to_part10_bytes(ds))

    dciodvfy(path)
    dump = dsrdump(path)
    assert case.reason.meaning in dump
    assert "TID 2010 (DCMR)" in dump
    for ref in case.instances:
        vt = content_value_type(ref.sop_class_uid)
        assert f'<contains {vt}:=("{ref.sop_class_uid}","{ref.sop_instance_uid}")>' in dump
    if case.kw.get("description"):
        assert '<contains TEXT:(,,"Key Object Description")=' in dump


def test_dciodvfy_reports_a_broken_note(tmp_path):
    """The check can fail: a content reference whose class differs from the evidence is an Error."""
    ds = build(refs(1, CT, 2))
    ds.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPClassUID = MR
    path = tmp_path / "broken.dcm"
    path.write_bytes(to_part10_bytes(ds))
    with pytest.raises(AssertionError, match="dciodvfy found errors"):
        dciodvfy(path)


# --- Round trip with pydicom --------------------------------------------------------------------


def read(ds, tmp_path: Path):
    path = tmp_path / "note.dcm"
    path.write_bytes(to_part10_bytes(ds))
    return dcmread(path), path.read_bytes()


def test_part10_file_and_meta(tmp_path):
    ds = build(MIXED)
    back, raw = read(ds, tmp_path)
    assert raw[:128] == b"\0" * 128 and raw[128:132] == b"DICM"
    meta = back.file_meta
    assert meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert meta.MediaStorageSOPClassUID == KOS
    assert meta.MediaStorageSOPInstanceUID == NOTE_SOP_UID
    assert meta.FileMetaInformationVersion == b"\x00\x01"
    assert meta.ImplementationClassUID and meta.ImplementationVersionName == "ARCHSYNC_KOS_1"
    assert "FileMetaInformationGroupLength" in meta
    assert not back.original_encoding[0] and back.original_encoding[1]  # explicit VR, little endian


def test_attributes(tmp_path):
    back, _ = read(build(MIXED, description="Wrong MWL", series_number=77, instance_number=3,
                         manufacturer="ACME"), tmp_path)
    # SOP Common, series, equipment, document.
    assert back.SOPClassUID == KOS and back.SOPInstanceUID == NOTE_SOP_UID
    assert "SpecificCharacterSet" not in back  # all text is ASCII
    assert "TimezoneOffsetFromUTC" not in back  # naive `now`
    assert back.Modality == "KO" and back.SeriesInstanceUID == NOTE_SERIES_UID
    assert back.SeriesNumber == 77 and back.InstanceNumber == 3
    assert back.ReferencedPerformedProcedureStepSequence == []
    assert back.Manufacturer == "ACME"
    assert (back.ContentDate, back.ContentTime) == ("20240506", "070809")
    # Patient and study copied from the inputs (digest A4).
    assert (back.PatientID, str(back.PatientName), back.IssuerOfPatientID) == ("MRN-0042", "Doe^Jane", "HOSP")
    (q,) = back.IssuerOfPatientIDQualifiersSequence
    assert (q.UniversalEntityID, q.UniversalEntityIDType) == ("1.2.3.4.5", "ISO")
    assert (back.PatientBirthDate, back.PatientSex) == ("19700101", "F")
    assert back.StudyInstanceUID == STUDY_UID
    assert (back.AccessionNumber, back.StudyDate, back.StudyTime, back.StudyID) == ("ACC-1", "20240505", "101112", "S1")
    assert str(back.ReferringPhysicianName) == "Ref^Doc"
    # SR document content root (digest A2, A3).
    assert back.ValueType == "CONTAINER" and back.ContinuityOfContent == "SEPARATE"
    (title,) = back.ConceptNameCodeSequence
    assert (title.CodeValue, title.CodingSchemeDesignator, title.CodeMeaning) == (
        "113001", "DCM", "Rejected for Quality Reasons")
    assert "CodingSchemeVersion" not in title
    (template,) = back.ContentTemplateSequence
    assert (template.MappingResource, template.TemplateIdentifier) == ("DCMR", "2010")
    for absent in ("CompletionFlag", "VerificationFlag", "ReferencedRequestSequence", "IdenticalDocumentsSequence"):
        assert absent not in back
    text = back.ContentSequence[0]
    assert (text.RelationshipType, text.ValueType, text.TextValue) == ("CONTAINS", "TEXT", "Wrong MWL")
    (name,) = text.ConceptNameCodeSequence
    assert (name.CodeValue, name.CodingSchemeDesignator, name.CodeMeaning) == (
        "113012", "DCM", "Key Object Description")


@pytest.mark.parametrize("reason", list(RejectionReason))
def test_title_code_per_reason(reason, tmp_path):
    back, _ = read(build(refs(1, CT, 1), reason=reason), tmp_path)
    (title,) = back.ConceptNameCodeSequence
    assert (title.CodeValue, title.CodeMeaning) == (reason.code, reason.meaning)


def test_reason_codes():
    assert [(r.code, r.meaning) for r in RejectionReason] == [
        ("113001", "Rejected for Quality Reasons"),
        ("113037", "Rejected for Patient Safety Reasons"),
        ("113038", "Incorrect Modality Worklist Entry"),
        ("113039", "Data Retention Policy Expired"),
    ]


def test_evidence_and_content_reference_exactly_the_given_instances(tmp_path):
    # Input order interleaves series: the evidence is grouped study > series > SOP regardless.
    instances = [MIXED[0], MIXED[4], MIXED[1], MIXED[-1], MIXED[2], MIXED[3], MIXED[5], MIXED[6]]
    back, _ = read(build(instances), tmp_path)
    given = {(r.series_instance_uid, r.sop_class_uid, r.sop_instance_uid) for r in instances}

    (study,) = back.CurrentRequestedProcedureEvidenceSequence
    assert study.StudyInstanceUID == STUDY_UID
    series_uids = [s.SeriesInstanceUID for s in study.ReferencedSeriesSequence]
    assert len(series_uids) == len(set(series_uids)) == len({r.series_instance_uid for r in instances})
    evidence = [(s.SeriesInstanceUID, i.ReferencedSOPClassUID, i.ReferencedSOPInstanceUID)
                for s in study.ReferencedSeriesSequence for i in s.ReferencedSOPSequence]
    assert len(evidence) == len(instances) and set(evidence) == given

    content = []
    for item in back.ContentSequence:
        assert item.RelationshipType == "CONTAINS"
        (ref,) = item.ReferencedSOPSequence  # one class/instance pair per item
        assert item.ValueType == content_value_type(ref.ReferencedSOPClassUID)
        content.append((ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID))
    assert len(content) == len(instances)
    assert set(content) == {(c, i) for _, c, i in given}
    assert [i.ValueType for i in back.ContentSequence].count("WAVEFORM") == 1


def test_empty_optional_fields_are_present_type_2(tmp_path):
    back, _ = read(build(refs(1, CT, 1), patient=PatientInfo("MRN-0044"), study=StudyInfo(STUDY_UID)), tmp_path)
    for keyword in ("PatientName", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                    "ReferringPhysicianName", "StudyID", "AccessionNumber"):
        assert keyword in back and back[keyword].is_empty, keyword
    assert "IssuerOfPatientID" not in back and "IssuerOfPatientIDQualifiersSequence" not in back
    assert all(item.ValueType != "TEXT" for item in back.ContentSequence)


def test_non_ascii_text_sets_utf8(tmp_path):
    patient = PatientInfo("MRN-0043", "Müller^Jürgen=ミュラー^ユルゲン")
    back, raw = read(build(refs(1, CT, 1), patient=patient, description="Seite vertauscht: größer"), tmp_path)
    assert back.SpecificCharacterSet == "ISO_IR 192"
    assert str(back.PatientName) == "Müller^Jürgen=ミュラー^ユルゲン"
    assert back.ContentSequence[0].TextValue == "Seite vertauscht: größer"
    assert "Müller".encode("utf-8") in raw


def test_timezone_offset_for_an_aware_now(tmp_path):
    now = datetime(2024, 5, 6, 23, 30, tzinfo=timezone(timedelta(hours=2)))
    back, _ = read(build(refs(1, CT, 1), now=now), tmp_path)
    assert (back.ContentDate, back.ContentTime, back.TimezoneOffsetFromUTC) == ("20240506", "233000", "+0200")


def test_generated_uids_are_new_and_valid():
    a = build_rejection_note(PATIENT, STUDY, refs(1, CT, 1))
    b = build_rejection_note(PATIENT, STUDY, refs(1, CT, 1))
    uids = {a.SOPInstanceUID, a.SeriesInstanceUID, b.SOPInstanceUID, b.SeriesInstanceUID}
    assert len(uids) == 4
    assert all(u.is_valid for u in (a.SOPInstanceUID, a.SeriesInstanceUID))
    c = build_rejection_note(PATIENT, STUDY, refs(1, CT, 1), uid_prefix="1.2.826.0.1.3680043.10.77.")
    assert c.SOPInstanceUID.startswith("1.2.826.0.1.3680043.10.77.")
    assert c.SeriesInstanceUID.startswith("1.2.826.0.1.3680043.10.77.")
    assert c.ContentDate  # `now` defaults to the current time


def test_deterministic_given_uids_and_now():
    first = to_part10_bytes(build(MIXED, description="x"))
    assert to_part10_bytes(build(list(MIXED), description="x")) == first
    assert to_part10_bytes(build(MIXED, description="x", now=NOW + timedelta(seconds=1))) != first


def test_built_dataset_saves_directly_and_is_not_changed_by_serialisation(tmp_path):
    ds = build(refs(1, CT, 2))
    meta = ds.file_meta
    data = to_part10_bytes(ds)
    assert ds.file_meta is meta
    ds.save_as(tmp_path / "direct.dcm", enforce_file_format=True)
    assert (tmp_path / "direct.dcm").read_bytes() == data


def test_importing_the_package_does_not_import_pydicom():
    code = "import sys, shared, shared.iocm, shared.iocm.kos; assert 'pydicom' not in sys.modules, 'pydicom loaded'"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=60)


@pytest.mark.parametrize("sop_class, expected", [
    (CT, "IMAGE"), (MR, "IMAGE"), ("1.2.840.10008.5.1.4.1.1.1", "IMAGE"), ("1.2.840.10008.5.1.4.1.1.7.4", "IMAGE"),
    ("1.2.840.10008.5.1.4.1.1.66.4", "IMAGE"), ("1.2.840.10008.5.1.4.1.1.481.1", "IMAGE"),
    ("1.2.840.10008.5.1.4.1.1.77.1.6", "IMAGE"),
    (ECG, "WAVEFORM"), ("1.2.840.10008.5.1.4.1.1.9.4.2", "WAVEFORM"), ("1.2.840.10008.5.1.4.1.1.9.8.1", "WAVEFORM"),
    (SR, "COMPOSITE"), (KOS, "COMPOSITE"), (PR, "COMPOSITE"), ("1.2.840.10008.5.1.4.1.1.11.12", "COMPOSITE"),
    ("1.2.840.10008.5.1.4.1.1.9", "COMPOSITE"), ("1.2.840.10008.5.1.4.1.1.9.1", "COMPOSITE"),
    ("1.2.840.10008.5.1.4.1.1.4.2", "COMPOSITE"), ("1.2.840.10008.5.1.4.1.1.66", "COMPOSITE"),
    ("1.2.840.10008.5.1.4.1.1.66.5", "COMPOSITE"), ("1.2.840.10008.5.1.4.1.1.104.1", "COMPOSITE"),
    ("1.2.840.10008.5.1.4.1.1.481.2", "COMPOSITE"), ("1.2.840.10008.5.1.4.1.1.481.5", "COMPOSITE"),
    ("1.2.840.10008.5.1.4.1.1.78.6", "COMPOSITE"), ("1.2.840.10008.5.1.4.38.1", "COMPOSITE"),
    ("1.2.840.113619.4.30", "COMPOSITE"),  # a private class
])
def test_content_value_type(sop_class, expected):
    assert content_value_type(sop_class) == expected


# --- Invalid input ------------------------------------------------------------------------------

SECRET = PatientInfo(patient_id="SECRET-MRN", name="Secret^Name", birth_date="19991231", sex="M")
GOOD = refs(1, CT, 2)


@pytest.mark.parametrize("kwargs, message", [
    ({"instances": []}, "instances must be a non-empty list"),
    ({"instances": "1.2.3"}, "instances must be a non-empty list"),
    ({"instances": [GOOD[0], "x"]}, r"instances\[1\] is not an InstanceRef"),
    ({"instances": [InstanceRef("1.2.03", CT, "1.2.3.4")]}, r"instances\[0\].series_instance_uid is not a valid"),
    ({"instances": [InstanceRef("1.2.3", "CT", "1.2.3.4")]}, r"instances\[0\].sop_class_uid is not a valid"),
    ({"instances": [InstanceRef("1.2.3", CT, "1." + "2" * 70)]}, r"instances\[0\].sop_instance_uid is not a valid"),
    ({"instances": GOOD + [InstanceRef(f"{STUDY_UID}.2", MR, GOOD[0].sop_instance_uid)]},
     r"instances\[2\] repeats the SOP Instance UID of instances\[0\]"),
    ({"study": StudyInfo("not-a-uid")}, "study.study_instance_uid is not a valid"),
    ({"study": StudyInfo(STUDY_UID, accession_number="A" * 17)}, "study.accession_number must be at most 16"),
    ({"study": StudyInfo(STUDY_UID, study_date="2024-01-01")}, "study.study_date must be a date"),
    ({"study": StudyInfo(STUDY_UID, study_time="25")}, "study.study_time must be a time"),
    ({"study": StudyInfo(STUDY_UID, study_id="a\\b")}, "study.study_id must be at most 16"),
    ({"patient": PatientInfo("SECRET-MRN", sex="X")}, "patient.sex must be M, F, O or empty"),
    ({"patient": PatientInfo("SECRET-MRN", birth_date="19990230")}, "patient.birth_date must be a date"),
    ({"patient": PatientInfo("SECRET-MRN", name="A^B^C^D^E^F")}, "patient.name is not a valid"),
    ({"patient": PatientInfo("SECRET-MRN", issuer_oid="HOSP")}, "patient.issuer_oid must be an ISO OID"),
    ({"patient": PatientInfo("SECRET\nMRN")}, "patient.patient_id must be at most 64"),
    ({"reason": "113001"}, "reason must be a RejectionReason"),
    ({"instance_number": 0}, "instance_number must be an integer"),
    ({"series_number": True}, "series_number must be an integer"),
    ({"manufacturer": "M" * 65}, "manufacturer must be at most 64"),
    ({"description": "bad\x00text"}, "description must be text"),
    ({"sop_instance_uid": "1.2.x"}, "sop_instance_uid is not a valid"),
    ({"series_instance_uid": GOOD[0].series_instance_uid}, "series_instance_uid must be new"),
    ({"sop_instance_uid": GOOD[1].sop_instance_uid}, "sop_instance_uid must be new"),
    ({"series_instance_uid": STUDY_UID}, "series_instance_uid must be new"),
    ({"sop_instance_uid": "1.2.3.99", "series_instance_uid": "1.2.3.99"}, "must differ"),
    ({"uid_prefix": "1.2.3"}, "uid_prefix must be a UID root followed by"),
    ({"uid_prefix": "1.02.3."}, "uid_prefix must be a UID root followed by"),
])
def test_invalid_input(kwargs, message):
    args = {"patient": SECRET, "study": STUDY, "instances": GOOD, "reason": RejectionReason.QUALITY, **kwargs}
    with pytest.raises(ValueError, match=message) as err:
        build_rejection_note(args.pop("patient"), args.pop("study"), args.pop("instances"), args.pop("reason"), **args)
    assert isinstance(err.value, RejectionNoteError)
    for secret in ("SECRET", "Secret", "19991231", "19990230"):
        assert secret not in str(err.value)


def test_many_problems_are_summarised():
    bad = [InstanceRef("x", CT, f"1.2.3.{i}") for i in range(50)]
    with pytest.raises(RejectionNoteError) as err:
        build_rejection_note(SECRET, STUDY, bad)
    assert "40 more problems in instances" in str(err.value)
    assert len(str(err.value)) < 1500

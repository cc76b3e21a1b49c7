"""Issue 11 items 2 and 12, the pure parts: study storage prefixes, the date-time format, and
values the rejection-note and ADT builders would refuse. The event mappings must refuse exactly
what the builders refuse, so a bad event is dead-lettered with its reason on its first delivery
instead of failing after reads and writes (the entry-point tests are in tests/integration)."""
from __future__ import annotations

import copy
import dataclasses
from typing import Any

import pytest

from shared import contracts
from shared.domain.errors import MalformedInput
from shared.domain.messages import patient_updated, study_changed
from shared.domain.validation import study_prefix

UID = "1.2.826.0.1.3680043.8.498"
CT = "1.2.840.10008.5.1.4.1.1.2"


# -- study storage prefixes (ARCHITECTURE rule 9) -------------------------------------------------

@pytest.mark.parametrize("uri,folder", [
    ("gs://studies/fg-1/1.2.3/", "gs://studies/fg-1/1.2.3/"),
    ("gs://studies/fg-1/1.2.3", "gs://studies/fg-1/1.2.3/"),  # the folder, never also …/1.2.34/
    ("gs://studies/1.2.3", "gs://studies/1.2.3/"),
])
def test_a_study_uri_names_the_studys_folder(uri, folder):
    assert study_prefix(uri) == folder


@pytest.mark.parametrize("uri", ["gs://studies", "gs://studies/", "gs://studies//", "gs://studies/fg-1//1.2.3/",
                                 "gs://st/1.2.3/", "s3://studies/1.2.3/", "gs://Studies/1.2.3/", "gs://studies/a\nb/"])
def test_a_bucket_alone_or_an_empty_folder_name_is_refused(uri):
    with pytest.raises(ValueError):
        study_prefix(uri)


# -- date-time ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("value,ok", [
    ("2026-02-28T00:00:00Z", True), ("2024-02-29T23:59:59.123456+05:30", True), ("2026-11-01T08:00:00-08:00", True),
    ("2026-02-30T00:00:00Z", False), ("2025-02-29T00:00:00Z", False), ("2026-13-01T00:00:00Z", False),
    ("2026-01-01T24:00:00Z", False), ("2026-01-01T00:60:00Z", False), ("2026-01-01T00:00:60Z", False),
    ("2026-01-01T00:00:00+24:00", False), ("2026-01-01T00:00:00", False), ("2026-01-01", False),
    ("２０２６-01-01T00:00:00Z", False),
])
def test_date_time_format_is_a_real_instant(value, ok):
    assert contracts.is_date_time(value) is ok


def test_every_schema_enforces_the_date_time_format():
    """jsonschema checks "date-time" only with an optional package; without our checker any string
    passed, and 2026-02-30 failed later in a handler."""
    body = {"schema_version": "1", "job_id": "archive-" + "a" * 32, "attempt": 1, "state": "COMPLETED",
            "time": "2026-02-30T00:00:00Z"}
    with pytest.raises(MalformedInput, match=r"^job-result.v1: time: is not a valid date-time$"):
        contracts.validate(contracts.JOB_RESULT, body)
    contracts.validate(contracts.JOB_RESULT, {**body, "time": "2026-02-28T00:00:00Z"})


# -- study-changed: the rejection note's DICOM values -----------------------------------------------

def study_event() -> dict:
    return {"schema_version": "1", "event_type": "study.changed", "event_id": "evt-1",
            "event_time": "2026-11-01T08:00:00Z", "facility_group_id": "fg-1", "facility_id": "fac-a",
            "change": "INSTANCES_DELETED", "exam_id": "exam-1",
            "patient": {"patient_id": "MRN-777", "name": "DOE^JANE", "issuer": "HOSP", "issuer_oid": "1.2.3.4",
                        "birth_date": "19700101", "sex": "F"},
            "study": {"study_instance_uid": f"{UID}.1", "accession_number": "ACC-0001", "study_date": "20261101",
                      "study_time": "080000", "study_id": "S1", "referring_physician_name": "WHO^DR",
                      "storage_uri": "gs://studies/fg-1/study"},
            "instances": [{"series_instance_uid": f"{UID}.10.1", "sop_class_uid": CT, "sop_instance_uid": f"{UID}.20.1"}]}


# (part, key, value): nasty values and valid edge values of every attribute the note copies.
DICOM_VALUES = [
    *(("patient", "birth_date", v) for v in ("20241399", "19990230", "20250229", "20240229", "00000000", "19700100")),
    *(("study", "study_date", v) for v in ("20241399", "20240229", "")),
    *(("patient", "name", v) for v in ("A^B^C^D^E^F", "A^B^C^D^E", "A=B=C=D", "A=B=C", "A" * 65, "A" * 64,
                                      "A\\B", "DOE\nJANE", "D\x7fOE", "Müller^Jürgen", "山田^太郎=ヤマダ^タロウ",
                                      "\ud800", "=^^^^=", "")),
    *(("study", "referring_physician_name", v) for v in ("A^B^C^D^E^F", "A=B=C=D", "\udfff", "X^Y")),
    *(("patient", "issuer_oid", v) for v in ("HOSP", "1.02.3", "1." + "2" * 63, "1." + "2" * 62, "2.25.1", "")),
    *(("patient", "issuer", v) for v in ("A" * 64, "A\\B", "A\tB", "\ud800", "")),
    *(("patient", "patient_id", v) for v in ("A" * 64, "A\\B", "A\x00B", "\ud800")),
    *(("study", "accession_number", v) for v in ("A" * 16, "A\\B", "A\rB")),
    *(("study", "study_id", v) for v in ("A" * 16, "A\\B", "\x1b")),
    *(("study", "study_time", v) for v in ("25", "2400", "235960", "23", "2359", "235959.999999", "235959.1234567", "")),
]


def _mutated(part: str, key: str, value: Any) -> dict:
    e = study_event()
    e[part][key] = value
    return e


def _note_builds(payload: dict) -> bool:
    """Does the service's own note builder (StudyChangeService._note) accept these values?"""
    from shared.services.study_changes import StudyChangeService

    base = study_changed(study_event())
    event = dataclasses.replace(base, patient=dict(payload["patient"]), study=dict(payload["study"]))
    try:
        StudyChangeService.__new__(StudyChangeService)._note(event)
        return True
    except ValueError:
        return False


@pytest.mark.parametrize("part,key,value", DICOM_VALUES)
def test_study_changed_refuses_exactly_what_the_rejection_note_builder_refuses(part, key, value):
    payload = _mutated(part, key, value)
    try:
        contracts.validate(contracts.STUDY_CHANGED, payload)
        study_changed(payload)
        refused = None
    except MalformedInput as e:
        refused = str(e)
    builds = _note_builds(payload)
    assert (refused is None) == builds, refused
    if refused is not None:
        assert f"{part}/{key}:" in refused
        if isinstance(value, str) and len(value) > 3:
            assert value not in refused  # the field, never its value


@pytest.mark.parametrize("part,key,value,rule", [
    ("patient", "birth_date", "20241399", "must be a real date YYYYMMDD"),
    ("patient", "issuer_oid", "HOSP", "fails 'pattern'"),
    ("patient", "name", "A^B^C^D^E^F", "must be a DICOM person name"),
])
def test_the_issue_examples_name_field_and_rule(part, key, value, rule):
    payload = _mutated(part, key, value)
    with pytest.raises(MalformedInput) as e:
        contracts.validate(contracts.STUDY_CHANGED, payload)
        study_changed(payload)
    assert str(e.value).startswith(f"study-changed.v1: {part}/{key}: ") and rule in str(e.value)


def test_study_changed_storage_uris_become_the_study_folders():
    e = study_event()
    assert study_changed(e).study["storage_uri"] == "gs://studies/fg-1/study/"
    e.update(change="STUDY_SPLIT", target={"exam_id": "exam-2", "study_instance_uid": f"{UID}.2",
                                           "storage_uri": "gs://studies/fg-1/study2",
                                           "instances": [{**e["instances"][0], "sop_instance_uid": f"{UID}.21.1"}]})
    assert study_changed(e).target.storage_uri == "gs://studies/fg-1/study2/"


# -- patient-updated: what the ADT builders take -------------------------------------------------------

def patient_event(change: str = "DEMOGRAPHICS") -> dict:
    ident = {"id": "MRN-777", "assigning_authority": "HOSP", "authority_oid": "1.2.3.4", "type_code": "MR"}
    e = {"schema_version": "1", "event_type": "patient.updated", "event_id": "evt-p1",
         "event_time": "2026-11-01T08:00:00Z", "facility_group_id": "fg-1", "facility_id": "fac-a", "change": change,
         "patient": {"identifiers": [ident], "family_name": "DOE", "given_name": "JANE", "middle_name": "Q",
                     "suffix": "JR", "prefix": "DR", "birth_date": "19700101", "sex": "F"},
         "exam_ids": ["exam-1"]}
    if change != "DEMOGRAPHICS":
        e["prior"] = {"identifiers": [{**ident, "id": "MRN-111"}], "family_name": "DOE", "given_name": "J"}
    return e


def _set(path: str, value: Any):
    def mutate(e: dict) -> None:
        *parents, last = path.split("/")
        node: Any = e
        for p in parents:
            node = node[int(p)] if p.isdigit() else node[p]
        node[last] = value
    return mutate


HL7_VALUES = [
    *(_set("patient/birth_date", v) for v in ("20241399", "19990230", "20240229", "")),
    *(_set("patient/identifiers/0/authority_oid", v) for v in ("HOSP", "1.02.3", " 1.2.3 ", "1.2.3\t", "")),
    *(_set("patient/identifiers/0/assigning_authority", v) for v in ("A" * 20, "A" * 21, " " + "A" * 20 + " ",
                                                                     "HO\nSP", "")),
    *(_set("patient/identifiers/0/type_code", v) for v in ("mr", "MR1", "M R", " MR ", "", "ABCDE", "\u0085")),
    *(_set("patient/identifiers/0/id", v) for v in ("  ", "M\rN", "MRN\u2028", "\ud800", " MRN-777 ", "M|N^&~\\")),
    *(_set("patient/family_name", v) for v in ("   ", "DO\nE", "\ud800", "Müller", "D" * 194, "O'NEIL-SMITH")),
    *(_set(f"patient/{k}", v) for k in ("given_name", "middle_name", "suffix", "prefix")
      for v in ("JA\x00NE", " ", "\u2029")),
    _set("patient/identifiers", [{"id": "MRN-777", "type_code": "MR"}, {"id": "MRN-777"}]),
    _set("patient/identifiers", [{"id": "MRN-777"}, {"id": " MRN-777 ", "type_code": "MR "}]),
    _set("patient/identifiers", [{"id": "MRN-777"}, {"id": "MRN-777", "type_code": "PI"}]),
]
A40_VALUES = [
    _set("prior/identifiers/0/assigning_authority", "OTHER"),
    _set("prior/identifiers/0/type_code", "PI"),
    _set("prior/identifiers/0/id", "MRN-777"),
    _set("prior/identifiers/0/id", " MRN-777"),
    _set("prior/identifiers/0/authority_oid", " 1.2.3.4 "),
    _set("prior/identifiers/0/id", "MRN\n111"),
    _set("prior/family_name", "   "),
    _set("prior/family_name", ""),
    _set("prior/given_name", "J\x0bJ"),
    _set("prior/identifiers", [{"id": "MRN-111", "assigning_authority": "HOSP", "authority_oid": "1.2.3.4"}] * 2),
]


def _adt_builds(payload: dict) -> bool:
    """Does the service's own ADT build (patient_updates.adt_message) accept the payload, and can
    the gateway frame the message (MLLP, UTF-8: gateway_agent/mllp.py)? hl7apy takes a lone
    surrogate, which only fails at the gateway."""
    from shared.hl7.adt import Endpoint
    from shared.services.patient_updates import adt_message

    try:
        _, message = adt_message(payload, Endpoint(receiving_application="ARCHIVE", receiving_facility="VNA"), "CTRL-1")
        message.encode("utf-8")
        return True
    except (ValueError, UnicodeEncodeError):
        return False


@pytest.mark.parametrize("change,mutate", [("DEMOGRAPHICS", m) for m in HL7_VALUES]
                         + [("MERGE", m) for m in HL7_VALUES + A40_VALUES]
                         + [("IDENTIFIER_CHANGE", m) for m in A40_VALUES])
def test_patient_updated_refuses_exactly_what_the_adt_builder_refuses(change, mutate):
    payload = patient_event(change)
    mutate(payload)
    try:
        contracts.validate(contracts.PATIENT_UPDATED, payload)
    except MalformedInput:
        return  # refused by the schema, before anything else
    try:
        patient_updated(copy.deepcopy(payload))
        refused = None
    except MalformedInput as e:
        refused = str(e)
    assert (refused is None) == _adt_builds(payload), refused
    assert refused is None or refused.startswith("patient-updated.v1: ")


def test_patient_updated_examples_name_field_and_rule():
    e = patient_event()
    e["patient"]["birth_date"] = "20241399"
    with pytest.raises(MalformedInput, match=r"^patient-updated.v1: patient/birth_date: must be a real date"):
        patient_updated(e)
    e = patient_event()
    e["patient"]["identifiers"][0]["authority_oid"] = "HOSP"
    with pytest.raises(MalformedInput, match=r"^patient-updated.v1: patient/identifiers/0/authority_oid: fails"):
        contracts.validate(contracts.PATIENT_UPDATED, e)
    e = patient_event()
    e["event_time"] = "2026-02-30T00:00:00Z"
    with pytest.raises(MalformedInput, match=r"^patient-updated.v1: event_time: is not a valid date-time$"):
        contracts.validate(contracts.PATIENT_UPDATED, e)

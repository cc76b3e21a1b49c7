"""HL7 v2.5.1 ADT A08/A40 builders, ACK parsing and MLLP framing (shared/hl7/adt.py).

Every built message is read back by two independent parsers: python-hl7 (``hl7.parse``), checked
field by field, and hl7apy's ``parse_message`` with STRICT validation. No emulators needed.
"""
from __future__ import annotations

import subprocess
import sys
import textwrap
from dataclasses import FrozenInstanceError, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import hl7
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message

from shared.hl7 import (
    Ack,
    Endpoint,
    PatientDemographics,
    PatientIdentifier,
    build_a08,
    build_a40,
    parse_ack,
    to_mllp,
)

REPO = Path(__file__).resolve().parents[2]
NOW = datetime(2024, 5, 6, 7, 8, 9, tzinfo=timezone(timedelta(hours=2)))
NOW_TS = "20240506070809+0200"
HOSP = PatientIdentifier("123456", "HOSP", "1.2.840.99999.1")
NATIONAL = PatientIdentifier("987-65", "NATION", "", "PI")
ENDPOINT = Endpoint(sending_facility="SITE1", receiving_application="DCM4CHEE", receiving_facility="ARCHIVE")
PATIENT = PatientDemographics(
    identifiers=(HOSP, NATIONAL), family_name="Doe", given_name="John", middle_name="Q",
    suffix="Jr", prefix="Dr", birth_date="19800102", sex="M",
)
SPECIALS = [
    "O'Brien^Smith", "A&B", "Tilde~Name", "Pipe|Name", "Back\\slash", "\\", "A\\T\\B", "|F\\",
    "\\E\\", "x\\S\\y", "^~\\&|", "&&", "trailing\\",
]


def a08(patient: PatientDemographics = PATIENT, endpoint: Endpoint = ENDPOINT, **kw: Any) -> str:
    kw.setdefault("control_id", "CTRL-1")
    kw.setdefault("now", NOW)
    return build_a08(patient, endpoint, **kw)


def a40(surviving: PatientDemographics = PATIENT, prior: Any = None, endpoint: Endpoint = ENDPOINT,
        **kw: Any) -> str:
    kw.setdefault("control_id", "CTRL-2")
    kw.setdefault("now", NOW)
    if prior is None:
        prior = [replace(HOSP, id="111111")]
    return build_a40(surviving, prior, endpoint, **kw)


def strict(er7: str) -> Any:
    """hl7apy re-parse with STRICT validation; the re-encoding must equal the input."""
    msg = parse_message(er7, validation_level=VALIDATION_LEVEL.STRICT, force_validation=True)
    assert msg.to_er7() == er7
    return msg


def segment_ids(er7: str) -> list[str]:
    return [s[:3] for s in er7.split("\r")]


# --- A08 ---------------------------------------------------------------------------------------


def test_a08_fields_read_back_by_python_hl7() -> None:
    er7 = a08()
    assert "\n" not in er7 and not er7.endswith("\r")
    assert segment_ids(er7) == ["MSH", "EVN", "PID", "PV1"]
    m = hl7.parse(er7)
    # MSH (2.14.9)
    assert str(m.segment("MSH")[2]) == "^~\\&"
    assert [m["MSH.F3"], m["MSH.F4"], m["MSH.F5"], m["MSH.F6"]] == ["ARCHSYNC", "SITE1", "DCM4CHEE", "ARCHIVE"]
    assert m["MSH.F7"] == NOW_TS
    assert [m["MSH.F9.R1.C1"], m["MSH.F9.R1.C2"], m["MSH.F9.R1.C3"]] == ["ADT", "A08", "ADT_A01"]
    assert m["MSH.F10"] == "CTRL-1"
    assert m["MSH.F11"] == "P"
    assert m["MSH.F12"] == "2.5.1"
    assert m["MSH.F18"] == ""  # plain ASCII: no character set
    # EVN
    assert m["EVN.F1"] == "A08" and m["EVN.F2"] == NOW_TS
    # PID-3: two repetitions, CX components and HD subcomponents
    pid3 = m.segment("PID")[3]
    assert len(pid3) == 2
    assert m["PID.F3.R1.C1"] == "123456"
    assert [m["PID.F3.R1.C4.S1"], m["PID.F3.R1.C4.S2"], m["PID.F3.R1.C4.S3"]] == ["HOSP", "1.2.840.99999.1", "ISO"]
    assert m["PID.F3.R1.C5"] == "MR"
    assert m["PID.F3.R2.C1"] == "987-65"
    assert m["PID.F3.R2.C4"] == "NATION" and m["PID.F3.R2.C5"] == "PI"
    assert str(pid3) == "123456^^^HOSP&1.2.840.99999.1&ISO^MR~987-65^^^NATION^PI"
    # PID-5 XPN: family^given^middle^suffix^prefix
    assert [m[f"PID.F5.R1.C{i}"] for i in range(1, 6)] == ["Doe", "John", "Q", "Jr", "Dr"]
    assert m["PID.F7"] == "19800102"
    assert m["PID.F8"] == "M"
    assert m["PV1.F2"] == "N"


def test_a08_strict_reparse_by_hl7apy() -> None:
    msg = strict(a08())
    assert msg.name == "ADT_A01"
    assert msg.msh.msh_9.to_er7() == "ADT^A08^ADT_A01"
    assert msg.msh.msh_10.to_er7() == "CTRL-1"
    assert msg.msh.msh_11.to_er7() == "P"
    assert msg.msh.msh_12.to_er7() == "2.5.1"
    assert msg.msh.msh_7.to_er7() == NOW_TS == msg.evn.evn_2.to_er7()
    assert [f.to_er7() for f in msg.pid.pid_3] == ["123456^^^HOSP&1.2.840.99999.1&ISO^MR", "987-65^^^NATION^PI"]
    assert msg.pid.pid_3[0].cx_4.hd_2.to_er7() == "1.2.840.99999.1"
    assert msg.pid.pid_5.to_er7() == "Doe^John^Q^Jr^Dr"
    assert msg.pid.pid_7.to_er7() == "19800102"
    assert msg.pid.pid_8.to_er7() == "M"
    assert msg.pv1.pv1_2.to_er7() == "N"


def test_a08_minimal_patient_omits_empty_parts() -> None:
    patient = PatientDemographics(identifiers=(PatientIdentifier("42", type_code=""),), family_name="Roe")
    er7 = a08(patient, Endpoint())
    pid = er7.split("\r")[2]
    assert pid == "PID|||42||Roe"  # no authority, no type, no birth date, no sex
    assert er7.split("\r")[0].startswith("MSH|^~\\&|ARCHSYNC||||" + NOW_TS + "||ADT^A08^ADT_A01|")
    m = hl7.parse(er7)
    assert m["PID.F3.R1.C1"] == "42" and m["PID.F5.R1.C1"] == "Roe"
    assert m["PID.F7"] == "" and m["PID.F8"] == ""
    strict(er7)


@pytest.mark.parametrize("ident, cx", [
    (PatientIdentifier("1"), "1^^^^MR"),
    (PatientIdentifier("1", "HOSP"), "1^^^HOSP^MR"),
    (PatientIdentifier("1", "", "1.2.3"), "1^^^&1.2.3&ISO^MR"),
    (PatientIdentifier("1", "HOSP", "1.2.3", "PI"), "1^^^HOSP&1.2.3&ISO^PI"),
    (PatientIdentifier("1", "HOSP", type_code=""), "1^^^HOSP"),
])
def test_cx_encoding(ident: PatientIdentifier, cx: str) -> None:
    er7 = a08(PatientDemographics((ident,), "Doe"))
    assert str(hl7.parse(er7).segment("PID")[3]) == cx
    assert strict(er7).pid.pid_3.to_er7() == cx


@pytest.mark.parametrize("sex", ["M", "F", "O", "U", "A", "N"])
def test_every_table_0001_sex_is_accepted(sex: str) -> None:
    er7 = a08(replace(PATIENT, sex=sex))
    assert hl7.parse(er7)["PID.F8"] == sex
    strict(er7)


def test_processing_id_and_naive_now() -> None:
    er7 = a08(endpoint=Endpoint(processing_id="T"), now=datetime(2024, 1, 2, 3, 4, 5, 999999))
    m = hl7.parse(er7)
    assert m["MSH.F11"] == "T"
    assert m["MSH.F7"] == "20240102030405" == m["EVN.F2"]  # no offset for naive, whole seconds
    strict(er7)


# --- A40 ---------------------------------------------------------------------------------------


def test_a40_fields_read_back_by_python_hl7() -> None:
    prior_name = PatientDemographics((HOSP,), family_name="Smith", given_name="Jane")
    er7 = a40(prior=[replace(HOSP, id="111111"), replace(NATIONAL, id="555")], prior_name=prior_name)
    assert segment_ids(er7) == ["MSH", "EVN", "PID", "MRG"]  # PATIENT group: PID then MRG, no PV1
    m = hl7.parse(er7)
    assert [m["MSH.F9.R1.C1"], m["MSH.F9.R1.C2"], m["MSH.F9.R1.C3"]] == ["ADT", "A40", "ADT_A39"]
    assert m["MSH.F10"] == "CTRL-2" and m["MSH.F11"] == "P" and m["MSH.F12"] == "2.5.1"
    assert m["EVN.F1"] == "A40" and m["EVN.F2"] == NOW_TS == m["MSH.F7"]
    assert str(m.segment("PID")[3]) == "123456^^^HOSP&1.2.840.99999.1&ISO^MR~987-65^^^NATION^PI"
    assert [m[f"PID.F5.R1.C{i}"] for i in range(1, 6)] == ["Doe", "John", "Q", "Jr", "Dr"]
    assert m["PID.F7"] == "19800102" and m["PID.F8"] == "M"
    mrg1 = m.segment("MRG")[1]
    assert len(mrg1) == 2
    assert m["MRG.F1.R1.C1"] == "111111"
    assert [m["MRG.F1.R1.C4.S1"], m["MRG.F1.R1.C4.S2"], m["MRG.F1.R1.C4.S3"]] == ["HOSP", "1.2.840.99999.1", "ISO"]
    assert m["MRG.F1.R1.C5"] == "MR"
    assert m["MRG.F1.R2.C1"] == "555" and m["MRG.F1.R2.C4"] == "NATION" and m["MRG.F1.R2.C5"] == "PI"
    assert m["MRG.F7.R1.C1"] == "Smith" and m["MRG.F7.R1.C2"] == "Jane"


def test_a40_strict_reparse_by_hl7apy() -> None:
    er7 = a40(prior_name=PatientDemographics((HOSP,), "Smith"))
    msg = strict(er7)
    assert msg.name == "ADT_A39"
    assert [c.name for c in msg.children] == ["MSH", "EVN", "ADT_A39_PATIENT"]
    group = msg.adt_a39_patient
    assert msg.msh.msh_9.to_er7() == "ADT^A40^ADT_A39"
    assert msg.msh.msh_12.to_er7() == "2.5.1"
    assert group.pid.pid_3[0].cx_1.to_er7() == "123456"
    assert group.mrg.mrg_1.to_er7() == "111111^^^HOSP&1.2.840.99999.1&ISO^MR"
    assert group.mrg.mrg_7.to_er7() == "Smith"


def test_a40_without_prior_name_has_only_mrg_1() -> None:
    er7 = a40()
    assert er7.split("\r")[3] == "MRG|111111^^^HOSP&1.2.840.99999.1&ISO^MR"
    strict(er7)


def test_a40_accepts_a_tuple_of_prior_identifiers() -> None:
    assert a40(prior=(replace(HOSP, id="111111"),)) == a40(prior=[replace(HOSP, id="111111")])


# --- Escaping and character sets ------------------------------------------------------------------


@pytest.mark.parametrize("text", SPECIALS)
def test_special_characters_survive_in_every_name_component(text: str) -> None:
    patient = replace(PATIENT, family_name=text, given_name=text, middle_name=text, suffix=text, prefix=text)
    er7 = a08(patient)
    pid = er7.split("\r")[2]
    assert pid.count("|") == 8 and pid.count("~") == 1  # PID-1..8 only; PID-3 has two repeats
    m = hl7.parse(er7)
    assert [m[f"PID.F5.R1.C{i}"] for i in range(1, 6)] == [text] * 5
    assert m["PV1.F2"] == "N"
    msg = strict(er7)
    assert m.unescape(msg.pid.pid_5.xpn_1.fn_1.to_er7()) == text
    assert m.unescape(msg.pid.pid_5.xpn_5.to_er7()) == text


@pytest.mark.parametrize("text", SPECIALS)
def test_special_characters_survive_in_identifiers_and_mrg(text: str) -> None:
    surviving = PatientDemographics((PatientIdentifier(text, text),), family_name="Doe")
    prior = [PatientIdentifier(text + "-old", text)]
    er7 = a40(surviving, prior, prior_name=PatientDemographics((HOSP,), text, text))
    m = hl7.parse(er7)
    assert m["PID.F3.R1.C1"] == text and m["PID.F3.R1.C4.S1"] == text and m["PID.F3.R1.C5"] == "MR"
    assert m["MRG.F1.R1.C1"] == text + "-old" and m["MRG.F1.R1.C4.S1"] == text
    assert m["MRG.F7.R1.C1"] == text and m["MRG.F7.R1.C2"] == text
    msg = strict(er7)
    assert m.unescape(msg.adt_a39_patient.mrg.mrg_1.cx_4.hd_1.to_er7()) == text


# Text without control characters (C0, DEL, C1: rejected by design), rich in delimiters and backslashes.
_CHARS = st.one_of(st.sampled_from("|^~\\&EFSTRXHN.br0A "),
                   st.characters(min_codepoint=0x20, max_codepoint=0x2FF,
                                 exclude_categories=["Cc"]))  # controls are rejected, tested below
_TEXT = st.text(alphabet=_CHARS, min_size=1, max_size=40).filter(lambda t: t.strip() != "")
# HD.1 is at most 20 characters, and hl7apy counts a backslash as its 3-character escape.
_NAMESPACE = st.text(alphabet=_CHARS, min_size=1, max_size=6).filter(lambda t: t.strip() != "")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(family=_TEXT, given_name=_TEXT, ident=_TEXT, authority=_NAMESPACE)
def test_any_text_round_trips_through_both_parsers(family: str, given_name: str, ident: str, authority: str) -> None:
    patient = PatientDemographics((PatientIdentifier(ident, authority),), family, given_name)
    prior = [PatientIdentifier(ident + "x", authority)]
    for er7 in (a08(patient), a40(patient, prior, prior_name=patient)):
        m = hl7.parse(er7)
        # Surrounding whitespace is not significant (ST) and is removed.
        assert m["PID.F3.R1.C1"] == ident.strip() and m["PID.F3.R1.C4.S1"] == authority.strip()
        assert m["PID.F5.R1.C1"] == family.strip() and m["PID.F5.R1.C2"] == given_name.strip()
        if segment_ids(er7)[-1] == "MRG":
            assert m["MRG.F1.R1.C1"] == (ident + "x").strip() and m["MRG.F7.R1.C1"] == family.strip()
        expected_charset = "" if "".join(x.strip() for x in (family, given_name, ident, authority)).isascii() \
            else "UNICODE UTF-8"
        assert m["MSH.F18"] == expected_charset
        strict(er7)


def test_surrounding_whitespace_is_removed() -> None:
    """DICOM pads values to even length with a space; ST trailing blanks are not significant."""
    patient = PatientDemographics((PatientIdentifier(" 42 ", " HOSP ", " 1.2.3 ", " PI "),), "Doe ", " John",
                                  middle_name="  ", birth_date=" 19800102", sex="F ")
    er7 = a08(patient, Endpoint(sending_application=" ARCHSYNC "))
    assert er7.split("\r")[2] == "PID|||42^^^HOSP&1.2.3&ISO^PI||Doe^John||19800102|F"
    assert er7.startswith("MSH|^~\\&|ARCHSYNC|")
    strict(er7)
    # A prior id equal to the surviving one once padding is removed is still ERR 205.
    with pytest.raises(ValueError, match=r"^MRG-1\[1\]: must differ"):
        a40(patient, [PatientIdentifier("42  ", "HOSP", "1.2.3", "PI")])


def test_endpoint_values_are_escaped() -> None:
    er7 = a08(endpoint=Endpoint(sending_application="A&B", receiving_facility="F^G"))
    m = hl7.parse(er7)
    assert m["MSH.F3"] == "A&B" and m["MSH.F6"] == "F^G"
    assert m["MSH.F9.R1.C2"] == "A08"
    strict(er7)


def test_non_ascii_names_set_msh_18_utf8() -> None:
    patient = replace(PATIENT, family_name="Müller-Łukasiewicz", given_name="Zoë", middle_name="山田")
    er7 = a08(patient)
    m = hl7.parse(er7)
    assert m["MSH.F18"] == "UNICODE UTF-8"
    assert [m["PID.F5.R1.C1"], m["PID.F5.R1.C2"], m["PID.F5.R1.C3"]] == ["Müller-Łukasiewicz", "Zoë", "山田"]
    msg = strict(er7)
    assert msg.msh.msh_18.to_er7() == "UNICODE UTF-8"
    framed = to_mllp(er7)
    assert "Zoë".encode("utf-8") in framed and "山田".encode("utf-8") in framed


def test_non_ascii_anywhere_in_a40_sets_msh_18() -> None:
    assert hl7.parse(a40())["MSH.F18"] == ""
    er7 = a40(prior_name=PatientDemographics((HOSP,), "Ångström"))
    assert hl7.parse(er7)["MSH.F18"] == "UNICODE UTF-8"
    assert hl7.parse(er7)["MRG.F7.R1.C1"] == "Ångström"
    strict(er7)
    assert hl7.parse(a40(prior=[PatientIdentifier("é1", "HOSP", "1.2.840.99999.1")]))["MSH.F18"] == "UNICODE UTF-8"


# --- Determinism and purity ----------------------------------------------------------------------


def test_output_is_deterministic_given_control_id_and_now() -> None:
    assert a08() == a08() == build_a08(PATIENT, ENDPOINT, control_id="CTRL-1", now=NOW)
    assert a40() == a40()
    later = NOW + timedelta(seconds=1)
    assert a08(now=later) != a08() and hl7.parse(a08(now=later))["MSH.F7"] == "20240506070810+0200"
    assert hl7.parse(a08(control_id="X9"))["MSH.F10"] == "X9"
    utc = hl7.parse(a08(now=datetime(2024, 5, 6, 5, 8, 9, tzinfo=timezone.utc)))
    assert utc["MSH.F7"] == "20240506050809+0000"


def test_inputs_are_frozen() -> None:
    with pytest.raises(FrozenInstanceError):
        PATIENT.family_name = "X"  # type: ignore[misc]
    with pytest.raises(FrozenInstanceError):
        HOSP.id = "X"  # type: ignore[misc]


def test_importing_the_package_does_not_load_hl7apy() -> None:
    probe = textwrap.dedent("""
        import sys
        sys.path.insert(0, sys.argv[1])
        before = set(sys.modules)
        import shared.hl7
        from shared.hl7 import parse_ack, to_mllp
        parse_ack("MSH|^~\\\\&|A||B||20240101||ACK^A08^ACK|1|P|2.5.1\\rMSA|AA|1")
        to_mllp("MSH|^~\\\\&|A")
        assert "hl7apy" not in sys.modules, "hl7apy imported"
        assert not any(m.startswith("google") for m in set(sys.modules) - before)
    """)
    out = subprocess.run([sys.executable, "-c", probe, str(REPO)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr


# --- Validation errors ---------------------------------------------------------------------------


SECRET = "Zyxwvutsrq"  # stands for patient data: must never appear in an error


@pytest.mark.parametrize("patient, field", [
    (replace(PATIENT, identifiers=()), "PID-3"),
    (replace(PATIENT, identifiers=(PatientIdentifier(""),)), "PID-3[1].1"),
    (replace(PATIENT, identifiers=(PatientIdentifier("   "),)), "PID-3[1].1"),
    (replace(PATIENT, identifiers=(HOSP, HOSP)), "PID-3"),
    (replace(PATIENT, identifiers=(PatientIdentifier("1", authority_oid="1.2.x"),)), "PID-3[1].4.2"),
    (replace(PATIENT, identifiers=(PatientIdentifier("1", authority_oid="1.02.3"),)), "PID-3[1].4.2"),
    (replace(PATIENT, identifiers=(PatientIdentifier("1", type_code="M^R"),)), "PID-3[1].5"),
    (replace(PATIENT, identifiers=(PatientIdentifier("1", "H" * 21),)), "PID-3[1].4.1"),
    (replace(PATIENT, identifiers=(PatientIdentifier(SECRET + "\r"),)), "PID-3[1].1"),
    (replace(PATIENT, identifiers=("123",)), "PID-3[1]"),  # type: ignore[arg-type]
    (replace(PATIENT, identifiers="123"), "PID-3"),  # type: ignore[arg-type]
    (replace(PATIENT, family_name=""), "PID-5.1"),
    (replace(PATIENT, family_name="   "), "PID-5.1"),
    (replace(PATIENT, family_name=SECRET + "\rPID|x"), "PID-5.1"),
    (replace(PATIENT, given_name=SECRET + "\n"), "PID-5.2"),
    (replace(PATIENT, middle_name=SECRET + "\x85"), "PID-5.3"),  # NEL: hl7apy splits segments there
    (replace(PATIENT, suffix=SECRET + "\u2028"), "PID-5.4"),
    (replace(PATIENT, prefix=None), "PID-5.5"),  # type: ignore[arg-type]
    (replace(PATIENT, sex="X"), "PID-8"),
    (replace(PATIENT, sex="m"), "PID-8"),
    (replace(PATIENT, sex="MALE"), "PID-8"),
    (replace(PATIENT, birth_date="1980-01-02"), "PID-7"),
    (replace(PATIENT, birth_date="1980010"), "PID-7"),
    (replace(PATIENT, birth_date="198001021200"), "PID-7"),
    (replace(PATIENT, birth_date="19801302"), "PID-7"),
    (replace(PATIENT, birth_date="19790229"), "PID-7"),
])
def test_invalid_patient_raises_value_error_naming_the_field(patient: PatientDemographics, field: str) -> None:
    with pytest.raises(ValueError) as exc:
        a08(patient)
    assert str(exc.value).startswith(field + ":")
    assert SECRET not in str(exc.value)
    with pytest.raises(ValueError):
        a40(patient)


def test_value_too_long_for_hl7apy_is_reported_without_the_value() -> None:
    with pytest.raises(ValueError) as exc:
        a08(replace(PATIENT, family_name=SECRET * 100))
    assert str(exc.value).startswith("PID-5.1:") and SECRET not in str(exc.value)
    assert exc.value.__cause__ is None and exc.value.__suppress_context__


@pytest.mark.parametrize("kw, field", [
    ({"control_id": ""}, "MSH-10"),
    ({"control_id": "x" * 21}, "MSH-10"),
    ({"control_id": "a|b"}, "MSH-10"),
    ({"control_id": "a^b"}, "MSH-10"),
    ({"control_id": "a b"}, "MSH-10"),
    ({"control_id": 12}, "MSH-10"),
    ({"now": "20240101"}, "MSH-7"),
    ({"now": datetime(2024, 1, 1, tzinfo=timezone(timedelta(seconds=30)))}, "MSH-7"),
    ({"endpoint": Endpoint(processing_id="X")}, "MSH-11"),
    ({"endpoint": Endpoint(processing_id="")}, "MSH-11"),
    ({"endpoint": Endpoint(sending_application="A\rB")}, "MSH-3"),
    ({"endpoint": Endpoint(receiving_facility="F\x00")}, "MSH-6"),
    ({"endpoint": Endpoint(receiving_application="R" * 21)}, "MSH-5"),
    ({"endpoint": Endpoint(sending_facility="S" * 21)}, "MSH-4"),
])
def test_invalid_header_raises_value_error(kw: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=f"^{field}:"):
        a08(**kw)
    with pytest.raises(ValueError, match=f"^{field}:"):
        a40(**kw)


@pytest.mark.parametrize("prior, field", [
    ([], "MRG-1"),
    ("111111", "MRG-1"),  # a string, not a sequence of identifiers
    ([HOSP], "MRG-1[1]"),  # equals the surviving id: dcm4chee ERR 205
    ([replace(HOSP, id="1"), HOSP], "MRG-1[2]"),
    ([replace(HOSP, id="1"), replace(HOSP, id="1")], "MRG-1"),  # repeated
    ([replace(HOSP, id="1", assigning_authority="OTHER")], "MRG-1[1]"),  # other namespace
    ([replace(HOSP, id="1", authority_oid="1.2.3")], "MRG-1[1]"),  # other OID
    ([replace(HOSP, id="1", authority_oid="")], "MRG-1[1]"),  # OID missing
    ([replace(HOSP, id="1", type_code="PI")], "MRG-1[1]"),  # other identifier type
    ([replace(NATIONAL, id="1", type_code="MR")], "MRG-1[1]"),
    ([PatientIdentifier("1")], "MRG-1[1]"),  # no authority at all
    ([replace(HOSP, id="")], "MRG-1[1].1"),
    ([replace(HOSP, id=SECRET + "\r")], "MRG-1[1].1"),
])
def test_invalid_a40_prior_identifiers(prior: Any, field: str) -> None:
    with pytest.raises(ValueError) as exc:
        build_a40(PATIENT, prior, ENDPOINT, control_id="C", now=NOW)
    assert str(exc.value).startswith(field + ":")
    assert SECRET not in str(exc.value) and HOSP.id not in str(exc.value)


def test_a40_prior_may_match_any_surviving_domain() -> None:
    er7 = a40(prior=[replace(NATIONAL, id="0001")])
    assert str(hl7.parse(er7).segment("MRG")[1]) == "0001^^^NATION^PI"


def test_a40_same_id_in_another_domain_is_allowed() -> None:
    surviving = PatientDemographics((HOSP, replace(NATIONAL, id=HOSP.id)), "Doe")
    er7 = a40(surviving, [replace(NATIONAL, id="0002")])
    assert hl7.parse(er7)["MRG.F1.R1.C1"] == "0002"


@pytest.mark.parametrize("prior_name", [
    PatientDemographics((HOSP,), ""),
    PatientDemographics((HOSP,), SECRET + "\r"),
    PatientDemographics((HOSP,), "Doe", given_name="\x1c"),
    "Smith",
])
def test_invalid_a40_prior_name(prior_name: Any) -> None:
    with pytest.raises(ValueError, match="^MRG-7") as exc:
        a40(prior_name=prior_name)
    assert SECRET not in str(exc.value)


def test_wrong_argument_types() -> None:
    with pytest.raises(ValueError, match="^PID:"):
        build_a08({"family_name": "Doe"}, ENDPOINT, control_id="C", now=NOW)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="^MSH:"):
        build_a08(PATIENT, None, control_id="C", now=NOW)  # type: ignore[arg-type]


# --- ACK -----------------------------------------------------------------------------------------


ACK_MSH = "MSH|^~\\&|DCM4CHEE|ARCHIVE|ARCHSYNC|SITE1|20240506070810.123||ACK^A08^ACK|A1|P|2.5.1"


def test_parse_ack_aa() -> None:
    ack = parse_ack(ACK_MSH + "\rMSA|AA|CTRL-1")
    assert ack == Ack("AA", "CTRL-1", None)
    assert ack.accepted


def test_parse_ack_ae_with_v25_err() -> None:
    er7 = "\r".join([
        ACK_MSH,
        "MSA|AE|CTRL-2",
        "ERR||PID^1^3^1^1|205^Duplicate key identifier^HL70357|E||||Prior and surviving \\T\\ equal",
    ])
    ack = parse_ack(er7)
    assert ack.code == "AE" and ack.control_id == "CTRL-2" and not ack.accepted
    assert ack.error == "205 Duplicate key identifier at PID-3.1 (E) Prior and surviving & equal"


def test_parse_ack_ae_with_several_err_and_msa_3() -> None:
    er7 = "\r".join([
        ACK_MSH,
        "MSA|AE|C9|Patient not found",
        "ERR||MRG^1^1|101^Required field missing^HL70357|E",
        "ERR|||207^Application internal error^HL70357|W|||boom",
    ])
    ack = parse_ack(er7)
    assert ack.error == ("101 Required field missing at MRG-1 (E); 207 Application internal error (W) boom; "
                         "Patient not found")


def test_parse_ack_v23_err_1() -> None:
    ack = parse_ack(ACK_MSH + "\rMSA|AE|C3\rERR|PID^1^3^204&Unknown key identifier")
    assert ack.error == "204 Unknown key identifier at PID-3"


def test_parse_ack_ar_without_details() -> None:
    ack = parse_ack(ACK_MSH + "\rMSA|AR|C4")
    assert ack == Ack("AR", "C4", None)


@pytest.mark.parametrize("code", ["CA", "CE", "CR"])
def test_parse_ack_enhanced_codes(code: str) -> None:
    assert parse_ack(ACK_MSH + f"\rMSA|{code}|C5").code == code


@pytest.mark.parametrize("sep", ["\r", "\n", "\r\n"])
def test_parse_ack_tolerates_line_endings_and_framing(sep: str) -> None:
    text = sep.join([ACK_MSH, "MSA|AE|C6", "ERR||PID^1^5|101^Required field missing^HL70357|E"]) + sep
    for raw in (text, to_mllp(text).decode("utf-8"), to_mllp(text)):
        ack = parse_ack(raw)  # type: ignore[arg-type]
        assert ack == Ack("AE", "C6", "101 Required field missing at PID-5 (E)")


def test_parse_ack_custom_delimiters_and_escapes() -> None:
    er7 = "MSH#$%!*#A##B##20240101##ACK$A08$ACK#1#P#2.5.1\rMSA#AE#C!S!7\rERR###103$Table value not found#E"
    ack = parse_ack(er7)
    assert ack.control_id == "C$7"
    assert ack.error == "103 Table value not found (E)"


def test_parse_ack_of_a_built_ack_like_reply() -> None:
    """A reply echoing our control id round-trips through MLLP."""
    er7 = a08(control_id="RT-1")
    reply = f"{ACK_MSH}\rMSA|AA|{hl7.parse(er7)['MSH.F10']}"
    assert parse_ack(to_mllp(reply).decode()).control_id == "RT-1"


@pytest.mark.parametrize("bad", [
    "",
    "MSA|AA|1",
    ACK_MSH,
    ACK_MSH + "\rMSA|OK|1",
    ACK_MSH + "\rMSA||1",
    "PID|||1",
])
def test_parse_ack_rejects_malformed(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_ack(bad)


# --- MLLP ----------------------------------------------------------------------------------------


def test_to_mllp_framing() -> None:
    er7 = a08()
    framed = to_mllp(er7)
    assert framed[:1] == b"\x0b" and framed[-2:] == b"\x1c\x0d"
    body = framed[1:-2]
    assert body == (er7 + "\r").encode("ascii")
    assert body.count(b"\r") == 4 and b"\n" not in body  # every segment ends with CR
    assert all(seg for seg in body.split(b"\r")[:-1])
    assert to_mllp(er7 + "\r") == framed  # no doubled CR
    assert to_mllp(er7.replace("\r", "\n")) == framed
    assert to_mllp(er7.replace("\r", "\r\n")) == framed


@pytest.mark.parametrize("bad", ["", "   ", "MSH|\x0b", "MSH|\x1c"])
def test_to_mllp_rejects_empty_or_framing_bytes(bad: str) -> None:
    with pytest.raises(ValueError):
        to_mllp(bad)

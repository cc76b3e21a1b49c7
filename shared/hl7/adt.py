"""HL7 v2.5.1 ADT builders: A08 (update patient information) and A40 (merge patient identifier
list), plus ACK parsing and MLLP framing (../shared/IOCM_HL7_DIGEST.md Part B).

Pure: no I/O, no clock (the caller passes ``now`` and the control id), no ``google.*`` imports.
hl7apy is imported lazily inside the builders, so importing this module stays cheap and the
gateway's ACK path (``parse_ack``, ``to_mllp``) never loads it.

Errors are ``ValueError`` whose text names the HL7 field (e.g. ``PID-5.1``) and never echoes a
value: the inputs are patient data.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal, Optional, cast

if TYPE_CHECKING:  # pragma: no cover - typing only
    from hl7apy.core import Field, Message, Segment

HL7_VERSION = "2.5.1"
# HL7 2.5.1 table 0001 (Administrative Sex).
SEX_CODES = frozenset({"A", "F", "M", "N", "O", "U"})
# HL7 2.5.1 table 0103 (Processing ID): production, training, debugging.
PROCESSING_IDS = frozenset({"P", "T", "D"})
# HL7 2.5.1 table 0211 (Alternate Character Sets): MSH-18 when any value is not plain ASCII.
UNICODE_UTF8 = "UNICODE UTF-8"
# HL7 2.5.1 table 0008 (Acknowledgment Code), original and enhanced mode (digest B5).
AckCode = Literal["AA", "AE", "AR", "CA", "CE", "CR"]
ACK_CODES: frozenset[str] = frozenset({"AA", "AE", "AR", "CA", "CE", "CR"})

_BIRTH_DATE = re.compile(r"^[0-9]{8}$")
# ISO OID as used in HD.2 with HD.3 = ISO (digest B2): dotted numeric, no leading zeros.
_OID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+$")
# HL7 table 0203 (Identifier Type) codes are short upper-case tokens (MR, PI, PT, NNUSA, ...).
_TYPE_CODE = re.compile(r"^[A-Z0-9]{1,5}$")
# MSH-10 is ST, at most 20 characters (2.5.1 section 2.14.9.10); we keep it to printable ASCII
# without the delimiters so it comes back unchanged in MSA-2.
_CONTROL_ID = re.compile(r"^(?:(?![|^~\\&])[\x21-\x7E]){1,20}$")
# C0 and C1 controls, DEL and the Unicode line/paragraph separators: a CR or LF inside a value
# would end the segment (2.5.1 section 2.7), and parsers that split lines the Python way (hl7apy)
# also break at NEL (U+0085), U+2028 and U+2029.
_CONTROL_CHARS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
# HD.1 (namespace id) is IS, at most 20 characters (2.5.1 section 2.A.33); hl7apy enforces it.
_NAMESPACE_MAX = 20


# --- Inputs ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PatientIdentifier:
    """One CX (2.5.1 section 2.A.14): ``id^^^namespace&oid&ISO^type_code``.

    ``assigning_authority`` is HD.1 (namespace id) and ``authority_oid`` HD.2 (with HD.3 ``ISO``);
    either or both may be empty. An empty ``type_code`` leaves CX.5 out.
    """

    id: str
    assigning_authority: str = ""
    authority_oid: str = ""
    type_code: str = "MR"

    @property
    def domain(self) -> tuple[str, str]:
        """The assigning authority as (namespace, OID): CX.4 compared component by component."""
        return (self.assigning_authority, self.authority_oid)


@dataclass(frozen=True)
class PatientDemographics:
    """PID content (2.5.1 section 3.4.2). ``birth_date`` is YYYYMMDD or empty; ``sex`` from table
    0001 or empty. Empty values are left out of the message, which A08 receivers read as "no
    change" (digest B3)."""

    identifiers: tuple[PatientIdentifier, ...]
    family_name: str
    given_name: str = ""
    middle_name: str = ""
    suffix: str = ""
    prefix: str = ""
    birth_date: str = ""
    sex: str = ""


@dataclass(frozen=True)
class Endpoint:
    """MSH-3..6 (HD.1 namespace ids) and MSH-11 (table 0103). dcm4chee selects its HL7 application
    by ``MSH-5|MSH-6`` (digest B2)."""

    sending_application: str = "ARCHSYNC"
    sending_facility: str = ""
    receiving_application: str = ""
    receiving_facility: str = ""
    processing_id: str = "P"


@dataclass(frozen=True)
class Ack:
    """An acknowledgement (2.5.1 section 2.14.8, MSA): ``control_id`` is MSA-2, the MSH-10 of the
    message acknowledged. ``error`` is the receiver's explanation (ERR segments, MSA-3), or None."""

    code: AckCode
    control_id: str
    error: Optional[str] = None

    @property
    def accepted(self) -> bool:
        return self.code in ("AA", "CA")


# --- Input validation ----------------------------------------------------------------------------


def _text(value: Any, field: str, *, required: bool = False, max_len: Optional[int] = None) -> str:
    """The value with surrounding whitespace removed: ST trailing blanks are not significant
    (2.5.1 section 2.A.74), DICOM pads values to even length, and hl7apy drops a segment's
    trailing blanks when parsing."""
    if not isinstance(value, str):
        raise ValueError(f"{field}: must be a string")
    if _CONTROL_CHARS.search(value):
        raise ValueError(f"{field}: must not contain control characters")
    text: str = value.strip()
    if required and not text:
        raise ValueError(f"{field}: is required")
    if max_len is not None and len(text) > max_len:
        raise ValueError(f"{field}: must be at most {max_len} characters")
    return text


def _check_identifier(ident: Any, field: str) -> PatientIdentifier:
    if not isinstance(ident, PatientIdentifier):
        raise ValueError(f"{field}: must be a PatientIdentifier")
    clean = PatientIdentifier(
        id=_text(ident.id, f"{field}.1", required=True),
        assigning_authority=_text(ident.assigning_authority, f"{field}.4.1", max_len=_NAMESPACE_MAX),
        authority_oid=_text(ident.authority_oid, f"{field}.4.2"),
        type_code=_text(ident.type_code, f"{field}.5"),
    )
    if clean.authority_oid and not _OID.match(clean.authority_oid):
        raise ValueError(f"{field}.4.2: must be a dotted numeric OID")
    if clean.type_code and not _TYPE_CODE.match(clean.type_code):
        raise ValueError(f"{field}.5: must be an identifier type code (table 0203), e.g. MR")
    return clean


def _check_identifiers(idents: Any, field: str) -> tuple[PatientIdentifier, ...]:
    if isinstance(idents, (str, bytes)) or not isinstance(idents, Sequence):
        raise ValueError(f"{field}: must be a sequence of PatientIdentifier")
    if not idents:
        raise ValueError(f"{field}: at least one identifier is required")
    clean = tuple(_check_identifier(ident, f"{field}[{i}]") for i, ident in enumerate(idents, start=1))
    if len(set(clean)) != len(clean):
        raise ValueError(f"{field}: must not repeat an identifier")
    return clean


def _check_name(patient: Any, field: str) -> PatientDemographics:
    """The XPN parts of ``patient`` (identifiers, birth date and sex are not looked at)."""
    if not isinstance(patient, PatientDemographics):
        raise ValueError(f"{field}: must be PatientDemographics")
    return replace(
        patient,
        family_name=_text(patient.family_name, f"{field}.1", required=True),
        given_name=_text(patient.given_name, f"{field}.2"),
        middle_name=_text(patient.middle_name, f"{field}.3"),
        suffix=_text(patient.suffix, f"{field}.4"),
        prefix=_text(patient.prefix, f"{field}.5"),
    )


def _check_patient(patient: Any) -> PatientDemographics:
    if not isinstance(patient, PatientDemographics):
        raise ValueError("PID: must be PatientDemographics")
    identifiers = _check_identifiers(patient.identifiers, "PID-3")
    named = _check_name(patient, "PID-5")
    birth_date = _text(patient.birth_date, "PID-7")
    if birth_date:
        if not _BIRTH_DATE.match(birth_date):
            raise ValueError("PID-7: birth date must be YYYYMMDD")
        try:
            datetime.strptime(birth_date, "%Y%m%d")
        except ValueError:
            raise ValueError("PID-7: birth date is not a calendar date") from None
    sex = _text(patient.sex, "PID-8")
    if sex and sex not in SEX_CODES:
        raise ValueError(f"PID-8: sex must be one of {', '.join(sorted(SEX_CODES))} (table 0001)")
    return replace(named, identifiers=identifiers, birth_date=birth_date, sex=sex)


def _check_endpoint(endpoint: Any) -> Endpoint:
    if not isinstance(endpoint, Endpoint):
        raise ValueError("MSH: endpoint must be an Endpoint")
    if not isinstance(endpoint.processing_id, str) or endpoint.processing_id not in PROCESSING_IDS:
        raise ValueError(f"MSH-11: processing id must be one of {', '.join(sorted(PROCESSING_IDS))} (table 0103)")
    return Endpoint(
        sending_application=_text(endpoint.sending_application, "MSH-3", max_len=_NAMESPACE_MAX),
        sending_facility=_text(endpoint.sending_facility, "MSH-4", max_len=_NAMESPACE_MAX),
        receiving_application=_text(endpoint.receiving_application, "MSH-5", max_len=_NAMESPACE_MAX),
        receiving_facility=_text(endpoint.receiving_facility, "MSH-6", max_len=_NAMESPACE_MAX),
        processing_id=endpoint.processing_id,
    )


def _check_header(control_id: Any, now: Any) -> str:
    if not isinstance(control_id, str) or not _CONTROL_ID.match(control_id):
        raise ValueError("MSH-10: control id must be 1-20 printable ASCII characters without HL7 delimiters")
    if not isinstance(now, datetime):
        raise ValueError("MSH-7: now must be a datetime")
    return _timestamp(now)


def _timestamp(now: datetime) -> str:
    """DTM to the second (2.5.1 section 2.A.22), with the UTC offset when ``now`` is aware."""
    text = now.strftime("%Y%m%d%H%M%S")
    offset = now.strftime("%z")
    if offset:
        if len(offset) != 5:  # +HHMMSS: DTM offsets are whole minutes
            raise ValueError("MSH-7: the UTC offset of now must be whole minutes")
        text += offset
    return text


def _all_text(*patients: Optional[PatientDemographics], idents: Sequence[PatientIdentifier] = (),
              endpoint: Endpoint) -> Iterator[str]:
    for p in patients:
        if p is not None:
            yield from (p.family_name, p.given_name, p.middle_name, p.suffix, p.prefix)
            idents = (*idents, *p.identifiers)
    for i in idents:
        yield from (i.id, i.assigning_authority, i.authority_oid, i.type_code)
    yield from (endpoint.sending_application, endpoint.sending_facility,
                endpoint.receiving_application, endpoint.receiving_facility)


# --- hl7apy plumbing ---------------------------------------------------------------------------


@contextmanager
def _field(name: str) -> Iterator[None]:
    """Re-raise hl7apy's complaints (whose text may quote the value) as ValueError naming the field."""
    from hl7apy.exceptions import HL7apyException

    try:
        yield
    except (HL7apyException, ValueError) as exc:
        raise ValueError(f"{name}: rejected by hl7apy ({type(exc).__name__})") from None


def _leaf(datatype: str, value: str) -> Any:
    """A base datatype value for a leaf (component or subcomponent), escaped by hl7apy on output.

    hl7apy quirk: its escaper leaves a backslash alone when it looks like part of an escape
    sequence (``A\\T\\B`` goes out unchanged and reads back as ``A&B``; ``|F\\`` becomes the broken
    ``\\F\\F\\``). Writing every backslash as ``\\E\\`` first (2.5.1 section 2.7.4) sidesteps it:
    hl7apy then escapes the delimiters and never touches a backslash again.
    """
    from hl7apy.consts import VALIDATION_LEVEL
    from hl7apy.factories import datatype_factory

    return datatype_factory(datatype, value.replace("\\", "\\E\\"), version=HL7_VERSION,
                            validation_level=VALIDATION_LEVEL.STRICT)


def _set_hd(field: Field, value: str, name: str) -> None:
    if value:
        with _field(name):
            field.hd_1 = _leaf("IS", value)


def _new_message(structure: str, event: str, endpoint: Endpoint, control_id: str, ts: str,
                 unicode: bool) -> Message:
    """MSH (2.5.1 section 2.14.9) and EVN (section 3.4.1). hl7apy fills MSH-1, -2, -7 and -12;
    MSH-7 is overwritten with ``now`` so the output is deterministic."""
    from hl7apy.consts import VALIDATION_LEVEL
    from hl7apy.core import Message

    msg = Message(structure, version=HL7_VERSION, validation_level=VALIDATION_LEVEL.STRICT)
    msh = msg.msh
    _set_hd(msh.msh_3, endpoint.sending_application, "MSH-3")
    _set_hd(msh.msh_4, endpoint.sending_facility, "MSH-4")
    _set_hd(msh.msh_5, endpoint.receiving_application, "MSH-5")
    _set_hd(msh.msh_6, endpoint.receiving_facility, "MSH-6")
    with _field("MSH-7"):
        msh.msh_7.ts_1 = ts
    with _field("MSH-9"):  # MSG: message code ^ trigger event ^ structure (digest B1)
        msh.msh_9.msg_1 = _leaf("ID", "ADT")
        msh.msh_9.msg_2 = _leaf("ID", event)
        msh.msh_9.msg_3 = _leaf("ID", structure)
    with _field("MSH-10"):
        msh.msh_10 = _leaf("ST", control_id)
    with _field("MSH-11"):
        msh.msh_11.pt_1 = _leaf("ID", endpoint.processing_id)
    if unicode:
        with _field("MSH-18"):
            msh.msh_18 = _leaf("ID", UNICODE_UTF8)
    with _field("EVN"):  # EVN-1 event type code (backward compatible), EVN-2 recorded date/time
        evn = msg.add_segment("EVN")
        evn.evn_1 = _leaf("ID", event)
        evn.evn_2.ts_1 = ts
    return msg


def _segment(parent: Any, name: str) -> Segment:
    """Add a segment explicitly. hl7apy quirk: ``parent.mrg`` on a missing segment returns a
    detached one that is attached only by a later attribute assignment, so ``add_field`` on it
    (e.g. ``group.mrg.add_field("MRG_1")``) silently loses the data."""
    with _field(name):
        return parent.add_segment(name)


def _set_cx(parent: Segment, field_name: str, ident: PatientIdentifier, label: str) -> None:
    """One repetition of a CX field: ``id^^^namespace&oid&ISO^type`` (2.5.1 section 2.A.14)."""
    with _field(label):
        cx = parent.add_field(field_name)
        cx.cx_1 = _leaf("ST", ident.id)
        if ident.assigning_authority:
            cx.cx_4.hd_1 = _leaf("IS", ident.assigning_authority)
        if ident.authority_oid:
            cx.cx_4.hd_2 = _leaf("ST", ident.authority_oid)
            cx.cx_4.hd_3 = _leaf("ID", "ISO")
        if ident.type_code:
            cx.cx_5 = _leaf("ID", ident.type_code)


def _set_xpn(field: Field, patient: PatientDemographics, label: str) -> None:
    """XPN (2.5.1 section 2.A.88): family^given^middle^suffix^prefix (suffix before prefix,
    unlike DICOM PN; digest B3)."""
    with _field(f"{label}.1"):
        field.xpn_1.fn_1 = _leaf("ST", patient.family_name)
    for attr, value, n in (("xpn_2", patient.given_name, 2), ("xpn_3", patient.middle_name, 3),
                           ("xpn_4", patient.suffix, 4), ("xpn_5", patient.prefix, 5)):
        if value:
            with _field(f"{label}.{n}"):
                setattr(field, attr, _leaf("ST", value))


def _set_pid(pid: Segment, patient: PatientDemographics) -> None:
    """PID-3, -5, -7, -8 (2.5.1 section 3.4.2)."""
    for i, ident in enumerate(patient.identifiers, start=1):
        _set_cx(pid, "PID_3", ident, f"PID-3[{i}]")
    _set_xpn(pid.pid_5, patient, "PID-5")
    if patient.birth_date:
        with _field("PID-7"):
            pid.pid_7.ts_1 = patient.birth_date
    if patient.sex:
        with _field("PID-8"):
            pid.pid_8 = _leaf("IS", patient.sex)


def _finish(msg: Message) -> str:
    from hl7apy.exceptions import HL7apyException

    try:
        msg.validate()
    except HL7apyException as exc:  # structural messages only ("Missing required child ...")
        raise ValueError(f"{msg.name}: failed hl7apy STRICT validation: {exc}") from None
    return str(msg.to_er7())


# --- Builders ------------------------------------------------------------------------------------


def build_a08(patient: PatientDemographics, endpoint: Endpoint, *, control_id: str, now: datetime) -> str:
    """ADT^A08^ADT_A01 (2.5.1 section 3.3.8): MSH, EVN, PID with the full current demographics,
    and ``PV1||N`` (PV1 is required by ADT_A01; N = not applicable, no visit)."""
    ts = _check_header(control_id, now)
    endpoint = _check_endpoint(endpoint)
    patient = _check_patient(patient)
    unicode = not all(s.isascii() for s in _all_text(patient, endpoint=endpoint))
    msg = _new_message("ADT_A01", "A08", endpoint, control_id, ts, unicode)
    _set_pid(_segment(msg, "PID"), patient)
    with _field("PV1-2"):
        _segment(msg, "PV1").pv1_2 = _leaf("IS", "N")
    return _finish(msg)


def build_a40(surviving: PatientDemographics, prior_identifiers: Sequence[PatientIdentifier],
              endpoint: Endpoint, *, control_id: str, now: datetime,
              prior_name: Optional[PatientDemographics] = None) -> str:
    """ADT^A40^ADT_A39 (2.5.1 section 3.3.40): MSH, EVN, one PATIENT group with PID (the surviving
    patient) and MRG (MRG-1 the retired identifiers, MRG-7 the prior name when given).

    Each prior identifier must have the assigning authority (namespace and OID) and type of one
    of the surviving identifiers and must not equal it: dcm4chee answers ERR 205 when the prior
    id equals the surviving one, and PID-3 and MRG-1 must share authority and type (digest B2/B3).
    """
    ts = _check_header(control_id, now)
    endpoint = _check_endpoint(endpoint)
    surviving = _check_patient(surviving)
    priors = _check_identifiers(prior_identifiers, "MRG-1")
    for i, prior in enumerate(priors, start=1):
        same_domain = [s for s in surviving.identifiers
                       if s.domain == prior.domain and s.type_code == prior.type_code]
        if not same_domain:
            raise ValueError(f"MRG-1[{i}]: must have the assigning authority and identifier type "
                             "of a surviving identifier (PID-3)")
        if any(s.id == prior.id for s in same_domain):
            raise ValueError(f"MRG-1[{i}]: must differ from the surviving identifier (PID-3)")
    if prior_name is not None:
        prior_name = _check_name(prior_name, "MRG-7")
    unicode = not all(s.isascii() for s in _all_text(surviving, prior_name, idents=priors, endpoint=endpoint))
    msg = _new_message("ADT_A39", "A40", endpoint, control_id, ts, unicode)
    # hl7apy quirk (digest B4): in STRICT mode PID and MRG exist only inside the group.
    with _field("ADT_A39_PATIENT"):
        group = msg.add_group("ADT_A39_PATIENT")
    _set_pid(_segment(group, "PID"), surviving)
    mrg = _segment(group, "MRG")
    for i, prior in enumerate(priors, start=1):
        _set_cx(mrg, "MRG_1", prior, f"MRG-1[{i}]")
    if prior_name is not None:
        _set_xpn(mrg.mrg_7, prior_name, "MRG-7")
    return _finish(msg)


# --- ACK and MLLP ----------------------------------------------------------------------------------


def _unescape(text: str, enc: str, field_sep: str) -> str:
    """Undo the 2.5.1 section 2.7.4 escapes: \\F\\ \\S\\ \\T\\ \\R\\ \\E\\, \\Xhh..\\ (bytes, read as
    UTF-8), \\.br\\ (line break); highlighting \\H\\ \\N\\ is dropped; anything else is kept."""
    comp, rep, esc, sub = enc[0], enc[1], enc[2], enc[3]
    if esc not in text:
        return text
    plain = {"F": field_sep, "S": comp, "T": sub, "R": rep, "E": esc, "H": "", "N": "", ".br": "\n"}
    out: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        end = text.find(esc, i + 1) if ch == esc else -1
        if end == -1:
            out.append(ch)
            i += 1
            continue
        seq = text[i + 1:end]
        if seq in plain:
            out.append(plain[seq])
        elif seq[:1] == "X" and len(seq) > 1 and len(seq) % 2 == 1:
            try:
                out.append(bytes.fromhex(seq[1:]).decode("utf-8", errors="replace"))
            except ValueError:
                out.append(text[i:end + 1])
        else:
            out.append(text[i:end + 1])
        i = end + 1
    return "".join(out)


def parse_ack(er7: str) -> Ack:
    """Read MSA-1/MSA-2 and the error detail from an ACK (2.5.1 section 2.14.8).

    Tolerant: segments may end in CR, LF or CRLF, MLLP framing is stripped, the delimiters come
    from MSH-1/2, and ERR may be v2.5 style (ERR-2 location, ERR-3 code, ERR-4 severity, ERR-8
    user message) or v2.3 style (ERR-1). Raises ValueError when there is no MSH or MSA or the
    code is not in table 0008.
    """
    if isinstance(er7, (bytes, bytearray)):
        er7 = bytes(er7).decode("utf-8", errors="replace")
    if not isinstance(er7, str):
        raise ValueError("ACK: must be a string")
    text = er7.strip("\x0b\x1c\r\n ").replace("\r\n", "\r").replace("\n", "\r")
    segments = [s for s in text.split("\r") if s.strip()]
    if not segments or not segments[0].startswith("MSH") or len(segments[0]) < 4:
        raise ValueError("ACK: does not start with an MSH segment")
    fs = segments[0][3]  # MSH-1
    enc = segments[0][4:].split(fs, 1)[0][:4]  # MSH-2: component, repetition, escape, subcomponent
    enc = enc + "^~\\&"[len(enc):]

    def value(raw: str) -> str:
        return _unescape(raw, enc, fs).strip()

    msa = next((s.split(fs) for s in segments if s[:3] == "MSA"), None)
    if msa is None:
        raise ValueError("ACK: has no MSA segment")
    code = value(msa[1]) if len(msa) > 1 else ""
    if code not in ACK_CODES:
        raise ValueError("MSA-1: acknowledgment code is not in table 0008")
    control_id = value(msa[2]) if len(msa) > 2 else ""

    details = [d for d in (_err_detail(seg.split(fs), enc, value) for seg in segments if seg[:3] == "ERR") if d]
    if len(msa) > 3 and value(msa[3]):  # MSA-3 text message (kept for backward compatibility)
        text3 = value(msa[3])
        if text3 not in details:
            details.append(text3)
    return Ack(code=cast(AckCode, code), control_id=control_id, error="; ".join(details) or None)


def _err_detail(f: list[str], enc: str, value: Callable[[str], str]) -> str:
    """One ERR segment as text: "205 Duplicate key identifier at PID-3 (E) user message"."""
    comp, sub = enc[0], enc[3]

    def get(n: int) -> str:
        return f[n] if len(f) > n else ""

    parts: list[str] = []
    err3 = [value(c) for c in get(3).split(comp)][:2]  # CWE: code ^ text (table 0357)
    if any(err3):
        parts.append(" ".join(x for x in err3 if x))
    elif get(1):  # v2.3 ERR-1 (ELD): segment ^ sequence ^ field ^ code & text
        eld = get(1).split(comp) + ["", "", "", ""]
        parts.extend(x for x in (value(c) for c in eld[3].split(sub)) if x)
        if value(eld[0]):
            parts.append(f"at {value(eld[0])}" + (f"-{value(eld[2])}" if value(eld[2]) else ""))
    erl = [value(c) for c in get(2).split(comp)] + ["", "", "", "", ""]  # ERL: seg^seq^field^rep^comp
    if erl[0]:
        parts.append(f"at {erl[0]}" + (f"-{erl[2]}" if erl[2] else "") + (f".{erl[4]}" if erl[4] else ""))
    if value(get(4)):  # severity (table 0516)
        parts.append(f"({value(get(4))})")
    parts.extend(x for x in (value(get(8)), value(get(7))) if x)  # user message, diagnostics
    return " ".join(parts)


MLLP_START = b"\x0b"
MLLP_END = b"\x1c\x0d"


def to_mllp(er7: str) -> bytes:
    """MLLP frame (HL7 v2 MLLP, digest B5): 0x0B, the UTF-8 message with every segment ending in
    CR, then 0x1C 0x0D."""
    if not isinstance(er7, str) or not er7.strip():
        raise ValueError("MLLP: message is empty")
    if "\x0b" in er7 or "\x1c" in er7:
        raise ValueError("MLLP: message must not contain the framing characters 0x0B or 0x1C")
    body = er7.replace("\r\n", "\r").replace("\n", "\r")
    if not body.endswith("\r"):
        body += "\r"
    return MLLP_START + body.encode("utf-8") + MLLP_END

"""Seed 000 "Complete the Destination Fields" / "Configure Auto Archive" and the gateway fields."""
from __future__ import annotations

from datetime import timedelta

import pytest

from shared.domain.errors import ValidationFailed
from shared.domain.models import ExamStatus
from shared.domain.validation import (
    is_valid_ae_title,
    is_valid_host,
    is_valid_uid,
    validate_destination,
    validate_gateway,
)
from tests.support import T0, destination, gateway

FACILITIES = frozenset({"fac-a", "fac-b", "fac-c"})
VALID = {
    "name": "Main VNA",
    "type": "DICOM_SCP",
    "host": "192.168.0.31",
    "port": 104,
    "called_ae_title": "VNA_SCP",
    "calling_ae_title": "GW_SCU",
    "gateway_id": "gw-1",
}


def build(gw=None, previous=None, now=T0, **changes):
    data = {**VALID, **changes}
    data = {k: v for k, v in data.items() if v is not ...}
    return validate_destination(data, destination_id="dst-1", facility_group_id="fg-1",
                                gateway=gw if gw is not None else gateway("gw-1"), group_facility_ids=FACILITIES,
                                now=now, previous=previous)


def errors_of(**changes):
    with pytest.raises(ValidationFailed) as e:
        build(**changes)
    return e.value.errors


def test_defaults():
    d = build()
    assert (d.max_retries, d.retry_timeout_seconds, d.facility_ids, d.active) == (3, 10, (), True)
    assert (d.auto_archive, d.trigger_status, d.archive_text) == (False, None, "No")
    assert (d.support_iocm, d.allow_prefetch, d.moving_ae_title, d.transfer_syntax_uid) == (False, False, None, None)
    assert d.storage_commitment is False and build(storage_commitment=True).storage_commitment is True


@pytest.mark.parametrize("field", ["name", "type", "host", "port", "called_ae_title", "calling_ae_title", "gateway_id"])
def test_required_fields(field):
    assert field in errors_of(**{field: ...})


@pytest.mark.parametrize("ae,ok", [
    ("A", True), ("A" * 16, True), ("VNA-01_X.Y", True), ("A" * 17, False), ("", False), ("VNA SCP", False),
    (" VNA", False), ("VNA\\1", False), ("VNA\t", False), ("VNA\x01", False), ("VNÄ", False), (None, False), (12, False),
])
def test_ae_titles(ae, ok):
    assert is_valid_ae_title(ae) is ok
    for field in ("called_ae_title", "calling_ae_title", "moving_ae_title"):
        if ok:
            assert getattr(build(**{field: ae}), field) == ae
        elif ae not in ("", None) or field != "moving_ae_title":  # moving is optional: empty = none
            assert field in errors_of(**{field: ae})


@pytest.mark.parametrize("port,ok", [(1, True), (104, True), (65535, True), (0, False), (65536, False), (-1, False),
                                     ("104", False), (10.5, False), (True, False)])
def test_port(port, ok):
    assert (build(port=port).port == port) if ok else ("port" in errors_of(port=port))


@pytest.mark.parametrize("host,ok", [("192.168.0.31", True), ("vna.hospital.example", True), ("::1", True), ("vna", True),
                                     ("192.168.0.300", False), ("bad host", False), ("-x.example", False), ("", False),
                                     ("a" * 64 + ".example", False), ("vna_1.example", False)])
def test_host(host, ok):
    assert is_valid_host(host) is ok


@pytest.mark.parametrize("value,ok", [(0, True), (3, True), (10, True), (11, False), (10**12, False), (10**20, False),
                                      (-1, False), ("3", False), (1.5, False), (None, False), (True, False)])
def test_max_retries(value, ok):
    assert (build(max_retries=value).max_retries == value) if ok else ("max_retries" in errors_of(max_retries=value))


@pytest.mark.parametrize("value,ok", [(1, True), (10, True), (3600, True), (3601, False), (10**20, False), (0, False),
                                      (-5, False), ("10", False), (None, False)])
def test_retry_timeout(value, ok):
    if ok:
        assert build(retry_timeout_seconds=value).retry_timeout_seconds == value
    else:
        assert "retry_timeout_seconds" in errors_of(retry_timeout_seconds=value)


@pytest.mark.parametrize("uid,ok", [("1.2.840.10008.1.2.1", True), ("1.2.840.10008.1.2.4.50", True), ("1", False),
                                    ("1.02.3", False), ("1..2", False), ("1.2.", False), ("1.2.a", False),
                                    ("1." + "1" * 63, False)])
def test_uids(uid, ok):
    assert is_valid_uid(uid) is ok
    if ok:
        assert build(transfer_syntax_uid=uid, excluded_sop_class_uids=[uid]).excluded_sop_class_uids == (uid,)
    else:
        errs = errors_of(transfer_syntax_uid=uid, excluded_sop_class_uids=[uid])
        assert {"transfer_syntax_uid", "excluded_sop_class_uids"} <= set(errs)


def test_gateway_must_be_of_the_same_facility_group():
    """Seed 000 Troubleshooting: "Destination cannot be saved (Gateway error)"."""
    other = gateway("gw-1", fg="fg-2")
    assert "gateway_id" in errors_of(gw=other)
    with pytest.raises(ValidationFailed) as e:
        validate_destination(VALID, destination_id="d", facility_group_id="fg-1", gateway=None,
                             group_facility_ids=FACILITIES, now=T0)
    assert "gateway_id" in e.value.errors


def test_destination_facilities_only_among_those_the_gateway_serves():
    scoped = gateway("gw-1", facility_ids=("fac-a", "fac-b"))
    assert build(gw=scoped, facility_ids=["fac-a"]).facility_ids == ("fac-a",)
    assert "facility_ids" in errors_of(gw=scoped, facility_ids=["fac-c"])
    assert "facility_ids" in errors_of(facility_ids=["fac-z"])  # not in the group at all
    assert "facility_ids" in errors_of(facility_ids=["fac-a", "fac-a"])
    assert build(facility_ids=["fac-c"]).facility_ids == ("fac-c",)  # gateway serving all facilities


def test_auto_archive_needs_exactly_one_trigger_status():
    assert "trigger_status" in errors_of(auto_archive=True)
    assert "trigger_status" in errors_of(auto_archive=True, trigger_status="SCHEDULED")
    assert "trigger_status" in errors_of(auto_archive=True, trigger_status=["PENDING", "COMPLETED"])
    for status, text in (("PENDING", "Yes (Pending)"), ("inflight", "Yes (Inflight)"), ("COMPLETED", "Yes (Completed)")):
        d = build(auto_archive=True, trigger_status=status)
        assert d.archive_text == text and d.auto_archive_since == T0


def test_auto_archive_since_moves_only_when_archiving_is_reconfigured():
    first = build(auto_archive=True, trigger_status="COMPLETED")
    later = T0 + timedelta(days=3)
    assert build(previous=first, now=later, auto_archive=True, trigger_status="COMPLETED", name="Renamed").auto_archive_since == T0
    assert build(previous=first, now=later, auto_archive=True, trigger_status="PENDING").auto_archive_since == later
    off = build(previous=first, now=later, auto_archive=False)
    assert build(previous=off, now=later + timedelta(days=1), auto_archive=True, trigger_status="COMPLETED").auto_archive_since \
        == later + timedelta(days=1)


def test_flags_must_be_booleans_and_all_errors_are_reported_together():
    errs = errors_of(support_iocm="yes", active=1, allow_prefetch=None, storage_commitment="on", port=0, host="")
    assert {"support_iocm", "active", "allow_prefetch", "storage_commitment", "port", "host"} <= set(errs)


def test_error_messages_do_not_echo_values():
    errs = errors_of(host="secret host name", called_ae_title="WAY_TOO_LONG_TITLE_X")
    assert all("secret" not in m and "WAY_TOO" not in m for m in errs.values())


def test_gateway_fields():
    gw = validate_gateway({"name": "Site A", "facility_ids": ["fac-a"]}, gateway_id="gw-9", facility_group_id="fg-1",
                          group_facility_ids=FACILITIES, topic_id="t", subscription_id="s")
    assert (gw.name, gw.facility_ids, gw.active, gw.description) == ("Site A", ("fac-a",), True, "")
    with pytest.raises(ValidationFailed) as e:
        validate_gateway({"name": " ", "facility_ids": ["fac-x"], "active": "no"}, gateway_id="g", facility_group_id="fg-1",
                         group_facility_ids=FACILITIES, topic_id="t", subscription_id="s")
    assert set(e.value.errors) == {"name", "facility_ids", "active"}


def test_archive_text_column():
    assert destination(trigger="PENDING").archive_text == "Yes (Pending)"
    assert destination(trigger=None).archive_text == "No"
    assert ExamStatus.INFLIGHT.label == "Inflight"


def test_hl7_endpoint_fields():
    d = build(hl7_host="10.20.0.31", hl7_port=2575, hl7_receiving_application="ARCHIVE", hl7_receiving_facility="VNA")
    assert (d.hl7_host, d.hl7_port, d.hl7_receiving_application, d.hl7_receiving_facility) == ("10.20.0.31", 2575, "ARCHIVE", "VNA")
    assert build().hl7_host is None and build().hl7_port is None
    assert "hl7_port" in errors_of(hl7_host="10.20.0.31")
    assert "hl7_host" in errors_of(hl7_port=2575)
    assert "hl7_host" in errors_of(hl7_host="bad host", hl7_port=2575)
    assert "hl7_port" in errors_of(hl7_host="h", hl7_port=0)
    assert "hl7_receiving_application" in errors_of(hl7_receiving_application="A|B")
    assert "hl7_receiving_facility" in errors_of(hl7_receiving_facility="X" * 65)

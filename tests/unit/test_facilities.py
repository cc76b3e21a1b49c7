"""Issue 11 item 1, pure: the facility-changed.v1 contract and what an event does to stored state."""
from __future__ import annotations

import pytest

from shared import contracts
from shared.domain import facilities
from shared.domain.errors import MalformedInput
from shared.domain.models import Facility, FacilityGroup
from tests.support import facility_event


def test_the_schema_is_valid_and_its_examples_and_the_test_builder_validate():
    schema = contracts.schema(contracts.FACILITY_CHANGED)
    contracts._validator(contracts.FACILITY_CHANGED)
    for example in schema["examples"]:
        contracts.validate(contracts.FACILITY_CHANGED, example)
    for e in (facility_event(), facility_event(None), facility_event(removed=True), facility_event(None, removed=True)):
        contracts.validate(contracts.FACILITY_CHANGED, e)


@pytest.mark.parametrize("change", [
    {"facility_id": None}, {"name": ""}, {"version": 1.5}, {"version": True}, {"removed": "yes"},
    {"event_type": "facility.deleted"}, {"extra": 1}, {"send_adt": "true"},
])
def test_schema_refuses(change):
    with pytest.raises(MalformedInput):
        contracts.validate(contracts.FACILITY_CHANGED, {**facility_event(), **change})


def test_from_event():
    f = facilities.from_event(facility_event("fac-a", version=7, name="Main", send_adt=True))
    assert f == Facility("fac-a", "fg-1", "Main", send_adt=True, version=7, removed=False, updated_at=f.updated_at)
    g = facilities.from_event(facility_event(None, version=2, name="North"))
    assert isinstance(g, FacilityGroup) and (g.id, g.name, g.version) == ("fg-1", "North", 2)
    with pytest.raises(MalformedInput):
        facilities.from_event({**facility_event(), "event_time": "2026-11-01T08:00:00"})


def fac(version, **kw):
    return Facility("fac-a", "fg-1", kw.pop("name", f"v{version}"), version=version, **kw)


@pytest.mark.parametrize("current,incoming,outcome", [
    (None, fac(1), "applied"),
    (fac(1), fac(2), "applied"),
    (fac(2), fac(2), "duplicate"),
    (fac(3), fac(2), "stale"),
    (fac(3, removed=True), fac(2), "stale"),  # a tombstone stops a late, older upsert
    (fac(3, removed=True), fac(4), "applied"),  # a newer version restores it
])
def test_only_a_higher_version_is_stored(current, incoming, outcome):
    got, stored = facilities.apply(current, incoming)
    assert got == outcome and (stored == incoming) is (outcome == "applied")


def test_a_removal_keeps_the_last_name_and_send_adt_in_its_tombstone():
    _, stored = facilities.apply(fac(1, name="East Clinic", send_adt=True), fac(2, name="", removed=True))
    assert (stored.name, stored.send_adt, stored.removed, stored.version) == ("East Clinic", True, True, 2)
    _, stored = facilities.apply(None, fac(5, name="", removed=True))  # removal overtook the creation
    assert (stored.removed, stored.version, stored.send_adt) == (True, 5, False)
    _, stored = facilities.apply(FacilityGroup("fg-1", "North", version=1), FacilityGroup("fg-1", "", 2, True))
    assert (stored.name, stored.removed) == ("North", True)

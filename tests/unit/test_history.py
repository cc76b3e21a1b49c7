"""Issue 11 item 6, pure: eligibility is judged as of the instant the exam first reached the status,
from the configuration history recorded on destinations and gateways (shared/domain/history.py)."""
from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest

from shared.domain import history
from shared.domain.messages import exam_status_changed
from shared.domain.models import ExamStatus
from shared.domain.rules import decide, gateway_ids_to_read
from tests.support import T0, destination, exam_event, gateway

H = timedelta(hours=1)


def event(first_reached, facility="fac-a", status="COMPLETED"):
    return exam_status_changed(exam_event(status, facility=facility, first_reached=first_reached,
                                          event_time=first_reached + 5 * H))


class Timeline:
    """A destination and its gateways changed at given instants through the recording functions,
    as the admin API and provisioning do."""

    def __init__(self, dest_changes=(), gw_changes=(), **dest_kw):
        self.gw = history.recorded_gateway(None, gateway("gw-1"), T0 - 10 * H)
        for at, change in gw_changes:
            self.gw = history.recorded_gateway(self.gw, dataclasses.replace(self.gw, **change), at)
        self.d = history.recorded_destination(None, destination("dst-1", **dest_kw), T0 - 9 * H)
        for at, change in dest_changes:
            self.d = history.recorded_destination(self.d, dataclasses.replace(self.d, **change), at)

    def reason(self, t, facility="fac-a", status="COMPLETED", gateways=None):
        gws = gateways or {self.gw.id: self.gw}
        return decide(event(t, facility, status), self.d, gws.get(self.d.gateway_id), gws).reason


def test_deactivated_then_reactivated_destination_does_not_archive_what_reached_the_status_meanwhile():
    tl = Timeline([(T0, dict(active=False)), (T0 + 2 * H, dict(active=True))])
    assert tl.d.active  # active now
    assert tl.reason(T0 - H) == "eligible"
    assert tl.reason(T0 + H) == "destination inactive"  # reactivation is not retroactive
    assert tl.reason(T0 + 3 * H) == "eligible"
    assert tl.reason(T0) == "destination inactive"  # the change applies from its own instant on


def test_a_redelivery_after_deactivation_gets_the_same_answer_as_the_first_delivery():
    before = Timeline()
    after = Timeline([(T0 + H, dict(active=False))])  # deactivated after the exam reached the status
    assert before.reason(T0) == after.reason(T0) == "eligible"


def test_widening_a_destination_scope_is_not_retroactive_and_narrowing_is_not_either():
    tl = Timeline([(T0 + H, dict(facility_ids=("fac-a", "fac-b")))], facility_ids=("fac-a",))
    assert tl.reason(T0, facility="fac-b") == "facility out of scope"
    assert tl.reason(T0 + 2 * H, facility="fac-b") == "eligible"
    narrowed = Timeline([(T0 + H, dict(facility_ids=("fac-b",)))], facility_ids=("fac-a",))
    assert narrowed.reason(T0, facility="fac-a") == "eligible"


def test_switching_auto_archive_on_or_changing_the_trigger_is_not_retroactive():
    on_later = Timeline([(T0 + H, dict(auto_archive=True, trigger_status=ExamStatus.COMPLETED))], trigger=None)
    assert on_later.reason(T0) == "auto archive off"
    assert on_later.reason(T0 + H) == "eligible"
    moved = Timeline([(T0 + H, dict(trigger_status=ExamStatus.COMPLETED))], trigger="INFLIGHT")
    assert moved.reason(T0, status="COMPLETED") == "trigger status differs"
    assert moved.reason(T0, status="INFLIGHT") == "eligible"  # it was the trigger then
    then = decide(event(T0, status="INFLIGHT"), moved.d, moved.gw, {"gw-1": moved.gw})
    assert then.trigger_status is ExamStatus.INFLIGHT  # the job records (and locks by) the trigger of that time
    assert history.archive_triggers(moved.d) == ["COMPLETED", "INFLIGHT"]


def test_gateway_reactivation_and_gateway_scope_widening_are_not_retroactive():
    tl = Timeline(gw_changes=[(T0 - 8 * H, dict(active=False)), (T0 + H, dict(active=True))])
    assert tl.reason(T0) == "gateway inactive"
    assert tl.reason(T0 + 2 * H) == "eligible"
    deactivated_later = Timeline(gw_changes=[(T0 + H, dict(active=False))])
    assert deactivated_later.reason(T0) == "eligible"
    widened = Timeline(gw_changes=[(T0 - 8 * H, dict(facility_ids=("fac-b",))), (T0 + H, dict(facility_ids=()))])
    assert widened.reason(T0, facility="fac-a") == "facility out of scope"  # the gateway served fac-b only
    assert widened.reason(T0 + 2 * H, facility="fac-a") == "eligible"


def test_the_gateway_of_that_instant_decides_and_the_job_goes_to_the_current_one():
    tl = Timeline([(T0 + H, dict(gateway_id="gw-2"))])
    gw2 = history.recorded_gateway(None, gateway("gw-2", active=False), T0 - 10 * H)
    gws = {"gw-1": tl.gw, "gw-2": gw2}
    assert gateway_ids_to_read(event(T0), [tl.d]) == ["gw-2", "gw-1"]
    d = decide(event(T0), tl.d, gw2, gws)
    assert (d.archive, d.gateway.id) == (True, "gw-2")  # gw-1 was active at T0
    assert tl.reason(T0 + 2 * H, gateways=gws) == "gateway inactive"  # gw-2 was inactive then
    assert tl.reason(T0, gateways={"gw-2": gw2}) == "gateway missing"  # gw-1 no longer exists


def test_a_gateway_being_deleted_now_cannot_take_the_job():
    tl = Timeline()
    deleting = dataclasses.replace(tl.gw, provisioning_state="DELETING")
    assert tl.reason(T0, gateways={"gw-1": deleting}) == "gateway inactive"


def test_before_creation_nothing_is_archived():
    tl = Timeline()
    assert tl.reason(T0 - 9 * H - timedelta(microseconds=1)) == "exam reached the status before auto archive was configured"
    assert tl.reason(T0 - 9 * H) == "eligible"
    late_gw = Timeline()
    late_gw.gw = history.recorded_gateway(None, gateway("gw-1"), T0)
    assert late_gw.reason(T0 - H) == "exam reached the status before the gateway existed"


def test_edits_that_do_not_decide_eligibility_add_no_interval():
    tl = Timeline([(T0, dict(host="10.0.0.9", called_ae_title="OTHER", max_retries=5, name="Renamed"))])
    assert len(tl.d.history) == 1
    tl = Timeline([(T0, dict(active=False)), (T0 + H, dict(active=False))])
    assert len(tl.d.history) == 2


def test_a_change_recorded_with_an_earlier_clock_keeps_the_history_ordered():
    tl = Timeline([(T0, dict(active=False)), (T0 - H, dict(active=True))])
    assert [i.since for i in tl.d.history] == [T0 - 9 * H, T0, T0]
    assert tl.reason(T0) == "eligible"  # the later change wins at the same instant


def test_history_is_bounded_in_count_and_older_events_are_not_archived():
    tl = Timeline([(T0 + i * H, dict(active=i % 2 == 1)) for i in range(150)])
    assert len(tl.d.history) == history.MAX_INTERVALS
    oldest = tl.d.history[0].since
    assert oldest == T0 + 50 * H
    assert tl.reason(oldest - timedelta(seconds=1)) == "exam reached the status before auto archive was configured"
    assert tl.reason(T0 + 149 * H) == "eligible"  # odd index: active


def test_history_is_bounded_in_size_with_long_facility_lists():
    facilities = tuple(f"facility-{n:04d}-with-a-long-identifier" for n in range(400))
    changes = [(T0 + i * H, dict(facility_ids=facilities[: 200 + i])) for i in range(100)]
    tl = Timeline(changes)
    size = sum(history._size(i) for i in tl.d.history)
    assert size <= history.MAX_BYTES and len(tl.d.history) < 100
    assert tl.d.history[-1].facility_ids == facilities[:299]


@pytest.mark.parametrize("since,first_reached,reason", [
    (T0, T0 - timedelta(seconds=1), "exam reached the status before auto archive was configured"),
    (T0, T0, "eligible"),
])
def test_documents_written_before_histories_existed_keep_the_old_rule(since, first_reached, reason):
    d, gw = destination(since=since), gateway()
    assert d.history == () and gw.history == ()
    assert decide(event(first_reached), d, gw).reason == reason
    assert decide(event(T0), dataclasses.replace(d, active=False), gw).reason == "destination inactive"
    assert history.archive_triggers(d) == ["COMPLETED"]

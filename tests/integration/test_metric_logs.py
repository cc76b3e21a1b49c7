"""The log-based metrics of infra/monitoring.tf against what the real code paths write (issue 15
item 1), on the emulators: jobs created, completed, failed and timed out, the latency and the lock
hold time, overdue locks and silent gateways from the sweeper, a dead-lettered event through the
entry point, a provisioning failure and its rollback, a refused result signature. Each metric's
filter (evaluated by tests/log_metrics.py) must match at least one record, and every matching
record must carry the metric's label fields and its value field: a metric whose filter matches
nothing the code writes turns this test red."""
from __future__ import annotations

import json
from datetime import timedelta

import grpc
import pytest

from shared.domain.errors import Unauthorized
from shared.domain.messages import exam_status_changed
from shared.domain.models import Facility, FacilityGroup
from shared.domain.rules import TimeoutPolicy
from shared.domain.validation import validate_gateway
from shared.services.archive_trigger import ArchiveTriggerService
from shared.services.provisioning import Provisioner, ProvisioningFailed, ProvisioningSettings
from shared.services.results import ResultService
from shared.services.sweeper import SweepService
from shared.signing import sign_headers
from tests.log_metrics import LogMetric, log_metrics, records
from tests.support import (RESULT_KEY, cloud_event_headers, destination, exam_event, gateway, load_app, pubsub_envelope,
                           result_body)

POLICY = TimeoutPolicy(dispatch_grace_seconds=600, attempt_allowance_seconds=300)
PATIENT_VALUES = ("MRN-777", "DOE^JANE", "ACC-0001")  # tests.support.exam_event's patient data


def _run_every_path(stack, function_env) -> None:
    s = stack
    s.add_gateway(gateway("gw-1"))
    s.add_gateway(gateway("gw-2"))  # never in contact
    s.secrets.save_result_key("fg-1", "gw-1", RESULT_KEY)
    s.store.save_destination(destination("dst-1", gateway_id="gw-1", trigger="PENDING"))
    s.store.save_destination(destination("dst-2", gateway_id="gw-2", trigger="PENDING"))
    trigger = ArchiveTriggerService(s.store, s.store, s.job_publisher, s.clock, POLICY)
    jobs = {}
    for exam in ("exam-1", "exam-2", "exam-3"):
        for out in trigger.handle(exam_status_changed(exam_event("PENDING", exam_id=exam))):
            jobs[(exam, out.destination_id)] = out.job_id
    results = ResultService(s.store, s.secrets, s.clock, POLICY, 300, health=s.store)

    def post(job_id: str, state: str, key: bytes = RESULT_KEY, **kw):
        body = result_body(job_id, state, time=s.clock.now(), **kw)
        return results.handle(sign_headers(key, "fg-1", "gw-1", body, int(s.clock.now().timestamp())), body)

    s.clock.advance(minutes=5)
    post(jobs[("exam-1", "dst-1")], "IN_PROGRESS")
    post(jobs[("exam-1", "dst-1")], "COMPLETED", counts={"total": 6, "sent": 6})  # completed, lock released after 300 s
    post(jobs[("exam-2", "dst-1")], "FAILED", reason="Association rejected")  # failed
    with pytest.raises(Unauthorized):
        post(jobs[("exam-3", "dst-1")], "COMPLETED", key=b"x" * 32)  # a refused signature

    # 20 minutes on: the remaining jobs are still QUEUED, their locks held; gw-1 last heard of 20
    # minutes ago, gw-2 never. The sweeper reports both gateways and the locks.
    s.clock.advance(minutes=20)
    report = SweepService(s.store, s.store, s.job_publisher, s.clock, health=s.store, gateway_silent_seconds=900,
                          lock_overdue_seconds=600).run()
    assert sorted(report.silent_gateways) == ["fg-1/gw-1", "fg-1/gw-2"]
    assert len(report.overdue_locks) == 4
    # Past their deadlines: timed out (UNKNOWN), locks released.
    s.clock.advance(hours=1)
    assert len(SweepService(s.store, s.store, s.job_publisher, s.clock).run().timed_out) == 4

    # A malformed platform event through the entry point: dead-lettered.
    app = load_app("on_exam_status_changed")
    bad = exam_event("COMPLETED")
    del bad["exam"]["exam_id"]
    r = app.post("/", data=json.dumps(pubsub_envelope(bad)), headers=cloud_event_headers(project=s.project))
    assert r.status_code == 200

    # A gateway creation that fails at the IAM service, rolled back.
    s.store.save_facility_group(FacilityGroup("fg-1", "Group 1"))
    s.store.save_facility(Facility("fac-a", "fg-1", "Facility A"))
    s.topic("archsync-gateway-dead-letter")
    prov = Provisioner(s.store, s.cloud(), s.clock, ProvisioningSettings(
        objects_bucket=s.objects_bucket, study_bucket=s.study_bucket,
        pubsub_service_agent="service-1@gcp-sa-pubsub.iam.gserviceaccount.com"))
    s.emulators["iam"].fail_next("CreateServiceAccountKey", grpc.StatusCode.UNAVAILABLE)
    with pytest.raises(ProvisioningFailed):
        prov.create(validate_gateway({"name": "New gateway"}, gateway_id="gw-0123456789", facility_group_id="fg-1",
                                     group_facility_ids=frozenset({"fac-a"}), topic_id="", subscription_id=""), "Pat Admin")


def test_log_metrics_match_what_the_code_writes(stack, function_env, capsys):
    """One run of every path (they take a while on the emulators), then three checks."""
    capsys.readouterr()
    _run_every_path(stack, function_env)
    written = records(capsys.readouterr().out)
    check_every_metric_matches_with_its_labels_and_value(written)
    check_a_filter_that_matches_nothing_is_noticed(written)
    check_the_values_the_metrics_report(written)


def check_every_metric_matches_with_its_labels_and_value(written: list[dict]) -> None:
    assert written
    missing = []
    for name, metric in sorted(log_metrics().items()):
        matching = [r for r in written if metric.matches(r)]
        if not matching:
            missing.append(name)
            continue
        for r in matching:
            for label in metric.labels:
                assert isinstance(r.get(label), str) and r[label], f"{name}: record lacks label field {label!r}: {r}"
            if metric.value_field:
                value = r.get(metric.value_field)
                assert isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0, (name, r)
            text = json.dumps(r)
            assert not any(v in text for v in PATIENT_VALUES), f"{name}: patient data in {r}"
    assert not missing, f"metrics whose filter matches nothing the code writes: {missing}"


def check_a_filter_that_matches_nothing_is_noticed(written: list[dict]) -> None:
    """The check above can fail: a filter with a misspelt event matches none of the same records."""
    typo = LogMetric("archsync/typo", 'jsonPayload.event="archsync.job_finised"', ("job_type",), None)
    assert not [r for r in written if typo.matches(r)]


def check_the_values_the_metrics_report(written: list[dict]) -> None:
    def one(name: str, **where) -> list[dict]:
        return [r for r in written if log_metrics()[name].matches(r) and all(r.get(k) == v for k, v in where.items())]

    [latency] = one("archsync/job_latency")
    assert latency["queued_to_completed_seconds"] == 300 and latency["job_type"] == "ARCHIVE"
    assert latency["destination_id"] == "dst-1"
    held = sorted(r["held_seconds"] for r in one("archsync/lock_hold_time"))
    assert held == [300, 300, 5100, 5100, 5100, 5100]  # completed, failed, then four timeouts after 85 min
    assert len(one("archsync/jobs_created")) == 6 and len(one("archsync/jobs_timed_out")) == 4
    assert len(one("archsync/jobs_failed", destination_id="dst-1")) == 1
    [dead] = one("archsync/dead_lettered")
    assert (dead["function"], dead["reason_code"]) == ("on_exam_status_changed", "MALFORMED_INPUT")
    [sig] = one("archsync/result_signature_failures")
    assert sig["reason_code"] == "BAD_SIGNATURE"
    silent = {r["gateway_id"]: r for r in one("archsync/gateways_silent")}
    assert silent["gw-1"]["silent_seconds"] == 1200 and silent["gw-1"]["never_contacted"] is False
    assert silent["gw-2"]["silent_seconds"] == 1500 and silent["gw-2"]["never_contacted"] is True
    assert {r["held_seconds"] for r in one("archsync/locks_overdue")} == {1500}
    [failed] = one("archsync/provisioning_failures")
    assert (failed["operation"], failed["step"]) == ("CREATE", "service_account_key")
    [rolled] = one("archsync/provisioning_rollbacks")
    assert (rolled["by"], rolled["result"]) == ("request", "complete")
    assert timedelta(seconds=latency["queued_to_completed_seconds"]) == timedelta(minutes=5)

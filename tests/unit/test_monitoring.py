"""infra/monitoring.tf and infra/dashboards/archsync.json, offline (issue 15 items 1-2): every metric
an alert or the dashboard uses is declared (a log-based metric of local.log_metrics) or is one of
Google's built-in metrics named here; the alerts the issue asks for exist and notify the channels
variable; every log-based metric's filter is one the evaluator understands and selects a record
shared/metrics.py writes. tests/integration/test_metric_logs.py checks the filters against the
records the real code paths write."""
from __future__ import annotations

import json
import re

import pytest

from shared import metrics
from tests.log_metrics import INFRA, UnsupportedFilter, compile_filter, extracted_field, log_metrics, resources, unquote

# Google Cloud built-in metrics the alerts and the dashboard may use (not declared in infra/).
BUILTIN_METRICS = {
    "pubsub.googleapis.com/subscription/dead_letter_message_count": "pubsub_subscription",
    "pubsub.googleapis.com/subscription/oldest_unacked_message_age": "pubsub_subscription",
}
LOCAL_METRIC_TYPE = re.compile(r'^\$\{local\.log_metric_type\["([^"]+)"\]\}$')
RESOURCE_TYPE_LOCAL = "${local.log_metric_resource_type}"
PATIENT_FIELDS = {"mrn", "patient_name", "patient_name_lower", "accession_number", "accession", "exam_id",
                  "study_instance_uid", "patient", "name", "reason", "failure_reason"}


def _terms(filter_text: str) -> dict[str, str]:
    """metric.type / resource.type of a Monitoring filter ("a=\"x\" AND b=\"y\"", or space-separated)."""
    return dict(re.findall(r'\b(metric\.type|resource\.type)\s*=\s*"((?:\$\{[^}]*\}|[^"])*)"', filter_text))


def _declared_metric(metric_type: str, resource_type: str, where: str) -> str:
    """The log-based metric ``metric_type`` names (checked declared), or the built-in metric."""
    declared = log_metrics()
    m = LOCAL_METRIC_TYPE.match(metric_type)
    name = m.group(1) if m else (metric_type[len("logging.googleapis.com/user/"):]
                                  if metric_type.startswith("logging.googleapis.com/user/") else None)
    if name is not None:
        assert name in declared, f"{where}: metric {name!r} is not declared in infra/monitoring.tf local.log_metrics"
        assert resource_type in (RESOURCE_TYPE_LOCAL, "cloud_run_revision"), f"{where}: resource.type {resource_type!r}"
        return name
    assert metric_type in BUILTIN_METRICS, f"{where}: metric {metric_type!r} is neither declared nor a known built-in one"
    assert resource_type == BUILTIN_METRICS[metric_type], f"{where}: resource.type {resource_type!r}"
    return metric_type


def _alert_filters() -> list[tuple[str, str]]:
    out = []
    for name, policy in resources("google_monitoring_alert_policy").items():
        for i, condition in enumerate(policy.get("conditions", [])):
            for threshold in condition.get("condition_threshold", []):
                out.append((f"alert {name} condition {i}", unquote(threshold["filter"])))
    return out


def _dashboard() -> dict:
    return json.loads((INFRA / "dashboards" / "archsync.json").read_text())


def _dashboard_filters(node, where="dashboard") -> list[tuple[str, str]]:
    out = []
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "filter" and isinstance(v, str):
                out.append((where, v))
            else:
                out.extend(_dashboard_filters(v, f"{where} / {node.get('title', k)}"))
    elif isinstance(node, list):
        for v in node:
            out.extend(_dashboard_filters(v, where))
    return out


# --- every metric an alert or the dashboard uses is declared ------------------------------------

def test_every_metric_an_alert_uses_is_declared():
    filters = _alert_filters()
    assert len(filters) >= 6
    used = set()
    for where, text in filters:
        terms = _terms(text)
        assert "metric.type" in terms and "resource.type" in terms, f"{where}: {text}"
        used.add(_declared_metric(terms["metric.type"], terms["resource.type"], where))
    assert {"archsync/dead_lettered", "archsync/jobs_failed", "archsync/jobs_timed_out", "archsync/locks_overdue",
            "archsync/gateways_silent"} <= used


def test_every_metric_the_dashboard_uses_is_declared():
    dashboard = _dashboard()
    filters = _dashboard_filters(dashboard)
    used = set()
    for where, text in filters:
        terms = _terms(text)
        assert "metric.type" in terms, f"{where}: {text}"
        used.add(_declared_metric(terms["metric.type"], terms.get("resource.type", ""), where))
    # "a Cloud Monitoring dashboard with those series": every log-based metric is charted.
    assert set(log_metrics()) <= used, set(log_metrics()) - used
    res = resources("google_monitoring_dashboard")["archsync"]
    assert "dashboards/archsync.json" in res["dashboard_json"]


def test_the_check_refuses_an_undeclared_metric():
    """The declared-metric check can fail: a typo in an alert's metric name is refused."""
    with pytest.raises(AssertionError, match="not declared"):
        _declared_metric('${local.log_metric_type["archsync/jobs_faild"]}', RESOURCE_TYPE_LOCAL, "synthetic")
    with pytest.raises(AssertionError, match="not declared"):
        _declared_metric("logging.googleapis.com/user/archsync/nope", "cloud_run_revision", "synthetic")
    with pytest.raises(AssertionError, match="neither declared"):
        _declared_metric("pubsub.googleapis.com/subscription/made_up", "pubsub_subscription", "synthetic")


# --- the alerts the issue lists -----------------------------------------------------------------

@pytest.mark.parametrize("name", ["dead_letters", "failed_jobs", "timed_out_jobs", "lock_held_too_long", "gateway_silent"])
def test_alert_policy_exists_and_notifies_the_channels_variable(name):
    policy = resources("google_monitoring_alert_policy")[name]
    assert policy["notification_channels"] == "${var.alert_notification_channels}"
    assert policy["conditions"] and policy["documentation"]


def test_log_metrics_are_declared_from_the_list():
    res = resources("google_logging_metric")["archsync"]
    assert res["for_each"] == "${local.log_metrics}"
    # The evaluator and the integration test assume label key == the JSON field it comes from.
    assert res["label_extractors"] == '${{for key, _ in each.value.labels : key => "EXTRACT(jsonPayload.${key})"}}'
    assert "EXTRACT(jsonPayload.${each.value.value})" in res["value_extractor"]


# --- filters: understood, and naming records the code writes ------------------------------------

EVENTS = {v for k, v in vars(metrics).items() if k.isupper() and isinstance(v, str) and v.startswith("archsync.")}


@pytest.mark.parametrize("name", sorted(log_metrics()))
def test_each_filter_selects_an_event_the_code_writes(name):
    metric = log_metrics()[name]
    compile_filter(metric.filter)  # raises UnsupportedFilter for syntax the evaluator does not know
    events = re.findall(r'jsonPayload\.event="([^"]+)"', metric.filter)
    assert len(events) == 1 and events[0] in EVENTS, (name, events, sorted(EVENTS))
    assert not set(metric.labels) & PATIENT_FIELDS, name
    assert 1 <= len(metric.labels) <= 10, name  # Cloud Logging: at most 10 labels per metric
    assert all(re.fullmatch(r"[a-z][a-z0-9_]{0,99}", k) for k in metric.labels), name


def test_evaluator():
    f = compile_filter('jsonPayload.event="archsync.job_finished" AND jsonPayload.outcome="COMPLETED"')
    assert f({"event": "archsync.job_finished", "outcome": "COMPLETED", "other": 1})
    assert not f({"event": "archsync.job_finished", "outcome": "FAILED"})
    assert not f({"event": "archsync.job_finished"})
    assert not f({"outcome": "COMPLETED"})
    assert compile_filter('jsonPayload.a.b="x\\"y"')({"a": {"b": 'x"y'}})
    assert compile_filter('jsonPayload.flag="true"')({"flag": True})
    for unsupported in ('jsonPayload.event:"x"', 'jsonPayload.event="x" OR jsonPayload.b="y"', 'severity>=ERROR',
                        'NOT jsonPayload.a="b"', 'jsonPayload.a=b'):
        with pytest.raises(UnsupportedFilter):
            compile_filter(unsupported)
    assert extracted_field("EXTRACT(jsonPayload.held_seconds)") == "held_seconds"
    with pytest.raises(UnsupportedFilter):
        extracted_field("REGEXP_EXTRACT(jsonPayload.x, \"(.*)\")")

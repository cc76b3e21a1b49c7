"""The agent's Result Endpoint resilience (issue 11 item 5): a final result is re-posted with capped
exponential backoff for up to ``result_retry.max_seconds`` (a fake clock stands in for the waits),
progress reports get a few quick tries, refusals end at once, and stopping ends a wait. Posts go
over real HTTP to a scripted loopback server."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from gateway_agent.config import ConfigError, parse
from gateway_agent.results import ResultNotDelivered, ResultRefused, ResultReporter, RetryPolicy
from tests.support import local_key_file

SA_KEY = local_key_file()  # a real key file: the config takes only what a download gives

JOB = {"job_id": "archive-" + "a" * 32, "attempt": 1, "facility_group_id": "fg-1", "gateway_id": "gw-1"}


class Endpoint:
    """Answers each POST with the next scripted status (then 200); "drop" closes the connection."""

    def __init__(self, script):
        self.script, self.posts = list(script), []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                outer.posts.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                status = outer.script.pop(0) if outer.script else 200
                if status == "drop":
                    self.close_connection = True
                    return
                body = json.dumps({"outcome": "applied"} if status == 200 else {"error": {"code": "x"}}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_port}/"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self):
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def endpoint():
    made = []

    def make(script):
        made.append(Endpoint(script))
        return made[-1]

    yield make
    for e in made:
        e.stop()


class FakeTime:
    def __init__(self):
        self.now, self.waits = 0.0, []

    def sleep(self, seconds):
        self.waits.append(seconds)
        self.now += seconds

    def monotonic(self):
        return self.now


def reporter(url, t, retry=RetryPolicy(initial_seconds=1, max_interval_seconds=60, max_seconds=2700), **kw):
    return ResultReporter(url, "key", timeout=5, retry=retry, sleep=t.sleep, monotonic=t.monotonic, rand=lambda: 1.0, **kw)


def test_a_final_result_outlasts_a_30_minute_outage_with_capped_backoff(endpoint):
    """About 30 minutes of 503s and dropped connections (by the fake clock), then the endpoint is back."""
    t = FakeTime()
    ep = endpoint([503, "drop"] * 15 + [503] * 6)  # 36 failures: 63 s, then one try a minute
    assert reporter(ep.url, t).post(JOB, "COMPLETED", patient=True) == "applied"
    assert len(ep.posts) == 37 and all(p["state"] == "COMPLETED" for p in ep.posts)
    assert t.waits[:7] == [1, 2, 4, 8, 16, 32, 60] and max(t.waits) == 60  # capped exponential
    assert 30 * 60 < t.now < 45 * 60


def test_a_final_result_gives_up_after_max_seconds(endpoint):
    t = FakeTime()
    ep = endpoint([503] * 1000)
    with pytest.raises(ResultNotDelivered, match="HTTP 503"):
        reporter(ep.url, t, RetryPolicy(1, 60, 600)).post(JOB, "FAILED", "boom", patient=True)
    assert t.now == 600  # the last wait is cut to what is left


def test_backoff_is_jittered_between_half_and_all_of_the_interval():
    policy = RetryPolicy(1, 60, 2700)
    assert policy.delay(1, lambda: 0.0) == 0.5 and policy.delay(1, lambda: 1.0) == 1.0
    assert policy.delay(100, lambda: 0.0) == 30 and policy.delay(100, lambda: 1.0) == 60


def test_a_progress_report_gets_three_quick_tries(endpoint):
    t = FakeTime()
    ep = endpoint([503] * 10)
    with pytest.raises(ResultNotDelivered):
        reporter(ep.url, t).post(JOB, "IN_PROGRESS")
    assert len(ep.posts) == 3 and t.waits == [0.5, 1.0]


@pytest.mark.parametrize("status", [400, 404, 413, 422])
def test_a_refusal_for_good_ends_at_once(endpoint, status):
    t = FakeTime()
    ep = endpoint([status])
    with pytest.raises(ResultRefused):
        reporter(ep.url, t).post(JOB, "COMPLETED", patient=True)
    assert len(ep.posts) == 1 and t.waits == []


def test_stopping_the_agent_ends_the_wait(endpoint):
    ep = endpoint([503] * 1000)
    stop = threading.Event()
    r = ResultReporter(ep.url, "key", timeout=5, retry=RetryPolicy(30, 60, 2700), stop=stop)
    threading.Timer(0.5, stop.set).start()
    with pytest.raises(ResultNotDelivered, match="agent stopping"):
        r.post(JOB, "COMPLETED", patient=True)
    assert len(ep.posts) == 1


def _delivery() -> dict:
    return {"name": "gw", "project_id": "p", "subscription_id": "s", "result_endpoint_url": "https://x/r",
            "result_endpoint_secure_key": "k", "service_account_json": SA_KEY, "active": True}


def test_result_retry_config_defaults_outlast_30_minutes_and_are_validated():
    cfg = parse({"job_deliveries": [_delivery()]})
    assert cfg.result_retry.max_seconds >= 30 * 60 + 10 * 60
    cfg = parse({"job_deliveries": [_delivery()], "result_retry": {"initial_seconds": 0.5, "max_interval_seconds": 5,
                                                                   "max_seconds": 120}})
    assert cfg.result_retry == RetryPolicy(0.5, 5, 120)
    with pytest.raises(ConfigError, match=r"result_retry.max_seconds: must be a positive number"):
        parse({"job_deliveries": [_delivery()], "result_retry": {"max_seconds": 0}})
    with pytest.raises(ConfigError, match=r"result_retry: unknown fields \['colour'\]"):
        parse({"job_deliveries": [_delivery()], "result_retry": {"colour": 1}})

"""Cloud Function ``on_job_result``: the Result Endpoint URL gateways POST signed results to, and
``<Result Endpoint URL>/heartbeat`` their signed heartbeats."""
import os

import functions_framework

from shared import wiring
from shared.clock import SystemClock
from shared.http import JSON, HttpError, guarded, install_json_errors, json_response, require_content
from shared.services.results import ResultService
from shared.settings import Settings

NAME = "on_job_result"
MAX_BODY = 64 * 1024
install_json_errors(functions_framework.errorhandler, NAME)  # the framework's own answers are JSON too


@functions_framework.http
def on_job_result(request):
    def handle():
        if request.method != "POST":
            raise HttpError(405, "method_not_allowed", "POST a job result", headers={"Allow": "POST"})
        if (request.content_length or 0) > MAX_BODY:
            raise HttpError(413, "too_large", "result body too large")
        body = request.get_data(cache=False)
        require_content(request.headers.get("Content-Type"), body, (JSON,))
        settings = Settings.from_env(os.environ, function=NAME)
        store = wiring.firestore_store(settings)
        service = ResultService(store, wiring.secret_store(settings), SystemClock(),
                                settings.timeout_policy, settings.signature_max_skew_seconds,
                                followups=lambda: wiring.followups(settings), directory=store, health=store)
        if request.path.rstrip("/").endswith("/heartbeat"):  # <Result Endpoint URL>/heartbeat (issue 15 item 3)
            return json_response({"outcome": service.heartbeat(request.headers, body)})
        t = service.handle(request.headers, body)
        job = t.job
        return json_response({"outcome": t.outcome, "job_state": job.state.value if job else None})

    return guarded(handle, NAME)

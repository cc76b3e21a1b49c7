"""Cloud Function ``on_job_result``: the Result Endpoint URL gateways POST signed results to."""
import os

import functions_framework

from shared import wiring
from shared.clock import SystemClock
from shared.http import error, guarded, json_response
from shared.services.results import ResultService
from shared.settings import Settings

NAME = "on_job_result"
MAX_BODY = 64 * 1024


@functions_framework.http
def on_job_result(request):
    if request.method != "POST":
        return error(405, "method_not_allowed", "POST a job result")
    if (request.content_length or 0) > MAX_BODY:
        return error(413, "too_large", "result body too large")
    settings = Settings.from_env(os.environ)

    def handle():
        service = ResultService(wiring.firestore_store(settings), wiring.secret_store(settings), SystemClock(),
                                settings.timeout_policy, settings.signature_max_skew_seconds,
                                followups=lambda: wiring.followups(settings))
        t = service.handle(request.headers, request.get_data(cache=False))
        job = t.job
        return json_response({"outcome": t.outcome, "job_state": job.state.value if job else None})

    return guarded(handle, NAME)

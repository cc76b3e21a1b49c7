"""Cloud Function ``sweep_jobs``: run by Cloud Scheduler (HTTP POST, OIDC-authenticated)."""
import os

import functions_framework

from shared import wiring
from shared.clock import SystemClock
from shared.http import HttpError, guarded, install_json_errors, json_response, require_content
from shared.services.sweeper import SweepService
from shared.settings import Settings

NAME = "sweep_jobs"
install_json_errors(functions_framework.errorhandler, NAME)  # the framework's own answers are JSON too


@functions_framework.http
def sweep_jobs(request):
    def handle():
        if request.method != "POST":
            raise HttpError(405, "method_not_allowed", "POST to run a sweep", headers={"Allow": "POST"})
        require_content(request.headers.get("Content-Type"), request.get_data(cache=False), ())
        settings = Settings.from_env(os.environ, function=NAME)
        store = wiring.firestore_store(settings)
        report = SweepService(store, store, wiring.job_publisher(settings), SystemClock(), settings.sweep_batch_size,
                              provisioner=wiring.provisioner(settings), followups=wiring.followups(settings),
                              health=store, gateway_silent_seconds=settings.gateway_silent_seconds,
                              lock_overdue_seconds=settings.lock_overdue_seconds).run()
        return json_response({"timed_out": report.timed_out, "held_failed": report.held_failed, "republished": report.republished,
                              "gateways_finished": report.gateways_finished, "errors": report.errors})

    return guarded(handle, NAME)

"""Cloud Function ``sweep_jobs``: run by Cloud Scheduler (HTTP POST, OIDC-authenticated)."""
import os

import functions_framework

from shared import wiring
from shared.clock import SystemClock
from shared.http import error, guarded, json_response
from shared.services.sweeper import SweepService
from shared.settings import Settings

NAME = "sweep_jobs"


@functions_framework.http
def sweep_jobs(request):
    if request.method != "POST":
        return error(405, "method_not_allowed", "POST to run a sweep")
    settings = Settings.from_env(os.environ)

    def handle():
        store = wiring.firestore_store(settings)
        report = SweepService(store, store, wiring.job_publisher(settings), SystemClock(), settings.sweep_batch_size,
                              provisioner=wiring.provisioner(settings), followups=wiring.followups(settings)).run()
        return json_response({"timed_out": report.timed_out, "held_failed": report.held_failed, "republished": report.republished,
                              "gateways_finished": report.gateways_finished, "errors": report.errors})

    return guarded(handle, NAME)

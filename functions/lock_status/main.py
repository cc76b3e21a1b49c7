"""Cloud Function ``lock_status``: GET /v1/facility-groups/{fg}/exams/{exam}/lock for the platform
(callers authenticate with IAM: only the platform's service account may invoke it)."""
import os
import re

import functions_framework

from shared import wiring
from shared.clock import iso
from shared.domain.models import LOCKED_ACTIONS
from shared.http import HttpError, guarded, install_json_errors, json_response, require_content
from shared.services.locks import LockService
from shared.settings import Settings

NAME = "lock_status"
_PATH = re.compile(r"^/v1/facility-groups/([A-Za-z0-9][A-Za-z0-9._:-]{0,127})/exams/([A-Za-z0-9][A-Za-z0-9._:-]{0,127})/lock$")
install_json_errors(functions_framework.errorhandler, NAME)  # the framework's own answers are JSON too


@functions_framework.http
def lock_status(request):
    def handle():
        if request.method != "GET":
            raise HttpError(405, "method_not_allowed", "GET the lock status", headers={"Allow": "GET"})
        match = _PATH.match(request.path)
        if not match:
            raise HttpError(400, "bad_path", "expected /v1/facility-groups/{facility_group_id}/exams/{exam_id}/lock")
        require_content(request.headers.get("Content-Type"), request.get_data(cache=False), ())
        settings = Settings.from_env(os.environ, function=NAME)
        status = LockService(wiring.firestore_store(settings)).status(*match.groups())
        return json_response({
            "facility_group_id": status.facility_group_id,
            "exam_id": status.exam_id,
            "locked": status.locked,
            "message": status.message,
            "blocked_actions": list(LOCKED_ACTIONS) if status.locked else [],
            "jobs": [{"job_id": h.job_id, "destination_id": h.destination_id, "destination_name": h.destination_name,
                      "trigger_status": h.trigger_status, "state": h.state.value, "queued_at": iso(h.queued_at)}
                     for h in status.holders],
        })

    return guarded(handle, NAME)

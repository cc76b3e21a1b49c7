"""Cloud Function ``on_exam_status_changed``: Pub/Sub CloudEvent from the exam-status topic."""
import os

import functions_framework

from shared import contracts, wiring
from shared.clock import SystemClock
from shared.domain.messages import exam_status_changed
from shared.services.archive_trigger import ArchiveTriggerService
from shared.services.dead_letter import run_pubsub
from shared.settings import Settings

NAME = "on_exam_status_changed"


@functions_framework.cloud_event
def on_exam_status_changed(cloud_event) -> None:
    settings = Settings.from_env(os.environ, function=NAME)
    store = wiring.firestore_store(settings)
    service = ArchiveTriggerService(store, store, wiring.job_publisher(settings), SystemClock(), settings.timeout_policy)
    run_pubsub(cloud_event, contracts.EXAM_STATUS_CHANGED, lambda p: service.handle(exam_status_changed(p)),
               wiring.dead_letter(settings, NAME))

"""Cloud Function ``on_study_changed``: Pub/Sub CloudEvent from the study-changed topic."""
import os

import functions_framework

from shared import contracts, wiring
from shared.domain.messages import study_changed
from shared.services.dead_letter import run_pubsub
from shared.settings import Settings

NAME = "on_study_changed"


@functions_framework.cloud_event
def on_study_changed(cloud_event) -> None:
    settings = Settings.from_env(os.environ, function=NAME)
    service = wiring.study_change_service(settings)
    run_pubsub(cloud_event, contracts.STUDY_CHANGED, lambda p: service.handle(study_changed(p)),
               wiring.dead_letter(settings, NAME))

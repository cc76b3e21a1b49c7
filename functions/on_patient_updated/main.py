"""Cloud Function ``on_patient_updated``: Pub/Sub CloudEvent from the patient-updated topic."""
import os

import functions_framework

from shared import contracts, wiring
from shared.domain.messages import patient_updated
from shared.services.dead_letter import run_pubsub
from shared.settings import Settings

NAME = "on_patient_updated"


@functions_framework.cloud_event
def on_patient_updated(cloud_event) -> None:
    settings = Settings.from_env(os.environ, function=NAME)
    service = wiring.patient_update_service(settings)
    run_pubsub(cloud_event, contracts.PATIENT_UPDATED, lambda p: service.handle(patient_updated(p)),
               wiring.dead_letter(settings, NAME))

"""Cloud Function ``on_facility_changed``: Pub/Sub CloudEvent from the facility-changed topic (the
platform's facility groups and facilities: id, name, Send ADT)."""
import os

import functions_framework

from shared import contracts, wiring
from shared.services.dead_letter import run_pubsub
from shared.settings import Settings

NAME = "on_facility_changed"


@functions_framework.cloud_event
def on_facility_changed(cloud_event) -> None:
    settings = Settings.from_env(os.environ, function=NAME)
    service = wiring.facility_sync_service(settings)
    run_pubsub(cloud_event, contracts.FACILITY_CHANGED, service.handle, wiring.dead_letter(settings, NAME))

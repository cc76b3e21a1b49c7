"""Moving a not-yet-sent job to another gateway (issue 11 item 15): a retried or released job goes
to its destination's *current* gateway. Its generated objects (rejection note, instance list) live
under the old gateway's prefix, which the new gateway's service account cannot read, so they are
copied under the new gateway's prefix first (same relative name: a repeat rewrites the same
object). The old copies stay with the old gateway until the bucket's retention rule removes them."""
from __future__ import annotations

from ..domain import instance_lists
from ..domain.models import Job
from ..ports import ObjectStore


def rehome(objects: ObjectStore, job: Job, gateway_id: str) -> dict:
    """The fields that route ``job`` to ``gateway_id`` (for dataclasses.replace), after copying
    its objects there. Raises PermanentError if an object no longer exists."""
    changes: dict = {"gateway_id": gateway_id}
    for name in ("object_uri", "instances_uri"):
        uri = getattr(job, name)
        if uri and instance_lists.gateway_of(uri) != gateway_id:
            changes[name] = objects.copy(uri, instance_lists.rehomed_name(uri, gateway_id))
    return changes

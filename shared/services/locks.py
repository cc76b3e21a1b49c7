"""Order lock status of an exam for the platform (rule 3; seed 000 "Important - Recommended Auto
Archive Status")."""
from __future__ import annotations

from ..domain.models import LockHolder, LockStatus
from ..ports import JobStore


class LockService:
    def __init__(self, jobs: JobStore):
        self._jobs = jobs

    def status(self, facility_group_id: str, exam_id: str) -> LockStatus:
        holders = tuple(
            LockHolder(j.id, j.destination_id, j.destination_name, j.trigger_status, j.state, j.queued_at)
            for j in sorted(self._jobs.lock_holders(facility_group_id, exam_id), key=lambda j: j.queued_at)
        )
        return LockStatus(facility_group_id, exam_id, holders)

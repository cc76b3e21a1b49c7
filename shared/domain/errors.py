"""Error taxonomy shared by services and adapters.

Entry points map these to responses: ``TransientError`` -> raise so Pub/Sub redelivers (or 503),
``PermanentError`` -> dead-letter with its reason (or a 4xx), ``NotFound``/``Conflict``/
``ValidationFailed`` -> HTTP 404/409/422.
"""
from __future__ import annotations

from typing import Mapping


class ArchSyncError(Exception):
    """Base class. ``str(err)`` must never contain patient data or secrets."""


class TransientError(ArchSyncError):
    """Retrying later may succeed (network, contention, a dependency briefly down).
    ``retry_after_seconds`` is what an HTTP answer puts in its Retry-After header."""

    retry_after_seconds = 5


class Contention(TransientError):
    """Concurrent writers on one document: a transaction could not commit. Retrying in a moment
    succeeds (another writer just finished)."""

    retry_after_seconds = 1


class PermanentError(ArchSyncError):
    """Retrying can never succeed (malformed input, a resource that is gone)."""


class QuotaExceeded(PermanentError):
    """A Google Cloud quota or hard limit refused the request (service accounts per project,
    principals per IAM policy, topics per project: docs/scale.md). Retrying the same request
    cannot succeed; another placement (another project of the pool) or a quota increase can."""


class MalformedInput(PermanentError):
    """The payload does not satisfy its contract."""


class NotFound(ArchSyncError):
    pass


class Conflict(ArchSyncError):
    pass


class Unauthorized(ArchSyncError):
    pass


class ValidationFailed(ArchSyncError):
    """Field-level validation errors: ``errors`` maps a field name to what is wrong with it."""

    def __init__(self, errors: Mapping[str, str]):
        self.errors = dict(errors)
        super().__init__("; ".join(f"{k}: {v}" for k, v in sorted(self.errors.items())))

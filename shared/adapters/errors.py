"""Translating google-api-core errors into the domain's transient/permanent split, shared by the
adapters that call Google APIs."""
from __future__ import annotations

import contextlib
from typing import Iterator, Optional

from google.api_core import exceptions as gexc

from ..domain.errors import PermanentError, QuotaExceeded, TransientError

TRANSIENT = (
    gexc.ServiceUnavailable,
    gexc.DeadlineExceeded,
    gexc.Aborted,
    gexc.InternalServerError,
    gexc.TooManyRequests,
    gexc.ResourceExhausted,
    gexc.Unknown,
    gexc.BadGateway,
    gexc.GatewayTimeout,
)


# What Google answers when a quota or hard limit (not a rate limit) refuses a request
# (docs/scale.md): IAM 429 RESOURCE_EXHAUSTED "Maximum number of service accounts on project
# reached." (with a RetryInfo of a day); IAM/GCS 400 "The number of members in the policy (N) is
# larger than the maximum allowed size 1,500."; Pub/Sub 429 RESOURCE_EXHAUSTED "Your project has
# exceeded a limit: (type="topics-per-project", ...)". A rate limit (429 "Quota exceeded for quota
# metric ... per minute") stays transient.
_QUOTA_MARKERS = (
    "maximum number of service accounts",
    "number of members in the policy",
    "exceeded a limit",
)


def is_quota_exceeded(e: BaseException) -> bool:
    """Whether ``e`` is Google's refusal for a resource quota or limit (never retried)."""
    if not isinstance(e, (gexc.ResourceExhausted, gexc.TooManyRequests, gexc.BadRequest, gexc.InvalidArgument)):
        return False
    text = str(getattr(e, "message", "") or e).lower()
    return any(m in text for m in _QUOTA_MARKERS)


@contextlib.contextmanager
def translated(what: str, *, missing_ok: bool = False, exists_ok: bool = False) -> Iterator[None]:
    """Run a cloud call: NotFound is success when ``missing_ok`` (idempotent deletes), AlreadyExists
    is success when ``exists_ok`` (idempotent creates of deterministically named resources)."""
    try:
        yield
    except gexc.NotFound as e:
        if not missing_ok:
            raise PermanentError(f"{what}: not found") from e
    except gexc.AlreadyExists as e:
        if not exists_ok:
            raise PermanentError(f"{what}: already exists") from e
    except gexc.GoogleAPICallError as e:
        if is_quota_exceeded(e):
            raise QuotaExceeded(f"{what}: {_limit_reason(e)}") from e
        if isinstance(e, TRANSIENT):
            raise TransientError(f"{what}: {type(e).__name__}") from e
        if isinstance(e, (gexc.InvalidArgument, gexc.FailedPrecondition, gexc.BadRequest)):
            raise PermanentError(f"{what}: {type(e).__name__}") from e
        # Permission and configuration problems: an operator can fix them, so let callers retry.
        raise TransientError(f"{what}: {type(e).__name__}") from e


def _limit_reason(e: gexc.GoogleAPICallError) -> str:
    """Google's own wording of the limit (resource counts and names only, never patient data)."""
    return str(getattr(e, "message", "") or type(e).__name__)[:300]


def policy_retry_kind(e: Exception) -> Optional[str]:
    """Which retryable situation of an IAM policy read-modify-write ``e`` is (shared.adapters.retrying):
    a stale etag (GCS: 412 Precondition Failed; IAM and Pub/Sub: 409 ABORTED "concurrent policy
    changes"), or a member that IAM does not know yet (a fresh service account: 400 or 404 "...
    does not exist", as the Terraform Google provider also treats it); None for anything else."""
    from .retrying import NOT_YET_VISIBLE, STALE_ETAG

    if isinstance(e, (gexc.PreconditionFailed, gexc.Aborted, gexc.Conflict)):
        return STALE_ETAG
    if isinstance(e, (gexc.BadRequest, gexc.NotFound)) and "does not exist" in str(getattr(e, "message", "") or e):
        return NOT_YET_VISIBLE
    return None


def is_commit_contention(e: BaseException) -> bool:
    """Whether ``e`` (or what it was raised from) is Firestore contention: google-cloud-firestore
    retries a transaction whose commit a concurrent writer aborted ``max_attempts`` times, then
    raises ``ValueError("Failed to commit transaction in N attempts.")`` (firestore_v1/transaction.py,
    _EXCEED_ATTEMPTS_TEMPLATE); a rollback failing after that is raised with the ValueError as its
    context. ABORTED itself is Firestore's answer to lock contention."""
    seen: Optional[BaseException] = e
    for _ in range(4):  # the error, what it came from, and a little further
        if seen is None:
            return False
        if isinstance(seen, gexc.Aborted) or (isinstance(seen, ValueError)
                                             and str(seen).startswith("Failed to commit transaction")):
            return True
        seen = seen.__cause__ or seen.__context__
    return False

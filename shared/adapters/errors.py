"""Translating google-api-core errors into the domain's transient/permanent split, shared by the
adapters that call Google APIs."""
from __future__ import annotations

import contextlib
from typing import Iterator

from google.api_core import exceptions as gexc

from ..domain.errors import PermanentError, TransientError

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
    except TRANSIENT as e:
        raise TransientError(f"{what}: {type(e).__name__}") from e
    except (gexc.InvalidArgument, gexc.FailedPrecondition, gexc.BadRequest) as e:
        raise PermanentError(f"{what}: {type(e).__name__}") from e
    except gexc.GoogleAPICallError as e:
        # Permission and configuration problems: an operator can fix them, so let callers retry.
        raise TransientError(f"{what}: {type(e).__name__}") from e

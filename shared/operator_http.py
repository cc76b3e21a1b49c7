"""Routing of the platform team's operations API (issue 15 item 4) under /v1/operations/, served
by the admin_api function beside the facility groups' admin API but with its own authorisation:
the bearer JWT must carry the operator role (shared/auth.py OPERATOR_CLAIM). A facility-group
administrator's valid token gets 403; no token or a bad one gets 401, as on every admin path."""
from __future__ import annotations

import re
from typing import Any, Callable, Mapping, Optional

from .auth import Caller, JwtVerifier
from .http import JSON, error, json_response, match_route
from .services.redrive import RedriveService

PREFIX = "/v1/operations/"
MAX_BODY = 64 * 1024
_DEAD_LETTER_ID = r"([A-Za-z0-9_-]{1,120})"

Handler = Callable[[RedriveService, Caller, tuple, Any, Mapping[str, str]], tuple]

ROUTES: list[tuple[re.Pattern, dict[str, Handler]]] = [
    (re.compile(r"^/v1/operations/dead-letters$"), {
        "GET": lambda s, c, a, b, q: json_response(s.list(q)),
    }),
    (re.compile(r"^/v1/operations/dead-letters/replay$"), {
        "POST": lambda s, c, a, b, q: json_response(s.replay(b, _operator_label(c))),
    }),
    (re.compile(rf"^/v1/operations/dead-letters/{_DEAD_LETTER_ID}$"), {
        "GET": lambda s, c, a, b, q: json_response(s.get(*a)),
    }),
]

# Operations whose request body openapi.yaml declares (tests/unit/test_redrive_unit.py checks it).
REQUEST_BODIES: dict[tuple[str, str], tuple[str, ...]] = {
    ("POST", r"^/v1/operations/dead-letters/replay$"): (JSON,),
}


def handles(path: str) -> bool:
    return path.startswith(PREFIX) or path == PREFIX.rstrip("/")


def _operator_label(caller: Caller) -> str:
    return f"{caller.user_id} ({caller.display_name})" if caller.display_name else caller.user_id


def dispatch(service_factory: Callable[[], RedriveService], verifier: JwtVerifier, method: str, path: str,
             headers: Mapping[str, str], raw_body: bytes, args: Optional[Mapping[str, str]] = None) -> tuple:
    caller = verifier.verify(headers)
    if not caller.operator:
        # Not hidden as a 404: the path is public (openapi.yaml) and says nothing about a tenant.
        return error(403, "forbidden", "this operation is for the platform team (operator role required)")
    handler, groups, body, query = match_route(ROUTES, REQUEST_BODIES, method, path, headers, raw_body, args, MAX_BODY,
                                               body_required=True)
    return handler(service_factory(), caller, groups, body, query)

"""Routing of the platform team's operations API (issue 15 item 4) under /v1/operations/, served
by the admin_api function beside the facility groups' admin API but with its own authorisation:
the bearer JWT must carry the operator role (shared/auth.py OPERATOR_CLAIM). A facility-group
administrator's valid token gets 403; no token or a bad one gets 401, as on every admin path."""
from __future__ import annotations

import re
from typing import Any, Callable, Mapping, Optional

from .auth import Caller, JwtVerifier
from .domain.errors import MalformedInput, NotFound
from .domain.json_input import parse_json
from .http import JSON, HttpError, error, json_response, require_content
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
    for pattern, methods in ROUTES:
        match = pattern.match(path)
        if match is None:
            continue
        handler = methods.get(method)
        if handler is None:
            allowed = ", ".join(sorted(methods))
            raise HttpError(405, "method_not_allowed", f"allowed: {allowed}", headers={"Allow": allowed})
        if len(raw_body) > MAX_BODY:
            return error(413, "too_large", "request body too large")
        declared = REQUEST_BODIES.get((method, pattern.pattern), ())
        require_content(headers.get("Content-Type"), raw_body, declared)
        if args and any(len(v) > 1 for v in getattr(args, "listvalues", lambda: [])()):
            raise MalformedInput("each query parameter may be given once")
        query = {k: v for k, v in (args or {}).items()}
        body = None
        if declared:
            if not raw_body:
                raise MalformedInput("request body required")
            body = parse_json(raw_body)
        return handler(service_factory(), caller, match.groups(), body, query)
    raise NotFound("no such resource")

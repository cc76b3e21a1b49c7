"""JSON responses and error mapping for HTTP entry points (flask is provided by
functions-framework). Bad input is a 4xx with a JSON body, never a 500; every answer, including
the framework's own and an unexpected failure's, is JSON (issue 11 items 7 and 13)."""
from __future__ import annotations

import json
import os
import traceback
import uuid
import re
from typing import Any, Callable, Mapping, Optional

from . import logs
from .domain.errors import (
    ArchSyncError,
    Conflict,
    MalformedInput,
    NotFound,
    PermanentError,
    TransientError,
    Unauthorized,
    ValidationFailed,
)

Response = tuple[Any, int, dict[str, str]]
JSON = "application/json"


class HttpError(Exception):
    """An answer decided at the HTTP layer (405, 413, 415): status, code and message."""

    def __init__(self, status: int, code: str, message: str, headers: Optional[Mapping[str, str]] = None):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = dict(headers or {})


def json_response(body: Any, status: int = 200) -> Response:
    return json.dumps(body, default=str), status, {"Content-Type": JSON, "Cache-Control": "no-store"}


def error(status: int, code: str, message: str, **extra: Any) -> Response:
    return json_response({"error": {"code": code, "message": message, **extra}}, status)


def guarded(handler: Callable[[], Response], function_name: str) -> Response:
    """Run ``handler`` and map errors to HTTP answers."""
    try:
        return handler()
    except HttpError as e:
        body, status, headers = error(e.status, e.code, e.message)
        return body, status, {**headers, **e.headers}
    except Unauthorized as e:
        logs.warning("unauthorized request", function=function_name, why=str(e))
        return error(401, "unauthorized", "authentication failed")
    except MalformedInput as e:
        return error(400, "malformed", str(e))
    except ValidationFailed as e:
        return error(422, "invalid", "invalid fields", fields=e.errors)
    except NotFound as e:
        return error(404, "not_found", str(e))
    except Conflict as e:
        return error(409, "conflict", str(e))
    except TransientError as e:
        logs.warning("transient failure", function=function_name, why=str(e))
        # Transient errors name a step or a service, never patient data or key material.
        body, status, headers = error(503, "unavailable", f"{e} (temporarily unavailable, retry later)")
        # RFC 9110 10.2.3: when to try again (contention clears in a moment, an outage later).
        return body, status, {**headers, "Retry-After": str(e.retry_after_seconds)}
    except Exception as e:  # last resort: a bug or an unforeseen failure still answers JSON
        return internal_error(e, function_name)


def internal_error(e: BaseException, function_name: str) -> Response:
    """A JSON 500 carrying an id that is also logged with the exception's type and stack (file,
    line, function only: an exception's message may quote patient data or key material, so only
    our own errors' messages, which never do, are logged)."""
    error_id = uuid.uuid4().hex
    frames = [f"{os.path.basename(f.filename)}:{f.lineno}:{f.name}" for f in traceback.extract_tb(e.__traceback__)]
    logs.error("unexpected failure", function=function_name, error_id=error_id, exception=type(e).__name__,
               why=str(e) if isinstance(e, ArchSyncError) else None, stack=frames[-12:])
    message = "internal error; quote error_id when reporting it"
    if isinstance(e, PermanentError):
        message = "the request could not be completed; quote error_id when reporting it"
    return error(500, "internal", message, error_id=error_id)


def install_json_errors(register: Callable[..., Any], function_name: str) -> None:
    """Make the framework's own answers JSON as well: its 404 for /robots.txt and /favicon.ico,
    werkzeug's HTTP errors, and anything raised outside ``guarded``. ``register`` is
    ``functions_framework.errorhandler`` (a flask errorhandler of the app being built)."""

    def handle(e: Exception) -> Response:
        from werkzeug.exceptions import HTTPException

        if isinstance(e, HTTPException) and e.code is not None and e.code < 500:
            return error(e.code, (e.name or "error").lower().replace(" ", "_"), e.name or "error")
        return internal_error(e, function_name)

    register(Exception)(handle)


def media_type(content_type: Optional[str]) -> tuple[str, dict[str, str]]:
    """``text/plain; charset=utf-8`` -> ("text/plain", {"charset": "utf-8"})."""
    mime, _, rest = (content_type or "").partition(";")
    params = {}
    for part in rest.split(";"):
        k, _, v = part.partition("=")
        if k.strip():
            params[k.strip().lower()] = v.strip().strip('"').lower()
    return mime.strip().lower(), params


def require_content(content_type: Optional[str], body: bytes, declared: tuple[str, ...]) -> None:
    """Refuse (415) a body whose media type the OpenAPI document does not declare for the
    operation. ``declared`` empty: the operation takes no body, so any non-empty body is refused.
    JSON is UTF-8 (RFC 8259 8.1): another charset parameter is refused too. An empty body with a
    Content-Type is let through (clients send the header out of habit; the body check follows)."""
    if not body:
        return
    if not declared:
        raise HttpError(415, "unsupported_media_type", "this operation takes no request body")
    mime, params = media_type(content_type)
    if mime not in declared or params.get("charset", "utf-8") != "utf-8":
        raise HttpError(415, "unsupported_media_type", f"request body must be {' or '.join(declared)} (UTF-8)")


def match_route(routes: list[tuple[re.Pattern, dict[str, Any]]], request_bodies: Mapping[tuple[str, str], tuple[str, ...]],
                method: str, path: str, headers: Mapping[str, str], raw_body: bytes, args: Optional[Mapping[str, str]],
                max_body: int, on_match: Callable[[re.Match], None] = lambda match: None,
                body_required: bool = False) -> tuple[Any, tuple, Any, dict]:
    """(handler, the path's groups, the parsed JSON body or None, the query) of the route ``path``
    matches, after the checks every admin path makes in this order: ``on_match`` (e.g. the
    caller's group), 405 with Allow, 413, 415 (``request_bodies``: what openapi.yaml declares),
    a repeated query parameter, a missing body (``body_required``). NotFound when no route matches."""
    from .domain.json_input import parse_json

    for pattern, methods in routes:
        match = pattern.match(path)
        if match is None:
            continue
        on_match(match)
        handler = methods.get(method)
        if handler is None:
            allowed = ", ".join(sorted(methods))
            raise HttpError(405, "method_not_allowed", f"allowed: {allowed}", headers={"Allow": allowed})
        if len(raw_body) > max_body:
            raise HttpError(413, "too_large", "request body too large")
        declared = request_bodies.get((method, pattern.pattern), ())
        require_content(headers.get("Content-Type"), raw_body, declared)
        if args and any(len(v) > 1 for v in getattr(args, "listvalues", lambda: [])()):
            raise MalformedInput("each query parameter may be given once")
        query = {k: v for k, v in (args or {}).items()}
        if declared and not raw_body and body_required:
            raise MalformedInput("request body required")
        body = parse_json(raw_body) if declared and raw_body else None
        return handler, match.groups(), body, query
    raise NotFound("no such resource")

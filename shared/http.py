"""JSON responses and error mapping for HTTP entry points (flask is provided by
functions-framework). Bad input is a 4xx with a JSON body, never a 500."""
from __future__ import annotations

import json
from typing import Any, Callable

from . import logs
from .domain.errors import Conflict, MalformedInput, NotFound, TransientError, Unauthorized, ValidationFailed


def json_response(body: Any, status: int = 200) -> tuple[str, int, dict[str, str]]:
    return json.dumps(body, default=str), status, {"Content-Type": "application/json", "Cache-Control": "no-store"}


def error(status: int, code: str, message: str, **extra: Any) -> tuple[str, int, dict[str, str]]:
    return json_response({"error": {"code": code, "message": message, **extra}}, status)


def guarded(handler: Callable[[], tuple[str, int, dict[str, str]]], function_name: str) -> tuple[str, int, dict[str, str]]:
    """Run ``handler`` and map domain errors to HTTP answers."""
    try:
        return handler()
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
        return error(503, "unavailable", f"{e} (temporarily unavailable, retry later)")

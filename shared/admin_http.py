"""Routing of the admin API (issue 3) onto AdminService: path and method -> one use case.
Authentication comes first: a request without a valid token learns nothing, not even whether a
path exists."""
from __future__ import annotations

import re
from typing import Any, Callable, Mapping, Optional

from .auth import Caller, JwtVerifier
from .domain.errors import MalformedInput
from .http import JSON, json_response, match_route
from .services.admin import AdminService

_ID = r"([A-Za-z0-9][A-Za-z0-9._:-]{0,127})"
_BASE = rf"^/v1/facility-groups/{_ID}"
MAX_BODY = 64 * 1024

Handler = Callable[[AdminService, Caller, tuple, Any, Mapping[str, str]], tuple]


def _ok(body: Any, status: int = 200) -> tuple:
    return json_response(body, status)


def _no_content(*_: Any) -> tuple:
    return "", 204, {"Cache-Control": "no-store"}


def _download(data: bytes, filename: str, content_type: str) -> tuple:
    return data, 200, {"Content-Type": content_type, "Cache-Control": "no-store",
                       "Content-Disposition": f'attachment; filename="{filename}"'}


ROUTES: list[tuple[re.Pattern, dict[str, Handler]]] = [
    # Platform master data the forms need (read-only here: it arrives as facility-changed.v1 events).
    (re.compile(r"^/v1/facility-groups$"), {
        "GET": lambda s, c, a, b, q: _ok({"facility_groups": s.list_facility_groups(c)}),
    }),
    (re.compile(_BASE + r"/facilities$"), {
        "GET": lambda s, c, a, b, q: _ok({"facilities": s.list_facilities(c, *a)}),
    }),
    (re.compile(_BASE + r"/gateways$"), {
        "GET": lambda s, c, a, b, q: _ok({"gateways": s.list_gateways(c, *a)}),
        "POST": lambda s, c, a, b, q: _ok(s.create_gateway(c, *a, b), 201),
    }),
    (re.compile(_BASE + rf"/gateways/{_ID}$"), {
        "GET": lambda s, c, a, b, q: _ok(s.get_gateway(c, *a)),
        "PATCH": lambda s, c, a, b, q: _ok(s.update_gateway(c, *a, b)),
        "DELETE": lambda s, c, a, b, q: (s.delete_gateway(c, *a), _no_content())[1],
    }),
    (re.compile(_BASE + rf"/gateways/{_ID}/service-account-key$"), {
        "GET": lambda s, c, a, b, q: _download(s.service_account_key(c, *a), f"{a[1]}-service-account.json", "application/json"),
    }),
    (re.compile(_BASE + rf"/gateways/{_ID}/service-account-key/rotate$"), {
        "POST": lambda s, c, a, b, q: _ok(s.rotate_service_account_key(c, *a)),
    }),
    (re.compile(_BASE + rf"/gateways/{_ID}/result-endpoint-key$"), {
        "GET": lambda s, c, a, b, q: _download(s.result_endpoint_key(c, *a), f"{a[1]}-result-endpoint-key.txt", "text/plain"),
    }),
    (re.compile(_BASE + rf"/gateways/{_ID}/result-endpoint-key/rotate$"), {
        "POST": lambda s, c, a, b, q: (s.rotate_result_endpoint_key(c, *a, q.get("grace_seconds")), _no_content())[1],
    }),
    (re.compile(_BASE + r"/destinations$"), {
        "GET": lambda s, c, a, b, q: _ok({"destinations": s.list_destinations(c, *a)}),
        "POST": lambda s, c, a, b, q: _ok(s.create_destination(c, *a, b), 201),
    }),
    (re.compile(_BASE + rf"/destinations/{_ID}$"), {
        "GET": lambda s, c, a, b, q: _ok(s.get_destination(c, *a)),
        "PATCH": lambda s, c, a, b, q: _ok(s.update_destination(c, *a, b)),
        "DELETE": lambda s, c, a, b, q: (s.delete_destination(c, *a), _no_content())[1],
    }),
    (re.compile(_BASE + rf"/destinations/{_ID}/activate$"), {
        "POST": lambda s, c, a, b, q: _ok(s.set_destination_active(c, *a, True)),
    }),
    (re.compile(_BASE + rf"/destinations/{_ID}/deactivate$"), {
        "POST": lambda s, c, a, b, q: _ok(s.set_destination_active(c, *a, False)),
    }),
    (re.compile(_BASE + r"/jobs$"), {
        "GET": lambda s, c, a, b, q: _ok(s.jobs.list(c, *a, q)),
    }),
    # The console's Jobs tab (issue 14). These names are not job ids (job ids are <type>-<hex>).
    (re.compile(_BASE + r"/jobs/counts$"), {
        "GET": lambda s, c, a, b, q: _ok(s.jobs.counts(c, *a, q)),
    }),
    (re.compile(_BASE + r"/jobs/per-day$"), {
        "GET": lambda s, c, a, b, q: _ok(s.jobs.per_day(c, *a, q)),
    }),
    (re.compile(_BASE + r"/jobs/bulk-retry$"), {
        "POST": lambda s, c, a, b, q: _ok(s.jobs.bulk_retry(c, *a, b)),
    }),
    (re.compile(_BASE + rf"/jobs/(?!(?:counts|per-day|bulk-retry)$){_ID}$"), {
        "GET": lambda s, c, a, b, q: _ok(s.jobs.get(c, *a, _only(q, "tz").get("tz"))),
    }),
    (re.compile(_BASE + rf"/exams/{_ID}$"), {
        "GET": lambda s, c, a, b, q: _ok(s.jobs.exam(c, *a)),
    }),
    (re.compile(_BASE + rf"/jobs/{_ID}/retry$"), {
        "POST": lambda s, c, a, b, q: _ok(s.jobs.retry(c, *a)),
    }),
    (re.compile(_BASE + rf"/exams/{_ID}/archive-states$"), {
        "GET": lambda s, c, a, b, q: _ok(s.jobs.exam_archive_states(c, *a)),
    }),
]


# The operations whose request body openapi.yaml declares, with its media types; every other
# operation takes no body. A body of another type is refused with 415 (issue 11 item 13);
# tests/unit/test_http_contract.py keeps this table in step with the document.
REQUEST_BODIES: dict[tuple[str, str], tuple[str, ...]] = {
    ("POST", _BASE + r"/gateways$"): (JSON,),
    ("PATCH", _BASE + rf"/gateways/{_ID}$"): (JSON,),
    ("POST", _BASE + r"/destinations$"): (JSON,),
    ("PATCH", _BASE + rf"/destinations/{_ID}$"): (JSON,),
    ("POST", _BASE + r"/jobs/bulk-retry$"): (JSON,),
}


def _only(query: Mapping[str, str], *allowed: str) -> Mapping[str, str]:
    unknown = sorted(set(query) - set(allowed))
    if unknown:
        raise MalformedInput(f"unknown parameter(s): {', '.join(unknown)}")
    return query


def dispatch(service_factory: Callable[[], AdminService], verifier: JwtVerifier, method: str, path: str,
             headers: Mapping[str, str], raw_body: bytes, args: Optional[Mapping[str, str]] = None) -> tuple:
    caller = verifier.verify(headers)

    def in_callers_group(match: re.Match) -> None:
        # A route under a facility group: another group's paths answer 404 before anything else
        # is checked (rule 8), the services check again. The group list has no group in its path.
        if match.groups():
            caller.require_group(match.group(1))

    handler, groups, body, query = match_route(ROUTES, REQUEST_BODIES, method, path, headers, raw_body, args, MAX_BODY,
                                               on_match=in_callers_group)
    return handler(service_factory(), caller, groups, body, query)

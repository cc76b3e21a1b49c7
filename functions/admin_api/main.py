"""Cloud Function ``admin_api``: the admin API the platform's UI calls (gateways, destinations,
keys) for one facility group at a time, authenticated with a bearer JWT; under /v1/operations/, the
platform team's operations (dead-letter redrive), for operator tokens only; and, under /console/,
the Gateway Management console's static files (same origin; they carry no data and need no token)."""
import os
from pathlib import Path

import functions_framework

from shared import console, operator_http, wiring
from shared.admin_http import dispatch
from shared.http import guarded, install_json_errors
from shared.settings import Settings

NAME = "admin_api"
CONSOLE_DIR = Path(__file__).resolve().parent / "console"
install_json_errors(functions_framework.errorhandler, NAME)  # the framework's own answers are JSON too


@functions_framework.http
def admin_api(request):
    def page():
        s = Settings.from_env(os.environ, function=NAME)
        config = console.ConsoleConfig(s.console_authorize_url, s.console_token_url, s.console_client_id, s.console_scope)
        return console.serve(CONSOLE_DIR, config, request.method, request.path)

    if console.is_console_path(request.path):
        return guarded(page, NAME)

    def handle():
        settings = Settings.from_env(os.environ, function=NAME)
        if operator_http.handles(request.path):
            return operator_http.dispatch(lambda: wiring.redrive_service(settings), wiring.jwt_verifier(settings),
                                          request.method, request.path, request.headers,
                                          request.get_data(cache=False), request.args)
        return dispatch(lambda: wiring.admin_service(settings), wiring.jwt_verifier(settings), request.method,
                        request.path, request.headers, request.get_data(cache=False), request.args)

    return guarded(handle, NAME)

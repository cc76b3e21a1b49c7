"""Cloud Function ``admin_api``: the admin API the platform's UI calls (gateways, destinations,
keys) for one facility group at a time, authenticated with a bearer JWT; and, under
/v1/operations/, the platform team's operations (dead-letter redrive), for operator tokens only."""
import os

import functions_framework

from shared import operator_http, wiring
from shared.admin_http import dispatch
from shared.http import guarded, install_json_errors
from shared.settings import Settings

NAME = "admin_api"
install_json_errors(functions_framework.errorhandler, NAME)  # the framework's own answers are JSON too


@functions_framework.http
def admin_api(request):
    def handle():
        settings = Settings.from_env(os.environ, function=NAME)
        if operator_http.handles(request.path):
            return operator_http.dispatch(lambda: wiring.redrive_service(settings), wiring.jwt_verifier(settings),
                                          request.method, request.path, request.headers,
                                          request.get_data(cache=False), request.args)
        return dispatch(lambda: wiring.admin_service(settings), wiring.jwt_verifier(settings), request.method,
                        request.path, request.headers, request.get_data(cache=False), request.args)

    return guarded(handle, NAME)

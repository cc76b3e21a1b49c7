"""The link test of a job delivery (seed 000 Step 3; issue 14 item 2), run by the admin page before
a delivery is saved Active or activated. It really tests the three links:

1. **Service Account File (JSON):** the key gets an access token from its ``token_uri``.
2. **Project ID / Subscription ID:** the subscription exists and the key's account may consume
   it: a zero-wait pull (``return_immediately``, one message) on the agent's own authorized
   channel to ``pubsub_endpoint``. NOT_FOUND and PERMISSION_DENIED tell the two apart. A message
   that comes back is released at once (ack deadline 0): it is redelivered at once, and counts one
   delivery toward the subscription's dead-letter limit (20).
3. **Result Endpoint URL / Secure Key:** a signed probe (``shared/contracts/openapi.yaml``
   ``/job-results``, body ``{"schema_version":"1","probe":"link-test"}``) that the endpoint answers
   ``200 {"outcome":"probe"}`` only with a valid signature, writing nothing. The seed's fields hold
   no facility group, so the probe names the gateway alone (``X-ArchSync-Gateway: -/<gateway id>``);
   the gateway id comes from the Subscription ID (``gateway-pubsub-<gateway id>-sub``, the cloud's
   naming) or, failing that, from the key's account (``archsync-<gateway id>@...``).

Each failure is reported against the field to fix, with the seed's troubleshooting hint ("'Unable
to launch images' error on Gateway device link": SA JSON key incorrect or expired; Pub/Sub
Subscription ID incorrect; Result Endpoint URL or key incorrect). Messages name no secret."""
from __future__ import annotations

import http.client
import json
import logging
import re
import time
import urllib.error
import urllib.request
from typing import Callable, Optional
from urllib.parse import urlparse

from .config import JobDelivery
from .results import sign_headers

log = logging.getLogger("gateway_agent.linktest")

PROBE_BODY = {"schema_version": "1", "probe": "link-test"}
ANY_GROUP = "-"

# The seed's actions (Troubleshooting), shown after each finding.
HINT_SA = "Re-download the SA JSON key from the Gateways tab (SA JSON column) and paste its full contents."
HINT_SUB = "Verify the Subscription ID from the Gateways table's Pub/Sub subscription column, and the Project ID (Account > Connections)."
HINT_RESULT = "Confirm the Result Endpoint values with the Technical support team."

_SUBSCRIPTION = re.compile(r"gateway-pubsub-(gw-[a-z0-9-]+)-sub")
_ACCOUNT = re.compile(r"archsync-(gw-[a-z0-9-]+)@")

PullGuard = Callable[[JobDelivery], None]


def gateway_id_of(d: JobDelivery) -> Optional[str]:
    m = _SUBSCRIPTION.fullmatch(d.subscription_id) or _ACCOUNT.match(str(d.service_account_info.get("client_email", "")))
    return m.group(1) if m else None


class LinkTest:
    def __init__(self, pubsub_endpoint: str, timeout: float = 10.0, pull_guard: Optional[PullGuard] = None):
        self.pubsub_endpoint, self.timeout, self.pull_guard = pubsub_endpoint, timeout, pull_guard

    def run(self, d: JobDelivery) -> dict[str, str]:
        """Field name -> what is wrong and what to do; empty when every link works."""
        problems: dict[str, str] = {}
        if self._token(d, problems):
            self._subscription(d, problems)
        self._result_endpoint(d, problems)
        log.info("link test", extra={"delivery": d.name, "ok": not problems, "fields": sorted(problems)})
        return problems

    # -- 1. the key gets a token -----------------------------------------------------------------
    def _token(self, d: JobDelivery, problems: dict[str, str]) -> bool:
        import google.auth.exceptions
        from google.auth.transport.requests import Request
        from google.oauth2 import service_account

        timeout = self.timeout

        class TimedRequest(Request):
            def __call__(self, url, method="GET", body=None, headers=None, timeout=timeout, **kwargs):
                return super().__call__(url, method, body, headers, timeout, **kwargs)

        token_host = urlparse(str(d.service_account_info.get("token_uri", ""))).netloc or "its token_uri"
        try:
            creds = service_account.Credentials.from_service_account_info(
                d.service_account_info, scopes=["https://www.googleapis.com/auth/pubsub"])
            creds.refresh(TimedRequest())
            return True
        except google.auth.exceptions.RefreshError as e:
            why = _refresh_reason(e)
            problems["service_account_json"] = (f"SA JSON key incorrect or expired: {token_host} refused it ({why}). {HINT_SA}")
        except google.auth.exceptions.TransportError:
            problems["service_account_json"] = (f"The key's token endpoint ({token_host}) cannot be reached from this gateway: "
                                                "check the gateway's network and proxy. " + HINT_SA)
        except (ValueError, KeyError, TypeError):
            problems["service_account_json"] = f"SA JSON key incorrect: its private key cannot be read. {HINT_SA}"
        return False

    # -- 2. the subscription exists and the account may consume it ----------------------------------
    def _subscription(self, d: JobDelivery, problems: dict[str, str]) -> None:
        from google.api_core import exceptions as gexc

        from .agent import subscriber_client

        path = d.subscription_path
        subscriber = subscriber_client(d, self.pubsub_endpoint)
        try:
            resp = subscriber.pull(request={"subscription": path, "max_messages": 1, "return_immediately": True},
                                   retry=None, timeout=self.timeout)
            if resp.received_messages:
                subscriber.modify_ack_deadline(request={"subscription": path, "ack_deadline_seconds": 0,
                                                        "ack_ids": [m.ack_id for m in resp.received_messages]},
                                               retry=None, timeout=self.timeout)
        except gexc.NotFound:
            problems["subscription_id"] = f"Pub/Sub Subscription ID incorrect: {path} does not exist. {HINT_SUB}"
        except gexc.PermissionDenied:
            problems["subscription_id"] = (f"The SA JSON key's account may not consume {path}: the key and the "
                                           f"subscription belong to different gateways. {HINT_SUB} {HINT_SA}")
        except gexc.Unauthenticated:
            problems["service_account_json"] = f"SA JSON key incorrect or expired: Pub/Sub refused its token. {HINT_SA}"
        except gexc.InvalidArgument:
            problems["subscription_id"] = f"Pub/Sub Subscription ID incorrect: {path} is not a valid subscription name. {HINT_SUB}"
        except gexc.GoogleAPICallError as e:
            problems["subscription_id"] = (f"Pub/Sub ({self.pubsub_endpoint}) did not answer the test pull "
                                           f"({type(e).__name__}): check the gateway's network, then try again.")
        finally:
            subscriber.close()
        if self.pull_guard is not None and "subscription_id" not in problems and "service_account_json" not in problems:
            # Where Pub/Sub itself checks no permission (the local stack's emulator), the policy check.
            try:
                self.pull_guard(d)
            except PermissionError:
                problems["subscription_id"] = (f"The SA JSON key's account may not consume {path}: the key and the "
                                               f"subscription belong to different gateways. {HINT_SUB} {HINT_SA}")

    # -- 3. the Result Endpoint answers a signed probe ------------------------------------------------
    def _result_endpoint(self, d: JobDelivery, problems: dict[str, str]) -> None:
        gateway = gateway_id_of(d)
        if gateway is None:
            problems.setdefault("subscription_id", "Pub/Sub Subscription ID incorrect: a gateway's subscription is named "
                                                   f"gateway-pubsub-<gateway id>-sub. {HINT_SUB}")
            return
        body = json.dumps(PROBE_BODY, separators=(",", ":")).encode()
        headers = sign_headers(d.result_endpoint_secure_key, ANY_GROUP, gateway, body, int(time.time()))
        req = urllib.request.Request(d.result_endpoint_url, data=body, method="POST", headers=headers)
        url_host = urlparse(d.result_endpoint_url).netloc
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                try:
                    answer = json.loads(resp.read() or b"{}")
                except ValueError:
                    answer = None
            if not isinstance(answer, dict) or answer.get("outcome") != "probe":
                problems["result_endpoint_url"] = (f"Result Endpoint URL incorrect: {url_host} answered, but not as the "
                                                   f"Result Endpoint does. {HINT_RESULT}")
        except urllib.error.HTTPError as e:
            if e.code == 401:
                problems["result_endpoint_secure_key"] = (
                    "Result Endpoint Secure Key incorrect: the Result Endpoint refused the probe's signature (HTTP 401). "
                    f"It must be the key of this gateway (the one whose subscription is above). {HINT_RESULT}")
            elif e.code in (429,) or e.code >= 500:
                problems["result_endpoint_url"] = (f"The Result Endpoint is unavailable now (HTTP {e.code}); "
                                                   "try again in a few minutes.")
            else:
                problems["result_endpoint_url"] = (f"Result Endpoint URL incorrect: {url_host} answered HTTP {e.code} "
                                                   f"to the probe. {HINT_RESULT}")
        except (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException, ValueError) as e:
            why = type(getattr(e, "reason", e)).__name__
            problems["result_endpoint_url"] = (f"Result Endpoint URL incorrect or unreachable: no answer from {url_host} "
                                               f"({why}). {HINT_RESULT}")


def _refresh_reason(e: Exception) -> str:
    """The token endpoint's error description (Google's: 'invalid_grant: Invalid JWT Signature.'),
    never the key; short."""
    args = getattr(e, "args", ())
    text = str(args[0]) if args else type(e).__name__
    return text[:200]

"""The "Add Job Delivery" form (seed 000 Step 3.3): exactly the seed's fields, each validated with
a message naming what to fix (never echoing a secret)."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Optional
from urllib.parse import urlparse

from ..config import is_loopback
from ..linktest import HINT_RESULT, HINT_SA, HINT_SUB

# (field, seed label, secret)
FIELDS = (
    ("name", "Name", False),
    ("project_id", "Project ID", False),
    ("subscription_id", "Subscription ID", False),
    ("result_endpoint_url", "Result Endpoint URL", False),
    ("result_endpoint_secure_key", "Result Endpoint Secure Key", True),
    ("service_account_json", "Service Account File (JSON)", True),
)
SECRETS = tuple(f for f, _, secret in FIELDS if secret)
LABELS = {f: label for f, label, _ in FIELDS} | {"active": "Active"}

_PROJECT = re.compile(r"[a-z][a-z0-9-]{4,28}[a-z0-9]")  # GCP project ids
_SUBSCRIPTION = re.compile(r"[A-Za-z][A-Za-z0-9\-_.~+%]{2,254}")  # Pub/Sub resource names
_KEY = re.compile(r"[\x21-\x7e]{16,512}")


@dataclass
class DeliveryForm:
    """What the administrator typed. A secret left blank keeps the saved (or last pasted) value."""

    name: str = ""
    project_id: str = ""
    subscription_id: str = ""
    result_endpoint_url: str = ""
    result_endpoint_secure_key: str = ""
    service_account_json: str = ""
    active: bool = False

    @classmethod
    def from_post(cls, form: dict[str, str]) -> "DeliveryForm":
        def text(k: str) -> str:
            return form.get(k, "").strip()
        return cls(text("name"), text("project_id"), text("subscription_id"), text("result_endpoint_url"),
                   text("result_endpoint_secure_key"), form.get("service_account_json", "").strip(), form.get("active") == "on")

    @classmethod
    def from_raw(cls, raw: dict) -> "DeliveryForm":
        sa = raw.get("service_account_json")
        return cls(str(raw.get("name", "")), str(raw.get("project_id", "")), str(raw.get("subscription_id", "")),
                   str(raw.get("result_endpoint_url", "")), str(raw.get("result_endpoint_secure_key", "")),
                   sa if isinstance(sa, str) else json.dumps(sa), raw.get("active") is True)

    def keep_secrets(self, kept: dict[str, str]) -> dict[str, bool]:
        """Blank secrets take the kept values; answers which were kept."""
        used = {}
        for f in SECRETS:
            used[f] = not getattr(self, f) and bool(kept.get(f))
            if used[f]:
                setattr(self, f, kept[f])
        return used

    def secrets(self) -> dict[str, str]:
        return {f: getattr(self, f) for f in SECRETS if getattr(self, f)}

    def validate(self, other_subscriptions: set[str], other_names: set[str]) -> dict[str, str]:
        errors: dict[str, str] = {}
        if not self.name:
            errors["name"] = "Required: a descriptive name for this job delivery."
        elif len(self.name) > 100:
            errors["name"] = "At most 100 characters."
        elif self.name in other_names:
            errors["name"] = "Another job delivery has this name."
        if not _PROJECT.fullmatch(self.project_id):
            errors["project_id"] = ("Required: the GCP Project ID from PACS (Account > Connections): 6-30 lower-case "
                                    "letters, digits and dashes.")
        if self.subscription_id.startswith("projects/"):
            errors["subscription_id"] = "Enter the subscription ID alone (the part after /subscriptions/). " + HINT_SUB
        elif not _SUBSCRIPTION.fullmatch(self.subscription_id) or self.subscription_id.startswith("goog"):
            errors["subscription_id"] = "Required: the Pub/Sub subscription ID. " + HINT_SUB
        elif f"{self.project_id}/{self.subscription_id}" in other_subscriptions:
            errors["subscription_id"] = "Another job delivery already pulls this subscription."
        url = urlparse(self.result_endpoint_url)
        if not self.result_endpoint_url:
            errors["result_endpoint_url"] = "Required. " + HINT_RESULT
        elif not url.netloc or not (url.scheme == "https" or (url.scheme == "http" and is_loopback(url.hostname or ""))):
            errors["result_endpoint_url"] = "Must be an https:// URL (http:// only to this machine). " + HINT_RESULT
        elif url.username or url.password or url.query or url.fragment:
            errors["result_endpoint_url"] = "The URL carries no user, password, query or fragment. " + HINT_RESULT
        if not self.result_endpoint_secure_key:
            errors["result_endpoint_secure_key"] = "Required. " + HINT_RESULT
        elif not _KEY.fullmatch(self.result_endpoint_secure_key):
            errors["result_endpoint_secure_key"] = "The key is 16-512 characters without spaces. " + HINT_RESULT
        problem = service_account_problem(self.service_account_json)
        if problem:
            errors["service_account_json"] = problem
        return errors

    def to_raw(self) -> dict[str, Any]:
        return {"name": self.name, "project_id": self.project_id, "subscription_id": self.subscription_id,
                "result_endpoint_url": self.result_endpoint_url, "result_endpoint_secure_key": self.result_endpoint_secure_key,
                "service_account_json": json.loads(self.service_account_json), "active": self.active}


def service_account_problem(text: str) -> Optional[str]:
    if not text:
        return "Required: copy and paste the full contents of the downloaded SA JSON key file. " + HINT_SA
    try:
        sa = json.loads(text)
    except ValueError as e:
        return f"Not JSON (line {e.lineno}, column {e.colno}): paste the whole file, from {{ to }}. " + HINT_SA
    if not isinstance(sa, dict) or sa.get("type") != "service_account":
        return 'Not a service account key file ("type": "service_account"). ' + HINT_SA
    missing = [k for k in ("client_email", "private_key", "private_key_id", "token_uri") if not isinstance(sa.get(k), str) or not sa[k]]
    if missing:
        return f"The key file lacks {', '.join(missing)}: it is incomplete. " + HINT_SA
    try:
        from google.auth import crypt

        crypt.RSASigner.from_service_account_info(sa)
    except (ValueError, TypeError, IndexError):
        return "The key file's private key cannot be read: it is damaged or incomplete. " + HINT_SA
    token = urlparse(sa["token_uri"])
    if not token.netloc or not (token.scheme == "https" or (token.scheme == "http" and is_loopback(token.hostname or ""))):
        return "The key file's token_uri is not an https:// URL. " + HINT_SA
    return None

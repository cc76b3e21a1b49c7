"""The agent's config file (JSON).

``job_deliveries`` holds exactly the fields of seed 000 "Configure Job Delivery on the Gateway":
name, project id, subscription id, result endpoint URL, result endpoint secure key, service
account file (JSON, pasted whole) and the active flag. Everything else is optional tuning of this
agent with safe defaults (see docs/gateway-agent.md)::

    {
      "job_deliveries": [{
        "name": "Main datacenter", "project_id": "acme-pacs", "subscription_id": "gateway-pubsub-gw-1-sub",
        "result_endpoint_url": "https://.../on_job_result", "result_endpoint_secure_key": "...",
        "service_account_json": {... or the JSON text ...}, "active": true
      }],
      "max_concurrent_jobs": 4,
      "store_associations": 4, "spool_files": 32,
      "storage_commitment": {"ae_title": "GW_SCU", "host": "0.0.0.0", "port": 11113, "timeout_seconds": 60},
      "result_retry": {"initial_seconds": 1, "max_interval_seconds": 60, "max_seconds": 2700},
      "max_lease_seconds": 17100, "lease_extension_seconds": 300, "progress_interval_seconds": 60,
      "heartbeat_seconds": 300, "free_disk_margin_mb": 512
    }
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional
from urllib.parse import urlparse, urlsplit

from .results import RetryPolicy

SEED_FIELDS = ("name", "project_id", "subscription_id", "result_endpoint_url", "result_endpoint_secure_key",
               "service_account_json", "active")


class ConfigError(ValueError):
    """The config file is unusable; the message names every bad field (never its value)."""


@dataclass(frozen=True)
class JobDelivery:
    name: str
    project_id: str
    subscription_id: str
    result_endpoint_url: str
    result_endpoint_secure_key: str = field(repr=False)
    service_account_info: dict = field(repr=False)
    active: bool

    @property
    def subscription_path(self) -> str:
        return f"projects/{self.project_id}/subscriptions/{self.subscription_id}"


@dataclass(frozen=True)
class CommitmentListener:
    """Where the archive sends Storage Commitment N-EVENT-REPORTs (PS3.4 J.3.3): most archives
    (Orthanc included) report on a new association to the calling AE, so the archive must know this
    address under the destination's calling AE title."""

    ae_title: str = "ARCHSYNC_GW"
    host: str = "0.0.0.0"
    port: int = 0  # 0 = no listener: only reports on the sending association are received
    timeout_seconds: float = 60.0


@dataclass(frozen=True)
class AdminPage:
    """The agent's local admin page (docs/gateway-agent.md "Admin page"): on loopback unless
    ``allow_remote`` is set, and then only over TLS; signed in with the password whose salted
    hash is ``password_hash`` (``python -m gateway_agent --hash-password``)."""

    password_hash: str = field(repr=False)
    bind: str = "127.0.0.1"
    port: int = 8710
    allow_remote: bool = False
    tls_cert_file: Optional[str] = None
    tls_key_file: Optional[str] = None
    session_minutes: float = 30.0
    # Host header values accepted beyond this machine's loopback names (DNS-rebinding guard).
    host_names: tuple[str, ...] = ()

    @property
    def tls(self) -> bool:
        return bool(self.tls_cert_file and self.tls_key_file)


def is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _admin_page(raw: Any, errors: dict[str, str]) -> Optional[AdminPage]:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        errors["admin_page"] = "must be an object"
        return None
    known = {"password_hash", "bind", "port", "allow_remote", "tls_cert_file", "tls_key_file", "session_minutes", "host_names"}
    unknown = sorted(set(raw) - known)
    if unknown:
        errors["admin_page"] = f"unknown fields {unknown}"
    from .admin.passwords import is_password_hash

    if not is_password_hash(raw.get("password_hash")):
        errors["admin_page.password_hash"] = "required: the output of python -m gateway_agent --hash-password"
    bind = raw.get("bind", AdminPage.bind)
    port = raw.get("port", AdminPage.port)
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        errors["admin_page.port"] = "must be a port number"
    allow = raw.get("allow_remote", False)
    if not isinstance(allow, bool):
        errors["admin_page.allow_remote"] = "must be true or false"
    cert, key = raw.get("tls_cert_file"), raw.get("tls_key_file")
    if (cert is None) != (key is None) or any(v is not None and (not isinstance(v, str) or not v) for v in (cert, key)):
        errors["admin_page.tls_cert_file"] = "tls_cert_file and tls_key_file go together (file paths)"
    if not isinstance(bind, str) or not bind:
        errors["admin_page.bind"] = "must be an address"
    elif not is_loopback(bind):
        # The page holds the keys that link this gateway to the cloud: off this machine only when
        # the administrator asked for it, and never in clear text.
        if allow is not True:
            errors["admin_page.bind"] = "a non-loopback address needs \"allow_remote\": true (and TLS)"
        elif not (cert and key):
            errors["admin_page.bind"] = "a non-loopback address needs tls_cert_file and tls_key_file"
    names = raw.get("host_names", [])
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
        errors["admin_page.host_names"] = "must be a list of host names"
        names = []
    minute_errors: dict[str, str] = {}
    minutes = _positive(raw, "session_minutes", 30.0, minute_errors)
    errors.update({f"admin_page.{k}": v for k, v in minute_errors.items()})
    if any(k.startswith("admin_page") for k in errors):
        return None
    return AdminPage(password_hash=raw["password_hash"], bind=bind, port=port, allow_remote=allow, tls_cert_file=cert,
                     tls_key_file=key, session_minutes=minutes, host_names=tuple(names))


@dataclass(frozen=True)
class AgentConfig:
    deliveries: tuple[JobDelivery, ...]
    max_concurrent_jobs: int = 4
    # Pub/Sub flow control: messages held at once (leased), beyond those running.
    max_outstanding_messages: int = 8
    dimse_timeout_seconds: float = 30.0
    network_timeout_seconds: float = 10.0
    hl7_timeout_seconds: float = 10.0
    work_dir: Optional[str] = None  # where study files are spooled; the system temp dir by default
    # The send pipeline (gateway_agent/pipeline.py, issue 13 item 1): C-STORE associations a job
    # opens at once to its archive (dcm4chee's "multiple store associations"; 1 = one at a time)
    # and files downloaded ahead of them (the spool's bound, per job).
    store_associations: int = 4
    spool_files: int = 32
    storage_commitment: CommitmentListener = CommitmentListener()
    # Re-posting a final result while the Result Endpoint is unavailable (the message stays leased).
    result_retry: RetryPolicy = RetryPolicy()
    # Pub/Sub lease of a running job (issue 13 item 3, docs/gateway-agent.md "Jobs that last
    # hours"): the client extends the message's ack deadline, lease_extension_seconds at a time,
    # for up to max_lease_seconds (None: 4 h of work plus result_retry.max_seconds).
    max_lease_seconds: Optional[float] = None
    lease_extension_seconds: float = 300.0
    # At most one IN_PROGRESS (with counts) per job this often while data flows.
    progress_interval_seconds: float = 60.0
    # Signed heartbeats to <result_endpoint_url>/heartbeat while the agent runs (gateway_agent/heartbeat.py):
    # keep it below half the cloud's gateway_silent_seconds (default 900).
    heartbeat_seconds: float = 300.0
    # Free space kept in work_dir beyond the study's size before fetching it.
    free_disk_margin_mb: float = 512.0
    # Pub/Sub's gRPC endpoint (host:port): Google's by default; a Private Service Connect endpoint
    # on a restricted network. A loopback endpoint (the local stack) is plaintext: gRPC's local
    # channel credentials, which still carry the service account's token on every call.
    pubsub_endpoint: str = "pubsub.googleapis.com:443"
    # Cloud Storage's JSON API base URL: Google's by default. Named here, never taken from the
    # library's STORAGE_EMULATOR_HOST (which also switches it to anonymous credentials when none
    # are given): the agent always runs the production path, with its key's token on every
    # request. Plain http is accepted only for a loopback host (the local stack).
    storage_endpoint: str = "https://storage.googleapis.com"
    # The local admin page (None: no page; the config file is then edited by hand).
    admin_page: Optional[AdminPage] = None

    @property
    def lease_seconds(self) -> float:
        return self.max_lease_seconds or 4 * 3600 + self.result_retry.max_seconds

    @property
    def active_deliveries(self) -> tuple[JobDelivery, ...]:
        return tuple(d for d in self.deliveries if d.active)


def _delivery(i: int, raw: Any, errors: dict[str, str]) -> Optional[JobDelivery]:
    where = f"job_deliveries[{i}]"
    if not isinstance(raw, dict):
        errors[where] = "must be an object"
        return None
    unknown = sorted(set(raw) - set(SEED_FIELDS))
    if unknown:
        errors[f"{where}"] = f"unknown fields {unknown}; the fields are {list(SEED_FIELDS)}"
    for key in ("name", "project_id", "subscription_id", "result_endpoint_url", "result_endpoint_secure_key"):
        if not isinstance(raw.get(key), str) or not raw.get(key, "").strip():
            errors[f"{where}.{key}"] = "required text"
    url = urlparse(str(raw.get("result_endpoint_url", "")))
    if raw.get("result_endpoint_url") and (url.scheme not in ("https", "http") or not url.netloc):
        errors[f"{where}.result_endpoint_url"] = "must be an https:// URL"
    sa = raw.get("service_account_json")
    if isinstance(sa, str):
        try:
            sa = json.loads(sa)
        except ValueError:
            sa = None
    if not isinstance(sa, dict) or sa.get("type") != "service_account" or not sa.get("client_email") or not sa.get("private_key"):
        errors[f"{where}.service_account_json"] = "must be the downloaded service account key file (JSON, type service_account)"
    if not isinstance(raw.get("active", False), bool):
        errors[f"{where}.active"] = "must be true or false"
    if any(k.startswith(where) for k in errors):
        return None
    return JobDelivery(name=raw["name"].strip(), project_id=raw["project_id"].strip(),
                       subscription_id=raw["subscription_id"].strip(), result_endpoint_url=raw["result_endpoint_url"].strip(),
                       result_endpoint_secure_key=raw["result_endpoint_secure_key"].strip(), service_account_info=sa,
                       active=raw.get("active", False))


def _positive(raw: dict, key: str, default, errors: dict[str, str], cast=float):
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        errors[key] = "must be a positive number"
        return default
    return cast(value)


def parse(raw: Any) -> AgentConfig:
    if not isinstance(raw, dict):
        raise ConfigError("config: must be a JSON object")
    errors: dict[str, str] = {}
    admin = _admin_page(raw.get("admin_page"), errors)
    items = raw.get("job_deliveries", [] if "admin_page" in raw else None)
    # With an admin page the list may start empty: the administrator adds deliveries there.
    if not isinstance(items, list) or (not items and "admin_page" not in raw):
        errors["job_deliveries"] = "must list at least one job delivery"
        items = []
    deliveries = [d for i, r in enumerate(items) if (d := _delivery(i, r, errors))]
    subs = [d.subscription_path for d in deliveries]
    if len(set(subs)) != len(subs):
        errors["job_deliveries"] = "two job deliveries name the same subscription"
    sc_raw = raw.get("storage_commitment", {})
    sc = CommitmentListener()
    if not isinstance(sc_raw, dict):
        errors["storage_commitment"] = "must be an object"
    else:
        port = sc_raw.get("port", 0)
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            errors["storage_commitment.port"] = "must be a port number (0 = no listener)"
            port = 0
        ae = sc_raw.get("ae_title", sc.ae_title)
        if not isinstance(ae, str) or not 1 <= len(ae) <= 16 or any(c == "\\" or not 0x20 < ord(c) < 0x7F for c in ae):
            errors["storage_commitment.ae_title"] = "must be 1-16 characters without spaces or backslash"
        sc = CommitmentListener(ae_title=ae if isinstance(ae, str) else sc.ae_title, host=str(sc_raw.get("host", sc.host)),
                                port=port, timeout_seconds=_positive(sc_raw, "timeout_seconds", sc.timeout_seconds, errors))
    rr_raw = raw.get("result_retry", {})
    rr = RetryPolicy()
    if not isinstance(rr_raw, dict):
        errors["result_retry"] = "must be an object"
    else:
        unknown = sorted(set(rr_raw) - {"initial_seconds", "max_interval_seconds", "max_seconds"})
        if unknown:
            errors["result_retry"] = f"unknown fields {unknown}"
        rr_errors: dict[str, str] = {}
        rr = RetryPolicy(*(_positive(rr_raw, k, getattr(rr, k), rr_errors)
                           for k in ("initial_seconds", "max_interval_seconds", "max_seconds")))
        errors.update({f"result_retry.{k}": v for k, v in rr_errors.items()})
    endpoint = raw.get("pubsub_endpoint", AgentConfig.pubsub_endpoint)
    if not isinstance(endpoint, str) or not endpoint.rpartition(":")[2].isdigit() or not endpoint.rpartition(":")[0]:
        errors["pubsub_endpoint"] = "must be host:port"
        endpoint = AgentConfig.pubsub_endpoint
    storage_endpoint = raw.get("storage_endpoint", AgentConfig.storage_endpoint)
    storage_url = urlsplit(storage_endpoint) if isinstance(storage_endpoint, str) else None
    if storage_url is None or not storage_url.hostname or storage_url.path not in ("", "/") or not (
            storage_url.scheme == "https" or (storage_url.scheme == "http" and is_loopback(storage_url.hostname))):
        errors["storage_endpoint"] = "must be an https:// base URL (http:// only on this machine's loopback)"
        storage_endpoint = AgentConfig.storage_endpoint
    cfg = AgentConfig(
        admin_page=admin,
        pubsub_endpoint=endpoint,
        storage_endpoint=storage_endpoint.rstrip("/"),
        deliveries=tuple(deliveries),
        max_concurrent_jobs=_positive(raw, "max_concurrent_jobs", 4, errors, int),
        max_outstanding_messages=_positive(raw, "max_outstanding_messages", 8, errors, int),
        dimse_timeout_seconds=_positive(raw, "dimse_timeout_seconds", 30.0, errors),
        network_timeout_seconds=_positive(raw, "network_timeout_seconds", 10.0, errors),
        hl7_timeout_seconds=_positive(raw, "hl7_timeout_seconds", 10.0, errors),
        work_dir=raw.get("work_dir"),
        store_associations=_positive(raw, "store_associations", 4, errors, int),
        spool_files=_positive(raw, "spool_files", 32, errors, int),
        storage_commitment=sc,
        result_retry=rr,
        max_lease_seconds=_positive(raw, "max_lease_seconds", None, errors) if "max_lease_seconds" in raw else None,
        lease_extension_seconds=_positive(raw, "lease_extension_seconds", 300.0, errors),
        progress_interval_seconds=_positive(raw, "progress_interval_seconds", 60.0, errors),
        heartbeat_seconds=_positive(raw, "heartbeat_seconds", 300.0, errors),
        free_disk_margin_mb=_positive(raw, "free_disk_margin_mb", 512.0, errors),
    )
    if not 10 <= cfg.lease_extension_seconds <= 600:  # the Pub/Sub client's bounds for one extension
        errors["lease_extension_seconds"] = "must be between 10 and 600"
    if errors:
        raise ConfigError("; ".join(f"{k}: {v}" for k, v in sorted(errors.items())))
    return cfg


def load(path: str | Path) -> AgentConfig:
    try:
        raw = json.loads(Path(path).read_text())
    except OSError as e:
        raise ConfigError(f"config: cannot read {path}: {e.strerror}") from None
    except ValueError as e:
        raise ConfigError(f"config: {path} is not JSON ({e.msg} at line {e.lineno})") from None
    return parse(raw)

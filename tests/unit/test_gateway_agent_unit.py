"""The agent's config file (seed 000 "Configure Job Delivery"), its result signature against the
cloud's verifier, HL7 ACK checks, and that it ships without the cloud package."""
from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway_agent.__main__ import JsonFormatter, main
from gateway_agent.config import SEED_FIELDS, ConfigError, parse
from gateway_agent.mllp import Hl7Error, check_ack
from gateway_agent.results import result_body, sign_headers
from shared import signing
from tests.support import local_key_file

SA_KEY = local_key_file()  # a real key file: the config takes only what a download gives

REPO = Path(__file__).resolve().parents[2]


def delivery(**kw) -> dict:
    d = {"name": "Main DC", "project_id": "acme-pacs", "subscription_id": "gateway-pubsub-gw-1-sub",
         "result_endpoint_url": "https://results.example/on_job_result", "result_endpoint_secure_key": "s3cret-key",
         "service_account_json": json.dumps(SA_KEY), "active": True}
    d.update(kw)
    return d


def test_config_has_exactly_the_seed_fields_and_defaults():
    assert SEED_FIELDS == ("name", "project_id", "subscription_id", "result_endpoint_url", "result_endpoint_secure_key",
                           "service_account_json", "active")
    cfg = parse({"job_deliveries": [delivery(), delivery(subscription_id="other", active=False)]})
    d = cfg.deliveries[0]
    assert d.subscription_path == "projects/acme-pacs/subscriptions/gateway-pubsub-gw-1-sub"
    assert d.service_account_info["client_email"] == SA_KEY["client_email"]
    assert [x.name for x in cfg.active_deliveries] == ["Main DC"]
    assert cfg.max_concurrent_jobs == 4 and cfg.storage_commitment.port == 0
    assert "s3cret" not in repr(d) and "PRIVATE" not in repr(d)  # secrets never reach logs via repr


@pytest.mark.parametrize("change,field", [
    ({"result_endpoint_url": "ftp://x"}, "job_deliveries[0].result_endpoint_url"),
    ({"service_account_json": "{not json"}, "job_deliveries[0].service_account_json"),
    ({"service_account_json": {"type": "authorized_user"}}, "job_deliveries[0].service_account_json"),
    ({"active": "yes"}, "job_deliveries[0].active"),
    ({"subscription_id": ""}, "job_deliveries[0].subscription_id"),
    ({"colour": "blue"}, "job_deliveries[0]"),
])
def test_config_errors_name_the_field_never_the_value(change, field):
    with pytest.raises(ConfigError) as e:
        parse({"job_deliveries": [delivery(**change)]})
    assert f"{field}:" in str(e.value) and "s3cret" not in str(e.value)


def test_config_rejects_bad_tuning_and_duplicate_subscriptions():
    with pytest.raises(ConfigError, match="max_concurrent_jobs: must be a positive number"):
        parse({"job_deliveries": [delivery()], "max_concurrent_jobs": 0})
    with pytest.raises(ConfigError, match="storage_commitment.ae_title"):
        parse({"job_deliveries": [delivery()], "storage_commitment": {"ae_title": "HAS SPACE"}})
    with pytest.raises(ConfigError, match="same subscription"):
        parse({"job_deliveries": [delivery(), delivery(name="copy")]})


def test_config_send_pipeline_settings():
    """Issue 13 item 1: store associations per job and the spool's bound, agent-level."""
    cfg = parse({"job_deliveries": [delivery()]})
    assert (cfg.store_associations, cfg.spool_files) == (4, 32)
    cfg = parse({"job_deliveries": [delivery()], "store_associations": 1, "spool_files": 8})
    assert (cfg.store_associations, cfg.spool_files) == (1, 8)
    for key, bad in (("store_associations", 0), ("spool_files", -1), ("store_associations", True)):
        with pytest.raises(ConfigError, match=f"{key}: must be a positive number"):
            parse({"job_deliveries": [delivery()], key: bad})


def test_cli_check_and_inactive_config(tmp_path, capsys):
    path = tmp_path / "agent.json"
    path.write_text(json.dumps({"job_deliveries": [delivery(active=False)]}))
    assert main(["--config", str(path), "--check"]) == 0
    assert main(["--config", str(path)]) == 2
    assert "Active flag" in capsys.readouterr().err
    path.write_text("{")
    assert main(["--config", str(path), "--check"]) == 2


def test_signature_is_accepted_by_the_cloud_verifier():
    job = {"job_id": "archive-" + "a" * 32, "attempt": 2, "facility_group_id": "fg-1", "gateway_id": "gw-9"}
    body = result_body(job, "FAILED", "C-STORE status 0xA700 (out of resources)", {"total": 3, "failed": 3})
    now = int(time.time())
    headers = sign_headers("s3cret-key", "fg-1", "gw-9", body, now)
    assert signing.parse_gateway_header(headers) == ("fg-1", "gw-9")
    signing.verify(b"s3cret-key", headers, body, now, max_skew=300)
    with pytest.raises(Exception):
        signing.verify(b"other-key", headers, body, now, max_skew=300)


@pytest.mark.parametrize("ack,ok,retryable", [
    ("MSH|^~\\&|A|B\rMSA|AA|C1", True, None),
    ("MSH|^~\\&|A|B\rMSA|CA|C1", True, None),
    ("MSH|^~\\&|A|B\rMSA|AE|C1|bad PID", False, False),
    ("MSH|^~\\&|A|B\rMSA|AR|C1\rERR|||207|E|||busy", False, True),
    ("MSH|^~\\&|A|B\rMSA|AA|OTHER", False, True),
    ("MSH|^~\\&|A|B", False, True),
])
def test_hl7_ack_checks(ack, ok, retryable):
    if ok:
        check_ack(ack, "C1")
        return
    with pytest.raises(Hl7Error) as e:
        check_ack(ack, "C1")
    assert e.value.retryable is retryable


def test_json_logs_carry_ids():
    record = logging.LogRecord("gateway_agent", logging.INFO, "", 0, "job finished", None, None)
    record.job_id = "archive-1"
    record.created = 1764748800.25  # 2025-12-03T08:00:00.250Z
    line = json.loads(JsonFormatter().format(record))
    assert line == {"severity": "INFO", "message": "job finished", "logger": "gateway_agent",
                    "time": "2025-12-03T08:00:00.250+00:00", "job_id": "archive-1"}


def test_agent_imports_from_its_own_directory_alone(tmp_path):
    """Deployed on-prem without the cloud package: copied alone, every module imports."""
    shutil.copytree(REPO / "gateway_agent", tmp_path / "gateway_agent")
    code = ("import sys, gateway_agent.agent, gateway_agent.__main__; "
            "assert not any(m == 'shared' or m.startswith('shared.') for m in sys.modules), 'imports shared'")
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={"PYTHONPATH": str(tmp_path)}, check=True)


@pytest.mark.parametrize("uri", ["gs://studies", "gs://studies/", "gs://studies/fg-1/1.2.3", "gs://studies//",
                                 "gs://studies/fg-1//1.2.3/", "gs:///fg-1/1.2.3/", "s3://studies/fg-1/1.2.3/", ""])
def test_a_study_storage_uri_must_be_a_study_folder(uri):
    """ARCHITECTURE rule 9: a bare bucket lists every study, a prefix without its '/' also lists a
    sibling study (…/1.2.3 matches …/1.2.34/). The agent refuses both, permanently."""
    from gateway_agent.fetch import FetchError, study_prefix

    with pytest.raises(FetchError) as e:
        study_prefix(uri)
    assert not e.value.retryable


def test_a_study_folder_is_split_into_bucket_and_prefix():
    from gateway_agent.fetch import study_prefix

    assert study_prefix("gs://studies/fg-1/1.2.3/") == ("studies", "fg-1/1.2.3/")


def test_storage_endpoint_comes_from_config_never_from_the_emulator_variable(monkeypatch):
    """The agent runs the production auth path: STORAGE_EMULATOR_HOST (which would redirect
    google-cloud-storage and give it anonymous credentials) changes nothing; only the config's
    storage_endpoint does, and the key's credentials are used either way."""
    from google.oauth2 import service_account

    from gateway_agent.config import AgentConfig
    from gateway_agent.fetch import ObjectFetcher
    from tests.support import local_key_file

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "http://127.0.0.1:9")
    key = local_key_file()
    for endpoint in (AgentConfig.storage_endpoint, "http://127.0.0.1:4443"):
        client = ObjectFetcher(key, "p", endpoint)._storage()
        assert client._connection.API_BASE_URL == endpoint
        assert isinstance(client._credentials, service_account.Credentials)


@pytest.mark.parametrize("endpoint, ok", [
    ("https://storage.googleapis.com", True), ("https://psc-storage.example.internal", True),
    ("http://127.0.0.1:4443", True), ("http://storage.googleapis.com", False), ("ftp://x", False),
    ("https://storage.googleapis.com/storage/v1", False), (42, False)])
def test_storage_endpoint_must_be_https_or_loopback_http(endpoint, ok):
    from gateway_agent.config import ConfigError, parse

    raw = {"job_deliveries": [delivery()], "storage_endpoint": endpoint}
    if ok:
        assert parse(raw).storage_endpoint == endpoint
    else:
        with pytest.raises(ConfigError) as e:
            parse(raw)
        assert "storage_endpoint" in str(e.value)

"""Each function's storage clients carry its own runtime identity (issue 12 item 2): the settings
know the function, wiring.storage_credentials picks its key locally or application default
credentials in production, and the adapters never build an anonymous client themselves."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from shared import wiring
from shared.adapters.gcs import BucketIam, KeyVault, ObjectStore
from shared.settings import LOCAL_ONLY_ENV_VARS, Settings

REPO = Path(__file__).resolve().parents[2]
ENV = {"ARCHSYNC_PROJECT_ID": "prj", "ARCHSYNC_KEY_BUCKET": "keys", "ARCHSYNC_OBJECTS_BUCKET": "objects"}


def _key_file(path: Path, email: str) -> Path:
    private = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    path.write_text(json.dumps({"type": "service_account", "project_id": "prj", "private_key_id": "k1",
                                "private_key": pem, "client_email": email, "client_id": "1",
                                "token_uri": "https://oauth2.googleapis.com/token"}))
    return path


def test_settings_know_the_function_and_the_local_key_directory():
    s = Settings.from_env({**ENV, "ARCHSYNC_LOCAL_CREDENTIALS_DIR": "/keys", "STORAGE_EMULATOR_HOST": "http://x"},
                          function="admin_api")
    assert (s.function_name, s.local_credentials_dir, s.storage_emulator_host) == ("admin_api", "/keys", "http://x")
    assert Settings.from_env(ENV).function_name == ""
    assert {"ARCHSYNC_LOCAL_CREDENTIALS_DIR", "STORAGE_EMULATOR_HOST"} <= set(LOCAL_ONLY_ENV_VARS)
    # Settings are the cache key of every client: another function, other clients.
    assert Settings.from_env(ENV, function="admin_api") != Settings.from_env(ENV, function="on_job_result")


def test_every_entry_point_passes_its_name():
    for main in sorted((REPO / "functions").glob("*/main.py")):
        source = main.read_text()
        assert f'NAME = "{main.parent.name}"' in source, main
        calls = re.findall(r"Settings\.from_env\(([^)]*)\)", source)
        assert calls and all(c == "os.environ, function=NAME" for c in calls), (main, calls)


def test_local_credentials_are_the_functions_own_key(tmp_path):
    _key_file(tmp_path / "on_job_result.json", "archsync-job-result@prj.iam.gserviceaccount.com")
    _key_file(tmp_path / "admin_api.json", "archsync-admin-api@prj.iam.gserviceaccount.com")
    settings = Settings.from_env({**ENV, "ARCHSYNC_LOCAL_CREDENTIALS_DIR": str(tmp_path),
                                  "STORAGE_EMULATOR_HOST": "http://127.0.0.1:9"}, function="on_job_result")
    creds = wiring.storage_credentials(settings)
    assert creds.service_account_email == "archsync-job-result@prj.iam.gserviceaccount.com"
    assert creds.scopes == [wiring.CLOUD_PLATFORM_SCOPE]
    for adapter in (wiring.key_vault(settings), wiring.object_store(settings)):
        assert adapter.client._credentials is creds
    assert wiring.key_vault(settings).client is wiring.object_store(settings).client  # one client per function


def test_local_credentials_need_the_function_name(tmp_path):
    settings = Settings.from_env({**ENV, "ARCHSYNC_LOCAL_CREDENTIALS_DIR": str(tmp_path)})
    with pytest.raises(RuntimeError, match="function's name"):
        wiring.storage_credentials(settings)


def test_bucket_iam_standin_client_carries_the_functions_credentials(tmp_path):
    _key_file(tmp_path / "admin_api.json", "archsync-admin-api@prj.iam.gserviceaccount.com")
    settings = Settings.from_env({**ENV, "ARCHSYNC_LOCAL_CREDENTIALS_DIR": str(tmp_path),
                                  "STORAGE_EMULATOR_HOST": "http://127.0.0.1:9",
                                  "ARCHSYNC_STORAGE_IAM_EMULATOR_HOST": "http://127.0.0.1:8"}, function="admin_api")
    client = wiring.bucket_iam(settings).client
    assert client._credentials is wiring.storage_credentials(settings)
    assert client._connection.API_BASE_URL == "http://127.0.0.1:8"


def test_emulator_without_keys_stays_anonymous():
    from google.auth.credentials import AnonymousCredentials

    settings = Settings.from_env({**ENV, "STORAGE_EMULATOR_HOST": "http://127.0.0.1:9"}, function="admin_api")
    assert isinstance(wiring.storage_credentials(settings), AnonymousCredentials)


def test_production_uses_application_default_credentials(tmp_path, monkeypatch):
    # What google.auth.default finds (on Cloud Functions: the runtime service account through the
    # metadata server; here a key named by GOOGLE_APPLICATION_CREDENTIALS), with the scope.
    key = _key_file(tmp_path / "adc.json", "archsync-sweep-jobs@prj.iam.gserviceaccount.com")
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key))
    settings = Settings.from_env(ENV, function="sweep_jobs")
    creds = wiring.storage_credentials(settings)
    assert creds.service_account_email == "archsync-sweep-jobs@prj.iam.gserviceaccount.com"
    assert creds.scopes == [wiring.CLOUD_PLATFORM_SCOPE]
    assert wiring.key_vault(settings).client._credentials is creds


def test_adapters_never_build_their_own_client():
    for make in (lambda: KeyVault("b"), lambda: ObjectStore("b"), lambda: BucketIam()):
        with pytest.raises(ValueError, match="client"):
            make()
    made = []
    vault = KeyVault("b", client_factory=lambda: made.append(1) or object())
    assert made == []  # lazily, on first use
    vault.client
    vault.client
    assert made == [1]

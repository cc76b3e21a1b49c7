"""Browser test harness (issue 14), reusable by every page's tests (the console's, the gateway
agent's local page): the local stack for one module (its own project on the session's emulators,
buckets with infra/'s grants, the functions over real HTTP, the dev identity provider) and one
headless Chromium per module, from Debian's ``chromium`` and ``chromium-driver`` packages. Nothing
is downloaded: Selenium gets the system chromedriver's path and SE_OFFLINE, so Selenium Manager
never runs. Waits are explicit (WebDriverWait, generous deadlines: a loaded 2-core machine)."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Optional

import pytest

from devstack.idp import DevIdp, User
from devstack.processes import free_port

CHROMIUM = os.environ.get("ARCHSYNC_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("ARCHSYNC_CHROMEDRIVER", "/usr/bin/chromedriver")
WAIT = 60  # seconds: explicit waits only, never sleep-then-assert
OUTPUT = Path(__file__).resolve().parents[2] / "test-output"  # gitignored: screenshots, downloads


class HttpFunction:
    """functions/<name>/main.py under functions-framework, in-process, on a loopback port
    (werkzeug, threaded): the browser talks to it over real HTTP, as to the deployed function."""

    def __init__(self, name: str):
        import functions_framework
        from werkzeug.serving import make_server

        source = Path(__file__).resolve().parents[2] / "functions" / name / "main.py"
        app = functions_framework.create_app(target=name, source=str(source))
        self._server = make_server("127.0.0.1", free_port(), app, threaded=True)
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self._server.shutdown()


class LocalStack:
    """One module's stack: ``tests.conftest.Stack`` (project, buckets, grants, store) plus the
    environment the functions read, the dev IdP and the admin API and Result Endpoint over HTTP."""

    FG = "fg-1"
    FACILITIES = (("fac-a", "Main Hospital"), ("fac-b", "East Clinic"))

    def __init__(self, emulators: dict, monkeypatch: pytest.MonkeyPatch):
        from shared.domain.models import Facility, FacilityGroup
        from tests.conftest import Stack

        self.project = f"browser-{uuid.uuid4().hex[:10]}"
        self.emulators = emulators
        self.stack = Stack(self.project, emulators)
        self.stack.topic("archsync-gateway-dead-letter", subscription="gateway-dead-letter-audit")
        self.stack.store.save_facility_group(FacilityGroup(self.FG, "North Valley Imaging"))
        for fid, name in self.FACILITIES:
            self.stack.store.save_facility(Facility(fid, self.FG, name))
        self.admin_user = User("u-admin", "Pat Admin", (self.FG,))
        self.idp = DevIdp(users=(self.admin_user, User("u-other", "Other Group Admin", ("fg-other",)))).start()
        env = {
            "ARCHSYNC_PROJECT_ID": self.project, "ARCHSYNC_KEY_BUCKET": self.stack.key_bucket,
            "ARCHSYNC_OBJECTS_BUCKET": self.stack.objects_bucket, "ARCHSYNC_STUDY_BUCKET": self.stack.study_bucket,
            "ARCHSYNC_IAM_EMULATOR_HOST": emulators["iam"].address,
            "ARCHSYNC_STORAGE_IAM_EMULATOR_HOST": emulators["bucket_iam"].url,
            "ARCHSYNC_LOCAL_CREDENTIALS_DIR": str(emulators["function_keys"]),
            "ARCHSYNC_ADMIN_JWT_PUBLIC_KEYS": self.idp.public_pem, "ARCHSYNC_ADMIN_JWT_AUDIENCE": self.idp.AUDIENCE,
            "ARCHSYNC_ADMIN_JWT_ISSUER": self.idp.ISSUER,
            "ARCHSYNC_CONSOLE_AUTHORIZE_URL": self.idp.authorize_url, "ARCHSYNC_CONSOLE_TOKEN_URL": self.idp.token_url,
            "ARCHSYNC_CONSOLE_CLIENT_ID": self.idp.CLIENT_ID,
        }
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        self.admin = HttpFunction("admin_api")
        self.result_endpoint = HttpFunction("on_job_result")
        self.console_url = f"{self.admin.url}/console/"
        self.idp.register_redirect(self.console_url)
        self._n = 0

    # -- the admin API as a script would call it (set-up the test is not about) ----------------
    def api(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        import requests

        headers = {"Authorization": f"Bearer {self.idp.token(self.admin_user)}"}
        r = requests.request(method, f"{self.admin.url}/v1/facility-groups/{self.FG}{path}", json=body, headers=headers,
                             timeout=120)
        try:
            return r.status_code, r.json()
        except ValueError:
            return r.status_code, r.content

    # -- the platform ----------------------------------------------------------------------------
    def exam_event(self, exam_id: str, status: str, *, study_uid: str, patient_name: str = "DOE^JANE",
                   mrn: str = "MRN-1", accession: str = "ACC-1", facility: str = "fac-a") -> None:
        """An exam status event delivered to on_exam_status_changed, as the push subscription does."""
        from datetime import datetime, timezone

        from tests.support import cloud_event_headers, load_app, pubsub_envelope

        self._n += 1
        at = datetime.now(timezone.utc).isoformat()
        event = {"schema_version": "1", "event_type": "exam.status_changed", "event_id": str(uuid.uuid4()),
                 "event_time": at, "facility_group_id": self.FG, "facility_id": facility,
                 "exam": {"exam_id": exam_id, "accession_number": accession, "status": status,
                          "status_first_reached_at": at, "study_instance_uid": study_uid,
                          "study_storage_uri": self.study_uri(study_uid), "patient": {"mrn": mrn, "name": patient_name}}}
        resp = load_app("on_exam_status_changed").post(
            "/", json=pubsub_envelope(event, message_id=f"m-{self._n}"),
            headers=cloud_event_headers("archsync-exam-status", self.project, f"ce-{self._n}"))
        assert resp.status_code in (200, 204), resp.get_data(as_text=True)

    def study_uri(self, study_uid: str) -> str:
        return f"gs://{self.stack.study_bucket}/{self.FG}/{study_uid}/"

    def upload_study(self, study_uid: str, count: int = 3) -> None:
        from devstack.studies import make_study, upload

        upload(self.stack.gcs, self.study_uri(study_uid), make_study(study_uid, count))

    def start_agent(self, gateway: dict, sa_key: dict, result_key: str, work_dir: Path):
        """The reference gateway agent linked with seed 000 Step 3's fields (the keys as the admin
        API's downloads gave them), after the stack's subscription-policy check."""
        from devstack.pubsub_iam import require_consume
        from gateway_agent.agent import Agent
        from gateway_agent.config import parse

        config = parse({
            "job_deliveries": [{"name": gateway["name"], "project_id": self.project,
                                "subscription_id": gateway["pubsub_subscription_id"],
                                "result_endpoint_url": self.result_endpoint.url + "/", "result_endpoint_secure_key": result_key,
                                "service_account_json": json.dumps(sa_key), "active": True}],
            "max_concurrent_jobs": 2, "dimse_timeout_seconds": 10, "network_timeout_seconds": 3,
            "storage_commitment": {"ae_title": "GW_SCU", "host": "127.0.0.1", "port": 0, "timeout_seconds": 20},
            "work_dir": str(work_dir), "pubsub_endpoint": self.emulators["pubsub"], "storage_endpoint": self.emulators["gcs"]})
        for delivery in config.active_deliveries:
            require_consume(self.emulators["iam"].policies, delivery.service_account_info, delivery.subscription_path)
        return Agent(config).start()

    def close(self) -> None:
        self.admin.stop()
        self.result_endpoint.stop()
        self.idp.stop()
        self.stack.close()


class Browser:
    """Headless Chromium through Selenium and the system chromedriver, with its own profile and
    download directory."""

    def __init__(self, downloads: Path):
        os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must never try to download a driver
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        self.downloads = downloads
        shutil.rmtree(downloads, ignore_errors=True)
        downloads.mkdir(parents=True)
        self.profile = tempfile.mkdtemp(prefix="archsync-chromium-")
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        # Without the background-networking flags Chromium reaches out to Google's services and,
        # on a closed network, misbehaves.
        for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    "--disable-dev-shm-usage", "--window-size=1600,1000", f"--user-data-dir={self.profile}"):
            options.add_argument(arg)
        options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                                  "download.prompt_for_download": False,
                                                  "safebrowsing.enabled": False,
                                                  # several downloads from one page (keys, CSV) without a prompt
                                                  "profile.default_content_setting_values.automatic_downloads": 1})
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        self.driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        self.driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})

    # -- waits ---------------------------------------------------------------------------------
    def wait(self, check: Callable[[Any], Any], what: str, timeout: float = WAIT) -> Any:
        from selenium.common.exceptions import StaleElementReferenceException
        from selenium.webdriver.support.ui import WebDriverWait

        return WebDriverWait(self.driver, timeout, poll_frequency=0.2,
                             ignored_exceptions=(StaleElementReferenceException,)).until(check, f"timed out waiting for {what}")

    def find(self, css: str, timeout: float = WAIT):
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support import expected_conditions as ec

        return self.wait(ec.visibility_of_element_located((By.CSS_SELECTOR, css)), css, timeout)

    def click(self, css: str, timeout: float = WAIT) -> None:
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support import expected_conditions as ec

        self.wait(ec.element_to_be_clickable((By.CSS_SELECTOR, css)), f"{css} clickable", timeout).click()

    def all(self, css: str) -> list:
        from selenium.webdriver.common.by import By

        return self.driver.find_elements(By.CSS_SELECTOR, css)

    def text_of(self, css: str) -> str:
        return self.find(css).text

    def wait_text(self, css: str, text: str, timeout: float = WAIT) -> None:
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support import expected_conditions as ec

        self.wait(ec.text_to_be_present_in_element((By.CSS_SELECTOR, css), text), f"{text!r} in {css}", timeout)

    def fill(self, css: str, value: str) -> None:
        el = self.find(css)
        el.clear()
        if len(value) > 200:  # a pasted key file: set it at once, as a paste does
            self.driver.execute_script("arguments[0].value = arguments[1];", el, value)
        else:
            el.send_keys(value)

    def files(self) -> dict[str, int]:
        """What the download directory holds now (name -> modification time), for ``download``."""
        return {p.name: p.stat().st_mtime_ns for p in self.downloads.iterdir()}

    def download(self, stem: str, ext: str, before: dict[str, int], timeout: float = WAIT) -> Path:
        """The file that appeared (or was rewritten: a download of the same name may replace the
        earlier file) in the download directory since ``before``, complete (not a .crdownload)."""
        def done():
            new = [p for p in self.downloads.iterdir() if stem in p.name and p.name.endswith(ext)
                   and before.get(p.name) != p.stat().st_mtime_ns]
            return new[0] if new and new[0].stat().st_size > 0 else None
        try:
            return self.wait(lambda _: done(), f"a downloaded *{stem}*{ext}", timeout)
        except Exception:
            shown = self.driver.execute_script(
                "return Array.from(document.querySelectorAll('#banner, .message, .form-error')).map(e => e.textContent).join(' | ')")
            raise AssertionError(f"no download of *{stem}*{ext}; files {sorted(p.name for p in self.downloads.iterdir())}; "
                                 f"page says: {shown}; console: {self.console_log()}") from None

    def console_log(self) -> list:
        try:
            return [e["message"] for e in self.driver.get_log("browser")]
        except Exception:  # a driver without log access
            return []

    def screenshot(self, folder: Path, name: str) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{name}.png"
        self.driver.save_screenshot(str(path))
        return path

    def close(self) -> None:
        self.driver.quit()
        shutil.rmtree(self.profile, ignore_errors=True)


def output_dir(request: pytest.FixtureRequest) -> Path:
    """test-output/<module>/<test name>/, fresh for each test."""
    folder = OUTPUT / request.node.module.__name__.rsplit(".", 1)[-1] / request.node.name.replace("/", "_")
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


def sign_in(browser: Browser, console_url: str, user_name: str = "Pat Admin", ready: str = "true") -> None:
    """Open the console, sign in at the (dev) identity provider, come back signed in (``ready``:
    the page's data-ready once loaded: "true", or "no-group" for a user without a group)."""
    browser.driver.get(console_url)
    browser.driver.execute_script("sessionStorage.clear()")  # a fresh session, whatever came before
    browser.driver.get(console_url)
    browser.click("#sign-in")
    _pick_user(browser, user_name)
    browser.wait(lambda d: d.execute_script("return document.body.dataset.ready") == ready, "the console to load")


def _pick_user(browser: Browser, user_name: str) -> None:
    from selenium.webdriver.common.by import By

    button = browser.wait(lambda d: next((b for b in d.find_elements(By.CSS_SELECTOR, "button[name=user]")
                                          if b.text == f"Sign in as {user_name}"), None), f"the sign-in page ({user_name})")
    button.click()


def until(check: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
    """Poll a non-browser condition (the stack's state) with a deadline."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def chromium_available() -> Optional[str]:
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.access(path, os.X_OK):
            return f"{path} missing: ./run test installs Debian's chromium and chromium-driver"
    return None

"""Headless Chromium for the admin page tests: Debian's /usr/bin/chromium driven by Selenium through
Debian's /usr/bin/chromedriver, both named explicitly (Selenium Manager stays offline: nothing is
downloaded), a fresh profile per browser, explicit waits with generous timeouts."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import pytest

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
WAIT = 60.0  # seconds: a loaded 2-core machine
OUTPUT = Path(__file__).resolve().parents[2] / "test-output"  # gitignored: screenshots


def output_dir(request: pytest.FixtureRequest) -> Path:
    """test-output/<module>/<test name>/, fresh for each test."""
    folder = OUTPUT / request.node.module.__name__.rsplit(".", 1)[-1] / request.node.name.replace("/", "_")
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


class Browser:
    def __init__(self) -> None:
        for path in (CHROMIUM, CHROMEDRIVER):
            if not os.access(path, os.X_OK):
                pytest.fail(f"{path} missing: install Debian's chromium and chromium-driver")
        os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must never try to download a driver
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        self.profile = tempfile.mkdtemp(prefix="archsync-agent-page-chromium-")
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    "--disable-dev-shm-usage", "--window-size=1400,1000", f"--user-data-dir={self.profile}"):
            options.add_argument(arg)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        self.driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)

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

    def wait_text(self, css: str, text: str, timeout: float = WAIT) -> None:
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support import expected_conditions as ec

        self.wait(ec.text_to_be_present_in_element((By.CSS_SELECTOR, css), text), f"{text!r} in {css}", timeout)

    def refresh_until_text(self, url: str, css: str, text: str, timeout: float = WAIT) -> None:
        """Reload ``url`` until ``css`` holds ``text`` (the page has no script that refreshes it)."""
        from selenium.webdriver.common.by import By

        def check(driver):
            driver.get(url)
            return any(text in el.text for el in driver.find_elements(By.CSS_SELECTOR, css))
        self.wait(check, f"{text!r} in {css} at {url}", timeout)

    def fill(self, css: str, value: str) -> None:
        el = self.find(css)
        el.clear()
        if len(value) > 200:  # a pasted key file: set it at once, as a paste does
            self.driver.execute_script("arguments[0].value = arguments[1];", el, value)
        else:
            el.send_keys(value)

    def screenshot(self, folder: Path, name: str) -> Path:
        path = folder / f"{name}.png"
        self.driver.save_screenshot(str(path))
        return path

    def console_errors(self) -> list[str]:
        """Script errors and CSP violations; answers with an error status (401, 422: the page's own
        answers to a bad password or form) are not."""
        return [e["message"] for e in self.driver.get_log("browser")
                if e.get("level") == "SEVERE" and "Failed to load resource: the server responded with a status of" not in e["message"]]

    def close(self) -> None:
        self.driver.quit()
        shutil.rmtree(self.profile, ignore_errors=True)

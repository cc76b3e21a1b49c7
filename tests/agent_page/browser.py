"""Headless Chromium for the admin page tests: the console tests' browser (tests/browser/support.py:
Debian's /usr/bin/chromium through /usr/bin/chromedriver, both named explicitly, Selenium Manager
offline, a fresh profile, explicit waits with generous timeouts), plus what the agent's page needs."""
from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from tests.browser.support import WAIT, chromium_available, output_dir
from tests.browser.support import Browser as ConsoleBrowser

__all__ = ["Browser", "output_dir"]


class Browser(ConsoleBrowser):
    def __init__(self) -> None:
        missing = chromium_available()
        if missing:
            pytest.fail(missing)
        super().__init__(Path(tempfile.mkdtemp(prefix="archsync-agent-page-downloads-")))

    def refresh_until_text(self, url: str, css: str, text: str, timeout: float = WAIT) -> None:
        """Reload ``url`` until ``css`` holds ``text`` (the page has no script that refreshes it)."""
        from selenium.webdriver.common.by import By

        def check(driver):
            driver.get(url)
            return any(text in el.text for el in driver.find_elements(By.CSS_SELECTOR, css))
        self.wait(check, f"{text!r} in {css} at {url}", timeout)

    def console_errors(self) -> list[str]:
        """Script errors and CSP violations; answers with an error status (401, 422: the page's own
        answers to a bad password or form) are not."""
        return [e["message"] for e in self.driver.get_log("browser")
                if e.get("level") == "SEVERE" and "Failed to load resource: the server responded with a status of" not in e["message"]]

"""Fixtures of the browser tests (tests/browser/support.py): one local stack and one Chromium per
test module, a fresh output folder (screenshots, downloads) per test."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from tests.browser.support import OUTPUT, Browser, LocalStack, chromium_available, output_dir


@pytest.fixture(scope="module")
def local_stack(emulators) -> Iterator[LocalStack]:
    with pytest.MonkeyPatch.context() as mp:
        s = LocalStack(emulators, mp)
        try:
            yield s
        finally:
            s.close()


@pytest.fixture(scope="module")
def browser(request) -> Iterator[Browser]:
    missing = chromium_available()
    if missing:
        pytest.fail(missing)
    b = Browser(OUTPUT / request.module.__name__.rsplit(".", 1)[-1] / "downloads")
    try:
        yield b
    finally:
        b.close()


@pytest.fixture
def out(request) -> Path:
    return output_dir(request)

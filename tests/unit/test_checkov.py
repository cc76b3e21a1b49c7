"""checkov finds nothing in infra/ that is not fixed or suppressed with a reason (issue 7 item 3).

checkov runs from its own virtualenv, .venv-checkov, which ``./run test`` installs (checkov_tool in
``run``); its dependencies conflict with the project's pins. Offline: --skip-download.

A suppression is a comment ``# checkov:skip=<CHECK_ID>: <justification>`` INSIDE the resource
block it applies to (checkov reads only the lines of the block; a comment above the block is
ignored), and it suppresses only a check that applies to that resource type. (No --quiet here: with
JSON output it drops the skipped checks this test needs.) This test requires
every skip comment in infra/ to carry a justification and to suppress a real finding, so a
misplaced or inapplicable skip fails here instead of being silently ignored.
"""
from __future__ import annotations

import functools
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
# The same pattern as checkov's COMMENT_REGEX for one check id, plus what follows the colon.
SKIP = re.compile(r"checkov:skip=([A-Za-z_\d-]+)(?::(.*))?")


def _checkov() -> str:
    venv = REPO / ".venv-checkov" / "bin" / "checkov"
    if venv.exists():
        return str(venv)
    found = shutil.which("checkov")
    if found:
        return found
    pytest.fail("checkov is not installed: ./run test installs it into .venv-checkov (checkov_tool in run)")


@functools.lru_cache(maxsize=1)
def _scan(checkov: str) -> dict:
    out = subprocess.run([checkov, "-d", str(INFRA), "--framework", "terraform", "--skip-download", "--compact",
                          "-o", "json"], capture_output=True, text=True, timeout=600, cwd=REPO)
    assert out.stdout.strip(), f"checkov printed nothing (exit {out.returncode}): {out.stderr[-2000:]}"
    report = json.loads(out.stdout)
    if isinstance(report, list):  # one report per framework
        [report] = [r for r in report if r.get("check_type") == "terraform"]
    return report


@pytest.fixture(scope="module")
def report() -> dict:
    return _scan(_checkov())


def _skip_comments() -> list[tuple[str, int, str, str]]:
    """(file relative to infra/, line, check id, justification) of every skip comment."""
    found = []
    for tf in sorted(INFRA.rglob("*.tf")):
        for number, line in enumerate(tf.read_text().splitlines(), start=1):
            if "checkov:skip" in line:
                m = SKIP.search(line)
                assert m and line.lstrip().startswith("#"), f"{tf.name}:{number}: not a checkov skip comment: {line}"
                found.append((str(tf.relative_to(INFRA)), number, m.group(1), (m.group(2) or "").strip()))
    return found


def test_checkov_reports_no_failed_check(report):
    summary = report["summary"]
    failed = [f"{c['check_id']} {c['resource']} ({c['file_path']}:{c['file_line_range'][0]})"
              for c in report["results"]["failed_checks"]]
    assert summary["failed"] == 0 and not failed, "checkov findings:\n" + "\n".join(failed)
    assert summary["parsing_errors"] == 0
    assert summary["passed"] > 0  # it did scan infra/


def test_every_suppression_is_justified():
    skips = _skip_comments()
    assert skips, "no checkov suppressions found; update this test if all findings were fixed"
    for file, line, check, why in skips:
        assert len(why) >= 20, f"{file}:{line}: checkov:skip={check} needs a justification after the colon"


def test_every_suppression_suppresses_a_finding_of_its_resource(report):
    """A skip above its block, or for a check that does not apply to the resource, does nothing."""
    skipped = report["results"]["skipped_checks"]
    for file, line, check, why in _skip_comments():
        hits = [c for c in skipped if c["check_id"] == check and c["file_path"].lstrip("/") == file
                and c["file_line_range"][0] <= line <= c["file_line_range"][1]]
        assert hits, f"{file}:{line}: checkov:skip={check} suppresses nothing (outside the resource block, or a check " \
                     "that does not apply to this resource type)"
        assert all(c["check_result"]["suppress_comment"].strip() == why for c in hits)


def test_checkov_is_the_pinned_version(report):
    pin = re.search(r"checkov_tool\(\) \{\n\s*local version=([\d.]+)", (REPO / "run").read_text()).group(1)
    assert report["summary"]["checkov_version"] == pin

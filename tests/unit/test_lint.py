"""The code passes the lint the pipeline runs (cloudbuild.yaml step "lint"): ruff, pinned in
requirements-dev.txt, with the rules of ruff.toml."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_ruff_check_is_clean():
    ruff = Path(sys.executable).parent / "ruff"
    assert ruff.exists(), f"ruff is not installed beside {sys.executable} (requirements-dev.txt pins it)"
    out = subprocess.run([str(ruff), "check", "--no-cache", "."], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr

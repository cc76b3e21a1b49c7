"""Every function imports from its deploy bundle alone (house style; issue 7 item 1)."""
from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import build_bundles  # noqa: E402

PROBE = """
import importlib.util, sys
bundle = sys.argv[1]
sys.path.insert(0, bundle)
spec = importlib.util.spec_from_file_location("main", bundle + "/main.py")
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
import shared
assert shared.__file__.startswith(bundle), shared.__file__
assert callable(getattr(module, sys.argv[2]))
heavy = [m for m in ("pydicom", "hl7apy", "pynetdicom", "google.cloud.firestore", "google.cloud.pubsub_v1") if m in sys.modules]
print(",".join(heavy))
"""


def test_function_list_matches_the_directories():
    assert build_bundles.function_names() == ["admin_api", "lock_status", "on_exam_status_changed", "on_facility_changed", "on_job_result",
                                             "on_patient_updated", "on_study_changed", "sweep_jobs"]


@pytest.mark.parametrize("name", build_bundles.function_names())
def test_function_imports_from_its_bundle_alone(tmp_path, name):
    bundle = build_bundles.build(name, tmp_path)
    assert not any(p.is_symlink() for p in bundle.rglob("*"))
    assert (bundle / "requirements.txt").read_text() == (Path(build_bundles.REPO) / "requirements.txt").read_text()
    assert (bundle / "shared" / "contracts" / "job-result.v1.schema.json").is_file()
    # -I: ignore PYTHONPATH and the current directory, so the repository's shared/ is not visible.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-I", "-c", PROBE, str(bundle), name], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    # Clients are created lazily: importing an entry point loads no cloud client library.
    assert out.stdout.strip() == ""
    names = zipfile.ZipFile(tmp_path / f"{name}.zip").namelist()
    assert "main.py" in names and "shared/__init__.py" in names and not any("__pycache__" in n for n in names)


def test_zip_is_reproducible(tmp_path):
    a = build_bundles.build("on_job_result", tmp_path / "a").parent / "on_job_result.zip"
    b = build_bundles.build("on_job_result", tmp_path / "b").parent / "on_job_result.zip"
    assert a.read_bytes() == b.read_bytes()

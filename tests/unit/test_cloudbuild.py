"""The Cloud Build pipeline has the steps issue 7 names, in order, and runs the README's test command."""
from __future__ import annotations

import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
BUILD = yaml.safe_load((REPO / "cloudbuild.yaml").read_text())


def test_steps_in_order():
    assert [s["id"] for s in BUILD["steps"]] == [
        "lint", "test", "terraform-fmt", "checkov", "bundles", "plan", "apply", "smoke"]


def test_lint_step_runs_the_pinned_ruff_with_the_project_rules():
    step = next(s for s in BUILD["steps"] if s["id"] == "lint")
    script = step["args"][-1]
    assert "grep -E '^ruff==' requirements-dev.txt" in script and "ruff check ." in script
    assert "$$(" in script  # a literal $ for Cloud Build, which substitutes $VAR and ${VAR}
    assert any(line.startswith("ruff==") for line in (REPO / "requirements-dev.txt").read_text().splitlines())
    assert (REPO / "ruff.toml").is_file()


def test_checkov_step_is_pinned_offline_and_matches_the_test_suite():
    step = next(s for s in BUILD["steps"] if s["id"] == "checkov")
    assert step["name"] == "bridgecrew/checkov:${_CHECKOV_VERSION}"
    assert {"--skip-download", "-d", "infra"} <= set(step["args"])
    run = (REPO / "run").read_text()
    pin = re.search(r"checkov_tool\(\) \{\n\s*local version=([\d.]+)", run).group(1)
    assert BUILD["substitutions"]["_CHECKOV_VERSION"] == pin
    assert re.search(r"^  test\).*checkov_tool", run, re.M)  # ./run test installs it


def test_test_step_runs_the_readme_test_command_on_the_emulator_image():
    step = next(s for s in BUILD["steps"] if s["id"] == "test")
    assert step["name"].endswith(":emulators") and "./run test" in step["args"][-1]
    readme = (REPO / "README.md").read_text()
    assert "./run test" in readme and (REPO / ".ci/run").read_text().strip().endswith("./run test")


def test_plan_uses_the_environment_and_apply_applies_that_plan():
    steps = {s["id"]: s for s in BUILD["steps"]}
    plan = steps["plan"]["args"][-1]
    assert 'environments/${_ENV}.tfvars' in plan and "-out=tfplan" in plan and "${_TF_STATE_BUCKET}" in plan
    assert "terraform apply -input=false tfplan" in steps["apply"]["args"][-1]
    for env in ("dev", "prod"):
        assert (REPO / "infra" / "environments" / f"{env}.tfvars").is_file()
    assert (REPO / "scripts" / "smoke_test.sh").stat().st_mode & 0o111


def test_smoke_test_reads_outputs_that_exist():
    text = (REPO / "scripts" / "smoke_test.sh").read_text()
    outputs = (REPO / "infra" / "outputs.tf").read_text()
    for name in ("result_endpoint_url", "lock_status_url", "admin_api_url"):
        assert f"url {name}" in text and f'output "{name}"' in outputs
    # The internal-only functions are probed through function_urls.
    assert "['function_urls']" in text and 'output "function_urls"' in outputs
    functions = (REPO / "infra" / "functions.tf").read_text()
    for name in re.findall(r"for fn in ([\w ]+); do", text)[0].split():
        entry = re.search(rf"^    {name} = \{{\n(.*?)^    \}}", functions, re.M | re.S).group(1)
        assert re.search(r"ingress_settings\s*=\s*local\.ingress_internal", entry), name

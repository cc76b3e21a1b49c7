"""Offline consistency of infra/ with the code: formatting, functions, settings, topics, indexes."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import hcl2
import pytest

from shared.adapters.firestore_store import COMPOSITE_INDEXES
from shared.settings import ENV_VARS, Settings

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"


def _unquote(v):
    return v.strip('"') if isinstance(v, str) else v


def _resources(kind: str) -> dict:
    out = {}
    for tf in INFRA.glob("*.tf"):
        for block in hcl2.load(tf.open()).get("resource", []):
            for k, body in block.items():
                if _unquote(k) == kind:
                    for name, attrs in body.items():
                        out[_unquote(name)] = attrs
    return out


def _locals() -> dict:
    merged = {}
    for tf in INFRA.glob("*.tf"):
        for block in hcl2.load(tf.open()).get("locals", []):
            merged.update(block)
    return merged


def test_terraform_fmt(tmp_path):
    rc = tmp_path / "tfrc"
    rc.write_text("disable_checkpoint = true\n")
    out = subprocess.run(["terraform", "fmt", "-check", "-recursive", str(INFRA)], capture_output=True, text=True,
                         env={**os.environ, "TF_CLI_CONFIG_FILE": str(rc)})
    assert out.returncode == 0, f"terraform fmt would change: {out.stdout}{out.stderr}"


def test_every_function_is_declared_with_its_entry_point():
    declared = _locals()["functions"]
    on_disk = sorted(p.parent.name for p in (REPO / "functions").glob("*/main.py"))
    assert sorted(declared) == on_disk
    [fn] = _resources("google_cloudfunctions2_function").values()
    assert "each.key" in str(fn["build_config"])  # entry_point = the directory name
    for name in on_disk:
        assert f"def {name}(" in (REPO / "functions" / name / "main.py").read_text()


def test_function_environment_matches_settings():
    env = _locals()["function_env"]
    assert set(env) == set(ENV_VARS)


def test_topics_the_code_names_are_declared():
    topics = {_unquote(_locals()["dead_letter_topic"])} | {_unquote(v["topic"]) for v in _locals()["inbound"].values()}
    assert Settings(project_id="x").dead_letter_topic in topics
    # One inbound topic per Pub/Sub-triggered function, pushing to it.
    assert {"archsync-exam-status", "archsync-study-changed", "archsync-patient-updated"} <= topics
    assert {_unquote(v["function"]) for v in _locals()["inbound"].values()} == {
        "on_exam_status_changed", "on_study_changed", "on_patient_updated"}
    sub = _resources("google_pubsub_subscription")["exam_status_to_function"]
    assert "dead_letter_policy" in sub and "push_config" in sub


def _declared_indexes() -> list:
    declared = []
    for r in _resources("google_firestore_index").values():
        if "fields" in r:
            declared.append((_unquote(r["collection"]), _unquote(r["query_scope"]),
                             tuple((_unquote(f["field_path"]), _unquote(f["order"])) for f in r["fields"])))
    # The Jobs tab's indexes are declared from a list (infra/firestore_jobs.tf).
    for fields in _locals()["job_query_indexes"]:
        declared.append(("jobs", "COLLECTION", tuple((_unquote(f), _unquote(o)) for f, o in fields)))
    return declared


@pytest.mark.parametrize("collection,scope,fields", COMPOSITE_INDEXES)
def test_composite_indexes_are_declared(collection, scope, fields):
    assert (collection, scope, tuple(fields)) in _declared_indexes()


def test_no_index_is_declared_that_the_code_does_not_use():
    assert sorted(_declared_indexes()) == sorted((c, s, tuple(f)) for c, s, f in COMPOSITE_INDEXES)

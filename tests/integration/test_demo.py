"""The README's main job, run as a test: real push delivery from the Pub/Sub emulator into
functions-framework processes, the reference gateway agent doing real DICOM into embedded
archives, an administrator's fix and retry, and the sweeper."""
from __future__ import annotations

from devstack import demo
from shared.domain.models import LOCK_MESSAGE


def _console_answers(summary: dict, seen: dict) -> None:
    """While the stack still runs: the printed console URL serves the console with its sign-in
    configured against the local identity provider, whose sign-in page lists the demo's admin."""
    import requests

    url = summary["console_url"]
    page = requests.get(url, timeout=30)
    config = requests.get(url + "config.json", timeout=30).json()
    authorize = requests.get(config["authorize_url"], timeout=30, params={
        "response_type": "code", "client_id": config["client_id"], "redirect_uri": url, "state": "s",
        "code_challenge": "x" * 43, "code_challenge_method": "S256"})
    seen.update(page=page.status_code, csp=page.headers.get("Content-Security-Policy", ""), configured=config["configured"],
                signin=authorize.status_code, signin_text=authorize.text)


def test_demo_run_end_to_end(tmp_path):
    console: dict = {}
    s = demo.run(quiet=True, log_dir=tmp_path, on_ready=lambda summary: _console_answers(summary, console))
    assert console["page"] == 200 and "script-src 'self'" in console["csp"] and console["configured"] is True
    assert console["signin"] == 200 and "Sign in as Demo Admin" in console["signin_text"]
    # The facilities came from the platform through facility-changed.v1 (issue 11 item 1).
    assert s["facilities"] == {"fac-main": ("Main Hospital", True), "fac-east": ("East Clinic", True),
                               "fac-west": ("West Clinic", True)}
    # 9 exams complete (Enterprise VNA), 3 at fac-main reach Pending (legacy), 3 at fac-east reach
    # Inflight (east); the repeat, the duplicate and the retroactive exam add none.
    assert s["jobs_per_destination"] == {
        "East clinic archive": {"FAILED": 3},
        "Legacy PACS archive": {"COMPLETED": 3},
        "Enterprise VNA": {"COMPLETED": 9},
    }
    # The reference agent really stored every study (6 instances each) in the embedded archives;
    # the east gateway's job delivery is not active, so nothing reached its archive.
    assert s["archives"] == {"vna": 54, "legacy": 18, "east": 0}
    assert "exam-20" not in s["archive_states"]
    assert s["archive_states"]["exam-03"] == {"Legacy PACS archive": "ARCHIVED", "Enterprise VNA": "ARCHIVED"}
    assert s["archive_states"]["exam-07"] == {"East clinic archive": "UNKNOWN", "Enterprise VNA": "ARCHIVED"}
    # The legacy archive's AE title typo failed its jobs with the archive's own words, then the
    # administrator fixed it and retried them through the admin API.
    assert len(s["legacy_failures_before_fix"]) == 3
    assert all("Called AE title not recognised" in r for r in s["legacy_failures_before_fix"])
    assert len(s["timed_out"]) == 3
    assert {e for e, held in s["locks_seen_during_jobs"].items() if held} == {
        "exam-01", "exam-03", "exam-04", "exam-06", "exam-07", "exam-09"}
    assert s["lock_message"] == LOCK_MESSAGE
    assert s["locks_held_at_end"] == []
    assert len(s["dead_lettered"]) == 1 and "missing event_id" in s["dead_lettered"][0]
    # The strict local stack (issue 12 item 7): each gateway got a token for its own account with
    # its own downloaded key, the main gateway's agent read its studies as that account, and
    # another facility group's study was refused with Cloud Storage's 403.
    emails = {name: principal for name, principal in s["gateway_auth"].items()}
    assert len(set(emails.values())) == len(emails) >= 2
    assert all(p.startswith("serviceAccount:archsync-gw-") for p in emails.values())
    assert s["cross_group_read"].startswith("403 ") and "does not have storage.objects.list access" in s["cross_group_read"]
    main = s["storage_reads_by_gateway"]["Main datacenter gateway"]
    assert main["allowed"] >= 54 + 18 and main["refused"] == 1  # every study file read; only the cross-group list refused

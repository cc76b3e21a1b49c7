"""The README's main job, run as a test: real push delivery from the Pub/Sub emulator into
functions-framework processes, simulated gateways posting signed results, and the sweeper."""
from __future__ import annotations

from devstack import demo
from shared.domain.models import LOCK_MESSAGE


def test_demo_run_end_to_end(tmp_path):
    s = demo.run(quiet=True, log_dir=tmp_path)
    # 9 exams complete (vna-enterprise), 3 at fac-main reach Pending (pacs-legacy), 3 at fac-east
    # reach Inflight (east-archive); the repeat, the duplicate and the retroactive exam add none.
    assert s["jobs_per_destination"] == {
        "East clinic archive": {"COMPLETED": 2, "FAILED": 1},
        "Legacy PACS archive": {"COMPLETED": 3},
        "Enterprise VNA": {"COMPLETED": 8, "FAILED": 1},
    }
    assert "exam-20" not in s["archive_states"]
    assert s["archive_states"]["exam-05"] == {"Enterprise VNA": "FAILED"}
    assert s["archive_states"]["exam-07"] == {"East clinic archive": "UNKNOWN", "Enterprise VNA": "ARCHIVED"}
    assert s["archive_states"]["exam-03"] == {"Legacy PACS archive": "ARCHIVED", "Enterprise VNA": "ARCHIVED"}
    assert len(s["timed_out"]) == 1
    assert {e for e, held in s["locks_seen_during_jobs"].items() if held} == {
        "exam-01", "exam-03", "exam-04", "exam-06", "exam-07", "exam-09"}
    assert s["lock_message"] == LOCK_MESSAGE
    assert s["locks_held_at_end"] == []
    assert len(s["dead_lettered"]) == 1 and "missing event_id" in s["dead_lettered"][0]

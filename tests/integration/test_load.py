"""Issue 15 item 6, small: the load benchmark's burst (scripts/benchmark_load.py) at 300 events with
duplicates and out-of-order repeats, through real Pub/Sub push delivery into on_exam_status_changed
under functions-framework. Exactly one job per eligible (exam, destination), one gateway message per
job, nothing dead-lettered."""
from __future__ import annotations

import sys
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

import benchmark_load  # noqa: E402


def test_the_stream_has_duplicates_and_out_of_order_repeats():
    stream, exams, duplicates = benchmark_load.build_stream(300, 4, 0.15, datetime(2026, 11, 1, tzinfo=timezone.utc), 15)
    assert len(stream) == 300 and duplicates == 45
    ids = Counter(e["event_id"] for e in stream)
    assert sum(c - 1 for c in ids.values()) == duplicates
    # Some repeat of an older status arrives after a newer status of the same exam.
    seen: dict[str, set] = {}
    order = ("SCHEDULED", "PENDING", "INFLIGHT", "COMPLETED")
    late = 0
    for e in stream:
        exam, status = e["exam"]["exam_id"], e["exam"]["status"]
        late += any(order.index(s) > order.index(status) for s in seen.get(exam, ()))
        seen.setdefault(exam, set()).add(status)
    assert late > 0
    expected = benchmark_load.expected_jobs(exams)
    # Every kind of destination outcome occurs: jobs at each trigger, none for the inactive and
    # manual-only destinations, none for exams completed before auto archive was configured.
    assert {k for _, _, k in expected} == {"vna", "legacy", "east"}
    assert not any(exams[(fg, e)]["before_config"] for fg, e, _ in expected)
    assert any(x["before_config"] for x in exams.values())


def test_burst_with_duplicates_through_push_makes_exactly_the_eligible_jobs(emulators, project_id, tmp_path):
    r = benchmark_load.run(300, groups=3, seed=7, deadline_seconds=600, log_dir=tmp_path, project=project_id,
                           firestore_host=emulators["firestore"], pubsub_host=emulators["pubsub"])
    assert r["drained"], r
    assert r["handled"] == r["published"] == 300
    assert r["expected_jobs"] > 50
    assert (r["jobs"], r["missing_jobs"], r["unexpected_jobs"], r["duplicate_jobs"]) == (r["expected_jobs"], 0, 0, 0)
    assert r["locks_held"] == r["expected_locks"] > 0
    assert r["jobs_without_message"] == 0 and r["messages_of_unknown_jobs"] == 0
    assert r["dead_lettered"] == {}
    assert benchmark_load.verdict(r) == []

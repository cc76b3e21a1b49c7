# ruff: noqa: F811 - the shared ``world`` fixture is imported and used as a parameter
"""The agent's send pipeline (issue 13 item 1) on the GCS emulator (strict stack) and the embedded
archive: several store associations store each instance once with exact counts, storing starts
before the study is fetched, the spool stays bounded, C-FIND's skip and retries of only what
failed still hold. Every check waits on state, never on timing."""
from __future__ import annotations

import threading
from pathlib import Path

from pynetdicom import evt

from gateway_agent.dimse import CommitmentWaiter, Endpoint, Network
from gateway_agent.fetch import ObjectFetcher
from gateway_agent.jobs import JobRunner
from gateway_agent.pipeline import PipelineSettings
from tests.e2e.harness import wait_for, write_instances
from tests.integration.test_gateway_agent import STUDY, job, world  # noqa: F401, F811 - the fixture


class WatchedFetcher(ObjectFetcher):
    """The real fetcher; ``before`` runs before each download (name, spool directory)."""

    def __init__(self, *args, before=lambda name, spool: None, **kw):
        super().__init__(*args, **kw)
        self.before, self.spool_peak, self._lock = before, 0, threading.Lock()

    def download(self, bucket: str, name: str, path: Path) -> Path:
        self.before(name, path.parent)
        out = super().download(bucket, name, path)
        with self._lock:
            self.spool_peak = max(self.spool_peak, sum(1 for _ in path.parent.glob("*.dcm")))
        return out


def runner(world, settings: PipelineSettings, **kw) -> tuple[JobRunner, WatchedFetcher]:
    fetcher = WatchedFetcher(world.sa_key, world.stack.project, world.stack.emulators["gcs"], **kw)
    return JobRunner(fetcher, Network(10, 5, 5), CommitmentWaiter(), work_dir=str(world.stack_tmp),
                     sleep=world.sleeps.append, pipeline=settings), fetcher


def intercept(world, handler) -> None:
    """Put ``handler(event, original)`` in front of the archive's C-STORE handler."""
    original = world.archive._on_store
    world.archive._server.unbind(evt.EVT_C_STORE, original)
    world.archive._server.bind(evt.EVT_C_STORE, lambda event: handler(event, original))


def test_parallel_associations_store_each_instance_once_with_exact_counts(world, tmp_path):
    world.stack_tmp = tmp_path
    files = world.study(40, series=3)
    seen, cond, calls = set(), threading.Condition(), []

    def two_at_once(event, original):
        # Each store waits until a second association has stored too: passes only when stores
        # really run on several associations at once (deadline: it would fail, not hang).
        with cond:
            seen.add(id(event.assoc))
            calls.append(str(event.request.AffectedSOPInstanceUID))
            cond.notify_all()
            cond.wait_for(lambda: len(seen) >= 2, timeout=30)
        return original(event)

    intercept(world, two_at_once)
    r, _ = runner(world, PipelineSettings(associations=4))
    out = r.run(job(port=world.archive.port, uri=world.uri))
    assert out.state == "COMPLETED", out.reason
    assert out.counts == {"total": 40, "sent": 40, "already_present": 0, "excluded": 0, "failed": 0}
    assert len(seen) >= 2
    assert sorted(calls) == sorted(f.sop_instance_uid for f in files)  # each instance stored exactly once
    assert world.archive.study(STUDY) == {f.sop_instance_uid for f in files}


def test_storing_starts_before_the_whole_study_is_fetched_and_the_spool_stays_bounded(world, tmp_path):
    world.stack_tmp = tmp_path
    files = world.study(30)
    last = f"{world.uri[5:].partition('/')[2]}{max(f.sop_instance_uid for f in files)}.dcm"  # listed last
    overlapped = []

    def hold_the_last(name, spool):
        if name == last:  # the last file is fetched only once the archive has something (or never)
            try:
                overlapped.append(bool(wait_for(lambda: world.archive.stores >= 1, 30, "a first C-STORE")))
            except AssertionError:
                overlapped.append(False)

    settings = PipelineSettings(associations=2, fetchers=2, spool_files=3)
    r, fetcher = runner(world, settings, before=hold_the_last, parallel=2)
    out = r.run(job(port=world.archive.port, uri=world.uri))
    assert out.state == "COMPLETED" and out.counts["sent"] == 30
    assert overlapped == [True]
    # queued + being downloaded + being sent, whatever the study's size
    assert fetcher.spool_peak <= settings.spool_files + settings.fetchers + settings.associations
    assert not any((tmp_path).rglob("*.dcm"))  # nothing left behind


def test_c_find_skip_and_a_retry_of_only_what_failed_under_parallel_associations(world, tmp_path):
    world.stack_tmp = tmp_path
    files = world.study(30, series=2)
    held = files[:10]
    report = Network().store(Endpoint("127.0.0.1", world.archive.port, "ARCHIVE", "MODALITY"),
                             write_instances(held, tmp_path), None)
    assert not report.failed and world.archive.stores == 10
    refused, calls, lock = set(), [], threading.Lock()

    def every_fifth_once(event, original):  # out of resources, once, for every fifth instance
        uid = str(event.request.AffectedSOPInstanceUID)
        with lock:
            calls.append(uid)
            if len(calls) % 5 == 0 and uid not in refused:
                refused.add(uid)
                return 0xA700
        return original(event)

    intercept(world, every_fifth_once)
    r, _ = runner(world, PipelineSettings(associations=4))
    out = r.run(job(port=world.archive.port, uri=world.uri, max_retries=1))
    assert out.state == "COMPLETED", out.reason
    assert out.counts == {"total": 30, "sent": 20, "already_present": 10, "excluded": 0, "failed": 0}
    assert refused and world.sleeps == [3]
    assert not set(calls) & {f.sop_instance_uid for f in held}  # what the archive held was not sent
    # each missing instance stored once; only the refused ones were sent a second time
    assert len(calls) == 20 + len(refused) and sorted(set(calls)) == sorted(f.sop_instance_uid for f in files[10:])
    assert world.archive.study(STUDY) == {f.sop_instance_uid for f in files}

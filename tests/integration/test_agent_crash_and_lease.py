"""Transfers that last hours (issue 13 item 3), on the Pub/Sub emulator with the reference agent run
as its own process (``python -m gateway_agent --config …``, as on site) with the key the admin API
hands out, a gateway provisioned for real and the embedded archive, slowed down per C-STORE.

- A killed agent (SIGKILL, mid-study) loses nothing: Pub/Sub redelivers the job once its lease
  lapses, the next agent's C-FIND finds the N instances the archive already holds and sends only
  the M - N others; the archive takes each instance exactly once.
- The lease holds a transfer several times longer than the ack deadline: with two agents on the
  subscription, one does the job and the message is never redelivered mid-way. The negative
  control caps the lease (``max_lease_seconds``) below the transfer: then it is redelivered.

Time is scaled down: the ack deadline and one lease extension are 10 s (20 s where the lease must hold; the Pub/Sub client's
minimum; 300 s in production) and the transfers last 30-45 s. Note the streaming pull asks for its
own ack deadline (``lease_extension_seconds``, the client's ``stream_ack_deadline``), which is
what bounds the redelivery after a crash; the subscription's is set to the same 10 s here."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import pytest

from devstack.archive_scp import EmbeddedArchive
from devstack.pubsub_iam import require_consume
from gateway_agent.config import parse
from tests.e2e.harness import E2E, wait_for
from tests.support import on_site_env

REPO = Path(__file__).resolve().parents[2]
STUDY = "1.2.826.0.1.3680043.8.498.9301"
EXTENSION = 10  # seconds: the subscription's ack deadline and one lease extension
# The client renews a lease after a random pause of up to 0.9 x the extension: a 10 s extension
# leaves 1 s for a thread stalled on a loaded machine, 20 s leaves 2 s (production: 30 s of 300).
HELD_EXTENSION = 20


def provisioning(extension: int) -> dict:
    # Redeliveries in seconds, not the production 60-600 s backoff.
    return {"ack_deadline_seconds": extension, "min_retry_backoff_seconds": 1, "max_retry_backoff_seconds": 5}


class SlowArchive(EmbeddedArchive):
    """The embedded archive taking ``delay`` seconds per C-STORE (a slow link or archive), and
    counting the stores still being handled."""

    def __init__(self, delay: float):
        super().__init__(commitment=False)
        self.delay, self.in_flight = delay, 0

    def _on_store(self, event) -> int:
        with self._lock:
            self.in_flight += 1
        try:
            time.sleep(self.delay)
            return super()._on_store(event)
        finally:
            with self._lock:
                self.in_flight -= 1

    def quiet(self) -> bool:
        """No association open and no store being handled (what a dead sender left has landed)."""
        return self._server is not None and not self._server.active_associations and self.in_flight == 0


class AgentProcess:
    """``python -m gateway_agent --config <file>``: its JSON log lines go to a file."""

    def __init__(self, e2e: E2E, name: str, extension: int, **tuning):
        cfg = {**e2e.config(), "lease_extension_seconds": extension, "progress_interval_seconds": 5, **tuning}
        cfg["work_dir"] = str(e2e.tmp / name)
        os.makedirs(cfg["work_dir"], exist_ok=True)
        for delivery in parse(cfg).active_deliveries:  # as the stack checks a pull (devstack/pubsub_iam.py)
            require_consume(e2e.stack.emulators["iam"].policies, delivery.service_account_info, delivery.subscription_path)
        self.name = name
        self.config = e2e.tmp / f"{name}.json"
        self.config.write_text(json.dumps(cfg))
        self.log = e2e.tmp / f"{name}.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "gateway_agent", "--config", str(self.config)],
                                         cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env=on_site_env())

    def records(self, message: Optional[str] = None) -> list[dict]:
        out = []
        for line in self.log.read_text(errors="replace").splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue  # a library's plain line, or a line being written
            if isinstance(rec, dict) and (message is None or rec.get("message") == message):
                out.append(rec)
        return out

    def active(self) -> bool:
        return bool(self.records("job delivery active"))

    def kill(self) -> None:
        """SIGKILL: no clean-up at all (power loss, OOM killer)."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.kill()

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def deliveries(agents: list[AgentProcess]) -> list[tuple[str, str, int]]:
    """(agent, what, Pub/Sub delivery attempt) of every delivery of a job message the agents logged."""
    kinds = {"job started": "started",
             "job message redelivered while its job runs here; held (neither acked nor nacked)": "held",
             "job message redelivered after its job settled here; acked": "settled"}
    return [(a.name, kinds[r["message"]], r.get("delivery_attempt")) for a in agents for r in a.records()
            if r.get("message") in kinds]


@pytest.fixture
def world(stack, admin_env, tmp_path):
    made: dict = {"agents": []}

    def make(delay: float, extension: int = EXTENSION) -> tuple[E2E, SlowArchive]:
        archive = SlowArchive(delay).start()
        e2e = E2E(stack, tmp_path, admin_env, host="127.0.0.1", port=archive.port, called_ae_title=archive.ae_title,
                  provisioning=provisioning(extension))
        made.update(archive=archive, e2e=e2e, extension=extension)
        return e2e, archive

    def agent(name: str, **tuning) -> AgentProcess:
        a = AgentProcess(made["e2e"], name, made["extension"], **tuning)
        made["agents"].append(a)
        wait_for(lambda: a.active() or a.proc.poll() is not None, 60, f"agent {name} pulling")
        assert a.proc.poll() is None, a.tail()
        return a

    yield make, agent
    for a in made["agents"]:
        a.stop()
    if "e2e" in made:
        made["e2e"].close()
        made["archive"].stop()


def test_a_killed_agents_job_is_redelivered_and_resends_only_what_the_archive_lacks(world):
    make, agent = world
    m = 120
    e2e, archive = make(delay=0.2)  # 4 associations: ~20 instances/s, so the kill lands mid-study
    files = e2e.study(STUDY, m)
    first = agent("agent-1")
    e2e.exam_completed("exam-1", STUDY)
    wait_for(lambda: len(archive.study(STUDY)) >= 25 or first.proc.poll() is not None, 120, "25 instances stored")
    assert first.proc.poll() is None, first.tail()
    first.kill()
    # What the dead agent's associations had in flight lands (or not) now; then the archive holds N.
    wait_for(archive.quiet, 60, "the dead agent's associations closed")
    n = len(archive.study(STUDY))
    assert 0 < n < m, f"the kill did not land mid-study ({n} of {m})"
    assert e2e.jobs("ARCHIVE")[0]["state"] == "IN_PROGRESS"

    second = agent("agent-2")
    wait_for(lambda: second.records("job started"), 120, "the job redelivered to the new agent")
    job = e2e.wait_job("ARCHIVE", {"COMPLETED", "FAILED"}, timeout=180)
    assert job["state"] == "COMPLETED", job.get("failure_reason")
    assert e2e.archive_state("exam-1") == "ARCHIVED"
    # Each instance stored exactly once: the N before the crash, the M - N after it.
    assert archive.stores_by_uid == {f.sop_instance_uid: 1 for f in files}
    assert job["counts"] == {"total": m, "sent": m - n, "already_present": n, "excluded": 0, "failed": 0}
    # The same message, redelivered by Pub/Sub once the dead agent's lease lapsed.
    # (Its delivery attempt may be above 2: the emulator may hand it to the dead agent's stream
    # before it notices the stream is gone, each such delivery costing one lease.)
    seen = deliveries([first, second])
    assert [d[:2] for d in seen] == [("agent-1", "started"), ("agent-2", "started")], seen
    assert seen[0][2] == 1 and seen[1][2] >= 2, seen
    assert job["attempt"] == 1  # one cloud attempt: the redelivery is Pub/Sub's, not a retry


@pytest.mark.parametrize(("max_lease", "extension", "m"), [(None, HELD_EXTENSION, 60), (12, EXTENSION, 44)],
                         ids=["lease-held", "lease-capped-below-the-transfer"])
def test_the_lease_holds_a_transfer_longer_than_the_ack_deadline_and_only_one_agent_does_it(world, max_lease, extension, m):
    """Two agents on the gateway's subscription; the job's transfer takes 3-4 ack deadlines
    (4 associations x m/4 stores x 4 s). With the default maximum lease, one agent does it and
    Pub/Sub never redelivers it. Capped below the transfer (negative control), the client stops
    extending the lease and the message comes back while the first agent still sends."""
    make, agent = world
    e2e, archive = make(delay=4.0, extension=extension)
    files = e2e.study(STUDY, m)
    tuning = {} if max_lease is None else {"max_lease_seconds": max_lease}
    agents = [agent("agent-1", **tuning), agent("agent-2", **tuning)]
    e2e.exam_completed("exam-1", STUDY)
    first = wait_for(lambda: deliveries(agents), 60, "an agent starting the job")
    assert first[0][1:] == ("started", 1), first
    sender = next(a for a in agents if a.name == first[0][0])
    if max_lease is not None:
        # The lease is dropped max_lease (+ one lease-manager pause, < 9 s) after receipt and the
        # message comes back once its last extension expires (10 s): well before the send ends.
        again = wait_for(lambda: [d for d in deliveries(agents) if (d[2] or 0) >= 2], 120,
                         "a redelivery of the job message")
        assert not sender.records("job finished"), f"redelivered only after the transfer: {again}"
        for a in agents:  # the outcome of two agents sending at once is not this test's subject
            a.kill()
        return
    t0 = time.monotonic()
    job = e2e.wait_job("ARCHIVE", {"COMPLETED", "FAILED"}, timeout=240)
    took = time.monotonic() - t0
    assert job["state"] == "COMPLETED", job.get("failure_reason")
    assert took >= 2 * extension, f"the transfer took {took:.0f} s: too short to prove the lease"
    assert archive.stores_by_uid == {f.sop_instance_uid: 1 for f in files}
    assert job["counts"] == {"total": m, "sent": m, "already_present": 0, "excluded": 0, "failed": 0}
    # A lapsed lease would have redelivered the message (to either agent: "started" or "held")
    # before the job could finish.
    assert deliveries(agents) == first, deliveries(agents)

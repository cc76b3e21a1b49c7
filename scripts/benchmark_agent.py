"""Benchmark of the reference gateway agent's data path (issues 6 and 13), in one run, the same
files into the same Orthanc (emptied before each run):

1. C-STORE rate from spooled files: the agent's send pipeline on one association, the agent with
   its default parallelism (``store_associations``), dcmtk's ``storescu`` and ``dcmsend``, each
   with its ratio against storescu (best of 2, alternating).
2. Exam Completed -> ARCHIVED for 500- and 2,000-instance studies through the whole loop on the
   strict local stack (function, Pub/Sub, the agent as its own process with its downloaded key,
   GCS fetch through the authorising front, C-FIND, C-STORE into Orthanc, signed result,
   Firestore), beside storescu's time for the same files; the agent process's peak memory
   (VmHWM: its own peak RSS) for each study size.

Figures only on stdout; the agent's and the emulators' logs go to files (their directory is
printed).

    PYTHONPATH=. python scripts/benchmark_agent.py [--instances 300] [--studies 500,2000]
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from devstack import processes  # noqa: E402
from devstack.orthanc import Orthanc  # noqa: E402
from devstack.studies import make_study  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
OUT = sys.stdout  # figures only; the functions' JSON logs (shared/logs.py writes to stdout) go to a file


class _LocalFiles:
    """The agent's fetcher over files already on disk (part 1 measures the send path, as
    storescu reads its files from disk): a hard link (or copy) into the pipeline's spool."""

    def __init__(self, files_dir: Path):
        self._dir = files_dir

    def download(self, bucket: str, name: str, path: Path) -> Path:
        try:
            os.link(self._dir / name, path)
        except OSError:
            shutil.copyfile(self._dir / name, path)
        return path


def _cpu() -> float:
    """CPU seconds of this process (every thread) and of its finished children (storescu, dcmsend)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def _timed(orthanc: Orthanc, count: int, send: Callable[[], None]) -> tuple[float, float]:
    """(wall seconds, the sender's CPU seconds). CPU per instance does not depend on what else
    the machine runs, so it compares the senders even when the wall-clock rates are noisy."""
    orthanc.delete_all()
    t, c = time.perf_counter(), _cpu()
    send()
    elapsed, cpu = time.perf_counter() - t, _cpu() - c
    assert len(orthanc.get("/instances")) == count, "not every instance arrived"
    return elapsed, cpu


def _storescu(orthanc: Orthanc, files_dir: Path) -> None:
    subprocess.run(["storescu", "-aet", "GW_SCU", "-aec", orthanc.ae_title, "+sd", "127.0.0.1", str(orthanc.dicom_port),
                    str(files_dir)], check=True, capture_output=True, env={**os.environ, "TCP_NODELAY": "1"})


def _dcmsend(orthanc: Orthanc, files_dir: Path) -> None:
    subprocess.run(["dcmsend", "-aet", "GW_SCU", "-aec", orthanc.ae_title, "+sd", "-nuc", "127.0.0.1",
                    str(orthanc.dicom_port), str(files_dir)], check=True, capture_output=True,
                   env={**os.environ, "TCP_NODELAY": "1"})


def store_rate(orthanc: Orthanc, count: int, tmp: Path) -> None:
    from gateway_agent.config import AgentConfig
    from gateway_agent.dimse import Endpoint, Network
    from gateway_agent.pipeline import PipelineSettings, SendPipeline, Tally

    files_dir = tmp / "files"
    files_dir.mkdir()
    files = make_study("1.2.826.0.1.3680043.8.498.9001", count, series=4)
    for f in files:
        (files_dir / f"{f.sop_instance_uid}.dcm").write_bytes(f.data)
    names = sorted(p.name for p in files_dir.iterdir())
    mb = sum(len(f.data) for f in files) / 1e6
    ep = Endpoint("127.0.0.1", orthanc.dicom_port, orthanc.ae_title, "GW_SCU")
    default = AgentConfig(deliveries=()).store_associations

    def agent(associations: int) -> Callable[[], None]:
        def run() -> None:
            spool = Path(tempfile.mkdtemp(dir=tmp))
            sent: set[str] = set()
            tally = SendPipeline(_LocalFiles(files_dir), Network(), PipelineSettings(associations=associations)).run(
                ep, "local", names, spool, study_uid="1.2.826.0.1.3680043.8.498.9001", where="local", wanted=None,
                excluded=set(), transfer_syntax=None, query_held=False, sent=sent, known={}, job_id="bench", tally=Tally())
            assert len(sent) == count and not tally.failed, tally.failed
            shutil.rmtree(spool)
        return run

    senders = {"agent, 1 association": agent(1), f"agent, {default} associations (default)": agent(default),
               "dcmtk storescu": lambda: _storescu(orthanc, files_dir), "dcmtk dcmsend": lambda: _dcmsend(orthanc, files_dir)}
    rates: dict[str, float] = {}
    cpu_ms: dict[str, float] = {}
    for _ in range(3):  # alternate, three times each: less noise on a shared machine
        for name, send in senders.items():
            wall, cpu = _timed(orthanc, count, send)
            rates[name] = max(rates.get(name, 0.0), count / wall)
            cpu_ms[name] = min(cpu_ms.get(name, float("inf")), cpu * 1000 / count)
    ref = rates["dcmtk storescu"]
    print(file=OUT)
    print(f"C-STORE into Orthanc, {count} CT instances ({mb:.1f} MB) from spooled files, best of 3 "
          "(sender CPU: the sending process's own CPU per instance, Orthanc's excluded):", file=OUT)
    for name, rate in rates.items():
        print(f"  {name:34s} {rate:7.1f} instances/s   ratio vs storescu {rate / ref:.2f}   "
              f"sender CPU {cpu_ms[name]:.2f} ms/instance", file=OUT)


class _StrictStack:
    """The local stack as tests/conftest.py starts it (issue 12): emulators, the IAM stand-in and
    the authorising Cloud Storage front; functions as their own runtime accounts."""

    def __init__(self, log_dir: Path, project: str):
        from devstack.gcs import emulator_url, start_gcs
        from devstack.iam_standin import IamStandIn
        from devstack.strict import start_strict_storage

        self.fs, self.ps, self.gcs = processes.start_firestore(log_dir), processes.start_pubsub(log_dir), start_gcs(log_dir)
        self.iam = IamStandIn(key_bits=1024, propagation_seconds=1.0).start()
        keys = log_dir / "function-keys"
        keys.mkdir()
        self.bucket_iam, owner = start_strict_storage(self.iam, emulator_url(self.gcs), keys)
        os.environ.update({
            "FIRESTORE_EMULATOR_HOST": self.fs.host, "PUBSUB_EMULATOR_HOST": self.ps.host,
            "STORAGE_EMULATOR_HOST": self.bucket_iam.url, "ARCHSYNC_PROJECT_ID": project,
            "ARCHSYNC_KEY_BUCKET": f"keys-{project}", "ARCHSYNC_OBJECTS_BUCKET": f"objects-{project}",
            "ARCHSYNC_STUDY_BUCKET": f"studies-{project}", "ARCHSYNC_IAM_EMULATOR_HOST": self.iam.address,
            "ARCHSYNC_STORAGE_IAM_EMULATOR_HOST": self.bucket_iam.url, "ARCHSYNC_LOCAL_CREDENTIALS_DIR": str(keys)})
        self.emulators = {"firestore": self.fs.host, "pubsub": self.ps.host, "gcs": self.bucket_iam.url, "iam": self.iam,
                          "bucket_iam": self.bucket_iam, "owner": owner, "function_keys": keys, "log_dir": log_dir}

    def stop(self) -> None:
        for svc in (self.bucket_iam, self.iam, self.gcs, self.ps, self.fs):
            svc.stop()


def study_to_archived(orthanc: Orthanc, sizes: list[int], tmp: Path) -> None:
    from tests.conftest import Stack
    from tests.e2e.harness import E2E
    from tests.e2e.harness import wait_for

    log_dir = tmp / "logs"
    log_dir.mkdir()
    project = "bench-agent"
    strict = _StrictStack(log_dir, project)
    rows = []
    try:
        for n, count in enumerate(sizes):
            stack = Stack(f"{project}-{n}", strict.emulators)
            for k, v in {"ARCHSYNC_PROJECT_ID": stack.project, "ARCHSYNC_KEY_BUCKET": stack.key_bucket,
                         "ARCHSYNC_OBJECTS_BUCKET": stack.objects_bucket, "ARCHSYNC_STUDY_BUCKET": stack.study_bucket}.items():
                os.environ[k] = v
            orthanc.delete_all()
            world = E2E(stack, tmp, None, host="127.0.0.1", port=orthanc.dicom_port, called_ae_title=orthanc.ae_title)
            study = f"1.2.826.0.1.3680043.8.498.95{n}"
            files = world.study(study, count, series=5)
            cfg_path = tmp / f"agent-{n}.json"
            cfg = world.config()
            cfg.pop("max_concurrent_jobs")
            cfg_path.write_text(json.dumps(cfg))  # the agent's defaults (store_associations, spool_files)
            # The agent as on site: its own process, its downloaded key (the subscription's policy
            # lets it pull: devstack/pubsub_iam.py), logs to a file.
            from devstack.pubsub_iam import require_consume
            from gateway_agent.config import load

            for d in load(cfg_path).active_deliveries:
                require_consume(stack.emulators["iam"].policies, d.service_account_info, d.subscription_path)
            with open(log_dir / f"agent-{count}.log", "wb") as log:
                from tests.support import on_site_env

                agent = subprocess.Popen([sys.executable, "-m", "gateway_agent", "--config", str(cfg_path)], cwd=REPO,
                                         stdout=log, stderr=log, env={**on_site_env(), "PYTHONPATH": str(REPO)})
            try:
                time.sleep(2.0)  # the agent's streaming pull is open before the exam completes
                t = time.perf_counter()
                world.exam_completed(f"exam-{n}", study)

                def archived() -> bool:
                    assert agent.poll() is None, "the agent exited"
                    assert not [j for j in world.jobs() if j["state"] == "FAILED"], world.jobs()
                    return world.archive_state(f"exam-{n}") == "ARCHIVED"

                wait_for(archived, 900, "ARCHIVED")
                elapsed = time.perf_counter() - t
                completed_at = time.time() - elapsed
                peak_mib = _peak_rss_mib(agent.pid)
            finally:
                agent.send_signal(signal.SIGTERM)
                agent.wait(60)
                world.close()
                stack.close()
            assert len(orthanc.study_instances(study)) == count
            files_dir = tmp / f"storescu-{n}"
            files_dir.mkdir()
            for f in files:
                (files_dir / f"{f.sop_instance_uid}.dcm").write_bytes(f.data)
            dcmtk = min(_timed(orthanc, count, lambda: _storescu(orthanc, files_dir))[0] for _ in range(2))
            started, finished = _job_times(log_dir / f"agent-{count}.log")
            fetch = _fetch_only(world, study)
            rows.append((count, elapsed, dcmtk, peak_mib,
                         (started - completed_at, finished - started, elapsed - (finished - completed_at), fetch)))
    finally:
        strict.stop()
    print("Exam Completed -> ARCHIVED (strict local stack, agent process, into Orthanc) beside storescu alone, same files:", file=OUT)
    for count, elapsed, dcmtk, rss, _ in rows:
        print(f"  {count:5d} instances: {elapsed:6.1f} s  (storescu {dcmtk:5.1f} s, ratio {elapsed / dcmtk:.2f})   "
              f"agent peak memory {rss:6.1f} MiB", file=OUT)
    print("  where the time goes: exam event -> job started on the agent (function, Pub/Sub) | the job on the agent"
          " | result -> ARCHIVED seen | fetching the study alone (8 parallel downloads, gateway key, local storage front):",
          file=OUT)
    for count, _, _, _, (to_agent, job, after, fetch) in rows:
        print(f"  {count:5d} instances: {to_agent:5.1f} s | {job:5.1f} s | {after:5.1f} s | fetch alone {fetch:5.1f} s",
              file=OUT)


def _peak_rss_mib(pid: int) -> float:
    """The agent's peak resident memory since it started (VmHWM of its own address space). Not
    wait4's ru_maxrss: Linux carries the forking parent's RSS across exec into it, so it showed
    this script's memory (which holds the generated study: 2,000 x 39 KB) as the agent's."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


def _job_times(agent_log: Path) -> tuple[float, float]:
    """Epoch seconds of the agent's "job started" and "job finished" log lines."""
    from datetime import datetime

    times = {}
    for line in agent_log.read_text().splitlines():
        if line.startswith("{"):
            rec = json.loads(line)
            if rec.get("message") in ("job started", "job finished"):
                times.setdefault(rec["message"], datetime.fromisoformat(rec["time"]).timestamp())
    return times["job started"], times["job finished"]


def _fetch_only(world, study: str) -> float:
    """The study downloaded as the agent downloads it (its fetcher, the gateway's key, 8 at a time
    through the local authorising storage front), nothing else."""
    from gateway_agent.fetch import ObjectFetcher

    fetcher = ObjectFetcher(world.sa_key, world.stack.project, world.stack.emulators["gcs"])
    into = Path(tempfile.mkdtemp(dir=world.tmp))
    bucket, names, _ = fetcher.list_prefix(world.uri(study))
    t = time.perf_counter()
    fetcher._download_all(bucket, names, into)
    elapsed = time.perf_counter() - t
    shutil.rmtree(into)
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=300)
    parser.add_argument("--studies", default="500,2000")
    parser.add_argument("--skip-rate", action="store_true")
    args = parser.parse_args()
    if not Orthanc.available() or not shutil.which("storescu") or not shutil.which("dcmsend"):
        print("benchmark_agent: needs Orthanc and dcmtk (./run bench installs them)", file=sys.stderr)
        return 2
    logging.getLogger("pynetdicom").setLevel(logging.ERROR)
    logging.getLogger("gateway_agent").setLevel(logging.ERROR)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    tmp = Path(tempfile.mkdtemp(prefix="bench-agent-"))
    sys.stdout = open(tmp / "functions.log", "w")  # noqa: SIM115 - for the whole run
    shm = Path(tempfile.mkdtemp(prefix="bench-orthanc-", dir="/dev/shm")) if Path("/dev/shm").is_dir() else tmp
    orthanc = Orthanc(shm / "orthanc", ae_title="ORTHANC_AR").start()  # tmpfs: measure DICOM, not the disk
    try:
        if not args.skip_rate:
            store_rate(orthanc, args.instances, tmp)
        study_to_archived(orthanc, [int(n) for n in args.studies.split(",") if n], tmp)
    finally:
        orthanc.stop()
        shutil.rmtree(shm, ignore_errors=True)
        sys.stdout.close()
        sys.stdout = OUT
        for sub in tmp.iterdir():  # keep only the logs
            if sub.is_dir() and sub.name != "logs":
                shutil.rmtree(sub, ignore_errors=True)
        print(f"(all logs: {tmp})", file=OUT)
    return 0


if __name__ == "__main__":
    sys.exit(main())

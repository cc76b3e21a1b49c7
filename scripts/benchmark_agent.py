"""Benchmark of the reference gateway agent (issue 6), in one run:

1. Instances per second the agent's C-STORE path stores into Orthanc, beside dcmtk's ``storescu``
   sending the same files to the same (emptied) Orthanc: the ratio is the figure.
2. For a 500-instance study: the time from the exam reaching Completed (the platform event) to
   archive state ARCHIVED, through the whole loop (function, Pub/Sub, agent, GCS fetch, C-FIND,
   C-STORE into Orthanc, signed result, Firestore).

    PYTHONPATH=. python scripts/benchmark_agent.py [--instances 200] [--study 500]
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from devstack import processes  # noqa: E402
from devstack.orthanc import Orthanc  # noqa: E402
from devstack.studies import make_study  # noqa: E402


def store_rate(orthanc: Orthanc, count: int, tmp: Path) -> None:
    from gateway_agent.dimse import Endpoint, Network

    files_dir = tmp / "files"
    files_dir.mkdir()
    from tests.e2e.harness import write_instances

    insts = write_instances(make_study("1.2.826.0.1.3680043.8.498.9001", count, series=4), files_dir)
    mb = sum(i.path.stat().st_size for i in insts) / 1e6
    ep = Endpoint("127.0.0.1", orthanc.dicom_port, orthanc.ae_title, "GW_SCU")
    rates = {}
    for name in ("agent", "storescu", "agent ", "storescu "):  # alternate, twice each: less noise
        orthanc.delete_all()
        t = time.perf_counter()
        if name.strip() == "agent":
            report = Network().store(ep, insts, None)
            assert len(report.sent) == count, report.failed
        else:
            subprocess.run(["storescu", "-aet", "GW_SCU", "-aec", orthanc.ae_title, "+sd", "127.0.0.1",
                            str(orthanc.dicom_port), str(files_dir)], check=True, capture_output=True,
                           env={**os.environ, "TCP_NODELAY": "1"})  # its best setting, as for Orthanc
        elapsed = time.perf_counter() - t
        assert len(orthanc.get("/instances")) == count
        rates.setdefault(name.strip(), []).append(count / elapsed)
    agent, dcmtk = max(rates["agent"]), max(rates["storescu"])
    print(f"C-STORE into Orthanc, {count} CT instances ({mb:.1f} MB), one association, best of 2:")
    print(f"  agent (pynetdicom)  {agent:7.1f} instances/s")
    print(f"  dcmtk storescu      {dcmtk:7.1f} instances/s")
    print(f"  ratio agent/storescu {agent / dcmtk:.2f}")


def study_to_archived(orthanc: Orthanc, count: int, tmp: Path) -> None:
    from devstack.gcs import emulator_url, start_gcs

    log_dir = tmp / "logs"
    log_dir.mkdir()
    fs, ps, gcs = processes.start_firestore(log_dir), processes.start_pubsub(log_dir), start_gcs(log_dir)
    try:
        os.environ.update({"FIRESTORE_EMULATOR_HOST": fs.host, "PUBSUB_EMULATOR_HOST": ps.host,
                           "STORAGE_EMULATOR_HOST": emulator_url(gcs)})
        project = "bench-agent"
        os.environ.update({"ARCHSYNC_PROJECT_ID": project, "ARCHSYNC_KEY_BUCKET": f"keys-{project}",
                           "ARCHSYNC_OBJECTS_BUCKET": f"objects-{project}"})
        from tests.conftest import Stack
        from tests.e2e.harness import E2E

        orthanc.delete_all()
        stack = Stack(project, {})
        world = E2E(stack, tmp, None, host="127.0.0.1", port=orthanc.dicom_port, called_ae_title=orthanc.ae_title)
        study = "1.2.826.0.1.3680043.8.498.9500"
        world.study(study, count, series=5)
        world.start_agent()
        try:
            t = time.perf_counter()
            world.exam_completed("exam-bench", study)
            while world.archive_state("exam-bench") != "ARCHIVED":
                assert time.perf_counter() - t < 600, "no ARCHIVED within 10 minutes"
                assert not [j for j in world.jobs() if j["state"] == "FAILED"], world.jobs()
                time.sleep(0.05)
            elapsed = time.perf_counter() - t
        finally:
            world.close()
            stack.close()
        assert len(orthanc.study_instances(study)) == count
        print(f"{count}-instance study, exam Completed -> ARCHIVED (into Orthanc, emulators, 1 agent): {elapsed:.1f} s "
              f"({count / elapsed:.0f} instances/s end to end)")
    finally:
        for svc in (gcs, ps, fs):
            svc.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=200)
    parser.add_argument("--study", type=int, default=500)
    args = parser.parse_args()
    if not Orthanc.available() or not shutil.which("storescu"):
        print("benchmark_agent: needs Orthanc and dcmtk (./run bench installs them)", file=sys.stderr)
        return 2
    import logging

    logging.getLogger("pynetdicom").setLevel(logging.ERROR)
    logging.getLogger("gateway_agent").setLevel(logging.ERROR)
    tmp = Path(tempfile.mkdtemp(prefix="bench-agent-"))
    shm = Path(tempfile.mkdtemp(prefix="bench-orthanc-", dir="/dev/shm")) if Path("/dev/shm").is_dir() else tmp
    orthanc = Orthanc(shm / "orthanc", ae_title="ORTHANC_AR").start()  # tmpfs: measure DICOM, not the disk
    try:
        store_rate(orthanc, args.instances, tmp)
        study_to_archived(orthanc, args.study, tmp)
    finally:
        orthanc.stop()
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(shm, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Benchmark of the IOCM rejection-note builder (shared/iocm/kos.py). Prints figures; asserts nothing.

For notes referencing 1, 1,000 and 20,000 CT instances (500 per series), it prints the median time
to build the dataset, to serialise it to Part-10 bytes and to store it in Cloud Storage (the
fake-gcs-server emulator, through the product's ObjectStore adapter), the file size, and the peak Python
memory (tracemalloc) of build + serialise. Timings and memory come from separate runs because
tracemalloc slows allocation-heavy code several times. Also prints the one-off pydicom import.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
import tracemalloc
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from shared.iocm.kos import (  # noqa: E402
    InstanceRef,
    PatientInfo,
    StudyInfo,
    build_rejection_note,
    to_part10_bytes,
)

CT = "1.2.840.10008.5.1.4.1.1.2"
STUDY_UID = "1.2.826.0.1.3680043.10.1.1"
PATIENT = PatientInfo("MRN-BENCH", "Bench^Mark", issuer="HOSP", birth_date="19700101", sex="O")
STUDY = StudyInfo(STUDY_UID, accession_number="ACC-BENCH", study_date="20240101", study_time="120000")
NOW = datetime(2024, 1, 1, 12, 0, 0)


def instances(n: int, per_series: int) -> list[InstanceRef]:
    return [InstanceRef(f"{STUDY_UID}.{i // per_series + 1}", CT, f"{STUDY_UID}.{i // per_series + 1}.{i + 1}")
            for i in range(n)]


def build(refs: list[InstanceRef]):
    return build_rejection_note(PATIENT, STUDY, refs, description="Benchmark", now=NOW,
                                sop_instance_uid="1.2.826.0.1.3680043.10.9.1",
                                series_instance_uid="1.2.826.0.1.3680043.10.9.2")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 1_000, 20_000])
    parser.add_argument("--per-series", type=int, default=500)
    args = parser.parse_args()

    t = time.perf_counter()
    import pydicom.dataset  # noqa: F401  (the builder imports it on first use)
    import pydicom.filewriter  # noqa: F401
    print(f"pydicom {pydicom.__version__} import: {(time.perf_counter() - t) * 1000:.0f} ms (once per process)")
    build(instances(1, 1))  # warm up

    import os
    import tempfile

    from devstack.gcs import emulator_url, start_gcs
    from shared.adapters.gcs import ObjectStore

    gcs = start_gcs(Path(tempfile.mkdtemp(prefix="archsync-bench-")))
    os.environ["STORAGE_EMULATOR_HOST"] = emulator_url(gcs)
    from google.cloud import storage

    client = storage.Client(project="bench")
    client.create_bucket("bench-objects")
    objects = ObjectStore("bench-objects", client)
    objects.put("warm-up", b"x", "application/dicom")
    try:
        _table(args, objects)
    finally:
        gcs.stop()


def _table(args, objects) -> None:
    print(f"{'instances':>9} {'series':>6} {'build ms':>9} {'write ms':>9} {'store ms':>9} {'total ms':>9} "
          f"{'file KiB':>9} {'peak MiB':>9}")
    for n in args.sizes:
        refs = instances(n, args.per_series)
        repeats = max(1, min(50, 5_000 // n))
        builds, writes = [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            ds = build(refs)
            t1 = time.perf_counter()
            data = to_part10_bytes(ds)
            t2 = time.perf_counter()
            builds.append(t1 - t0)
            writes.append(t2 - t1)
            del ds
        b, w = statistics.median(builds) * 1000, statistics.median(writes) * 1000
        stores = []
        for i in range(max(1, min(5, repeats))):
            t0 = time.perf_counter()
            objects.put(f"gateways/gw-bench/iocm/note-{n}-{i}.dcm", data, "application/dicom")
            stores.append(time.perf_counter() - t0)
        st = statistics.median(stores) * 1000

        tracemalloc.start()
        to_part10_bytes(build(refs))
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()

        series = len({r.series_instance_uid for r in refs})
        print(f"{n:>9} {series:>6} {b:>9.1f} {w:>9.1f} {st:>9.1f} {b + w + st:>9.1f} {len(data) / 1024:>9.1f} "
              f"{peak / 2**20:>9.2f}")


if __name__ == "__main__":
    main()

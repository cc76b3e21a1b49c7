#!/usr/bin/env python3
"""Benchmark of the Jobs tab (issue 5): loads N jobs (default 100,000) into the Firestore emulator
and prints, per query shape, the documents read to serve one page of 50 (counted at the adapter)
and the time per page, for the first page and for a page deep in the result (reached by cursor).
Prints figures; asserts nothing. Note: the emulator does not use indexes, so its times are not
production's; the documents read are the figure that carries over."""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from devstack import processes  # noqa: E402

FG = "fg-bench"
T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
NAMES = ["DOE^JANE", "SMITH^ANNA", "NGUYEN^BAO", "GARCIA^LUIS", "MÜLLER^KARL", "O'BRIEN^PAT", "KIM^MIN", "ROSSI^GIA"]


def job(i: int):
    from shared.domain.models import Job, JobState, JobType

    states = list(JobState)
    types = [JobType.ARCHIVE, JobType.ARCHIVE, JobType.DICOM, JobType.IOCM, JobType.ADT]
    queued = T0 + timedelta(seconds=37 * i)
    state = states[i % 4]
    return Job(id=f"archive-{i:032x}", facility_group_id=FG, type=types[i % 5], state=state,
               destination_id=f"dst-{i % 5}", destination_name=f"Destination {i % 5}", gateway_id="gw-1",
               exam_id=f"exam-{i}", accession_number=f"ACC{i % 20000}", mrn=f"MRN{i % 10000}",
               patient_name=f"{NAMES[i % 8]}{i % 97}", study_instance_uid=f"1.2.840.1.{i % 20000 + 1}",
               facility_id=f"fac-{i % 7}", queued_at=queued,
               started_at=queued + timedelta(seconds=20) if state is not JobState.QUEUED else None,
               completed_at=queued + timedelta(minutes=3) if state.is_final else None,
               failure_reason="C-STORE failed" if state is JobState.FAILED else None, deadline=queued + timedelta(hours=2),
               published=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--depth", type=int, default=20, help="pages to walk for the deep-page figure")
    args = parser.parse_args()
    fs = processes.start_firestore(Path(tempfile.mkdtemp(prefix="archsync-bench-")))
    try:
        os.environ["FIRESTORE_EMULATOR_HOST"] = fs.host
        from google.cloud import firestore

        from shared.adapters import codec
        from shared.adapters.firestore_admin import FirestoreAdminStore
        from shared.domain import job_query

        db = firestore.Client(project="bench-jobs")
        store = FirestoreAdminStore(db)
        coll = db.collection("facility_groups").document(FG).collection("jobs")

        def load(start: int) -> None:
            batch = db.batch()
            for i in range(start, min(start + 500, args.jobs)):
                j = job(i)
                batch.set(coll.document(j.id), codec.job_to_doc(j))
            batch.commit()

        t0 = time.perf_counter()
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(load, range(0, args.jobs, 500)))
        print(f"loaded {args.jobs} jobs in {time.perf_counter() - t0:.0f} s")

        shapes = {
            "newest first, no filter": {},
            "type": {"type": "ARCHIVE"},
            "state": {"state": "FAILED"},
            "MRN": {"mrn": "MRN42"},
            "accession": {"accession": "ACC1234"},
            "study UID": {"study_uid": "1.2.840.1.77"},
            "facility": {"facility": "fac-3"},
            "destination": {"destination": "dst-2"},
            "patient name prefix": {"patient_name": "garcia^luis1"},
            "queued date range": {"queued_from": (T0 + timedelta(days=5)).isoformat(),
                                  "queued_to": (T0 + timedelta(days=20)).isoformat()},
            "completed date range": {"completed_from": (T0 + timedelta(days=1)).isoformat()},
            "type + state + facility": {"type": "ARCHIVE", "state": "COMPLETED", "facility": "fac-1"},
            "destination + started range": {"destination": "dst-4", "started_from": (T0 + timedelta(days=3)).isoformat()},
        }
        print(f"{'query shape':30s} {'rows':>5s} {'docs read':>9s} {'ms/page':>8s}   "
              f"{'deep page':>9s} {'docs read':>9s} {'ms/page':>8s}")
        for name, params in shapes.items():
            q = job_query.parse({**params, "page_size": "50"})
            store.ops.reset()
            t = time.perf_counter()
            page = store.query_jobs(FG, q)
            first_ms, first_reads = (time.perf_counter() - t) * 1000, store.ops.reads
            after, depth, times, reads = None, 0, [], []
            while page and len(page) == 50 and depth < args.depth:
                last = page[-1]
                values = {f: (last.patient_name.lower() if f == job_query.NAME_FIELD else getattr(last, f)) for f, _ in q.order}
                after = job_query.decode_cursor(job_query.encode_cursor(FG, q, values, last.id), FG, q)
                store.ops.reset()
                t = time.perf_counter()
                page = store.query_jobs(FG, q, after)
                times.append((time.perf_counter() - t) * 1000)
                reads.append(store.ops.reads)
                depth += 1
            deep = f"{depth:>9d} {max(reads) if reads else 0:>9d} {statistics.median(times) if times else 0:>8.0f}"
            print(f"{name:30s} {len(page) if depth == 0 else 50:>5d} {first_reads:>9d} {first_ms:>8.0f}   {deep}")
    finally:
        fs.stop()


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Benchmark of the auto-archive path (issue 2). Prints figures; asserts nothing.

1. Exam events per second through the on_exam_status_changed entry point (functions-framework
   test client: envelope decode, schema validation, Firestore, Pub/Sub publish) against the
   emulators, with 5 eligible destinations per facility group, sequentially and with threads.
2. Firestore document reads and writes per event, counted by the adapter, for a first delivery
   and for a duplicate delivery.
3. Gateway provisioning against the emulators and the IAM stand-ins: time to provision, to roll
   back a provisioning that fails at its last step, and to delete, with the cloud calls each makes.
4. Cold-start import time of each function module, beside the import time of the client
   libraries it loads on first use (each in a fresh interpreter, median of 5).
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import statistics
import subprocess
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
LIBS = {
    "admin_api": ["google.cloud.firestore", "google.cloud.pubsub_v1", "google.cloud.iam_admin_v1", "google.cloud.storage", "jwt"],
    "on_exam_status_changed": ["google.cloud.firestore", "google.cloud.pubsub_v1", "jsonschema"],
    "on_job_result": ["google.cloud.firestore", "google.cloud.storage", "jsonschema"],
    "on_study_changed": ["google.cloud.firestore", "google.cloud.pubsub_v1", "google.cloud.storage", "jsonschema", "pydicom"],
    "on_patient_updated": ["google.cloud.firestore", "google.cloud.pubsub_v1", "jsonschema", "hl7apy"],
    "on_facility_changed": ["google.cloud.firestore", "google.cloud.pubsub_v1", "jsonschema"],
    "sweep_jobs": ["google.cloud.firestore", "google.cloud.pubsub_v1"],
    "lock_status": ["google.cloud.firestore"],
}


def _event(i: int, now: datetime) -> dict:
    return {"schema_version": "1", "event_type": "exam.status_changed", "event_id": f"evt-{i}",
            "event_time": now.isoformat(), "facility_group_id": FG, "facility_id": "fac-1",
            "exam": {"exam_id": f"exam-{i}", "accession_number": f"A{i}", "status": "COMPLETED",
                     "status_first_reached_at": now.isoformat(), "study_instance_uid": f"1.2.3.{i + 1}",
                     "patient": {"mrn": f"M{i}", "name": "BENCH^PATIENT"}}}


def _envelope(payload: dict, i: int) -> str:
    return json.dumps({"message": {"data": base64.b64encode(json.dumps(payload).encode()).decode(),
                                   "messageId": str(i), "attributes": {}}, "subscription": "projects/p/subscriptions/s"})


def throughput(n: int, threads: int) -> None:
    log_dir = Path(tempfile.mkdtemp(prefix="archsync-bench-"))
    fs, ps = processes.start_firestore(log_dir), processes.start_pubsub(log_dir)
    try:
        os.environ.update({"FIRESTORE_EMULATOR_HOST": fs.host, "PUBSUB_EMULATOR_HOST": ps.host, "ARCHSYNC_PROJECT_ID": "bench"})
        import functions_framework
        from google.cloud import pubsub_v1

        from shared import wiring
        from shared.domain.models import Destination, ExamStatus, Gateway
        from shared.settings import Settings

        settings = Settings.from_env(os.environ)
        store = wiring.firestore_store(settings)
        pub = pubsub_v1.PublisherClient()
        now = datetime.now(timezone.utc)
        for t in ("archsync-dead-letter", "gw-bench-1", "gw-bench-2"):
            pub.create_topic(name=pub.topic_path("bench", t))
        for g in (1, 2):
            store.save_gateway(Gateway(f"gw-{g}", FG, f"GW {g}", f"gw-bench-{g}", f"gw-bench-{g}-sub"))
        for d in range(5):
            store.save_destination(Destination(
                id=f"dst-{d}", facility_group_id=FG, name=f"Dest {d}", host="10.0.0.1", port=104, called_ae_title="VNA",
                calling_ae_title="GW", gateway_id=f"gw-{d % 2 + 1}", auto_archive=True, trigger_status=ExamStatus.COMPLETED,
                auto_archive_since=now - timedelta(days=1)))
        client = functions_framework.create_app(
            target="on_exam_status_changed", source=str(REPO / "functions/on_exam_status_changed/main.py")).test_client()
        headers = {"ce-id": "x", "ce-specversion": "1.0", "ce-type": "google.cloud.pubsub.topic.v1.messagePublished",
                   "ce-source": "//pubsub.googleapis.com/projects/bench/topics/archsync-exam-status",
                   "Content-Type": "application/json"}
        later = now + timedelta(seconds=1)

        def deliver(i: int) -> None:
            r = client.post("/", data=_envelope(_event(i, later), i), headers=headers)
            assert r.status_code == 200, r.data

        deliver(-1)  # warm: clients created, schema compiled
        store.ops.reset()
        t0 = time.perf_counter()
        for i in range(n):
            deliver(i)
        seq = time.perf_counter() - t0
        reads, writes, refused = store.ops.reads / n, store.ops.writes / n, store.ops.refused / n

        store.ops.reset()
        for i in range(n):  # the same events again: duplicate deliveries
            deliver(i)
        dup_reads, dup_writes, dup_refused = store.ops.reads / n, store.ops.writes / n, store.ops.refused / n

        t0 = time.perf_counter()
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(deliver, range(n, 2 * n)))
        par = time.perf_counter() - t0

        print(f"on_exam_status_changed, 5 eligible destinations per group (5 jobs + 5 messages per event), {n} events:")
        print(f"  sequential          {n / seq:7.1f} events/s  ({1000 * seq / n:6.1f} ms/event, {5 * n / seq:6.1f} jobs/s)")
        print(f"  {threads} threads           {n / par:7.1f} events/s  ({5 * n / par:6.1f} jobs/s)")
        print("Firestore operations per event (counted at the adapter):")
        print(f"  first delivery      {reads:5.1f} reads  {writes:5.1f} writes  {refused:4.1f} refused create()")
        print(f"  duplicate delivery  {dup_reads:5.1f} reads  {dup_writes:5.1f} writes  {dup_refused:4.1f} refused create()")
    finally:
        ps.stop()
        fs.stop()


def provisioning(n: int) -> None:
    from devstack.gcs import BucketIamStandIn, emulator_url, start_gcs
    from devstack.iam_standin import IamStandIn

    log_dir = Path(tempfile.mkdtemp(prefix="archsync-bench-"))
    fs, ps, gcs = processes.start_firestore(log_dir), processes.start_pubsub(log_dir), start_gcs(log_dir)
    iam = IamStandIn().start()
    biam = BucketIamStandIn(upstream=emulator_url(gcs), member_check=iam.unusable_member).start()
    try:
        os.environ.update({"FIRESTORE_EMULATOR_HOST": fs.host, "PUBSUB_EMULATOR_HOST": ps.host,
                           "STORAGE_EMULATOR_HOST": emulator_url(gcs)})
        from google.cloud import firestore, pubsub_v1, storage

        from shared.adapters.firestore_admin import FirestoreAdminStore
        from shared.adapters.gcs import BucketIam, KeyVault
        from shared.adapters.iam_admin import IamAdmin
        from shared.adapters.pubsub_admin import PubSubAdmin
        from shared.clock import SystemClock
        from shared.domain.errors import TransientError
        from shared.domain.models import Gateway
        from shared.services.provisioning import Cloud, Provisioner, ProvisioningFailed, ProvisioningSettings

        project = "bench-prov"
        gcs_client = storage.Client(project=project)
        for b in ("bench-keys", "bench-objects"):
            gcs_client.create_bucket(b)
        pub = pubsub_v1.PublisherClient()
        pub.create_topic(name=pub.topic_path(project, "archsync-gateway-dead-letter"))
        store = FirestoreAdminStore(firestore.Client(project=project))
        cloud = Cloud(PubSubAdmin(project, policy_client=iam.subscriber_policy_client()), IamAdmin(project, iam.iam_client()),
                      BucketIam(biam.client(project)), KeyVault("bench-keys", gcs_client))
        prov = Provisioner(store, cloud, SystemClock(), ProvisioningSettings(objects_bucket="bench-objects", study_bucket="bench-studies"))

        def measure(action):
            calls, iam_calls, fs_ops = cloud.call_count(), sum(iam.calls.values()) + sum(biam.calls.values()), \
                store.ops.reads + store.ops.writes
            t0 = time.perf_counter()
            action()
            return (time.perf_counter() - t0) * 1000, cloud.call_count() - calls, \
                sum(iam.calls.values()) + sum(biam.calls.values()) - iam_calls, store.ops.reads + store.ops.writes - fs_ops

        created, rows = [], {"provision": [], "roll back (failure at the last step)": [], "delete": []}
        for i in range(n):
            gw = Gateway(f"gw-{i:010x}", "fg-bench", f"Gateway {i}", "", "")
            rows["provision"].append(measure(lambda: created.append(prov.create(gw, "bench"))))
        real = Provisioner._do

        def failing(self, step, *a, **k):
            real(self, step, *a, **k)
            if step == "result_key":
                raise TransientError("injected")

        Provisioner._do = failing
        for i in range(n):
            gw = Gateway(f"gw-{n + i:010x}", "fg-bench", f"Doomed {i}", "", "")

            def attempt():
                try:
                    prov.create(gw, "bench")
                except ProvisioningFailed:
                    pass
            rows["roll back (failure at the last step)"].append(measure(attempt))
        Provisioner._do = real
        for gw in created:
            rows["delete"].append(measure(lambda: prov.delete(gw, "bench", lambda: None)))
        print(f"Gateway provisioning ({n} gateways each; IAM and bucket IAM on local gRPC/HTTP stand-ins, 2048-bit keys):")
        print(f"  {'':38s} {'median ms':>9s} {'max ms':>7s} {'adapter calls':>13s} {'IAM stand-in calls':>18s} "
              f"{'Firestore ops':>13s}")
        for name, r in rows.items():
            ms = [x[0] for x in r]
            print(f"  {name:38s} {statistics.median(ms):9.0f} {max(ms):7.0f} {r[0][1]:13d} {r[0][2]:18d} {r[0][3]:13d}")
    finally:
        biam.stop()
        iam.stop()
        for svc in (gcs, ps, fs):
            svc.stop()


def _time_import(code: str, repeats: int) -> float:
    runs = []
    for _ in range(repeats):
        out = subprocess.run([sys.executable, "-c", f"import time; t=time.perf_counter(); {code}; print(time.perf_counter()-t)"],
                             capture_output=True, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, check=True)
        runs.append(float(out.stdout.strip().splitlines()[-1]) * 1000)
    return statistics.median(runs)


def imports(repeats: int) -> None:
    print(f"Cold-start import times (ms, fresh interpreter, median of {repeats}):")
    ff = _time_import("import functions_framework", repeats)
    print(f"  {'functions_framework alone':44s} {ff:7.0f}")
    for fn, libs in LIBS.items():
        module = _time_import(
            "import importlib.util; s=importlib.util.spec_from_file_location('main', 'functions/%s/main.py'); "
            "m=importlib.util.module_from_spec(s); s.loader.exec_module(m)" % fn, repeats)
        first_use = _time_import("; ".join(f"import {lib}" for lib in libs), repeats)
        lib_text = ", ".join(f"{lib.split('.')[-1]} {_time_import(f'import {lib}', repeats):.0f}" for lib in libs)
        print(f"  {fn + ' module (incl. framework)':44s} {module:7.0f}   + on first call {first_use:5.0f}  [{lib_text}]")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--gateways", type=int, default=10)
    args = parser.parse_args()
    throughput(args.events, args.threads)
    provisioning(args.gateways)
    imports(args.repeats)


if __name__ == "__main__":
    main()

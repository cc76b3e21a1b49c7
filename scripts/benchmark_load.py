#!/usr/bin/env python3
"""Load benchmark (issue 15 item 6): a burst of exam-status events, with duplicates and
out-of-order repeats, through real Pub/Sub push delivery into on_exam_status_changed.

The stack is the demo's (devstack/demo.py) for this path: the Firestore and Pub/Sub emulators,
on_exam_status_changed under functions-framework (gunicorn, as `functions-framework` serves it),
a push subscription to it with the production retry and dead-letter policy (infra/pubsub.tf), the
inbound dead-letter topic with its audit pull subscription, and one topic and pull subscription
per gateway. The configuration (facility groups, gateways, destinations) is written with the
Firestore adapter, as the admin API stores it, so that a known set of exams is eligible:

    per facility group (facilities fac-a, fac-b, fac-c):
      gateway gw-main (every facility), gateway gw-east (fac-b only)
      vna      archive at COMPLETED via gw-main, every facility
      legacy   archive at PENDING via gw-main, fac-a only        (takes the order lock)
      east     archive at INFLIGHT via gw-east                    (so fac-b only; order lock)
      retired  archive at COMPLETED, inactive                      (never)
      research auto archive off                                    (never)

Exams go through Scheduled -> Pending [-> Inflight [-> Completed]], some are re-opened and
completed again (new events, same first-reached instants), some reached their statuses before auto
archive was configured (never archived). On top of the unique events, ~15% of the burst are
duplicates: the same message published again, later in the stream, so that an older status often
arrives after a newer one. The expected jobs are computed here from that model, independently of
the product's rule code: exactly one per (exam, destination) that is eligible.

Between the emulator and the function sits a small counting pass-through (in this process): it
sees every push request and the function's answer, which gives delivered/handled counts, push
latency (publish -> acknowledgement) and when the subscription has drained (every published
message acknowledged). It forwards bytes unchanged.

Figures only on stdout; logs of every process go to --log-dir. Exit status 1 on any mismatch: a
missing or unexpected job, a job without its gateway message, a dead-lettered message, or a
subscription that did not drain before the deadline.

    PYTHONPATH=. .venv/bin/python scripts/benchmark_load.py [--events 10000]
"""
from __future__ import annotations

import argparse
import dataclasses
import http.client
import json
import logging
import os
import random
import re
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Optional

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from devstack import processes  # noqa: E402

log = logging.getLogger("benchmark_load")

FUNCTION = "on_exam_status_changed"
EXAM_TOPIC = "archsync-exam-status"
DEAD_LETTER_TOPIC = "archsync-dead-letter"
DEAD_LETTER_AUDIT = "archsync-dead-letter-audit"
PUSH_SUBSCRIPTION = "archsync-exam-status-to-function"
FACILITIES = ("fac-a", "fac-b", "fac-c")
# infra/pubsub.tf exam_status_to_function: ack deadline = the function's timeout (infra/functions.tf),
# retry backoff 10-600 s, 10 delivery attempts before Pub/Sub dead-letters a message.
ACK_DEADLINE_SECONDS = 60
MAX_DELIVERY_ATTEMPTS = 10
# infra/functions.tf service_config.available_memory: what one instance may use in production.
PRODUCTION_MEMORY_MIB = 256


# -- the configuration and the oracle ------------------------------------------------------------
@dataclass(frozen=True)
class DestSpec:
    key: str
    gateway: str
    trigger: Optional[str]  # None: auto archive off
    facilities: tuple[str, ...] = ()  # empty: every facility its gateway serves
    active: bool = True


GATEWAYS = {"gw-main": (), "gw-east": ("fac-b",)}  # gateway -> the facilities it serves (empty: all)
DESTINATIONS = (
    DestSpec("vna", "gw-main", "COMPLETED"),
    DestSpec("legacy", "gw-main", "PENDING", ("fac-a",)),
    DestSpec("east", "gw-east", "INFLIGHT"),
    DestSpec("retired", "gw-main", "COMPLETED", active=False),
    DestSpec("research", "gw-main", None),
)
# Lifecycles and their weights: the statuses an exam goes through, in order. "reopen" goes back to
# Inflight and is completed again: new events whose status_first_reached_at is the first instant.
LIFECYCLES = {
    "completed": (("SCHEDULED", "PENDING", "INFLIGHT", "COMPLETED"), 60),
    "pending": (("SCHEDULED", "PENDING"), 15),
    "inflight": (("SCHEDULED", "PENDING", "INFLIGHT"), 10),
    "reopen": (("SCHEDULED", "PENDING", "INFLIGHT", "COMPLETED", "INFLIGHT", "COMPLETED"), 10),
    "before_config": (("PENDING", "INFLIGHT", "COMPLETED"), 5),  # first reached before auto archive
}


def expected_jobs(exams: dict[tuple[str, str], dict]) -> set[tuple[str, str, str]]:
    """(group, exam, destination key) of every job the configuration above must produce: the
    destination is active with auto archive on, the exam reached its trigger status after auto
    archive was configured, and the exam's facility is in the destination's (or its gateway's)
    scope. Written from the model, not from shared/domain/rules.py."""
    out = set()
    for (fg, exam_id), exam in exams.items():
        if exam["before_config"]:
            continue
        for d in DESTINATIONS:
            if not d.active or d.trigger is None or d.trigger not in exam["statuses"]:
                continue
            scope = d.facilities or GATEWAYS[d.gateway]
            if scope and exam["facility"] not in scope:
                continue
            out.add((fg, exam_id, d.key))
    return out


def build_stream(n_events: int, groups: int, duplicate_share: float, now: datetime,
                 seed: int) -> tuple[list[dict], dict[tuple[str, str], dict], int]:
    """``n_events`` exam-status events: unique ones per exam lifecycle, exams interleaved, and
    ``duplicate_share`` of them duplicates of earlier events placed later in the stream. Returns the
    stream, the exams (group, id) -> {facility, statuses, before_config} and the duplicate count."""
    rng = random.Random(seed)
    n_unique = n_events - int(round(n_events * duplicate_share))
    names, weights = list(LIFECYCLES), [w for _, w in LIFECYCLES.values()]
    per_exam: list[list[dict]] = []
    exams: dict[tuple[str, str], dict] = {}
    count, i = 0, 0
    while count < n_unique:
        kind = rng.choices(names, weights)[0]
        statuses = LIFECYCLES[kind][0][: n_unique - count]  # the last exam may be cut short
        fg, exam_id, facility = f"fg-load-{i % groups}", f"exam-{i:06d}", FACILITIES[rng.randrange(len(FACILITIES))]
        start = now - timedelta(days=2) if kind == "before_config" else now + timedelta(seconds=1)
        first: dict[str, datetime] = {}
        events = []
        for step, status in enumerate(statuses):
            at = start + timedelta(seconds=step)
            first.setdefault(status, at)
            events.append({
                "schema_version": "1", "event_type": "exam.status_changed", "event_id": f"evt-{i:06d}-{step}",
                "event_time": at.isoformat(), "facility_group_id": fg, "facility_id": facility,
                "exam": {"exam_id": exam_id, "accession_number": f"ACC{i:07d}", "status": status,
                         "previous_status": statuses[step - 1] if step else None,
                         "status_first_reached_at": first[status].isoformat(),
                         "study_instance_uid": f"1.2.826.0.1.3680043.8.498.{i + 1}",
                         "study_storage_uri": f"gs://platform-studies/{fg}/{exam_id}/",
                         "patient": {"mrn": f"MRN{i:07d}", "name": "LOAD^PATIENT"}}})
        exams[(fg, exam_id)] = {"facility": facility, "statuses": set(statuses), "before_config": kind == "before_config"}
        per_exam.append(events)
        count += len(events)
        i += 1
    # Interleave the exams, each exam's events in its order (as the platform emits them).
    stream: list[dict] = []
    cursors = [0] * len(per_exam)
    live = list(range(len(per_exam)))
    while live:
        k = rng.randrange(len(live))
        j = live[k]
        stream.append(per_exam[j][cursors[j]])
        cursors[j] += 1
        if cursors[j] == len(per_exam[j]):
            live[k] = live[-1]
            live.pop()
    # Duplicates: an earlier event again, inserted somewhere after it (often after the exam's
    # later statuses: an out-of-order repeat).
    duplicates = n_events - len(stream)
    for _ in range(duplicates):
        src = rng.randrange(len(stream))
        stream.insert(rng.randrange(src + 1, len(stream) + 1), stream[src])
    return stream, exams, duplicates


def configure(store: Any, groups: int, now: datetime) -> None:
    """Write the gateways and destinations of every group as the admin API stores them (with the
    history that decides "no retroactive archiving"): auto archive since one day ago."""
    from shared.domain import history
    from shared.domain.models import Destination, ExamStatus, Gateway

    since = now - timedelta(days=1)
    for g in range(groups):
        fg = f"fg-load-{g}"
        for gid, facilities in GATEWAYS.items():
            gw = Gateway(gid, fg, f"Gateway {gid}", topic_id(fg, gid), subscription_id(fg, gid), facility_ids=facilities,
                         created_at=now - timedelta(days=30))
            store.save_gateway(gw)
        for d in DESTINATIONS:
            dest = Destination(
                id=f"dst-{d.key}", facility_group_id=fg, name=f"Load {d.key}", host="10.0.0.1", port=11112,
                called_ae_title=d.key.upper()[:16], calling_ae_title="GW_SCU", gateway_id=d.gateway,
                facility_ids=d.facilities, max_retries=2, retry_timeout_seconds=10, auto_archive=d.trigger is not None,
                trigger_status=ExamStatus(d.trigger) if d.trigger else None, active=d.active,
                auto_archive_since=since if d.trigger else None, created_at=since)
            store.save_destination(dataclasses.replace(dest, history=(history.destination_interval(dest, since),)))


def topic_id(fg: str, gid: str) -> str:
    return f"gw-{fg}-{gid}-jobs"


def subscription_id(fg: str, gid: str) -> str:
    return f"gw-{fg}-{gid}-jobs-sub"


# -- the counting pass-through between the Pub/Sub emulator and the function ---------------------
_NANOS = re.compile(r"(\.\d{6})\d+")


def _parse_time(text: str) -> Optional[float]:
    try:
        return datetime.fromisoformat(_NANOS.sub(r"\1", text).replace("Z", "+00:00")).timestamp()
    except (TypeError, ValueError):
        return None


@dataclass
class Delivery:
    message_id: str
    status: int
    handler_seconds: float
    acked_at: float  # wall clock
    published_at: Optional[float]


@dataclass
class PushCounter:
    """An HTTP pass-through: every push request goes to ``upstream`` unchanged, its answer back to
    the emulator unchanged; each delivery is recorded."""

    upstream: str  # host:port of the function
    deliveries: list[Delivery] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._local = threading.local()
        counter = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status, payload, ctype = counter.forward(self.path, dict(self.headers), body)
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.host = f"127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def forward(self, path: str, headers: dict, body: bytes) -> tuple[int, bytes, str]:
        try:
            message = json.loads(body).get("message", {})
            message_id = str(message.get("messageId") or message.get("message_id") or "")
            published = _parse_time(message.get("publishTime") or message.get("publish_time") or "")
        except (ValueError, AttributeError):
            message_id, published = "", None
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        t0 = time.perf_counter()
        try:
            status, payload, ctype = self._send(path, headers, body)
        except OSError as e:  # the function is down: a nack, as the emulator would see it
            log.warning("push forward failed: %s", e)
            status, payload, ctype = 502, b"{}", "application/json"
        elapsed = time.perf_counter() - t0
        with self._lock:
            self.in_flight -= 1
            self.deliveries.append(Delivery(message_id, status, elapsed, time.time(), published))
        return status, payload, ctype

    def _send(self, path: str, headers: dict, body: bytes) -> tuple[int, bytes, str]:
        conn = getattr(self._local, "conn", None)
        for attempt in (1, 2):
            if conn is None:
                conn = http.client.HTTPConnection(self.upstream, timeout=ACK_DEADLINE_SECONDS + 30)
                self._local.conn = conn
            try:
                fwd = {k: v for k, v in headers.items() if k.lower() not in ("host", "connection", "content-length")}
                conn.request("POST", path, body=body, headers=fwd)
                resp = conn.getresponse()
                return resp.status, resp.read(), resp.getheader("Content-Type", "application/json")
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                conn.close()
                conn = self._local.conn = None  # a kept-alive connection the server closed: once more
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def snapshot(self) -> list[Delivery]:
        with self._lock:
            return list(self.deliveries)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# -- process figures from /proc -------------------------------------------------------------------
_TICK = os.sysconf("SC_CLK_TCK")


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants (gunicorn's arbiter and its worker)."""
    parents: dict[int, list[int]] = defaultdict(list)
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parents[int(stat.rsplit(")", 1)[1].split()[1])].append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(parents.get(p, []))
    return out


def rss_mib(pid: int) -> dict[int, float]:
    out = {}
    for p in _tree(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    out[p] = int(line.split()[1]) / 1024
        except OSError:
            pass
    return out


def cpu_seconds(pid: int) -> float:
    total = 0.0
    for p in _tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime
        except (OSError, IndexError, ValueError):
            pass
    return total


# -- the run ----------------------------------------------------------------------------------------
def _pull_all(subscriber: Any, path: str, settle: float = 1.0) -> list:
    """Pull (and ack) everything on a pull subscription until it stays empty for ``settle`` s."""
    got, quiet_since = [], time.monotonic()
    while time.monotonic() - quiet_since < settle:
        resp = subscriber.pull(request={"subscription": path, "max_messages": 1000, "return_immediately": True}, timeout=30)
        if resp.received_messages:
            got.extend(m.message for m in resp.received_messages)
            subscriber.acknowledge(subscription=path, ack_ids=[m.ack_id for m in resp.received_messages])
            quiet_since = time.monotonic()
        else:
            time.sleep(0.1)
    return got


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def run(n_events: int = 10_000, *, groups: int = 4, duplicate_share: float = 0.15, seed: int = 15,
        deadline_seconds: Optional[float] = None, log_dir: Optional[Path] = None, project: str = "archsync-load",
        firestore_host: str = "", pubsub_host: str = "") -> dict:
    """Run the load and return its figures. Starts the emulators unless their hosts are given
    (the integration tests pass their session's), and always its own function process."""
    log_dir = log_dir or Path(tempfile.mkdtemp(prefix="archsync-load-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    deadline_seconds = deadline_seconds or max(300.0, n_events * 0.25)
    started: list = []
    saved = {k: os.environ.get(k) for k in ("FIRESTORE_EMULATOR_HOST", "PUBSUB_EMULATOR_HOST")}
    counter: Optional[PushCounter] = None
    try:
        if not firestore_host:
            fs = processes.start_firestore(log_dir)
            started.append(fs)
            firestore_host = fs.host
        if not pubsub_host:
            ps = processes.start_pubsub(log_dir)
            started.append(ps)
            pubsub_host = ps.host
        os.environ.update({"FIRESTORE_EMULATOR_HOST": firestore_host, "PUBSUB_EMULATOR_HOST": pubsub_host})
        env = {"FIRESTORE_EMULATOR_HOST": firestore_host, "PUBSUB_EMULATOR_HOST": pubsub_host,
               "ARCHSYNC_PROJECT_ID": project, "ARCHSYNC_DEAD_LETTER_TOPIC": DEAD_LETTER_TOPIC}
        fn = processes.start_function(FUNCTION, env, log_dir)
        started.append(fn)
        counter = PushCounter(fn.host)

        from google.api_core import retry as api_retry
        from google.cloud import firestore, pubsub_v1

        from shared.adapters.firestore_admin import FirestoreAdminStore

        now = datetime.now(timezone.utc)
        db = firestore.Client(project=project)
        configure(FirestoreAdminStore(db), groups, now)
        publisher = pubsub_v1.PublisherClient(batch_settings=pubsub_v1.types.BatchSettings(max_messages=500))
        subscriber = pubsub_v1.SubscriberClient()
        dlq = publisher.topic_path(project, DEAD_LETTER_TOPIC)
        publisher.create_topic(name=dlq)
        subscriber.create_subscription(name=subscriber.subscription_path(project, DEAD_LETTER_AUDIT), topic=dlq)
        for g in range(groups):
            for gid in GATEWAYS:
                t = publisher.topic_path(project, topic_id(f"fg-load-{g}", gid))
                publisher.create_topic(name=t)
                subscriber.create_subscription(name=subscriber.subscription_path(project, subscription_id(f"fg-load-{g}", gid)),
                                               topic=t)
        exam_topic = publisher.topic_path(project, EXAM_TOPIC)
        publisher.create_topic(name=exam_topic)
        subscriber.create_subscription(request={
            "name": subscriber.subscription_path(project, PUSH_SUBSCRIPTION), "topic": exam_topic,
            # The topic in the path completes the CloudEvent source (infra/pubsub.tf push_endpoint).
            "push_config": {"push_endpoint": f"http://{counter.host}/projects/{project}/topics/{EXAM_TOPIC}"},
            "ack_deadline_seconds": ACK_DEADLINE_SECONDS,
            "retry_policy": {"minimum_backoff": {"seconds": 10}, "maximum_backoff": {"seconds": 600}},
            "dead_letter_policy": {"dead_letter_topic": dlq, "max_delivery_attempts": MAX_DELIVERY_ATTEMPTS},
        })

        stream, exams, duplicates = build_stream(n_events, groups, duplicate_share, now, seed)
        expected = expected_jobs(exams)
        log.info("stream: %d events (%d duplicates), %d exams, %d expected jobs", len(stream), duplicates, len(exams),
                 len(expected))

        # Warm the function (imports, clients, schema) with one event of a group that has no
        # configuration: nothing is created, and the burst measures a warm instance, as
        # production's first cold start is not what a burst of 10,000 is about.
        warm = dict(stream[0], facility_group_id="fg-warm-up", event_id="evt-warm-up")
        warm_id = publisher.publish(exam_topic, json.dumps(warm).encode()).result()
        wait_until(lambda: any(d.message_id == warm_id and d.status < 300 for d in counter.snapshot()), 120, "warm-up")
        rss_before = rss_mib(fn.proc.pid)
        procs = {"function (functions-framework)": fn.proc.pid, **{s.name: s.proc.pid for s in started if s is not fn}}
        cpu_before = {name: cpu_seconds(pid) for name, pid in procs.items()}
        bench_cpu_before = sum(os.times()[:2])
        counter.deliveries.clear()

        load_before = os.getloadavg()[0]
        t0_wall, t0 = time.time(), time.perf_counter()
        futures = [publisher.publish(exam_topic, json.dumps(e).encode()) for e in stream]
        published = {f.result(timeout=120) for f in futures}
        publish_seconds = time.perf_counter() - t0
        log.info("published %d messages in %.1f s", len(published), publish_seconds)

        def acked() -> set[str]:
            return {d.message_id for d in counter.snapshot() if d.status < 300}

        drained = wait_until(lambda: published <= acked(), deadline_seconds, "the push subscription to drain",
                             raise_on_timeout=False, progress=lambda: f"{len(published & acked())}/{len(published)} acked")
        drain_seconds = time.perf_counter() - t0
        cpu_after = {name: cpu_seconds(pid) for name, pid in procs.items()}
        bench_cpu = sum(os.times()[:2]) - bench_cpu_before
        rss_after = rss_mib(fn.proc.pid)
        time.sleep(2.0)  # a redelivery of an already acknowledged message would show up now
        deliveries = counter.snapshot()

        # What the product made of it.
        jobs: dict[tuple[str, str, str], list[str]] = defaultdict(list)
        lock_held = 0
        for g in range(groups):
            fg = f"fg-load-{g}"
            for snap in db.collection("facility_groups").document(fg).collection("jobs").select(
                    ["exam_id", "destination_id", "lock_held"]).stream(retry=api_retry.Retry(deadline=120)):
                doc = snap.to_dict()
                jobs[(fg, doc["exam_id"], doc["destination_id"].removeprefix("dst-"))].append(snap.id)
                lock_held += bool(doc.get("lock_held"))
        job_messages: Counter = Counter()
        for g in range(groups):
            for gid in GATEWAYS:
                for m in _pull_all(subscriber, subscriber.subscription_path(project, subscription_id(f"fg-load-{g}", gid))):
                    job_messages[json.loads(m.data)["job_id"]] += 1
        dead = _pull_all(subscriber, subscriber.subscription_path(project, DEAD_LETTER_AUDIT))
        dead_lettered = Counter(f"{m.attributes.get('function', 'Pub/Sub dead-letter policy')}: "
                                f"{m.attributes.get('reason', 'delivery attempts exhausted')}" for m in dead)
        job_ids = {i for ids in jobs.values() for i in ids}
        statuses = Counter(d.status for d in deliveries)
        ok_deliveries = [d for d in deliveries if d.status < 300]
        first_ack: dict[str, Delivery] = {}
        for d in ok_deliveries:
            first_ack.setdefault(d.message_id, d)
        last_ack = max((d.acked_at for d in ok_deliveries), default=t0_wall)
        handled_seconds = max(last_ack - t0_wall, 1e-9)
        latencies = [d.acked_at - d.published_at for d in first_ack.values() if d.published_at is not None]
        return {
            "events": len(stream), "duplicates": duplicates, "exams": len(exams), "groups": groups,
            "published": len(published), "publish_seconds": publish_seconds,
            "drained": bool(drained), "drain_seconds": drain_seconds, "deadline_seconds": deadline_seconds,
            "deliveries": len(deliveries), "delivery_statuses": dict(statuses),
            "handled": len(published & set(first_ack)), "acks_of_acked": len(ok_deliveries) - len(first_ack),
            "handled_per_second": len(published & set(first_ack)) / handled_seconds,
            "delivered_per_second": len(deliveries) / handled_seconds,
            "max_in_flight": counter.max_in_flight,
            "handler_ms": {q: 1000 * _percentile([d.handler_seconds for d in deliveries], q) for q in (0.5, 0.9, 0.99, 1.0)},
            "latency_s": {q: _percentile(latencies, q) for q in (0.5, 0.9, 0.99, 1.0)},
            "expected_jobs": len(expected), "jobs": sum(len(v) for v in jobs.values()),
            "missing_jobs": len(expected - set(jobs)), "unexpected_jobs": len(set(jobs) - expected),
            "duplicate_jobs": sum(len(v) - 1 for v in jobs.values()),
            "expected_locks": sum(1 for k in expected if k[2] in ("legacy", "east")), "locks_held": lock_held,
            "job_messages": sum(job_messages.values()), "jobs_without_message": len(job_ids - set(job_messages)),
            "jobs_with_repeated_message": sum(1 for j, c in job_messages.items() if c > 1),
            "messages_of_unknown_jobs": len(set(job_messages) - job_ids),
            "dead_lettered": dict(dead_lettered),
            "rss_before_mib": rss_before, "rss_after_mib": rss_after,
            "cpu_seconds": {k: cpu_after[k] - cpu_before[k] for k in procs} | {"benchmark process (publisher, pass-through)": bench_cpu},
            "load_average": (load_before, os.getloadavg()[0]),
            "log_dir": str(log_dir),
        }
    finally:
        if counter is not None:
            counter.stop()
        for svc in reversed(started):
            svc.stop()
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


# -- where one event's time goes: the handler in-process under cProfile ----------------------------
# What the handler spends its time in, by the adapter or library call (cumulative time, so nested
# calls are inside their caller's figure).
PROFILED = (
    ("shared/adapters/firestore_store.py", "record_exam", "Firestore: record the exam (set, merge)"),
    ("shared/adapters/firestore_store.py", "archiving_destinations", "Firestore: destinations with the trigger (2 queries)"),
    ("shared/adapters/firestore_store.py", "get_gateways", "Firestore: their gateways (batch get)"),
    ("shared/adapters/firestore_store.py", "create_job", "Firestore: create() the job"),
    ("shared/adapters/firestore_store.py", "get_job", "Firestore: read the existing job (duplicate)"),
    ("shared/adapters/firestore_store.py", "mark_published", "Firestore: mark the job published"),
    ("shared/adapters/pubsub_bus.py", "publish", "Pub/Sub: publish the job message (wait for its id)"),
    ("shared/contracts/__init__.py", "validate", "JSON Schema validation of the event"),
    ("shared/logs.py", "log", "structured logging"),
)


def profile(n_events: int, *, groups: int = 4, seed: int = 15, log_dir: Optional[Path] = None) -> dict:
    """The same kind of stream, handled one event at a time in this process (functions-framework's
    test client: the entry point, envelope decoding and all) under cProfile, against fresh
    emulators: milliseconds per event by adapter call."""
    import base64
    import cProfile
    import pstats

    log_dir = log_dir or Path(tempfile.mkdtemp(prefix="archsync-load-"))
    project = "archsync-load-profile"
    fs, ps = processes.start_firestore(log_dir), processes.start_pubsub(log_dir)
    saved = {k: os.environ.get(k) for k in ("FIRESTORE_EMULATOR_HOST", "PUBSUB_EMULATOR_HOST", "ARCHSYNC_PROJECT_ID")}
    try:
        os.environ.update({"FIRESTORE_EMULATOR_HOST": fs.host, "PUBSUB_EMULATOR_HOST": ps.host, "ARCHSYNC_PROJECT_ID": project})
        import contextlib
        import io

        import functions_framework
        from google.cloud import firestore, pubsub_v1

        from shared.adapters.firestore_admin import FirestoreAdminStore

        now = datetime.now(timezone.utc)
        configure(FirestoreAdminStore(firestore.Client(project=project)), groups, now)
        publisher = pubsub_v1.PublisherClient()
        for t in [DEAD_LETTER_TOPIC] + [topic_id(f"fg-load-{g}", gid) for g in range(groups) for gid in GATEWAYS]:
            publisher.create_topic(name=publisher.topic_path(project, t))
        client = functions_framework.create_app(
            target=FUNCTION, source=str(REPO / "functions" / FUNCTION / "main.py")).test_client()
        headers = {"ce-id": "x", "ce-specversion": "1.0", "ce-type": "google.cloud.pubsub.topic.v1.messagePublished",
                   "ce-source": f"//pubsub.googleapis.com/projects/{project}/topics/{EXAM_TOPIC}",
                   "Content-Type": "application/json"}
        stream, _, _ = build_stream(n_events + 1, groups, 0.15, now, seed)

        def deliver(i: int, event: dict) -> None:
            envelope = {"message": {"data": base64.b64encode(json.dumps(event).encode()).decode(), "messageId": str(i)},
                        "subscription": f"projects/{project}/subscriptions/{PUSH_SUBSCRIPTION}"}
            r = client.post("/", data=json.dumps(envelope), headers=headers)
            if r.status_code != 200:
                raise RuntimeError(f"event {i}: {r.status_code}")

        function_log = open(log_dir / "profile-function.log", "w")
        with contextlib.redirect_stdout(function_log):  # the function's JSON logs: to the log file
            deliver(-1, stream[0])  # warm: clients created, schema compiled
            prof = cProfile.Profile()
            t0 = time.perf_counter()
            prof.enable()
            for i, event in enumerate(stream[1:]):
                deliver(i, event)
            prof.disable()
            wall = time.perf_counter() - t0
        function_log.close()
        stats = pstats.Stats(prof, stream=io.StringIO()).stats  # type: ignore[attr-defined]
        rows = []
        for path, name, label in PROFILED:
            calls = cum = 0.0
            for (file, _line, func), (_cc, nc, _tt, ct, _callers) in stats.items():
                if func == name and file.endswith(path):
                    calls, cum = calls + nc, cum + ct
            rows.append((label, calls / n_events, 1000 * cum / n_events))
        return {"events": n_events, "ms_per_event": 1000 * wall / n_events, "rows": rows}
    finally:
        ps.stop()
        fs.stop()
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


def report_profile(p: dict, out: Any = sys.stdout) -> None:
    print(f"Where one event's time goes ({p['events']} events of the same stream, one at a time, in-process under "
          f"cProfile, which adds overhead): {p['ms_per_event']:.1f} ms per event", file=out)
    for label, calls, ms in p["rows"]:
        print(f"  {label:55s} {calls:5.2f} calls {ms:6.1f} ms", file=out)
    rest = p["ms_per_event"] - sum(ms for _, _, ms in p["rows"])
    print(f"  {'the rest (framework, envelope, trigger rule, profiler)':55s} {'':11s} {rest:6.1f} ms", file=out)


def verdict(r: dict) -> list[str]:
    """Every way the run differs from what the configuration must produce (empty: OK)."""
    problems = []
    if not r["drained"]:
        problems.append(f"the push subscription did not drain within {r['deadline_seconds']:.0f} s "
                        f"({r['handled']}/{r['published']} acknowledged)")
    if r["jobs"] != r["expected_jobs"] or r["missing_jobs"] or r["unexpected_jobs"] or r["duplicate_jobs"]:
        problems.append(f"jobs {r['jobs']} != expected {r['expected_jobs']} (missing {r['missing_jobs']}, "
                        f"unexpected {r['unexpected_jobs']}, duplicates {r['duplicate_jobs']})")
    if r["locks_held"] != r["expected_locks"]:
        problems.append(f"order locks held {r['locks_held']} != expected {r['expected_locks']}")
    if r["jobs_without_message"] or r["messages_of_unknown_jobs"]:
        problems.append(f"{r['jobs_without_message']} jobs without a gateway message, "
                        f"{r['messages_of_unknown_jobs']} messages of unknown jobs")
    if r["dead_lettered"]:
        problems.append(f"{sum(r['dead_lettered'].values())} messages dead-lettered")
    return problems


def report(r: dict, out: Any = sys.stdout) -> None:
    def say(text: str = "") -> None:
        print(text, file=out, flush=True)

    say(f"Load: {r['events']} exam-status events ({r['duplicates']} duplicates, {r['duplicates'] / r['events']:.0%}; "
        f"{r['exams']} exams in {r['groups']} facility groups) through Pub/Sub push into {FUNCTION}")
    say(f"  published in {r['publish_seconds']:.1f} s; drained in {r['drain_seconds']:.1f} s"
        + ("" if r["drained"] else f"  (NOT DRAINED by the {r['deadline_seconds']:.0f} s deadline)"))
    say(f"  throughput: {r['handled_per_second']:.1f} events/s handled (acknowledged), "
        f"{r['delivered_per_second']:.1f} push requests/s delivered; at most {r['max_in_flight']} in flight")
    say(f"  push requests {r['deliveries']} for {r['published']} messages, answers " +
        ", ".join(f"{k}: {v}" for k, v in sorted(r["delivery_statuses"].items())) +
        f"; repeated deliveries of acknowledged messages {r['acks_of_acked']}")
    h, lat = r["handler_ms"], r["latency_s"]
    say(f"  function time per push (ms): p50 {h[0.5]:.0f}  p90 {h[0.9]:.0f}  p99 {h[0.99]:.0f}  max {h[1.0]:.0f}")
    say(f"  publish -> ack latency (s):  p50 {lat[0.5]:.1f}  p90 {lat[0.9]:.1f}  p99 {lat[0.99]:.1f}  max {lat[1.0]:.1f}"
        "  (a burst: mostly queueing)")
    say(f"  machine: {os.cpu_count()} cores, 1-minute load average {r['load_average'][0]:.1f} at the start, "
        f"{r['load_average'][1]:.1f} at the end (other work on the machine counts too)")
    say(f"  CPU seconds during the burst (2 cores x {r['drain_seconds']:.0f} s wall = {2 * r['drain_seconds']:.0f} available):")
    for name, s in sorted(r["cpu_seconds"].items(), key=lambda kv: -kv[1]):
        say(f"    {name:46s} {s:7.1f}")
    say(f"  function RSS (MiB, arbiter + worker; production limit {PRODUCTION_MEMORY_MIB} MiB per instance): "
        f"before {sum(r['rss_before_mib'].values()):.0f} ({', '.join(f'{v:.0f}' for v in r['rss_before_mib'].values())})  "
        f"after {sum(r['rss_after_mib'].values()):.0f} ({', '.join(f'{v:.0f}' for v in r['rss_after_mib'].values())})")
    say(f"  jobs: {r['jobs']}  expected: {r['expected_jobs']}  (missing {r['missing_jobs']}, unexpected "
        f"{r['unexpected_jobs']}, duplicate {r['duplicate_jobs']}); order locks held {r['locks_held']}, expected "
        f"{r['expected_locks']}")
    say(f"  gateway job messages: {r['job_messages']} for {r['jobs']} jobs ({r['jobs_without_message']} jobs without, "
        f"{r['jobs_with_repeated_message']} with more than one)")
    say(f"  dead-lettered: {sum(r['dead_lettered'].values())}" + "".join(f"\n    {v} x {k}" for k, v in r["dead_lettered"].items()))
    problems = verdict(r)
    say("RESULT: OK" if not problems else "RESULT: MISMATCH: " + "; ".join(problems))


def wait_until(check: Any, timeout: float, what: str, raise_on_timeout: bool = True, progress: Any = None) -> bool:
    end, next_note = time.monotonic() + timeout, time.monotonic() + 10
    while time.monotonic() < end:
        if check():
            return True
        if progress is not None and time.monotonic() >= next_note:
            log.info("waiting for %s: %s", what, progress())
            next_note = time.monotonic() + 10
        time.sleep(0.25)
    if raise_on_timeout:
        raise RuntimeError(f"timed out waiting for {what}")
    return False


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--groups", type=int, default=4)
    parser.add_argument("--duplicates", type=float, default=0.15, help="share of the events that are duplicates")
    parser.add_argument("--deadline", type=float, default=None, help="seconds to wait for the drain (default: max(300, 0.25 s/event))")
    parser.add_argument("--profile", type=int, default=500, help="events to profile in-process afterwards (0: none)")
    parser.add_argument("--log-dir", type=Path, default=None)
    parser.add_argument("--json", action="store_true", help="also print the figures as JSON")
    args = parser.parse_args(argv)
    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="archsync-load-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(filename=log_dir / "benchmark_load.log", level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    r = run(args.events, groups=args.groups, duplicate_share=args.duplicates, deadline_seconds=args.deadline, log_dir=log_dir)
    report(r)
    if args.profile:
        report_profile(profile(args.profile, groups=args.groups, log_dir=log_dir))
    print(f"logs: {log_dir}")
    if args.json:
        print(json.dumps(r, indent=1, default=str))
    return 1 if verdict(r) else 0


if __name__ == "__main__":
    sys.exit(main())

"""The agent: one Pub/Sub streaming pull per active job delivery, with flow control (messages held
at once) and a bounded worker pool (jobs run at once).

Acknowledgement rule (issue 6, ARCHITECTURE.md rule 2): a job message is acked only after its final
result was accepted by the Result Endpoint, so a crash or an unreachable endpoint means redelivery,
never loss. Redoing a job is cheap and harmless: the C-FIND skips what the archive already holds,
and the cloud ignores results for attempts it has moved past. A message that is not a job is
nacked until the subscription's dead-letter policy moves it to the gateway dead-letter topic.

Result Endpoint outages (issue 11 item 5): a final result that cannot be posted is re-posted with
capped exponential backoff for up to ``result_retry.max_seconds`` (45 min by default) while the
message stays leased (the streaming pull extends its ack deadline), so an outage does not burn
deliveries. Only then is the message nacked; its redelivery re-posts the remembered outcome
without redoing the DICOM work. A progress report (IN_PROGRESS) that cannot be posted does not
stop the job."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Any, Callable, Optional

from .config import AgentConfig, JobDelivery
from .dimse import CommitmentListener, CommitmentWaiter, Network
from .fetch import ObjectFetcher
from .jobs import JobRunner
from .pipeline import PipelineSettings
from .progress import ProgressReporter
from .recent import RecentJobs
from .heartbeat import Heartbeats
from .results import ResultNotDelivered, ResultRefused, ResultReporter
from .spool import Spool

log = logging.getLogger("gateway_agent")
REQUIRED = ("job_id", "job_type", "attempt", "facility_group_id", "gateway_id", "destination", "result_deadline")


class _Recent:
    """(job id, attempt) keys handled lately, each with an optional value (bounded, oldest first out)."""

    def __init__(self, size: int = 10_000):
        self._keys: OrderedDict = OrderedDict()
        self._size, self._lock = size, threading.Lock()

    def add(self, key, value=None) -> None:
        with self._lock:
            self._keys[key] = value
            while len(self._keys) > self._size:
                self._keys.popitem(last=False)

    def get(self, key):
        with self._lock:
            return self._keys.get(key)

    def discard(self, key) -> None:
        with self._lock:
            self._keys.pop(key, None)

    def __contains__(self, key) -> bool:
        with self._lock:
            return key in self._keys


def delivery_fingerprint(d: JobDelivery) -> str:
    """Identifies a delivery's settings (secrets included, only as a hash): a change restarts its pull."""
    raw = json.dumps([d.name, d.project_id, d.subscription_id, d.result_endpoint_url, d.result_endpoint_secure_key,
                      d.service_account_info], sort_keys=True, default=str)
    return hashlib.sha256(raw.encode()).hexdigest()


def subscriber_client(d: JobDelivery, pubsub_endpoint: str):
    """A subscriber authenticated as the delivery's service account, on one code path: our own
    authorized channel and transport to ``pubsub_endpoint``. (Without an explicit transport,
    google-cloud-pubsub switches to anonymous credentials when PUBSUB_EMULATOR_HOST is set: the
    agent never relies on that variable.) Every call carries the account's access token, from
    the key's token_uri."""
    import ipaddress

    import grpc
    from google.auth.transport.grpc import secure_authorized_channel
    from google.auth.transport.requests import Request
    from google.cloud import pubsub_v1
    from google.oauth2 import service_account
    from google.pubsub_v1.services.subscriber.transports import SubscriberGrpcTransport

    creds = service_account.Credentials.from_service_account_info(
        d.service_account_info, scopes=["https://www.googleapis.com/auth/pubsub"])
    host = pubsub_endpoint.rpartition(":")[0].strip("[]")
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    # TLS to anything but this machine; gRPC's local credentials (loopback only, still with
    # per-call credentials) for an endpoint on it.
    ssl = grpc.local_channel_credentials() if loopback else grpc.ssl_channel_credentials()
    channel = secure_authorized_channel(creds, Request(), pubsub_endpoint, ssl_credentials=ssl,
                                        options=[("grpc.max_receive_message_length", -1)])
    return pubsub_v1.SubscriberClient(transport=SubscriberGrpcTransport(channel=channel))


class _Pull:
    """One active delivery's streaming pull."""

    def __init__(self, delivery: JobDelivery, subscriber: Any, future: Any):
        self.delivery, self.subscriber, self.future = delivery, subscriber, future
        self.stopping = False


class Agent:
    def __init__(self, cfg: AgentConfig, *, network: Optional[Network] = None,
                 runner_factory: Optional[Callable[[JobDelivery], JobRunner]] = None,
                 reporter_factory: Optional[Callable[[JobDelivery], ResultReporter]] = None,
                 now: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
                 pull_guard: Optional[Callable[[JobDelivery], None]] = None):
        """``pull_guard``: called before a delivery's pull starts; raises PermissionError when the
        delivery's account may not consume its subscription. The local stack passes its policy
        check (devstack/pubsub_iam.py): the Pub/Sub emulator itself checks nothing."""
        self.cfg, self._now = cfg, now
        self.pull_guard = pull_guard
        self.recent = RecentJobs()
        self._pulls: dict[str, _Pull] = {}
        self._pull_errors: dict[str, str] = {}
        self._apply_lock = threading.Lock()
        self._started = False
        self._net = network or Network(cfg.dimse_timeout_seconds, cfg.network_timeout_seconds)
        self.waiter = CommitmentWaiter()
        self._runner_factory = runner_factory or self._runner
        self._stopping = threading.Event()
        self.heartbeats = Heartbeats(cfg.heartbeat_seconds, self._stopping, timeout=cfg.network_timeout_seconds)
        self._reporter_factory = reporter_factory or (
            lambda d: ResultReporter(d.result_endpoint_url, d.result_endpoint_secure_key, timeout=cfg.network_timeout_seconds,
                                     retry=cfg.result_retry, stop=self._stopping))
        # _done: settled (acked) jobs; _finished: jobs whose DICOM work is done but whose final
        # result has not been accepted yet (its Outcome), so a redelivery only re-posts it.
        self._done, self._finished, self._running, self._lock = _Recent(), _Recent(), set(), threading.Lock()
        self._listener: Optional[CommitmentListener] = None
        self._spool = Spool(cfg.work_dir)
        self.handled = 0

    def _runner(self, d: JobDelivery) -> JobRunner:
        work_dir = str(self._spool.run_dir) if self._spool.run_dir else self.cfg.work_dir
        return JobRunner(ObjectFetcher(d.service_account_info, d.project_id, self.cfg.storage_endpoint,
                                         free_disk_margin_mb=self.cfg.free_disk_margin_mb),
                         self._net, self.waiter, commitment_timeout=self.cfg.storage_commitment.timeout_seconds,
                         hl7_timeout=self.cfg.hl7_timeout_seconds, work_dir=work_dir,
                         pipeline=PipelineSettings(associations=self.cfg.store_associations, spool_files=self.cfg.spool_files))

    # -- one message ------------------------------------------------------------------------
    def handle(self, delivery: JobDelivery, runner: JobRunner, reporter: ResultReporter, data: bytes,
               delivery_attempt: Optional[int] = None) -> str:
        """Do the job in ``data``; returns "ack", "nack" or "hold" (a duplicate of a running job:
        neither, so its lease lapses and it comes back once the first copy has settled).
        ``delivery_attempt``: Pub/Sub's count for this message (logged)."""
        try:
            job = json.loads(data)
            if not isinstance(job, dict) or any(k not in job for k in REQUIRED):
                raise ValueError
        except ValueError:
            log.error("not a job message; leaving it for the dead-letter topic",
                      extra={"delivery": delivery.name, "delivery_attempt": delivery_attempt})
            return "nack"
        if isinstance(job.get("facility_group_id"), str) and isinstance(job.get("gateway_id"), str):
            self.heartbeats.learn(delivery_fingerprint(delivery), job["facility_group_id"], job["gateway_id"])
        key = (job["job_id"], job["attempt"])
        ids = {"job_id": job["job_id"], "attempt": job["attempt"], "delivery_attempt": delivery_attempt}
        # A redelivery is logged with Pub/Sub's delivery attempt: how an operator (and the tests)
        # see that a lease lapsed while the job ran, or that a settled job came back.
        if key in self._done:
            log.info("job message redelivered after its job settled here; acked", extra=ids)
            return "ack"
        with self._lock:
            running = key in self._running
            if not running:
                self._running.add(key)
        if running:
            log.warning("job message redelivered while its job runs here; held (neither acked nor nacked)", extra=ids)
            return "hold"
        try:
            outcome = self._finished.get(key)
            if outcome is None:
                try:
                    deadline = datetime.fromisoformat(job["result_deadline"])
                except (TypeError, ValueError):
                    log.error("job message with an unreadable result deadline", extra=ids)
                    return "nack"
                if deadline <= self._now():
                    # The deadline of the message is the one at publication; progress reports may
                    # have extended the cloud's window since (a long job whose agent died: its
                    # redelivery must go on). Ask; a closed attempt (archive state UNKNOWN) is
                    # skipped, and a manual retry sends a new attempt.
                    try:
                        still_open = reporter.attempt_open(job)
                    except ResultNotDelivered as e:
                        log.warning("job past its message deadline and the Result Endpoint cannot say whether it is "
                                    "still open; left for redelivery", extra={**ids, "why": str(e)})
                        return "nack"
                    if not still_open:
                        log.warning("job attempt expired before it was started; skipped", extra=ids)
                        self._done.add(key)
                        return "ack"
                    log.info("job past its message deadline but its result window was extended; doing it", extra=ids)
                else:
                    try:
                        reporter.post(job, "IN_PROGRESS")
                    except ResultNotDelivered as e:
                        # Progress only restarts the cloud's timeout window: the work and its final
                        # result are what matter, so an unavailable endpoint does not stop the job.
                        log.warning("IN_PROGRESS not delivered; doing the job anyway", extra={**ids, "why": str(e)})
                log.info("job started", extra={**ids, "job_type": job["job_type"], "destination_id": job["destination"].get("id")})
                self.recent.started(delivery.name, job)
                progress = ProgressReporter(lambda counts: reporter.post(job, "IN_PROGRESS", counts=counts),
                                            self.cfg.progress_interval_seconds)
                outcome = runner.run(job, progress)
                progress.join()  # a report in flight goes before the final result
                self._finished.add(key, outcome)
            else:
                # Redelivered after its result could not be posted: never redo the DICOM work.
                log.info("job already done; posting its result again", extra={**ids, "state": outcome.state})
            self.recent.finished(job, "NOT_REPORTED", f"{outcome.state}; posting the result to the Result Endpoint"
                                 + (f" ({outcome.reason})" if outcome.reason else ""))
            accepted = reporter.post(job, outcome.state, outcome.reason, outcome.counts, patient=True)
            self.recent.finished(job, outcome.state, outcome.reason)
            log.info("job finished", extra={**ids, "state": outcome.state, "outcome": accepted, "counts": outcome.counts})
            self._settled(key)
            self.handled += 1
            return "ack"
        except ResultRefused as e:
            log.error("result refused; dropping the job message", extra={**ids, "why": str(e)})
            self.recent.finished(job, "REFUSED", str(e))
            self._settled(key)
            return "ack"
        except ResultNotDelivered as e:
            log.error("result not delivered; the job message will be redelivered and its result posted again",
                      extra={**ids, "why": str(e)})
            return "nack"
        except Exception as e:  # a bug must not lose the job: leave it for redelivery
            log.exception("job failed unexpectedly; the job message will be redelivered", extra={**ids, "why": type(e).__name__})
            return "nack"
        finally:
            with self._lock:
                self._running.discard(key)

    def _settled(self, key) -> None:
        self._done.add(key)
        self._finished.discard(key)

    # -- Pub/Sub ----------------------------------------------------------------------------
    def start(self) -> "Agent":
        active = self.cfg.active_deliveries
        if not active and not self.cfg.admin_page:
            raise RuntimeError("no active job delivery in the config: set \"active\": true to start (seed 000 Step 3.4)")
        self._spool.open()  # removes the spool directories of a previous run that died
        sc = self.cfg.storage_commitment
        if sc.port:
            self._listener = CommitmentListener(self.waiter, sc.ae_title, sc.host, sc.port).start()
        self._started = True
        self.apply(self.cfg)
        self.heartbeats.start()
        return self

    def apply(self, cfg: AgentConfig) -> None:
        """Make the running pulls match ``cfg``'s active deliveries, without a restart (the admin
        page saves the config file, then calls this): a new or changed active delivery starts
        pulling, a removed, changed or deactivated one stops (its running jobs finish first, in
        the background). Only the deliveries are applied live; other settings need a restart."""
        with self._apply_lock:
            self.cfg = dataclasses.replace(self.cfg, deliveries=cfg.deliveries)
            if not self._started:
                return
            wanted = {delivery_fingerprint(d): d for d in cfg.active_deliveries}
            for key in [k for k in self._pulls if k not in wanted]:
                self._stop_pull(self._pulls.pop(key))
            for key in [k for k in self._pull_errors if k not in wanted]:
                del self._pull_errors[key]
            for key, d in wanted.items():
                if key in self._pulls:
                    continue
                try:
                    self._pulls[key] = self._start_pull(d)
                    self._pull_errors.pop(key, None)
                except Exception as e:  # shown on the admin page; the other deliveries go on
                    self._pull_errors[key] = str(e)[:500] or type(e).__name__
                    log.error("job delivery could not start", extra={"delivery": d.name, "why": type(e).__name__})

    def delivery_status(self) -> dict[str, str]:
        """Per delivery fingerprint: "pulling", "stopped" (its pull ended) or "error: <why>"."""
        out = {key: f"error: {why}" for key, why in self._pull_errors.items()}
        for key, pull in list(self._pulls.items()):
            if not pull.future.done():
                out[key] = "pulling"
            else:
                try:
                    pull.future.result(timeout=0)
                    out[key] = "stopped"
                except Exception as e:
                    out[key] = f"error: {type(e).__name__}: {str(e)[:300]}"
        return out

    def _start_pull(self, d: JobDelivery) -> _Pull:
        from google.cloud.pubsub_v1.subscriber.scheduler import ThreadScheduler
        from google.cloud.pubsub_v1.types import FlowControl

        if self.pull_guard is not None:
            self.pull_guard(d)
        runner, reporter = self._runner_factory(d), self._reporter_factory(d)
        subscriber = subscriber_client(d, self.cfg.pubsub_endpoint)
        pool = ThreadPoolExecutor(max_workers=self.cfg.max_concurrent_jobs, thread_name_prefix=f"job-{d.name[:10]}")

        def callback(message, d=d, runner=runner, reporter=reporter) -> None:
            # While this runs the message stays leased: the client extends its ack deadline
            # (up to max_lease_duration), so a long job or a held result burns no delivery.
            verdict = self.handle(d, runner, reporter, message.data, delivery_attempt=message.delivery_attempt)
            if verdict == "ack":
                message.ack()
            elif verdict == "nack":
                message.nack()

        # The lease (docs/gateway-agent.md "Jobs that last hours"): the client extends the ack
        # deadline lease_extension_seconds at a time while the job runs, up to max_lease_seconds
        # (default: 4 h of work plus the time a final result may be held, result_retry). If this
        # process dies, the extensions stop and Pub/Sub redelivers within lease_extension_seconds.
        ext = int(self.cfg.lease_extension_seconds)
        flow = FlowControl(max_messages=self.cfg.max_outstanding_messages, max_lease_duration=self.cfg.lease_seconds,
                           min_duration_per_lease_extension=ext, max_duration_per_lease_extension=ext)
        future = subscriber.subscribe(d.subscription_path, callback, flow_control=flow,
                                      scheduler=ThreadScheduler(executor=pool), await_callbacks_on_shutdown=True)
        log.info("job delivery active", extra={"delivery": d.name, "subscription": d.subscription_path})
        from .linktest import gateway_id_of

        self.heartbeats.register(delivery_fingerprint(d), d.result_endpoint_url, d.result_endpoint_secure_key,
                                 gateway_id_of(d), is_pulling=lambda: not future.done())
        return _Pull(d, subscriber, future)

    def _stop_pull(self, pull: _Pull, wait: bool = False) -> None:
        """Stop one pull: no new messages; running jobs finish and settle their messages (in a
        background thread unless ``wait``)."""
        pull.stopping = True
        self.heartbeats.unregister(delivery_fingerprint(pull.delivery))
        pull.future.cancel()

        def finish() -> None:
            try:
                pull.future.result(timeout=None if not wait else 60)
            except Exception:  # cancelled streams end with an error by design
                pass
            pull.subscriber.close()
            log.info("job delivery stopped", extra={"delivery": pull.delivery.name})

        if wait:
            finish()
        else:
            threading.Thread(target=finish, name="stop-pull", daemon=True).start()

    def wait(self, timeout: Optional[float] = None) -> None:
        for pull in list(self._pulls.values()):
            pull.future.result(timeout=timeout)

    def stop(self) -> None:
        self._stopping.set()  # ends every wait for the Result Endpoint: those messages are nacked
        with self._apply_lock:
            pulls, self._pulls = list(self._pulls.values()), {}
            self._started = False
        for pull in pulls:
            self._stop_pull(pull, wait=True)
        if self._listener:
            self._listener.stop()
            self._listener = None
        self._spool.close()

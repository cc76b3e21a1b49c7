"""``on_job_result``: authenticate a gateway's result callback and apply it (rule 4)."""
from __future__ import annotations

from datetime import datetime
from typing import Any, Callable, Mapping, Optional

from .. import contracts, logs, metrics
from ..clock import parse_time
from ..domain.errors import ArchSyncError, MalformedInput, NotFound, Unauthorized
from ..domain.jobs import Transition, apply_result
from ..domain.json_input import parse_json
from ..domain.messages import gateway_result
from ..domain.models import Job, JobState, JobType
from ..domain.rules import TimeoutPolicy
from ..domain.validation import is_valid_id
from ..ports import Clock, GatewayDirectory, HealthStore, JobStore, SecretStore
from ..signing import ANY_GROUP, StaleTimestamp, check_headers, is_probe, matches, parse_gateway_header


class ResultService:
    def __init__(self, jobs: JobStore, secrets: SecretStore, clock: Clock, policy: TimeoutPolicy, max_skew_seconds: int,
                 followups: Optional[Callable[[], Any]] = None, directory: Optional[GatewayDirectory] = None,
                 health: Optional[HealthStore] = None):
        """``followups`` builds the FollowUps service on first need (it publishes: lazily loaded).
        ``directory`` finds a gateway's facility group for a link probe or heartbeat that names only
        the gateway (``X-ArchSync-Gateway: -/<gateway_id>``); without it such requests are refused.
        ``health``: where each authenticated contact of a gateway is recorded (issue 15 item 3)."""
        self._followups = followups
        self._directory = directory
        self._health = health
        self._jobs = jobs
        self._secrets = secrets
        self._clock = clock
        self._policy = policy
        self._skew = max_skew_seconds

    def authenticate(self, headers: Mapping[str, str], body: bytes, now: datetime) -> tuple[str, str, bool]:
        """(facility group, gateway, whether the header named the gateway only) of the gateway that
        signed this request; Unauthorized otherwise, logged with a reason code for the
        result-signature metric (infra/monitoring.tf)."""
        group, gateway_id = "", ""
        try:
            group, gateway_id = parse_gateway_header(headers)
            # "-" for the group: a gateway that knows its gateway (from the seed's Subscription ID)
            # but not its facility group: the link probe and the heartbeat (docs/gateway-agent.md).
            any_group = group == ANY_GROUP
            if not ((any_group or is_valid_id(group)) and is_valid_id(gateway_id)):
                group, gateway_id = "", ""
                raise Unauthorized("malformed gateway header")
            # Header shapes and the replay window first: a request that fails them costs no key read
            # (issue 11 item 14). Then authenticate before reading the body: nothing unauthenticated is
            # parsed or written.
            ts, sig = check_headers(headers, now.timestamp(), self._skew)
        except StaleTimestamp:
            metrics.result_signature_failed("STALE_TIMESTAMP", group, gateway_id)
            raise
        except Unauthorized:
            metrics.result_signature_failed("MALFORMED_HEADERS", group, gateway_id)
            raise
        if any_group:
            found = self._directory.gateway_group(gateway_id) if self._directory is not None else None
            if found is None:
                metrics.result_signature_failed("BAD_SIGNATURE", "", gateway_id)
                raise Unauthorized("invalid signature")  # an unknown gateway looks like a wrong key
            group = found
        if not self._signed(group, gateway_id, ts, sig, body, now, fresh=False):
            # The key may have been rotated since it was cached: look once more (rate-limited).
            if not self._signed(group, gateway_id, ts, sig, body, now, fresh=True):
                metrics.result_signature_failed("BAD_SIGNATURE", group, gateway_id)
                raise Unauthorized("invalid signature")
        return group, gateway_id, any_group

    def heartbeat(self, headers: Mapping[str, str], body: bytes) -> str:
        """A gateway's signed heartbeat (contract gateway-heartbeat.v1): records its contact and,
        when reported, its last pull. Returns recorded | throttled."""
        now = self._clock.now()
        group, gateway_id, _ = self.authenticate(headers, body, now)
        payload = parse_json(body)
        contracts.validate(contracts.GATEWAY_HEARTBEAT, payload)
        last_pull = parse_time(payload["last_pull_at"]) if payload.get("last_pull_at") else None
        written = self._record_contact(group, gateway_id, "heartbeat", now, last_pull_at=last_pull)
        return "recorded" if written else "throttled"

    def _record_contact(self, group: str, gateway_id: str, kind: str, now: datetime,
                        last_pull_at: Optional[datetime] = None) -> bool:
        if self._health is None:
            return False
        try:
            return self._health.record_contact(group, gateway_id, kind, now, last_pull_at=last_pull_at)
        except ArchSyncError as e:  # health is advisory: it never costs a gateway its result
            logs.warning("gateway contact not recorded", facility_group_id=group, gateway_id=gateway_id, why=str(e))
            return False

    def handle(self, headers: Mapping[str, str], body: bytes) -> Transition:
        now = self._clock.now()
        group, gateway_id, any_group = self.authenticate(headers, body, now)
        self._record_contact(group, gateway_id, "result", now)  # a probe too: the gateway runs
        payload = parse_json(body)
        if is_probe(payload):
            # The agent's link test (seed 000 Step 3): the URL and the key are right. Writes nothing.
            logs.info("result endpoint probe", facility_group_id=group, gateway_id=gateway_id)
            return Transition("probe")
        if any_group:
            raise MalformedInput("a job result names its facility group in X-ArchSync-Gateway (only a probe may use '-')")
        contracts.validate(contracts.JOB_RESULT, payload)
        result = gateway_result(payload)

        seen: list[Job] = []

        def decide(job: Job) -> Transition:
            seen.append(job)
            # Only the gateway the job's current attempt was published to may report on it (a retry
            # re-routes the job to its destination's current gateway: jobs.py, issue 11 item 15).
            if job.gateway_id != gateway_id:
                raise NotFound("unknown job")  # another gateway's job: do not reveal it exists
            return apply_result(job, result, now=self._clock.now(), policy=self._policy)

        transition = self._jobs.transact_job(group, result.job_id, decide)
        if transition is None:
            raise NotFound("unknown job")
        metrics.job_transition(seen[-1] if seen else None, transition, now)
        if result.state.is_final and self._followups is not None:
            # Also on repeats: a crash after the result but before its follow-ups is mended by the retry.
            job = transition.job or self._jobs.get_job(group, result.job_id)
            # An ARCHIVE job that COMPLETED may have deferrals beside it (one small query to know).
            if job is not None and job.state.is_final and (job.dependents or (
                    job.type is JobType.ARCHIVE and job.state is JobState.COMPLETED)):
                self._followups().after_final(job)
        logs.info("job result", job_id=result.job_id, attempt=result.attempt, reported=result.state.value,
                  outcome=transition.outcome, lock_released=transition.lock_released,
                  state=transition.job.state.value if transition.job else None, facility_group_id=group, gateway_id=gateway_id)
        return transition

    def _signed(self, group: str, gateway_id: str, ts: str, sig: str, body: bytes, now: datetime, *, fresh: bool) -> bool:
        """Whether a key of the gateway valid now (the current one, or the previous one during a
        rotation's grace period) made ``sig``."""
        keys = self._secrets.result_keys(group, gateway_id, fresh=fresh)
        return matches(keys.valid_at(now) if keys else (), ts, sig, body)

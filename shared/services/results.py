"""``on_job_result``: authenticate a gateway's result callback and apply it (rule 4)."""
from __future__ import annotations

from datetime import datetime
from typing import Any, Callable, Mapping, Optional

from .. import contracts, logs
from ..domain.errors import MalformedInput, NotFound, Unauthorized
from ..domain.jobs import Transition, apply_result
from ..domain.json_input import parse_json
from ..domain.messages import gateway_result
from ..domain.models import Job, JobState, JobType
from ..domain.rules import TimeoutPolicy
from ..domain.validation import is_valid_id
from ..ports import Clock, GatewayDirectory, JobStore, SecretStore
from ..signing import ANY_GROUP, check_headers, is_probe, matches, parse_gateway_header


class ResultService:
    def __init__(self, jobs: JobStore, secrets: SecretStore, clock: Clock, policy: TimeoutPolicy, max_skew_seconds: int,
                 followups: Optional[Callable[[], Any]] = None, directory: Optional[GatewayDirectory] = None):
        """``followups`` builds the FollowUps service on first need (it publishes: lazily loaded).
        ``directory`` finds a gateway's facility group for a link probe that names only the
        gateway (``X-ArchSync-Gateway: -/<gateway_id>``); without it such probes are refused."""
        self._followups = followups
        self._directory = directory
        self._jobs = jobs
        self._secrets = secrets
        self._clock = clock
        self._policy = policy
        self._skew = max_skew_seconds

    def handle(self, headers: Mapping[str, str], body: bytes) -> Transition:
        group, gateway_id = parse_gateway_header(headers)
        # "-" for the group: a gateway's link probe, which knows its gateway (from the seed's
        # Subscription ID) but not its facility group (docs/gateway-agent.md "Admin page").
        any_group = group == ANY_GROUP
        if not ((any_group or is_valid_id(group)) and is_valid_id(gateway_id)):
            raise Unauthorized("malformed gateway header")
        now = self._clock.now()
        # Header shapes and the replay window first: a request that fails them costs no key read
        # (issue 11 item 14). Then authenticate before reading the body: nothing unauthenticated is
        # parsed or written.
        ts, sig = check_headers(headers, now.timestamp(), self._skew)
        if any_group:
            found = self._directory.gateway_group(gateway_id) if self._directory is not None else None
            if found is None:
                raise Unauthorized("invalid signature")  # an unknown gateway looks like a wrong key
            group = found
        if not self._signed(group, gateway_id, ts, sig, body, now, fresh=False):
            # The key may have been rotated since it was cached: look once more (rate-limited).
            if not self._signed(group, gateway_id, ts, sig, body, now, fresh=True):
                raise Unauthorized("invalid signature")
        payload = parse_json(body)
        if is_probe(payload):
            # The agent's link test (seed 000 Step 3): the URL and the key are right. Writes nothing.
            logs.info("result endpoint probe", facility_group_id=group, gateway_id=gateway_id)
            return Transition("probe")
        if any_group:
            raise MalformedInput("a job result names its facility group in X-ArchSync-Gateway (only a probe may use '-')")
        contracts.validate(contracts.JOB_RESULT, payload)
        result = gateway_result(payload)

        def decide(job: Job) -> Transition:
            # Only the gateway the job's current attempt was published to may report on it (a retry
            # re-routes the job to its destination's current gateway: jobs.py, issue 11 item 15).
            if job.gateway_id != gateway_id:
                raise NotFound("unknown job")  # another gateway's job: do not reveal it exists
            return apply_result(job, result, now=self._clock.now(), policy=self._policy)

        transition = self._jobs.transact_job(group, result.job_id, decide)
        if transition is None:
            raise NotFound("unknown job")
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

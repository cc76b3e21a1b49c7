"""Doing one job (contract job-message.v1) with the destination's retry policy.

ARCHIVE and DICOM: fetch the study's files, C-FIND what the archive holds, C-STORE the rest
(honouring the destination's transfer syntax and excluded SOP classes), then Storage Commitment
where the destination asks for it. IOCM/KOS: C-STORE the generated note. ADT: MLLP and the ACK.
A failed attempt is retried after ``retry_timeout_seconds`` up to ``max_retries`` times (seed 000
Destinations: "Max Retries", "Retry Timeout"); a failure the archive calls permanent (A-ASSOCIATE-RJ
rejected-permanent, a syntax the agent cannot produce) is not retried."""
from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

from .dimse import CommitmentWaiter, DimseError, Endpoint, Instance, Network
from .fetch import FetchError, ObjectFetcher, split_uri
from .mllp import Hl7Error, send as send_hl7
from .pipeline import PipelineSettings, SendPipeline, Tally
from .results import Outcome

log = logging.getLogger("gateway_agent.jobs")
JobFailure = (DimseError, FetchError, Hl7Error)
MAX_LIST_BYTES = 64 * 1024 * 1024  # 50,000 entries of three 64-character UIDs are ~12 MB
REASON_MAX = 2000  # job-result.v1 "reason" maxLength


def _job_instances(tally: Tally, wanted: Sequence[str]) -> list[Instance]:
    """The instances the job is about: those its list names (as found so far), else the study's."""
    return [tally.found[u] for u in wanted if u in tally.found] if wanted else list(tally.found.values())


def _counts(tally: Tally, wanted: Sequence[str], excluded: set[str], sent: set[str]) -> dict:
    """Per-instance accounting (job-result.v1 counts), exact under parallel stores: ``sent`` and
    ``tally`` are updated per instance under the pipeline's lock."""
    instances = _job_instances(tally, wanted)
    eligible = [i for i in instances if i.sop_class_uid not in excluded]
    return {"total": len(wanted) if wanted else len(instances), "sent": len(sent),
            "already_present": sum(1 for i in eligible if i.sop_instance_uid in tally.held and i.sop_instance_uid not in sent),
            "excluded": len(instances) - len(eligible), "failed": len(tally.failed)}


def final_reason(failures: dict[str, list[int]], tries: str) -> str:
    """Every distinct failure of a job's tries, in the order first seen (issue 11 item 17: the
    last try's reason alone may hide the real cause, e.g. a rejection followed by timeouts under
    load), bounded by the result contract: "try 1: A; tries 2, 3: B (after 3 attempts)"."""
    if len(failures) == 1:
        return f"{next(iter(failures))} ({tries})"[:REASON_MAX]
    suffix = f" ({tries})"
    parts = [f"tr{'ies' if len(ns) > 1 else 'y'} {', '.join(map(str, ns))}: {r}" for r, ns in failures.items()]
    budget = REASON_MAX - len(suffix)
    if len("; ".join(parts)) > budget:  # the first and the last reason keep an equal share
        share = max(80, (budget - 2) // 2 - 2)
        parts = [p if len(p) <= share else p[:share - 1] + "…" for p in (parts[0], parts[-1])]
        if len(failures) > 2:
            parts.insert(1, f"({len(failures) - 2} more)")
    return ("; ".join(parts)[:budget] + suffix)


class JobRunner:
    def __init__(self, fetcher: ObjectFetcher, network: Network, waiter: CommitmentWaiter, *,
                 commitment_timeout: float = 60.0, hl7_timeout: float = 10.0, work_dir: Optional[str] = None,
                 sleep: Callable[[float], None] = time.sleep, pipeline: PipelineSettings = PipelineSettings()):
        self._fetcher, self._net, self._waiter, self._pipeline = fetcher, network, waiter, pipeline
        self._commit_timeout, self._hl7_timeout, self._work_dir, self._sleep = commitment_timeout, hl7_timeout, work_dir, sleep

    def run(self, job: dict, progress: Callable[[dict], None] = lambda counts: None) -> Outcome:
        """``progress(counts)``: called as files are fetched and stored (the caller rate-limits)."""
        retry = job["destination"]["retry"]
        attempts = 1 + retry["max_retries"]
        spool = Path(tempfile.mkdtemp(prefix=f"{job['job_id']}-", dir=self._work_dir))
        state: dict = {"spool": spool, "progress": progress}
        failures: dict[str, list[int]] = {}  # distinct reason -> the tries it ended, in order seen
        try:
            for n in range(1, attempts + 1):
                try:
                    return self._attempt(job, state)
                except JobFailure as e:
                    log.warning("job attempt failed", extra={"job_id": job["job_id"], "try": n, "why": e.reason})
                    failures.setdefault(e.reason, []).append(n)
                    if not e.retryable or n == attempts:
                        tries = f"after {n} attempt{'s' if n > 1 else ''}" if e.retryable or n > 1 else "not retried: permanent"
                        return Outcome("FAILED", final_reason(failures, tries), state.get("counts"))
                    self._sleep(retry["retry_timeout_seconds"])
            raise AssertionError("unreachable")  # pragma: no cover
        finally:
            shutil.rmtree(spool, ignore_errors=True)

    def _attempt(self, job: dict, state: dict) -> Outcome:
        kind = job["job_type"]
        if kind == "ADT":
            h = job["hl7"]
            send_hl7(h["host"], h["port"], h["message"], h.get("control_id", ""), self._hl7_timeout)
            return Outcome("COMPLETED", None, {"total": 1, "sent": 1})
        if "wanted" not in state:  # once per job; its file goes beside the study's, not among them
            state["wanted"] = [] if job.get("object_uri") else self._wanted(job, state["spool"] / "list")
        return self._send(job, state)

    def _wanted(self, job: dict, into: Path) -> list[str]:
        """The SOP Instance UIDs a DICOM job sends; empty = the whole study. The list is an
        instance-list.v1 object at ``instances_uri`` (under the gateway's own prefix; it may hold
        50,000 entries, so it is spooled to disk, not held in the message); messages published
        before that change carry it inline as ``instances``."""
        uri = job.get("instances_uri")
        if not uri:
            return [i["sop_instance_uid"] for i in job.get("instances") or []]
        path = self._fetcher.fetch_object(uri, into)
        if path.stat().st_size > MAX_LIST_BYTES:
            raise FetchError(f"{uri}: instance list larger than {MAX_LIST_BYTES} bytes", retryable=False)
        try:
            body = json.loads(path.read_bytes())
            wanted = [i["sop_instance_uid"] for i in body["instances"]]
            if body.get("schema_version") != "1" or not all(isinstance(u, str) for u in wanted):
                raise ValueError
        except (ValueError, KeyError, TypeError):
            raise FetchError(f"{uri}: not an instance list (instance-list.v1)", retryable=False) from None
        if "instance_count" in job and len(wanted) != job["instance_count"]:
            raise FetchError(f"{uri}: lists {len(wanted)} instances, the job says {job['instance_count']}; nothing sent",
                             retryable=False)
        return wanted

    def _sources(self, job: dict, spool: Path) -> tuple[str, list[str], str]:
        """(bucket, object names, where) of the files this job is about: the generated note
        (IOCM/KOS, under the gateway's own prefix) or the study's files in Cloud Storage."""
        if job.get("object_uri"):
            bucket, name = split_uri(job["object_uri"])
            if not name or name.endswith("/"):
                raise FetchError(f"{job['object_uri']}: not an object URI", retryable=False)
            return bucket, [name], job["object_uri"]
        uri = (job.get("study") or {}).get("storage_uri")
        if not uri:
            raise FetchError("the job names no study storage URI", retryable=False)
        bucket, names, sizes = self._fetcher.list_prefix(uri)
        # Issue 13 item 3: room for what the bounded spool can hold at once (queued, being stored,
        # being downloaded), checked before the first download.
        at_once = self._pipeline.spool_files + self._pipeline.associations + self._pipeline.fetchers
        self._fetcher.check_space(spool, sum(sorted(sizes, reverse=True)[:at_once]))
        return bucket, names, uri

    def _send(self, job: dict, state: dict) -> Outcome:
        """Fetch and C-STORE through the send pipeline (gateway_agent/pipeline.py: overlapped,
        bounded spool, several associations), then check what the job named, then commitment."""
        study_uid = (job.get("study") or {}).get("study_instance_uid")
        if not study_uid:
            raise FetchError("the job names no study instance UID", retryable=False)
        dest = job["destination"]
        ep = Endpoint.of(dest)
        bucket, names, where = self._sources(job, state["spool"] / "files")
        wanted: list[str] = state["wanted"]
        excluded = set(dest.get("excluded_sop_class_uids") or [])
        sent: set[str] = state.setdefault("sent", set())  # stored by this job's attempts
        known: dict = state.setdefault("known", {})  # object name -> identity, from earlier attempts
        tally = Tally()
        progress = state["progress"]

        def report(*_: object) -> None:
            # As each file is fetched and each instance stored (issue 13 item 3); the caller
            # rate-limits what it posts.
            progress({"total": len(names), "fetched": len(tally.found), "sent": len(sent)})

        try:
            SendPipeline(self._fetcher, self._net, self._pipeline).run(
                ep, bucket, names, state["spool"] / "files", study_uid=study_uid, where=where,
                wanted=set(wanted) if wanted else None, excluded=excluded, transfer_syntax=dest.get("transfer_syntax_uid"),
                query_held=not job.get("object_uri"), sent=sent, known=known, job_id=job["job_id"], tally=tally,
                on_stored=report, on_fetched=report)
        except FetchError as e:
            state["counts"] = _counts(tally, wanted, excluded, sent)
            if tally.foreign:
                # Storing overlaps fetching, so instances of the job's own study may have gone out
                # before the stray file was read; a file of another study never does (rule 9).
                done = "nothing was sent" if not sent else (
                    f"sending stopped after {len(sent)} instances of the job's study; none of another study was sent")
                raise FetchError(f"{e.reason}; {done}", retryable=False) from None
            raise
        except DimseError:
            state["counts"] = _counts(tally, wanted, excluded, sent)
            raise
        counts = state["counts"] = _counts(tally, wanted, excluded, sent)
        if job.get("object_uri") and not tally.found:
            raise FetchError(f"{job['object_uri']} is not a DICOM Part-10 file", retryable=False)
        missing = [u for u in wanted if u not in tally.found]
        if missing:
            # The platform may still be writing late images: worth another try (it resends only these).
            raise FetchError(f"{len(missing)} of {len(wanted)} instances named by the job are not in the study's storage",
                             retryable=True)
        eligible = [i for i in _job_instances(tally, wanted) if i.sop_class_uid not in excluded]
        fallback = tally.fallback if eligible else None
        if fallback:
            counts["cfind_fallback"] = 1
        if tally.failed:
            first = next(iter(tally.failed.values()))
            permanent = set(tally.failed) <= tally.permanent  # e.g. lossy re-encoding refused
            raise DimseError(f"{len(tally.failed)} of {len(eligible)} instances not stored by {ep}: {first}",
                             retryable=not permanent)
        if dest.get("storage_commitment") and eligible:
            self._commit(ep, eligible)
        reason = None
        if counts["excluded"] and not eligible:
            reason = "every instance is of a SOP class the destination excludes"
        if fallback:
            reason = f"C-FIND failed ({fallback}); sent every instance"
        return Outcome("COMPLETED", reason, counts)

    def _commit(self, ep: Endpoint, instances: list[Instance]) -> None:
        from pydicom.uid import generate_uid

        uid = generate_uid()
        assoc = self._net.request_commitment(ep, uid, [(i.sop_class_uid, i.sop_instance_uid) for i in instances],
                                             self._waiter.handle)
        try:
            report = self._waiter.wait(uid, self._commit_timeout)
        finally:
            if assoc.is_established:
                assoc.release()
        if report is None:
            raise DimseError(f"no Storage Commitment report from {ep} within {self._commit_timeout:g} s")
        ok, failed = report
        missing = [i for i in instances if i.sop_instance_uid not in ok and i.sop_instance_uid not in failed]
        if failed or missing:
            code = next(iter(failed.values()), 0x0110)
            raise DimseError(f"{ep} did not commit to {len(failed) + len(missing)} of {len(instances)} instances "
                             f"(Storage Commitment failure reason 0x{code:04X})")

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

from .dimse import CFindFailed, CommitmentWaiter, DimseError, Endpoint, Instance, Network
from .fetch import FetchError, ObjectFetcher, read_instance
from .mllp import Hl7Error, send as send_hl7
from .results import Outcome

log = logging.getLogger("gateway_agent.jobs")
JobFailure = (DimseError, FetchError, Hl7Error)
MAX_LIST_BYTES = 64 * 1024 * 1024  # 50,000 entries of three 64-character UIDs are ~12 MB
REASON_MAX = 2000  # job-result.v1 "reason" maxLength


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
                 sleep: Callable[[float], None] = time.sleep):
        self._fetcher, self._net, self._waiter = fetcher, network, waiter
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
        if "instances" not in state:
            state["instances"] = self._instances(job, state["spool"], state["wanted"], state["progress"])
        return self._send(job, state)

    def _instances(self, job: dict, spool: Path, wanted: Sequence[str] = (),
                   progress: Callable[[dict], None] = lambda counts: None) -> list[Instance]:
        """The instances this job is about, from Cloud Storage: only files of the job's study."""
        study_uid = (job.get("study") or {}).get("study_instance_uid")
        if not study_uid:
            raise FetchError("the job names no study instance UID", retryable=False)
        if job.get("object_uri"):  # IOCM/KOS: the generated note, under the gateway's own prefix
            paths = [self._fetcher.fetch_object(job["object_uri"], spool)]
        else:
            uri = (job.get("study") or {}).get("storage_uri")
            if not uri:
                raise FetchError("the job names no study storage URI", retryable=False)
            paths = self._fetcher.fetch_prefix(
                uri, spool, lambda done, total: progress({"total": total, "fetched": done, "sent": 0}))
        found = {}
        foreign = 0
        for p in paths:
            inst = read_instance(p)
            if inst is None:
                log.warning("skipping a file that is not DICOM Part 10", extra={"job_id": job["job_id"], "file": p.name})
                continue
            if inst.study_instance_uid != study_uid:
                foreign += 1
                continue
            found[inst.sop_instance_uid] = inst
        if foreign:
            # ARCHITECTURE rule 9: an archive only ever receives the job's own study. A file of
            # another study (or none) in the study's storage is the platform's error: sending
            # nothing is the only safe answer, and retrying cannot fix it. The reason names
            # counts and the prefix (ids only), never a file's patient data.
            where = job.get("object_uri") or uri
            raise FetchError(f"{foreign} of {len(paths)} files under {where} belong to another study; nothing was sent",
                             retryable=False)
        if job.get("object_uri"):
            if not found:
                raise FetchError(f"{job['object_uri']} is not a DICOM Part-10 file", retryable=False)
            return list(found.values())
        if not wanted:
            return list(found.values())
        missing = [u for u in wanted if u not in found]
        if missing:
            # The platform may still be writing late images: worth another try.
            raise FetchError(f"{len(missing)} of {len(wanted)} instances named by the job are not in the study's storage",
                             retryable=True)
        return [found[u] for u in wanted]

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

    def _send(self, job: dict, state: dict) -> Outcome:
        dest = job["destination"]
        ep = Endpoint.of(dest)
        instances: list[Instance] = state["instances"]
        excluded = set(dest.get("excluded_sop_class_uids") or [])
        eligible = [i for i in instances if i.sop_class_uid not in excluded]
        held: set[str] = set()
        fallback = None
        if not job.get("object_uri") and eligible:
            try:
                held = self._net.held_instances(ep, job["study"]["study_instance_uid"])
            except CFindFailed as e:
                # Seed 000 Troubleshooting, "C-FIND failed and no fallback push occurred": any
                # C-FIND failure falls back to sending everything, and the result says so.
                fallback = e.reason
                log.warning("C-FIND failed; sending every instance", extra={"job_id": job["job_id"], "why": e.reason})
        sent: set[str] = state.setdefault("sent", set())  # by this job's earlier attempts
        todo = [i for i in eligible if i.sop_instance_uid not in held and i.sop_instance_uid not in sent]
        progress = state["progress"]

        def stored(inst: Instance) -> None:
            # Recorded as each one is stored, not when the association ends: an archive that goes
            # away mid-study (issue 13 item 4) leaves what it took counted, and never re-sent by
            # this job even if its C-FIND fails on the next try.
            sent.add(inst.sop_instance_uid)
            progress({"total": len(instances), "fetched": len(instances), "sent": len(sent)})

        report = self._net.store(ep, todo, dest.get("transfer_syntax_uid"), on_stored=stored) if todo else None
        if report:
            sent.update(i.sop_instance_uid for i in report.sent)
        counts = state["counts"] = {
            "total": len(instances), "sent": len(sent),
            "already_present": sum(1 for i in eligible if i.sop_instance_uid in held and i.sop_instance_uid not in sent),
            "excluded": len(instances) - len(eligible), "failed": len(report.failed) if report else 0}
        if fallback:
            counts["cfind_fallback"] = 1
        if report and report.failed:
            first = next(iter(report.failed.values()))
            permanent = all("does not transcode" in r for r in report.failed.values())
            raise DimseError(f"{len(report.failed)} of {len(eligible)} instances not stored by {ep}: {first}",
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

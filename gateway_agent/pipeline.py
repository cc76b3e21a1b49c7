"""The send pipeline of an ARCHIVE/DICOM/IOCM/KOS job (issue 13 item 1): fetch -> spool -> send,
overlapped, on several associations.

    listing ──▶ fetch workers ──▶ bounded spool queue ──▶ N store associations ──▶ archive
                (download, header)   (at most spool_files)     (C-STORE, file deleted)
    C-FIND (what the archive holds) runs beside the first downloads; storing starts once it answered.

- Storing starts as soon as the first file is spooled; fetch workers block while the queue is full,
  so the spool holds at most ``spool_files + fetchers + associations`` files whatever the study's
  size, and memory holds only identities (UIDs), never a file's data.
- A file goes out undecoded when the archive accepted its own transfer syntax (storescu.py: its
  encoded data set bytes, read after the File Meta Information).
- Several associations at once, like dcm4chee's multiple store associations: each instance is
  taken from the queue by exactly one of them and each SOP Instance UID is queued once per
  attempt, so it is stored once; sent/failed are recorded per instance under a lock.
- C-FIND's "send only what is missing" and the job's earlier attempts (``sent``) are honoured:
  an instance the archive holds or that an earlier attempt stored is not sent; an earlier
  attempt's object whose instance was stored is not even downloaded again.
- Any error that ends the attempt (association lost, archive unreachable, a file of another
  study) stops fetching and sending at once; what was stored stays recorded, so the retry resends
  only the rest.
"""
from __future__ import annotations

import logging
import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from .dimse import CFindFailed, Endpoint, Instance, Network, _batches, _release, context_key, proposed_contexts
from .fetch import FetchError, ObjectFetcher, read_instance

log = logging.getLogger("gateway_agent.pipeline")
_POLL = 0.2  # seconds between looks at the stop flag while a queue is full or empty


@dataclass(frozen=True)
class PipelineSettings:
    associations: int = 4  # store associations per job (agent config "store_associations")
    fetchers: int = 8  # parallel downloads from Cloud Storage
    spool_files: int = 32  # files downloaded ahead of the senders (agent config "spool_files")


@dataclass
class Tally:
    """What one attempt saw and did; ``found`` also holds instances identified by earlier attempts."""
    found: dict[str, Instance] = field(default_factory=dict)  # SOP Instance UID -> identity, the job's study only
    held: set[str] = field(default_factory=set)
    fallback: Optional[str] = None  # why C-FIND failed (everything not yet sent was sent)
    sent_now: set[str] = field(default_factory=set)
    failed: dict[str, str] = field(default_factory=dict)  # SOP Instance UID -> reason
    permanent: set[str] = field(default_factory=set)  # failures a retry cannot fix (e.g. lossy re-encoding refused)
    not_dicom: int = 0
    foreign: int = 0


class _Stop(Exception):
    pass


class SendPipeline:
    def __init__(self, fetcher: ObjectFetcher, network: Network, settings: PipelineSettings = PipelineSettings()):
        self._fetcher, self._net, self._cfg = fetcher, network, settings

    def run(self, ep: Endpoint, bucket: str, names: list[str], spool: Path, *, study_uid: str, where: str,
            wanted: Optional[set[str]], excluded: set[str], transfer_syntax: Optional[str],
            query_held: bool, sent: set[str], known: dict[str, Optional[Instance]], job_id: str, tally: Tally,
            on_stored: Callable[[Instance], None] = lambda i: None,
            on_fetched: Callable[[], None] = lambda: None) -> Tally:
        """Fetch ``names`` from ``bucket`` and C-STORE the instances the job sends. ``sent`` (SOP
        Instance UIDs stored by earlier attempts) and ``known`` (object name -> identity, None =
        not DICOM) are the job's memory across attempts and are updated in place, as is ``tally``
        (so a caller has the counts when the attempt fails). Raises the error that ended the
        attempt (FetchError/DimseError) after every worker stopped."""
        cfg, lock = self._cfg, threading.Lock()
        for inst in known.values():
            if inst is not None:
                tally.found[inst.sop_instance_uid] = inst
        spooled: queue.Queue = queue.Queue(maxsize=cfg.spool_files)
        stop, fetched, held_ready = threading.Event(), threading.Event(), threading.Event()
        errors: list[Exception] = []
        claimed: set[str] = set()  # queued this attempt: each SOP Instance UID once
        spool.mkdir(parents=True, exist_ok=True)

        def fail(e: Exception) -> None:
            with lock:
                errors.append(e)
            stop.set()

        def put(inst: Instance) -> None:
            while True:
                if stop.is_set():
                    raise _Stop
                try:
                    spooled.put(inst, timeout=_POLL)
                    return
                except queue.Full:
                    continue

        # -- C-FIND, once the first instance to send is known, beside the next downloads ----------
        find_started = threading.Lock()

        def start_find() -> None:
            if find_started.acquire(blocking=False):  # once per attempt; never when nothing is to be sent
                threading.Thread(target=find, name="cfind", daemon=True).start()

        def find() -> None:
            try:
                if query_held:
                    tally.held = self._net.held_instances(ep, study_uid)
            except CFindFailed as e:
                # Seed 000 Troubleshooting, "C-FIND failed and no fallback push occurred": any
                # C-FIND failure falls back to sending everything, and the result says so.
                tally.fallback = e.reason
                log.warning("C-FIND failed; sending every instance", extra={"job_id": job_id, "why": e.reason})
            except Exception as e:  # noqa: BLE001 - CannotConnect and the like end the attempt
                fail(e)
            finally:
                held_ready.set()

        # -- fetch workers ---------------------------------------------------------------------
        def fetch_one(i_name: tuple[int, str]) -> None:
            i, name = i_name
            if stop.is_set():
                return
            inst = known.get(name)
            if inst is not None and inst.sop_instance_uid in sent:
                return  # stored by an earlier attempt: not downloaded again
            try:
                path = self._fetcher.download(bucket, name, spool / f"{i:06d}.dcm")
                inst = read_instance(path)
                if inst is None:
                    log.warning("skipping a file that is not DICOM Part 10", extra={"job_id": job_id, "file": path.name})
                    path.unlink(missing_ok=True)
                    with lock:
                        known[name] = None
                        tally.not_dicom += 1
                    return
                if inst.study_instance_uid != study_uid:
                    path.unlink(missing_ok=True)
                    with lock:
                        tally.foreign += 1
                    # ARCHITECTURE rule 9: an archive only ever receives the job's own study. A file
                    # of another study (or none) in the study's storage is the platform's error: the
                    # attempt stops at once, it is never sent, and retrying cannot fix it. The reason
                    # names counts and the prefix (ids only), never a file's patient data.
                    raise FetchError(f"a file under {where} belongs to another study", retryable=False)
                with lock:
                    known[name] = inst
                    tally.found[inst.sop_instance_uid] = inst
                on_fetched()  # progress while a long download runs (issue 13 item 3)
                with lock:
                    skip = (inst.sop_instance_uid in claimed or inst.sop_instance_uid in sent
                            or (wanted is not None and inst.sop_instance_uid not in wanted)
                            or inst.sop_class_uid in excluded)
                    if not skip:
                        claimed.add(inst.sop_instance_uid)
                if skip:
                    path.unlink(missing_ok=True)
                    return
                start_find()
                put(inst)
            except _Stop:
                return
            except Exception as e:  # noqa: BLE001 - FetchError, or a bug: either ends the attempt
                fail(e)

        def fetch_all() -> None:
            try:
                with ThreadPoolExecutor(max_workers=max(1, min(cfg.fetchers, len(names))),
                                        thread_name_prefix="fetch") as pool:
                    list(pool.map(fetch_one, enumerate(names)))
            finally:
                fetched.set()

        # -- store associations --------------------------------------------------------------
        keys: list = []  # presentation contexts seen so far, shared: a new association proposes them all

        def sender() -> None:
            assoc, proposed = None, set()
            try:
                while not stop.is_set():
                    try:
                        inst = spooled.get(timeout=_POLL)
                    except queue.Empty:
                        if fetched.is_set() and spooled.empty():
                            return
                        continue
                    try:
                        while not held_ready.wait(_POLL):  # what the archive holds is not sent
                            if stop.is_set():
                                return
                        if stop.is_set():
                            return
                        uid = inst.sop_instance_uid
                        if uid in tally.held:
                            continue
                        key = context_key(inst, transfer_syntax)
                        if key not in proposed:  # a SOP class/syntax this association did not propose
                            with lock:
                                if key not in keys:
                                    keys.append(key)
                                # this one first, then as many seen so far as fit (PS3.8: 128 contexts)
                                want = next(iter(_batches([key] + [k for k in keys if k != key])))
                            if assoc is not None:
                                _release(assoc)
                            assoc = self._net.open_store(ep, proposed_contexts(want))
                            proposed = set(want)
                        failure = self._net.store_one(assoc, ep, inst, key[1])
                        with lock:
                            if failure is None:
                                sent.add(uid)
                                tally.sent_now.add(uid)
                            else:
                                tally.failed[uid] = failure[0]
                                if failure[1]:
                                    tally.permanent.add(uid)
                        if failure is None:
                            on_stored(inst)
                    finally:
                        Path(inst.path).unlink(missing_ok=True)
            except Exception as e:  # noqa: BLE001 - DimseError (association lost, rejected) ends the attempt
                fail(e)
            finally:
                if assoc is not None:
                    try:
                        _release(assoc)
                    except Exception:  # noqa: BLE001 - releasing a broken association
                        pass

        threads = [threading.Thread(target=fetch_all, name="fetch-all", daemon=True)]
        threads += [threading.Thread(target=sender, name=f"store-{n}", daemon=True) for n in range(max(1, cfg.associations))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if find_started.locked():
            held_ready.wait()  # the C-FIND thread ends by itself (DIMSE timeout at worst)
        while not spooled.empty():  # stopped early: what was spooled and not sent goes
            Path(spooled.get_nowait().path).unlink(missing_ok=True)
        if errors:  # a permanent cause (a file of another study) outranks the errors it caused
            raise next((e for e in errors if getattr(e, "retryable", True) is False), errors[0])
        return tally

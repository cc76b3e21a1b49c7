"""DICOM network work against one destination (pynetdicom): C-FIND what the archive already holds,
C-STORE the rest, request Storage Commitment. Every failure becomes a ``DimseError`` whose reason
is what an administrator needs to fix it (association rejected and why, C-STORE status, timeout)."""
from __future__ import annotations

import logging
import threading
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional

from gateway_agent.storescu import (AssociationFailed, AssociationLost, StoreAssociation, context_for,
                                   open_association)
from gateway_agent.transcode import TranscodeRefused, choose, convert, proposals, syntax_name

log = logging.getLogger("gateway_agent.dimse")

STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
STORAGE_COMMITMENT = "1.2.840.10008.1.20.1"
STORAGE_COMMITMENT_INSTANCE = "1.2.840.10008.1.20.1.1"  # well-known SOP instance, PS3.4 J.3.1
IMPLICIT_LE, EXPLICIT_LE = "1.2.840.10008.1.2", "1.2.840.10008.1.2.1"
UNCOMPRESSED = {IMPLICIT_LE, EXPLICIT_LE, "1.2.840.10008.1.2.2"}
MAX_CONTEXTS = 120  # PS3.8: at most 128 presentation contexts per association

# PS3.4 Annex B.2.3 / C.4.1.1.4 status meanings, for reasons an administrator can act on.
STATUS_TEXT = {
    0x0122: "SOP class not supported", 0x0124: "not authorized", 0x0210: "duplicate invocation",
    0x0211: "unrecognized operation", 0x0212: "mistyped argument", 0xA700: "out of resources",
    0xA900: "data set does not match SOP class", 0xC000: "cannot understand", 0xA801: "move destination unknown",
    0xB000: "coercion of data elements", 0xB006: "elements discarded", 0xB007: "data set does not match SOP class (warning)",
    0x0110: "processing failure", 0x0112: "no such object instance", 0x0119: "class-instance conflict",
    0x0131: "duplicate transaction UID",
}


class DimseError(Exception):
    def __init__(self, reason: str, retryable: bool = True):
        super().__init__(reason)
        self.reason, self.retryable = reason, retryable


class NoAcceptedContext(DimseError):
    """The archive accepted the association but none of the proposed presentation contexts."""


class CannotConnect(DimseError):
    """No TCP connection to the archive (refused or timed out): no DIMSE service can work."""


class CFindFailed(DimseError):
    """The archive could not say what it holds (seed 000 Troubleshooting: "C-FIND failed and no
    fallback push occurred"): the job falls back to sending every instance."""


def status_text(code: int) -> str:
    text = STATUS_TEXT.get(code) or STATUS_TEXT.get(code & 0xFF00) or (
        "out of resources" if code & 0xFF00 == 0xA700 else "refused" if code & 0xF000 == 0xA000 else "error")
    return f"0x{code:04X} ({text})"


def is_stored(code: int) -> bool:
    # Success and the Warning statuses of PS3.4 B.2.3 (0xB000, 0xB006, 0xB007): the archive kept it.
    return code == 0x0000 or code & 0xF000 == 0xB000


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int
    called_ae_title: str
    calling_ae_title: str

    @classmethod
    def of(cls, destination: dict) -> "Endpoint":
        return cls(destination["host"], destination["port"], destination["called_ae_title"], destination["calling_ae_title"])

    def __str__(self) -> str:
        return f"{self.called_ae_title}@{self.host}:{self.port}"


@dataclass(frozen=True)
class Instance:
    sop_class_uid: str
    sop_instance_uid: str
    series_instance_uid: str
    transfer_syntax_uid: str
    path: object  # pathlib.Path of the Part-10 file
    study_instance_uid: str = ""


@dataclass
class StoreReport:
    sent: list[Instance] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # sop instance uid -> reason
    permanent: set[str] = field(default_factory=set)  # failed ones a retry cannot change (refused conversions)


class Network:
    def __init__(self, dimse_timeout: float = 30.0, network_timeout: float = 10.0, acse_timeout: float = 10.0):
        self._timeouts = (dimse_timeout, network_timeout, acse_timeout)

    def _ae(self, calling: str):
        ae = _fast_ae_class()(ae_title=calling)
        ae.dimse_timeout, ae.network_timeout, ae.acse_timeout = self._timeouts
        ae.maximum_pdu_size = 0  # no limit: fewer P-DATA fragments for large images
        return ae

    def associate(self, ep: Endpoint, contexts: Iterable[tuple[str, list[str]]], handlers: Optional[list] = None):
        """An established association, or DimseError saying precisely why not."""
        from pynetdicom import evt

        ae = self._ae(ep.calling_ae_title)
        for abstract, syntaxes in contexts:
            ae.add_requested_context(abstract, syntaxes)
        seen: dict = {}

        def on_open(event) -> None:
            seen["connected"] = True

        def on_acse(event) -> None:
            p = event.primitive
            result = getattr(p, "result", None)
            if result in (1, 2):
                seen["reject"] = p
            elif result == 0:
                seen["accepted"] = True

        watch = [(evt.EVT_CONN_OPEN, on_open), (evt.EVT_ACSE_RECV, on_acse)]
        assoc = ae.associate(ep.host, ep.port, ae_title=ep.called_ae_title, evt_handlers=watch + list(handlers or []))
        if assoc.is_established:
            return assoc
        kind = ("rejected" if "reject" in seen else "no-context" if seen.get("accepted")  # accepted, then aborted
                else "aborted" if seen.get("connected") else "connect")
        raise _association_error(ep, kind, seen.get("reject"))

    def open_store(self, ep: Endpoint, contexts: Iterable[tuple[str, list[str]]]) -> StoreAssociation:
        """An association for C-STOREs only (gateway_agent/storescu.py: synchronous, no reactor
        threads, data sets sent as encoded in their files), or DimseError saying why not."""
        dimse_timeout, network_timeout, acse_timeout = self._timeouts
        try:
            return open_association(ep.host, ep.port, ep.calling_ae_title, ep.called_ae_title, list(contexts),
                                    network_timeout=network_timeout, acse_timeout=acse_timeout,
                                    dimse_timeout=dimse_timeout)
        except AssociationFailed as e:
            raise _association_error(ep, e.kind, e.reject) from None

    # -- C-FIND -----------------------------------------------------------------------------
    def held_instances(self, ep: Endpoint, study_uid: str) -> set[str]:
        """SOP instance UIDs of the study the archive already holds (Study Root, SERIES then IMAGE
        level: hierarchical queries every archive answers).

        Raises CFindFailed when the query itself fails: association rejected, no Study Root
        Query/Retrieve context accepted, no response within the DIMSE timeout or the association
        aborted, or a failure status. The caller then sends everything (a C-STORE of an instance
        the archive holds is harmless). CannotConnect (no TCP connection) is raised as it is: no
        C-STORE could reach the archive either, so the attempt fails and is retried."""
        from pydicom.dataset import Dataset

        try:
            assoc = self.associate(ep, [(STUDY_ROOT_FIND, [EXPLICIT_LE, IMPLICIT_LE])])
        except NoAcceptedContext:
            raise CFindFailed(f"{ep} accepted no Study Root Query/Retrieve context") from None
        except CannotConnect:
            raise
        except DimseError as e:  # rejected, or aborted during negotiation
            raise CFindFailed(e.reason) from None
        try:
            def find(level: str, **keys) -> list:
                q = Dataset()
                q.QueryRetrieveLevel = level
                q.StudyInstanceUID = study_uid
                q.SeriesInstanceUID = keys.get("series", "")
                if level == "IMAGE":
                    q.SOPInstanceUID = ""
                rows = []
                try:
                    for status, ident in assoc.send_c_find(q, STUDY_ROOT_FIND):
                        code = getattr(status, "Status", None)
                        if code is None:
                            raise CFindFailed(f"no {level} C-FIND response from {ep} within the DIMSE timeout, "
                                              "or the association was aborted")
                        if code in (0xFF00, 0xFF01):
                            if ident is not None:
                                rows.append(ident)
                        elif code != 0x0000:  # failure (A700, A900, Cxxx) or cancel (FE00), PS3.4 C.4.1.1.4
                            raise CFindFailed(f"{level} C-FIND to {ep} answered status {status_text(code)}")
                except (RuntimeError, ValueError) as e:  # association gone, or no usable context
                    raise CFindFailed(f"{level} C-FIND to {ep} could not be sent ({type(e).__name__})") from None
                return rows

            held: set[str] = set()
            for series in find("SERIES"):
                images = find("IMAGE", series=str(series.get("SeriesInstanceUID", "")))
                held.update(str(i.get("SOPInstanceUID", "")) for i in images)
            held.discard("")
            return held
        finally:
            _release(assoc)

    # -- C-STORE ----------------------------------------------------------------------------
    def store(self, ep: Endpoint, instances: list[Instance], transfer_syntax: Optional[str],
              on_stored: Callable[[Instance], None] = lambda i: None) -> StoreReport:
        """C-STORE each instance on one association at a time (the job path overlaps fetching and
        uses several associations: gateway_agent/pipeline.py). Contexts (``context_key``,
        gateway_agent/transcode.py): the destination's transfer syntax only when it names one, else
        each file's own syntax and the uncompressed ones as separate contexts, used in that order; a
        file is converted (losslessly, same SOP Instance UID) when the accepted context is not its
        own syntax."""
        report = StoreReport()
        plan: dict[tuple[str, tuple[tuple[str, ...], ...]], list[Instance]] = defaultdict(list)
        for inst in instances:
            plan[context_key(inst, transfer_syntax)].append(inst)
        for batch in _batches(list(plan)):
            assoc = self.open_store(ep, proposed_contexts(batch))
            try:
                for k in batch:
                    for inst in plan[k]:
                        self._store_one(assoc, ep, inst, report, on_stored, k[1])
            finally:
                _release(assoc)
        return report

    def store_one(self, assoc: StoreAssociation, ep: Endpoint, inst: Instance,
                  offers: tuple[tuple[str, ...], ...]) -> Optional[tuple[str, bool]]:
        """C-STORE one instance on an open association that proposed ``offers`` for it: None when
        the archive kept it, else (the reason it did not, whether that is permanent). Raises
        DimseError when the association is gone (the attempt fails; a retry resends only what
        was not stored)."""
        report = StoreReport()
        self._store_one(assoc, ep, inst, report, lambda i: None, offers)
        reason = report.failed.get(inst.sop_instance_uid)
        return None if reason is None else (reason, inst.sop_instance_uid in report.permanent)

    def _store_one(self, assoc: StoreAssociation, ep: Endpoint, inst: Instance, report: StoreReport, on_stored,
                   offers: tuple[tuple[str, ...], ...] = ()) -> None:
        if not assoc.is_established:
            raise DimseError(f"Association with {ep} aborted during C-STORE")
        own, path, converted = inst.transfer_syntax_uid, inst.path, None
        accepted = [cx.transfer_syntax[0] for cx in assoc.accepted_contexts if cx.abstract_syntax == inst.sop_class_uid]
        target = choose(own, offers, accepted) if offers else own
        context = context_for(assoc, inst.sop_class_uid, target) if target is not None else None
        if context is None:
            report.failed[inst.sop_instance_uid] = (f"not accepted by {ep}: no presentation context for SOP class "
                                                   f"{inst.sop_class_uid} in {syntax_name(target or own)}")[:300]
            return
        if target != own:
            try:
                path = converted = convert(Path(inst.path), target, Path(inst.path).parent / "transcoded")
            except TranscodeRefused as e:
                report.failed[inst.sop_instance_uid] = (f"stored as {syntax_name(own)}, {ep} accepts "
                                                       f"{syntax_name(target)}: {e.reason}")[:500]
                report.permanent.add(inst.sop_instance_uid)
                return
        try:
            status = assoc.send_c_store(Path(path), context, inst.sop_class_uid, inst.sop_instance_uid)
        except AssociationLost:
            # The archive aborted or closed the association, or gave no response within the DIMSE
            # timeout (it went away mid-study): the attempt fails, retryable, and the next one
            # resends only what is missing (C-FIND).
            raise DimseError(f"Association with {ep} aborted during C-STORE, or no response within the "
                             "DIMSE timeout") from None
        finally:
            if converted is not None:
                converted.unlink(missing_ok=True)
        if is_stored(status.status):
            report.sent.append(inst)
            on_stored(inst)
        else:
            comment = f": {status.error_comment}" if status.error_comment else ""
            report.failed[inst.sop_instance_uid] = f"C-STORE status {status_text(status.status)}{comment}"[:300]

    # -- Storage Commitment (PS3.4 Annex J) ---------------------------------------------------
    def request_commitment(self, ep: Endpoint, transaction_uid: str, refs: list[tuple[str, str]],
                           on_report: Callable) -> object:
        """Send the N-ACTION; returns the open association (reports may arrive on it) for the
        caller to release once the N-EVENT-REPORT is in."""
        from pydicom.dataset import Dataset
        from pynetdicom import evt

        ds = Dataset()
        ds.TransactionUID = transaction_uid
        items = []
        for sop_class, sop_instance in refs:
            item = Dataset()
            item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = sop_class, sop_instance
            items.append(item)
        ds.ReferencedSOPSequence = items
        try:
            assoc = self.associate(ep, [(STORAGE_COMMITMENT, [EXPLICIT_LE, IMPLICIT_LE])],
                                   handlers=[(evt.EVT_N_EVENT_REPORT, on_report)])
        except NoAcceptedContext:
            raise DimseError(f"{ep} does not accept Storage Commitment Push Model", retryable=False) from None
        status, _ = assoc.send_n_action(ds, 1, STORAGE_COMMITMENT, STORAGE_COMMITMENT_INSTANCE)
        code = getattr(status, "Status", None)
        if code != 0x0000:
            _release(assoc)
            raise DimseError(f"Storage Commitment N-ACTION refused by {ep}: "
                             + (status_text(code) if code is not None else "no response"))
        return assoc


def context_key(inst: Instance, transfer_syntax: Optional[str]) -> tuple[str, tuple[tuple[str, ...], ...]]:
    """(SOP class, the transfer-syntax offers to propose for it, in the order they are to be used):
    gateway_agent/transcode.py ``proposals``. Instances with equal keys share contexts."""
    return inst.sop_class_uid, tuple(proposals(inst.transfer_syntax_uid, transfer_syntax))


def proposed_contexts(keys: Iterable[tuple[str, tuple[tuple[str, ...], ...]]]) -> list[tuple[str, list[str]]]:
    """The presentation contexts an association proposes for ``keys`` (each offer its own context)."""
    return [(abstract, list(offer)) for abstract, offer in dict.fromkeys((k[0], o) for k in keys for o in k[1])]


_FAST_AE = None


def _fast_ae_class():
    """pynetdicom's AE with Nagle's algorithm off on its sockets: each PDU is sent at once instead
    of waiting for the peer's delayed ACK (~40-100 ms per C-STORE otherwise; measured by
    scripts/benchmark_agent.py)."""
    global _FAST_AE
    if _FAST_AE is None:
        import socket

        from pynetdicom import AE

        class FastAE(AE):
            def _create_socket(self, assoc, address, tls_args):
                sock = super()._create_socket(assoc, address, tls_args)
                sock.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                return sock

        _FAST_AE = FastAE
    return _FAST_AE


def _batches(keys: list) -> Iterable[list]:
    """Plan keys grouped so that one association proposes at most MAX_CONTEXTS distinct contexts."""
    batch: list = []
    contexts: set = set()
    for k in keys:
        new = {(k[0], offer) for offer in k[1]} - contexts
        if batch and len(contexts) + len(new) > MAX_CONTEXTS:
            yield batch
            batch, contexts, new = [], set(), {(k[0], offer) for offer in k[1]}
        batch.append(k)
        contexts |= new
    if batch:
        yield batch


def _release(assoc) -> None:
    if assoc.is_established:
        assoc.release()


def _association_error(ep: Endpoint, kind: str, rj=None) -> DimseError:
    """Why an association was not established, as an administrator can act on it. ``rj``: the
    A-ASSOCIATE-RJ primitive (PS3.8 7.1.1.9-10: result 1 is permanent, 2 transient)."""
    if kind == "rejected":
        return DimseError(f"Association rejected by {ep}: {rj.reason_str} (A-ASSOCIATE-RJ result {rj.result} "
                          f"'{rj.result_str}', source {rj.result_source} '{rj.source_str}', reason {rj.diagnostic})",
                          retryable=rj.result != 1)
    if kind == "no-context":
        return NoAcceptedContext(f"{ep} accepted none of the proposed presentation contexts", retryable=False)
    if kind == "connect":
        return CannotConnect(f"Cannot connect to {ep}: connection refused or timed out", retryable=True)
    return DimseError(f"Association with {ep} not established: aborted by the peer or no answer within the "
                      "ACSE timeout", retryable=True)


class CommitmentWaiter:
    """Collects N-EVENT-REPORTs by Transaction UID, from the sending association or from the
    agent's listener (a new association opened by the archive)."""

    def __init__(self):
        self._cond = threading.Condition()
        self._reports: dict[str, tuple[set[str], dict[str, int]]] = {}
        self.reports_received = 0

    def handle(self, event) -> tuple[int, None]:
        """pynetdicom EVT_N_EVENT_REPORT handler: record the outcome, answer Success."""
        info = event.event_information
        uid = str(info.get("TransactionUID", ""))
        ok = {str(i.ReferencedSOPInstanceUID) for i in info.get("ReferencedSOPSequence", [])}
        failed = {str(i.ReferencedSOPInstanceUID): int(i.get("FailureReason", 0x0110)) for i in info.get("FailedSOPSequence", [])}
        with self._cond:
            self._reports[uid] = (ok, failed)
            self.reports_received += 1
            self._cond.notify_all()
        return 0x0000, None

    def wait(self, transaction_uid: str, timeout: float) -> Optional[tuple[set[str], dict[str, int]]]:
        with self._cond:
            self._cond.wait_for(lambda: transaction_uid in self._reports, timeout=timeout)
            return self._reports.pop(transaction_uid, None)


class CommitmentListener:
    """The agent's own SCP for N-EVENT-REPORTs sent on a new association (PS3.4 J.3.3.1: the SCP
    of storage commitment opens it as requestor in the SCP role)."""

    def __init__(self, waiter: CommitmentWaiter, ae_title: str, host: str, port: int):
        self._waiter, self._ae_title, self._addr = waiter, ae_title, (host, port)
        self._server = None

    def start(self) -> "CommitmentListener":
        from pynetdicom import AE, evt

        ae = AE(ae_title=self._ae_title)
        ae.require_called_aet = False  # the archive calls us by the destination's calling AE title
        ae.add_supported_context(STORAGE_COMMITMENT, [EXPLICIT_LE, IMPLICIT_LE], scu_role=False, scp_role=True)
        self._server = ae.start_server(self._addr, block=False, evt_handlers=[(evt.EVT_N_EVENT_REPORT, self._waiter.handle)])
        return self

    @property
    def port(self) -> int:
        return self._server.server_address[1] if self._server else 0

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server = None

"""An embedded DICOM archive for the local run and the agent's tests: a pynetdicom SCP for Storage
(every storage SOP class, every transfer syntax), Study Root C-FIND (SERIES and IMAGE level) and
Storage Commitment Push Model, which it reports asynchronously on a new association to the
requesting AE, as Orthanc does. ``fail_store_with`` makes C-STORE answer an error status;
``find_fails`` makes C-FIND fail in one of the ways real archives do (see FIND_FAILURES)."""
from __future__ import annotations

import threading
import time
from typing import Optional

from pydicom.dataset import Dataset

STORAGE_COMMITMENT = "1.2.840.10008.1.20.1"
STORAGE_COMMITMENT_INSTANCE = "1.2.840.10008.1.20.1.1"
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
# How C-FIND can fail: A-ASSOCIATE-RJ for an association proposing Query/Retrieve (an archive
# that lets this AE store but not query); a failure status; no response (the SCU's DIMSE timeout);
# an A-ABORT in the middle of the query.
FIND_FAILURES = ("reject", "status", "timeout", "abort")


class EmbeddedArchive:
    def __init__(self, ae_title: str = "ARCHIVE", host: str = "127.0.0.1", port: int = 0,
                 peers: Optional[dict[str, tuple[str, int]]] = None, query: bool = True, commitment: bool = True,
                 storage_syntaxes: Optional[list[str]] = None, keep_pixels: bool = False):
        self.ae_title, self._addr = ae_title, (host, port)
        self.storage_syntaxes = storage_syntaxes  # None: every transfer syntax; else only these
        self.keep_pixels = keep_pixels  # True: keep each received data set whole (with its transfer syntax)
        self.received: dict[str, Dataset] = {}
        self.query, self.commitment = query, commitment  # False: a store-only archive
        self.peers = dict(peers or {})  # calling AE title -> where to send commitment reports
        self.instances: dict[str, Dataset] = {}  # SOP instance UID -> data set (no pixel copies kept)
        self.transfer_syntaxes: dict[str, str] = {}
        self.stores = 0
        self.stores_by_uid: dict[str, int] = {}  # C-STOREs taken per SOP Instance UID (stored exactly once?)
        self.fail_store_with: Optional[int] = None
        self.find_fails: Optional[str] = None  # one of FIND_FAILURES
        self.find_status = 0xC000  # the failure status of find_fails="status" ("unable to process")
        self._stopping = threading.Event()  # releases C-FIND handlers held by find_fails="timeout"
        self.commit_refuse: set[str] = set()  # SOP instance UIDs it will not commit to
        self._lock = threading.Lock()
        self._server = None

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> "EmbeddedArchive":
        from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt

        ae = AE(ae_title=self.ae_title)
        ae.require_called_aet = True  # a wrong called AE title is rejected, as real archives do
        ae.maximum_pdu_size = 0
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax, self.storage_syntaxes or ALL_TRANSFER_SYNTAXES)
        if self.query:
            ae.add_supported_context(STUDY_ROOT_FIND)
        if self.commitment:
            ae.add_supported_context(STORAGE_COMMITMENT)
        ae.add_supported_context("1.2.840.10008.1.1")  # Verification
        handlers = [(evt.EVT_C_STORE, self._on_store), (evt.EVT_C_FIND, self._on_find), (evt.EVT_N_ACTION, self._on_action),
                    (evt.EVT_REQUESTED, self._on_requested)]
        self._server = ae.start_server(self._addr, block=False, evt_handlers=handlers)
        return self

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def stop(self) -> None:
        """The archive goes away: open associations are aborted and new ones refused (its
        instances stay, as on a real archive's disk)."""
        self._stopping.set()
        if self._server:
            self._addr = (self._addr[0], self.port)  # a restart comes back on the same port
            for assoc in self._server.active_associations:
                assoc.abort()
            self._server.shutdown()
            self._server = None

    def restart(self) -> "EmbeddedArchive":
        self._stopping.clear()
        return self.start()

    def study(self, study_uid: str) -> set[str]:
        with self._lock:
            return {uid for uid, ds in self.instances.items() if ds.StudyInstanceUID == study_uid}

    # -- services ---------------------------------------------------------------------------
    def _on_store(self, event) -> int:
        if self.fail_store_with is not None:
            return self.fail_store_with
        ds = event.dataset
        header = Dataset()
        for kw in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
            setattr(header, kw, getattr(ds, kw))
        with self._lock:
            self.instances[str(ds.SOPInstanceUID)] = header
            self.transfer_syntaxes[str(ds.SOPInstanceUID)] = str(event.context.transfer_syntax)
            if self.keep_pixels:
                ds.file_meta = event.file_meta
                self.received[str(ds.SOPInstanceUID)] = ds
            self.stores += 1
            uid = str(ds.SOPInstanceUID)
            self.stores_by_uid[uid] = self.stores_by_uid.get(uid, 0) + 1
        return 0x0000

    def _on_requested(self, event) -> None:
        """pynetdicom lets an EVT_REQUESTED handler answer A-ASSOCIATE-RJ before negotiation."""
        proposed = event.assoc.requestor.primitive.presentation_context_definition_list
        if self.find_fails == "reject" and any(cx.abstract_syntax == STUDY_ROOT_FIND for cx in proposed):
            event.assoc.acse.send_reject(0x01, 0x01, 0x01)  # rejected-permanent, service user, no reason given
            event.assoc.kill()  # as pynetdicom's own rejections: lets the A-ASSOCIATE-RJ out before the socket closes

    def _on_find(self, event):
        if self.find_fails == "status":
            yield self.find_status, None
            return
        if self.find_fails == "timeout":
            self._stopping.wait()
            return
        if self.find_fails == "abort":
            event.assoc.abort()
            return
        q = event.identifier
        level = str(q.get("QueryRetrieveLevel", ""))
        with self._lock:
            rows = [ds for ds in self.instances.values() if ds.StudyInstanceUID == q.get("StudyInstanceUID")]
        if level == "SERIES":
            for series in sorted({str(ds.SeriesInstanceUID) for ds in rows}):
                out = Dataset()
                out.QueryRetrieveLevel, out.StudyInstanceUID, out.SeriesInstanceUID = "SERIES", q.StudyInstanceUID, series
                yield 0xFF00, out
        elif level == "IMAGE":
            for ds in rows:
                if q.get("SeriesInstanceUID") and ds.SeriesInstanceUID != q.SeriesInstanceUID:
                    continue
                out = Dataset()
                out.QueryRetrieveLevel, out.StudyInstanceUID = "IMAGE", ds.StudyInstanceUID
                out.SeriesInstanceUID, out.SOPInstanceUID = ds.SeriesInstanceUID, ds.SOPInstanceUID
                yield 0xFF00, out
        else:
            yield 0xA900, None
            return

    def _on_action(self, event):
        req = event.action_information
        peer = self.peers.get(event.assoc.requestor.ae_title)
        if peer is None:
            return 0x0110, None
        refs = [(str(i.ReferencedSOPClassUID), str(i.ReferencedSOPInstanceUID)) for i in req.ReferencedSOPSequence]
        threading.Thread(target=self._report, args=(str(req.TransactionUID), refs, event.assoc.requestor.ae_title, peer),
                         daemon=True).start()
        return 0x0000, None

    def _report(self, transaction_uid: str, refs: list[tuple[str, str]], calling: str, peer: tuple[str, int]) -> None:
        """PS3.4 J.3.3: the N-EVENT-REPORT, on a new association in which we take the SCP role."""
        from pynetdicom import AE, build_role

        time.sleep(0.05)  # after the N-ACTION response has gone out
        with self._lock:
            held = set(self.instances) - self.commit_refuse
        ok = [r for r in refs if r[1] in held]
        bad = [r for r in refs if r[1] not in held]
        ds = Dataset()
        ds.TransactionUID = transaction_uid
        ds.ReferencedSOPSequence = [_ref(c, i) for c, i in ok]
        if bad:
            ds.FailedSOPSequence = [_ref(c, i, failure=0x0112) for c, i in bad]
        ae = AE(ae_title=self.ae_title)
        ae.add_requested_context(STORAGE_COMMITMENT)
        assoc = ae.associate(peer[0], peer[1], ae_title=calling, ext_neg=[build_role(STORAGE_COMMITMENT, scp_role=True)])
        if assoc.is_established:
            assoc.send_n_event_report(ds, 2 if bad else 1, STORAGE_COMMITMENT, STORAGE_COMMITMENT_INSTANCE)
            assoc.release()


def _ref(sop_class: str, sop_instance: str, failure: Optional[int] = None) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = sop_class, sop_instance
    if failure is not None:
        item.FailureReason = failure
    return item

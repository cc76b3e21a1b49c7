"""A lean, synchronous Storage SCU association for the send path (issue 13 item 1).

Why not pynetdicom's ``Association`` for C-STORE: its requestor runs two polling threads per
association (DUL and reactor, 1 ms loops) and encodes every command set and PDU through pydicom's
writer. Profiled on one association (docs/gateway-agent.md "Send pipeline"): 8.9 ms per instance,
3.5 ms of it CPU in the agent, more than dcmtk storescu's whole 3.3 ms. Here one thread does
blocking socket I/O: the A-ASSOCIATE-RQ/AC/RJ PDUs are still encoded and decoded by pynetdicom's
PDU classes (PS3.8 9.3.2-9.3.4), the C-STORE-RQ command set is a fixed Implicit VR Little Endian
layout (PS3.7 9.3.1.1, E.1), and the data set goes as the file's own encoded bytes, read after its
File Meta Information (PS3.10 7.1), never decoded. C-FIND and Storage Commitment keep pynetdicom.

Operations are synchronous (no Asynchronous Operations Window is proposed, PS3.7 D.3.3.3), so one
association has exactly one C-STORE outstanding, as storescu does; parallelism comes from several
associations (gateway_agent/pipeline.py)."""
from __future__ import annotations

import io
import socket
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Optional

from gateway_agent.part10 import HEAD, dataset_offset

# PS3.8 9.3.1: PDU types
_AC, _RJ, _PDATA, _RELEASE_RQ, _RELEASE_RP, _ABORT = 0x02, 0x03, 0x04, 0x05, 0x06, 0x07
_APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"  # PS3.7 A.2.1
_MAX_RECEIVE = 65536  # what we accept per P-DATA-TF: C-STORE responses are a few hundred bytes
_CHUNK = 1 << 20  # largest P-DATA-TF we send when the archive sets no maximum (0 = unlimited)
_STATUS, _MESSAGE_ID_RSP, _ERROR_COMMENT, _COMMAND_FIELD = 0x0900, 0x0120, 0x0902, 0x0100
C_STORE_RSP = 0x8001


class AssociationFailed(Exception):
    """The association was not established. ``kind``: 'connect' (no TCP connection), 'rejected'
    (A-ASSOCIATE-RJ, ``reject`` holds the decoded primitive), 'no-context' (accepted, but no
    proposed presentation context), 'aborted' (A-ABORT, closed or no answer in time)."""

    def __init__(self, kind: str, reject=None):
        super().__init__(kind)
        self.kind, self.reject = kind, reject


class AssociationLost(Exception):
    """The association ended during a C-STORE: aborted, closed, or no response in time."""


@dataclass(frozen=True)
class AcceptedContext:
    context_id: int
    abstract_syntax: str
    transfer_syntax: tuple[str]  # one accepted syntax (as pynetdicom's PresentationContext lists it)
    as_scu: bool = True


@dataclass(frozen=True)
class StoreStatus:
    status: int
    error_comment: str = ""


def _pdu(pdu_type: int, body: bytes) -> bytes:
    return struct.pack(">BBI", pdu_type, 0, len(body)) + body


def _element(element: int, value: bytes) -> bytes:
    """A group 0000 element in Implicit VR Little Endian (PS3.7 6.3.1)."""
    if len(value) % 2:
        value += b"\0"  # UI values are padded with a NULL to even length (PS3.5 9.1)
    return struct.pack("<HHI", 0x0000, element, len(value)) + value


def c_store_rq(message_id: int, sop_class: str, sop_instance: str) -> bytes:
    """The C-STORE-RQ command set (PS3.7 9.3.1.1, Table 9.3-1), elements in ascending tag order."""
    body = b"".join((
        _element(0x0002, sop_class.encode("ascii")),
        _element(0x0100, struct.pack("<H", 0x0001)),  # Command Field: C-STORE-RQ
        _element(0x0110, struct.pack("<H", message_id)),
        _element(0x0700, struct.pack("<H", 0x0000)),  # Priority: MEDIUM
        _element(0x0800, struct.pack("<H", 0x0000)),  # Command Data Set Type: a data set follows
        _element(0x1000, sop_instance.encode("ascii")),
    ))
    return _element(0x0000, struct.pack("<I", len(body))) + body


def parse_command(data: bytes) -> dict[int, bytes]:
    """Element number -> value of a group 0000 command set (Implicit VR Little Endian)."""
    out, i = {}, 0
    while i + 8 <= len(data):
        group, element, length = struct.unpack_from("<HHI", data, i)
        i += 8
        if group == 0x0000:
            out[element] = data[i:i + length]
        i += length
    return out


class StoreAssociation:
    """One established association proposing only what ``open_association`` was given."""

    def __init__(self, sock: socket.socket, accepted: list[AcceptedContext], max_pdu: int, dimse_timeout: float):
        self._sock, self.accepted_contexts = sock, accepted
        self._max_pdu = max_pdu if max_pdu > 0 else _CHUNK + 6
        self._dimse_timeout = dimse_timeout
        self._message_id = 0
        self.is_established = True

    # -- DIMSE ------------------------------------------------------------------------------
    def send_c_store(self, path: Path, context: AcceptedContext, sop_class: str, sop_instance: str) -> StoreStatus:
        """C-STORE the file's data set, as encoded in the file, on ``context`` (whose transfer
        syntax must be the file's). Raises ValueError for a file that is not Part 10 (before
        anything is sent) and AssociationLost when the association ends first."""
        self._message_id = self._message_id % 0xFFFF + 1
        message_id = self._message_id
        with open(path, "rb") as f:
            f.seek(dataset_offset(f.read(HEAD)))
            try:
                self._sock.settimeout(self._dimse_timeout)
                self._send_pdvs(context.context_id, 0x01, io.BytesIO(c_store_rq(message_id, sop_class, sop_instance)))
                self._send_pdvs(context.context_id, 0x00, f)
                command = self._read_command()
            except (OSError, _PeerEnded) as e:  # socket.timeout is an OSError: no response in time
                self._close()
                raise AssociationLost(str(e) or type(e).__name__) from None
        if _ushort(command, _COMMAND_FIELD) != C_STORE_RSP or _ushort(command, _MESSAGE_ID_RSP) != message_id:
            self.abort()  # PS3.7 C.1.2: a response to another request is a protocol error
            raise AssociationLost("unexpected DIMSE response")
        comment = command.get(_ERROR_COMMENT, b"").rstrip(b"\0 ").decode("ascii", "replace")
        return StoreStatus(_ushort(command, _STATUS, 0xFFFF), comment)

    def _send_pdvs(self, context_id: int, control: int, data: BinaryIO) -> None:
        """P-DATA-TF PDUs of one PDV each (PS3.8 9.3.5, E.2): bit 0 of the control header marks a
        command, bit 1 the last fragment; ``data`` is read from where it stands to its end."""
        room = self._max_pdu - 6  # the PDU's variable field: PDV item length (4), context id (1), control (1)
        pending = data.read(room)
        for chunk in iter(lambda: data.read(room), b""):
            self._sock.sendall(self._pdv(context_id, control, pending))
            pending = chunk
        self._sock.sendall(self._pdv(context_id, control | 0x02, pending))

    @staticmethod
    def _pdv(context_id: int, control: int, fragment: bytes) -> bytes:
        return struct.pack(">BBIIBB", _PDATA, 0, len(fragment) + 6, len(fragment) + 2, context_id, control) + fragment

    def _read_command(self) -> dict[int, bytes]:
        fragments = []
        while True:
            pdu_type, body = _read_pdu(self._sock)
            if pdu_type != _PDATA:
                if pdu_type == _RELEASE_RQ:  # the peer wants to end it between operations: answer, then it is gone
                    self._sock.sendall(_pdu(_RELEASE_RP, b"\0" * 4))
                raise _PeerEnded(f"PDU type 0x{pdu_type:02X} instead of the C-STORE response")
            i = 0
            while i + 6 <= len(body):
                length, _cx, control = struct.unpack_from(">IBB", body, i)
                fragments.append(body[i + 6:i + 4 + length])
                i += 4 + length
                if control & 0x01 and control & 0x02:  # last fragment of a command
                    return parse_command(b"".join(fragments))

    # -- ending -----------------------------------------------------------------------------
    def release(self, timeout: float = 10.0) -> None:
        """A-RELEASE-RQ, then wait for A-RELEASE-RP (PS3.8 7.2); an abort if it does not come."""
        if not self.is_established:
            return
        try:
            self._sock.settimeout(timeout)
            self._sock.sendall(_pdu(_RELEASE_RQ, b"\0" * 4))
            while _read_pdu(self._sock)[0] not in (_RELEASE_RP, _ABORT):
                pass
        except (OSError, _PeerEnded):
            pass
        self._close()

    def abort(self) -> None:
        """A-ABORT from the service user (PS3.8 9.3.8: source 0, reason 0)."""
        if self.is_established:
            try:
                self._sock.sendall(_pdu(_ABORT, b"\0\0\0\0"))
            except OSError:
                pass
        self._close()

    def _close(self) -> None:
        self.is_established = False
        try:
            self._sock.close()
        except OSError:
            pass


class _PeerEnded(Exception):
    """The peer closed the connection, or sent a PDU other than the one expected."""


def _ushort(command: dict[int, bytes], element: int, default: int = 0) -> int:
    value = command.get(element)
    return struct.unpack("<H", value[:2])[0] if value and len(value) >= 2 else default


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        part = sock.recv(n - len(buf))
        if not part:
            raise _PeerEnded("connection closed by the peer")
        buf += part
    return bytes(buf)


def _read_pdu(sock: socket.socket) -> tuple[int, bytes]:
    pdu_type, _, length = struct.unpack(">BBI", _recv_exact(sock, 6))
    return pdu_type, _recv_exact(sock, length)


def open_association(host: str, port: int, calling: str, called: str, contexts: list[tuple[str, list[str]]],
                     *, network_timeout: float, acse_timeout: float, dimse_timeout: float) -> StoreAssociation:
    """Connect and negotiate (PS3.8 7.1): each (abstract syntax, transfer syntaxes) is one
    presentation context, ids 1, 3, 5, … (PS3.8 9.3.2.2: odd). Raises AssociationFailed."""
    from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION
    from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RJ, A_ASSOCIATE_RQ
    from pynetdicom.pdu_primitives import (A_ASSOCIATE, ImplementationClassUIDNotification,
                                           ImplementationVersionNameNotification, MaximumLengthNotification)
    from pynetdicom.presentation import PresentationContext

    rq = A_ASSOCIATE()
    rq.application_context_name = _APPLICATION_CONTEXT
    rq.calling_ae_title, rq.called_ae_title = calling, called
    proposed: dict[int, str] = {}
    definitions = []
    for n, (abstract, syntaxes) in enumerate(contexts):
        cx = PresentationContext()
        cx.context_id, cx.abstract_syntax, cx.transfer_syntax = 2 * n + 1, abstract, list(syntaxes)
        proposed[cx.context_id] = abstract
        definitions.append(cx)
    rq.presentation_context_definition_list = definitions
    max_length, impl_uid, impl_version = (MaximumLengthNotification(), ImplementationClassUIDNotification(),
                                          ImplementationVersionNameNotification())
    max_length.maximum_length_received = _MAX_RECEIVE
    impl_uid.implementation_class_uid = PYNETDICOM_IMPLEMENTATION_UID
    impl_version.implementation_version_name = PYNETDICOM_IMPLEMENTATION_VERSION
    rq.user_information = [max_length, impl_uid, impl_version]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(rq)

    try:
        sock = socket.create_connection((host, port), timeout=network_timeout)
    except OSError:
        raise AssociationFailed("connect") from None
    try:
        # Nagle off: each PDU leaves at once instead of waiting for the peer's delayed ACK.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(acse_timeout)  # PS3.8 9.1.5 ARTIM
        sock.sendall(pdu.encode())
        pdu_type, body = _read_pdu(sock)
    except (OSError, _PeerEnded):
        sock.close()
        raise AssociationFailed("aborted") from None
    raw = struct.pack(">BBI", pdu_type, 0, len(body)) + body
    if pdu_type == _RJ:
        sock.close()
        rj = A_ASSOCIATE_RJ()
        rj.decode(raw)
        raise AssociationFailed("rejected", rj.to_primitive())
    if pdu_type != _AC:
        sock.close()
        raise AssociationFailed("aborted")
    ac = A_ASSOCIATE_AC()
    ac.decode(raw)
    accepted_primitive = ac.to_primitive()
    accepted = [AcceptedContext(cx.context_id, proposed[cx.context_id], (str(cx.transfer_syntax[0]),))
                for cx in accepted_primitive.presentation_context_definition_results_list
                if cx.result == 0 and cx.context_id in proposed and cx.transfer_syntax]
    assoc = StoreAssociation(sock, accepted, accepted_primitive.maximum_length_received or 0, dimse_timeout)
    if not accepted:  # PS3.8 7.1.1.13: nothing to do on it
        assoc.abort()
        raise AssociationFailed("no-context")
    return assoc


def context_for(assoc: StoreAssociation, sop_class: str, transfer_syntax: str) -> Optional[AcceptedContext]:
    return next((cx for cx in assoc.accepted_contexts
                 if cx.abstract_syntax == sop_class and cx.transfer_syntax[0] == transfer_syntax), None)

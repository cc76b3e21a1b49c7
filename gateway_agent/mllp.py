"""HL7 v2 over MLLP (HL7 v2.5.1 Appendix C): send one message, read and check its ACK."""
from __future__ import annotations

import socket

START, END = b"\x0b", b"\x1c\x0d"


class Hl7Error(Exception):
    def __init__(self, reason: str, retryable: bool):
        super().__init__(reason)
        self.reason, self.retryable = reason, retryable


def frame(message: str) -> bytes:
    return START + message.replace("\r\n", "\r").replace("\n", "\r").encode("utf-8") + END


def _fields(segment: str) -> list[str]:
    return segment.split("|")


def check_ack(ack: str, control_id: str) -> None:
    """Raise unless MSA-1 is AA/CA for our message (HL7 2.5.1 section 2.14.8)."""
    segments = [s for s in ack.replace("\n", "\r").split("\r") if s]
    msa = next((_fields(s) for s in segments if s.startswith("MSA")), None)
    if msa is None or len(msa) < 2:
        raise Hl7Error("HL7 reply has no MSA segment", retryable=True)
    code = msa[1]
    if control_id and len(msa) > 2 and msa[2] != control_id:
        raise Hl7Error(f"HL7 ACK acknowledges control id {msa[2]!r}, not ours", retryable=True)
    if code in ("AA", "CA"):
        return
    err = next((_fields(s) for s in segments if s.startswith("ERR")), None)
    text = (msa[3] if len(msa) > 3 and msa[3] else "") or (err[-1] if err else "")
    detail = f": {text}" if text else ""
    # AR/CR = rejected (a resend may work, e.g. system busy); AE/CE = application error.
    raise Hl7Error(f"HL7 {code} from the archive{detail}", retryable=code in ("AR", "CR"))


def send(host: str, port: int, message: str, control_id: str, timeout: float) -> None:
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(frame(message))
            buf = b""
            while END not in buf:
                chunk = sock.recv(65536)
                if not chunk:
                    raise Hl7Error(f"HL7 endpoint {host}:{port} closed the connection without an ACK", retryable=True)
                buf += chunk
    except socket.timeout:
        raise Hl7Error(f"HL7 endpoint {host}:{port}: no ACK within {timeout:g} s", retryable=True) from None
    except OSError as e:
        raise Hl7Error(f"HL7 endpoint {host}:{port} unreachable ({e.strerror or type(e).__name__})", retryable=True) from None
    start = buf.find(START)
    check_ack(buf[start + 1 if start >= 0 else 0:buf.find(END)].decode("utf-8", "replace"), control_id)

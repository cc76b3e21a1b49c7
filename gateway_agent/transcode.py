"""Transcoding for C-STORE (issue 13 item 2): which transfer syntaxes to propose for a file, which
accepted one to use, and converting the file to it in the job's spool.

Rules (README "Transcoding and codecs"):
- Propose the file's own syntax and the uncompressed ones as separate presentation contexts, and
  use them in that order: a file is re-encoded only when the archive refuses its own syntax.
- A destination that names a transfer syntax (seed 000, destination field "Transfer syntax") gets
  every image in that syntax, and only in it.
- Conversions are lossless and keep the SOP Instance UID (pydicom generates a new one by default:
  turned off). Decoding a lossy image to an uncompressed syntax adds no loss, so it is allowed.
- Re-encoding is refused, with a permanent reason, when the target is lossy, or when the image has
  been lossy compressed (PS3.3 C.7.6.1.1.5) and the target is another compressed syntax: putting
  lossy pixels into a different compressed encoding is a change to the clinical record that the
  receiving archive cannot see from the transfer syntax.
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Iterable, Optional, Sequence

IMPLICIT_LE, EXPLICIT_LE, EXPLICIT_BE = "1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"
DEFLATED_LE = "1.2.840.10008.1.2.1.99"
RLE_LOSSLESS = "1.2.840.10008.1.2.5"
JPEG_BASELINE, JPEG_EXTENDED = "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51"
JPEG_LOSSLESS, JPEG_LOSSLESS_SV1 = "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70"
JPEG_LS_LOSSLESS, JPEG_LS_NEAR_LOSSLESS = "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"
J2K_LOSSLESS, J2K = "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91"

UNCOMPRESSED_LE = (EXPLICIT_LE, IMPLICIT_LE)
# What the agent can write: the uncompressed syntaxes and the lossless encoders of pydicom 3
# (RLE: pylibjpeg-rle or built-in; JPEG-LS: pyjpegls; JPEG 2000: pylibjpeg-openjpeg).
NATIVE_TARGETS = frozenset({EXPLICIT_LE, IMPLICIT_LE, DEFLATED_LE})
ENCODED_TARGETS = frozenset({RLE_LOSSLESS, JPEG_LS_LOSSLESS, J2K_LOSSLESS})
# Syntaxes whose codestream is lossy by definition (PS3.5 8.2.1, 8.2.3); 4.91 may be either, its
# data set's Lossy Image Compression (0028,2110) says which.
LOSSY_SYNTAXES = frozenset({JPEG_BASELINE, JPEG_EXTENDED, JPEG_LS_NEAR_LOSSLESS})
# PS3.3 C.7.6.1.1.5 Lossy Image Compression Method, recorded when a lossy image is decoded.
_LOSSY_METHOD = {JPEG_BASELINE: "ISO_10918_1", JPEG_EXTENDED: "ISO_10918_1", JPEG_LS_NEAR_LOSSLESS: "ISO_14495_1",
                 J2K: "ISO_15444_1"}


_CODEC_LOCK = threading.Lock()


class TranscodeRefused(Exception):
    """The file cannot be converted to the accepted syntax: permanent (a retry gives the same)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def syntax_name(uid: str) -> str:
    from pydicom.uid import UID

    name = UID(uid).name
    return name if name != uid else uid


def proposals(own: str, required: Optional[str] = None) -> list[tuple[str, ...]]:
    """The presentation contexts (transfer syntax lists) to propose for a file stored in ``own``,
    in the order they are to be used. Uncompressed little-endian syntaxes share one context
    (any of them will do); the file's own compressed (or deflated, big-endian) syntax is a
    separate context so the archive can accept both and the agent prefers the original."""
    if required:
        return [(required,)]
    if own in UNCOMPRESSED_LE:
        return [UNCOMPRESSED_LE]
    return [(own,), UNCOMPRESSED_LE]


def choose(own: str, offers: Sequence[Sequence[str]], accepted: Iterable[str]) -> Optional[str]:
    """The transfer syntax to send the file in: the first offered syntax the archive accepted
    (the file's own preferred within a context), or None when none was."""
    accepted = set(accepted)
    for offer in offers:
        if own in offer and own in accepted:
            return own
        for ts in offer:
            if ts in accepted:
                return ts
    return None


def refusal(own: str, target: str, lossy_flag: Optional[str] = None) -> Optional[str]:
    """Why converting a file stored in ``own`` (with Lossy Image Compression ``lossy_flag``) to
    ``target`` is refused, or None when the conversion is allowed."""
    if own == target:
        return None
    if target not in NATIVE_TARGETS | ENCODED_TARGETS:
        return (f"the agent converts only to lossless syntaxes (uncompressed, RLE, JPEG-LS lossless, JPEG 2000 "
                f"lossless); re-encoding as {syntax_name(target)} would lose data (a change to the clinical record)")
    if own == EXPLICIT_BE:
        return "Explicit VR Big Endian (retired) files are not converted; the archive accepted no context for it"
    lossy = own in LOSSY_SYNTAXES or str(lossy_flag or "").strip() == "01"
    if lossy and target in ENCODED_TARGETS:
        return (f"the image is lossy compressed ({syntax_name(own)}); re-encoding it as {syntax_name(target)} is a "
                "change to the clinical record (PS3.3 C.7.6.1.1.5); the agent sends it only as stored or "
                "uncompressed")
    return None


def convert(src: Path, target: str, out_dir: Path) -> Path:
    """Write ``src`` in ``target`` into ``out_dir`` and return the new file's path. Keeps the SOP
    Instance UID. Raises TranscodeRefused (permanent) with the reason."""
    import warnings

    from pydicom import dcmread
    from pydicom.uid import UID

    try:
        ds = dcmread(src)
    except Exception as e:  # noqa: BLE001 - pydicom raises many types for damaged files
        raise TranscodeRefused(f"cannot read the file to convert it: {type(e).__name__}") from None
    own = str(ds.file_meta.TransferSyntaxUID)
    why = refusal(own, target, ds.get("LossyImageCompression"))
    if why:
        raise TranscodeRefused(why)
    has_pixels = "PixelData" in ds
    # One conversion at a time in the process: the send pipeline stores on several associations
    # (threads), and the native codecs (GDCM, OpenJPEG, CharLS through pydicom's plugins) are not
    # safe to call concurrently: two concurrent encodes crashed the process (SIGSEGV in
    # pydicom.encaps.encapsulate). Transcoding is the exception, not the rule, so this costs little.
    # (warnings.catch_warnings is not thread-safe either: it swaps a process-wide filter list.)
    with _CODEC_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom's warnings about the source's minor flaws
        if has_pixels and UID(own).is_compressed:
            _decode(ds, src, own)
        if has_pixels and target in ENCODED_TARGETS:
            try:
                ds.compress(target, generate_instance_uid=False)
            except Exception as e:  # noqa: BLE001 - unsupported bit depth / photometric interpretation
                raise TranscodeRefused(f"cannot encode the image as {syntax_name(target)}: {_short(e)}") from None
        ds.file_meta.TransferSyntaxUID = UID(target)
        out_dir.mkdir(parents=True, exist_ok=True)
        out = out_dir / f"{ds.SOPInstanceUID}.{target}.dcm"
        try:
            ds.save_as(out, enforce_file_format=True)
        except Exception as e:  # noqa: BLE001
            out.unlink(missing_ok=True)
            raise TranscodeRefused(f"cannot write the file as {syntax_name(target)}: {_short(e)}") from None
    return out


def _decode(ds, src: Path, own: str) -> None:
    """Decode in place to Explicit VR Little Endian, keeping the decoded sample values as they are
    (``as_rgb=False``: no colour conversion, so no rounding added) and the photometric
    interpretation true to them."""
    try:
        ds.decompress(as_rgb=False, generate_instance_uid=False)
    except Exception as e:  # noqa: BLE001 - each plugin's own exception
        if own != JPEG_EXTENDED:
            raise TranscodeRefused(f"cannot decode {syntax_name(own)}: {_short(e)}") from None
        _decode_with_gdcm(ds, src)  # pydicom's gdcm plugin declines 12-bit JPEG; GDCM itself decodes it
    if ds.get("PhotometricInterpretation") == "YBR_FULL_422":
        # The decoders return full-resolution chroma; native YBR_FULL_422 means subsampled
        # (PS3.3 C.7.6.3.1.2), so the decoded samples are YBR_FULL.
        ds.PhotometricInterpretation = "YBR_FULL"
    if own in LOSSY_SYNTAXES or (own == J2K and str(ds.get("LossyImageCompression", "")).strip() == "01"):
        # PS3.3 C.7.6.1.1.5: once lossy compressed, the image stays flagged as such.
        ds.LossyImageCompression = "01"
        if "LossyImageCompressionMethod" not in ds:
            ds.LossyImageCompressionMethod = _LOSSY_METHOD[own]


# GDCM's pipeline objects (reader, change, writer) share buffers across its SWIG proxies: run in a
# child process, a native crash in it fails one instance's conversion instead of the agent.
_GDCM_DECODE = """
import sys, gdcm
reader = gdcm.ImageReader(); reader.SetFileName(sys.argv[1])
if not reader.Read(): sys.exit("GDCM cannot read the file")
change = gdcm.ImageChangeTransferSyntax()
change.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.ExplicitVRLittleEndian))
change.SetInput(reader.GetImage())
if not change.Change(): sys.exit("GDCM failed")
writer = gdcm.ImageWriter(); writer.SetFileName(sys.argv[2])
writer.SetFile(reader.GetFile()); writer.SetImage(change.GetOutput())
if not writer.Write(): sys.exit("GDCM could not write the result")
"""


def _decode_with_gdcm(ds, src: Path) -> None:
    import importlib.util
    import subprocess
    import sys
    import tempfile

    from pydicom import dcmread
    from pydicom.uid import ExplicitVRLittleEndian

    if importlib.util.find_spec("gdcm") is None:
        raise TranscodeRefused("cannot decode 12-bit JPEG Extended: python-gdcm is not installed")
    with tempfile.TemporaryDirectory(dir=src.parent) as tmp:
        out = Path(tmp) / "decoded.dcm"
        try:
            done = subprocess.run([sys.executable, "-c", _GDCM_DECODE, str(src), str(out)], capture_output=True,
                                  text=True, timeout=300)
        except subprocess.TimeoutExpired:
            raise TranscodeRefused("cannot decode JPEG Extended: GDCM took more than 300 s") from None
        if done.returncode != 0 or not out.exists():
            why = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1][:200]
            raise TranscodeRefused(f"cannot decode JPEG Extended: {why}")
        decoded = dcmread(out)
    # Only the pixels come from GDCM; every other attribute stays as the source had it.
    for kw in ("Rows", "Columns", "BitsAllocated", "SamplesPerPixel"):
        if decoded.get(kw) != ds.get(kw):
            raise TranscodeRefused(f"cannot decode JPEG Extended: GDCM changed {kw}")
    ds.PixelData = decoded.PixelData
    ds["PixelData"].VR = "OB" if ds.BitsAllocated <= 8 else "OW"
    ds["PixelData"].is_undefined_length = False
    ds.PhotometricInterpretation = decoded.PhotometricInterpretation
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian


def _short(e: Exception) -> str:
    text = " ".join(str(e).split())
    return (text[:200] + "...") if len(text) > 200 else text or type(e).__name__

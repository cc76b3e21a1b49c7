"""IHE Imaging Object Change Management (IOCM): rejection notes.

Importing this package does not import pydicom; ``kos`` loads it when a note is built.
"""
from .kos import (
    InstanceRef,
    PatientInfo,
    RejectionNoteError,
    RejectionReason,
    StudyInfo,
    build_rejection_note,
    content_value_type,
    to_part10_bytes,
)

__all__ = [
    "InstanceRef",
    "PatientInfo",
    "RejectionNoteError",
    "RejectionReason",
    "StudyInfo",
    "build_rejection_note",
    "content_value_type",
    "to_part10_bytes",
]

"""HL7 v2.5.1 messaging for the gateway (../shared/IOCM_HL7_DIGEST.md Part B).

Pure code. Importing this package does not load hl7apy: the builders import it when called.
"""
from .adt import (
    ACK_CODES,
    HL7_VERSION,
    Ack,
    Endpoint,
    PatientDemographics,
    PatientIdentifier,
    build_a08,
    build_a40,
    parse_ack,
    to_mllp,
)

__all__ = [
    "ACK_CODES",
    "HL7_VERSION",
    "Ack",
    "Endpoint",
    "PatientDemographics",
    "PatientIdentifier",
    "build_a08",
    "build_a40",
    "parse_ack",
    "to_mllp",
]

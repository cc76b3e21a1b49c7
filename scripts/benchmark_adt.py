#!/usr/bin/env python3
"""Benchmark of the HL7 ADT builders (shared/hl7/adt.py). Prints figures; asserts nothing.

Messages built per second (validation, hl7apy STRICT build and validate, ER7 encoding) for A08
and A40, over distinct patients so nothing is cached, plus the cost of parse_ack and to_mllp.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from shared.hl7 import (  # noqa: E402
    Endpoint,
    PatientDemographics,
    PatientIdentifier,
    build_a08,
    build_a40,
    parse_ack,
    to_mllp,
)

ENDPOINT = Endpoint(sending_facility="SITE1", receiving_application="DCM4CHEE", receiving_facility="ARCHIVE")
NOW = datetime(2024, 5, 6, 7, 8, 9, tzinfo=timezone.utc)
ACK = ("MSH|^~\\&|DCM4CHEE|ARCHIVE|ARCHSYNC|SITE1|20240506070810||ACK^A40^ACK|A1|P|2.5.1\r"
       "MSA|AE|C1\rERR||PID^1^3^1^1|205^Duplicate key identifier^HL70357|E")


def patient(i: int) -> PatientDemographics:
    return PatientDemographics(
        identifiers=(PatientIdentifier(f"MRN{i:07d}", "HOSP", "1.2.840.99999.1"),
                     PatientIdentifier(f"N{i:06d}", "NATION", "", "PI")),
        family_name=f"Müller^{i}" if i % 10 == 0 else f"Doe{i}",  # some non-ASCII and escaping
        given_name="John", middle_name="Q", birth_date="19800102", sex="M",
    )


def a08(i: int) -> str:
    return build_a08(patient(i), ENDPOINT, control_id=f"A08-{i}", now=NOW + timedelta(seconds=i))


def a40(i: int) -> str:
    return build_a40(patient(i), [PatientIdentifier(f"OLD{i:07d}", "HOSP", "1.2.840.99999.1")], ENDPOINT,
                     control_id=f"A40-{i}", now=NOW + timedelta(seconds=i),
                     prior_name=PatientDemographics((), family_name=f"Smith{i}"))


def rate(fn: Callable[[int], object], n: int, rounds: int) -> tuple[float, float]:
    """Median and best of ``rounds`` runs of ``n`` calls, in calls per second."""
    fn(0)  # warm-up: imports hl7apy and loads its 2.5.1 reference tables
    rates = []
    for r in range(rounds):
        start = time.perf_counter()
        for i in range(n):
            fn(r * n + i)
        rates.append(n / (time.perf_counter() - start))
    return statistics.median(rates), max(rates)


def cold_import_seconds() -> float:
    start = time.perf_counter()
    a08(0)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=2000, help="messages per round (default 2000)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per figure; the median is reported")
    args = parser.parse_args()

    print(f"Python {sys.version.split()[0]}; {args.n} messages x {args.rounds} rounds each")
    print(f"first build (imports hl7apy, loads tables): {cold_import_seconds() * 1000:.0f} ms")
    sizes = {"A08": len(to_mllp(a08(1))), "A40": len(to_mllp(a40(1)))}
    for name, fn in (("A08", a08), ("A40", a40)):
        median, best = rate(fn, args.n, args.rounds)
        print(f"{name}: {median:8.0f} msg/s median ({1e6 / median:6.0f} us/msg), best {best:.0f} msg/s,"
              f" {sizes[name]} bytes framed")
    median, _ = rate(lambda i: parse_ack(ACK), args.n * 10, args.rounds)
    print(f"parse_ack: {median:8.0f} /s")
    er7 = a08(1)
    median, _ = rate(lambda i: to_mllp(er7), args.n * 10, args.rounds)
    print(f"to_mllp:   {median:8.0f} /s")


if __name__ == "__main__":
    main()

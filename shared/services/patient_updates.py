"""``on_patient_updated``: HL7 ADT to archives (rule 6; seed 000 "When IOCM Messages Are Generated",
last row; seed 001): A08 for demographic changes, A40 for a merge or an MRN change, only where the
facility has Send ADT enabled, to the active destinations with an HL7 endpoint that hold one of the
patient's archived exams. The message is built here (hl7apy, v2.5.1, strict) and the ADT job
carries it: the gateway only frames it over MLLP and checks the ACK."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from .. import logs, metrics
from ..domain.errors import MalformedInput, TransientError
from ..domain.models import ArchiveStateValue, Destination, Gateway, Job, JobState, JobType
from ..domain.rules import TimeoutPolicy, job_id
from ..ports import Clock
from .publisher import JobPublisher


@dataclass(frozen=True)
class AdtOutcome:
    destination_id: str
    action: str  # A08 | A40 | skipped
    reason: str = ""
    job_id: str = ""


def _ident(d: dict):
    from ..hl7.adt import PatientIdentifier

    return PatientIdentifier(d["id"], d.get("assigning_authority", ""), d.get("authority_oid", ""), d.get("type_code", "MR"))


def adt_message(payload: dict, endpoint: Any, control_id: str) -> tuple[str, str]:
    """(trigger event, ER7) for a patient-updated.v1 payload: A08 for demographics, A40 for an
    identifier change or a merge. Raises ValueError naming the HL7 field (never the value)."""
    from ..clock import parse_time
    from ..hl7.adt import PatientDemographics, build_a08, build_a40

    p = payload["patient"]
    surviving = [_ident(i) for i in p["identifiers"]]
    patient = PatientDemographics(tuple(surviving), p["family_name"], p.get("given_name", ""), p.get("middle_name", ""),
                                  p.get("suffix", ""), p.get("prefix", ""), p.get("birth_date", ""), p.get("sex", ""))
    now_event = parse_time(payload["event_time"])
    if payload["change"] == "DEMOGRAPHICS":
        return "A08", build_a08(patient, endpoint, control_id=control_id, now=now_event)
    pr = payload["prior"]
    prior = [_ident(i) for i in pr["identifiers"]]
    prior_name = PatientDemographics(tuple(prior), pr["family_name"], pr.get("given_name", "")) if pr.get("family_name") else None
    return "A40", build_a40(patient, prior, endpoint, control_id=control_id, now=now_event, prior_name=prior_name)


class PatientUpdateService:
    def __init__(self, config: Any, jobs: Any, publisher: JobPublisher, clock: Clock, policy: TimeoutPolicy):
        self._config, self._jobs, self._publisher, self._clock, self._policy = config, jobs, publisher, clock, policy

    def handle(self, payload: dict) -> list[AdtOutcome]:
        """``payload`` is validated against patient-updated.v1."""
        fg, change = payload["facility_group_id"], payload["change"]
        p = payload["patient"]
        surviving = [_ident(i) for i in p["identifiers"]]
        prior = [_ident(i) for i in (payload.get("prior") or {}).get("identifiers", [])]
        if change in ("IDENTIFIER_CHANGE", "MERGE"):
            if not prior:
                raise MalformedInput(f"patient-updated.v1: {change} without prior identifiers")
            if set(prior) & set(surviving):
                # dcm4chee answers ERR 205 (duplicate key identifier): a patient merged into itself.
                raise MalformedInput("patient-updated.v1: a patient cannot be merged into itself")
        facilities = self._config.facilities_with_adt(fg)
        if payload["facility_id"] not in facilities:
            # Facilities arrive on their own topic (facility-changed.v1, docs/facilities.md): a new
            # facility's event may still be on its way. Pub/Sub redelivers with backoff; the
            # subscription's dead-letter policy parks it if the facility never comes.
            raise TransientError("patient-updated.v1: facility not known (yet)")
        if not facilities[payload["facility_id"]]:
            logs.info("ADT not sent: Send ADT is off for the facility", event_id=payload["event_id"], facility_group_id=fg)
            return []
        holders: set[str] = set()
        for exam_id in payload["exam_ids"]:
            holders |= {a.destination_id for a in self._jobs.archive_states(fg, exam_id)
                        if a.state is ArchiveStateValue.ARCHIVED}
        destinations = self._config.list_destinations(fg)
        gateways = self._config.get_gateways(fg, [d.gateway_id for d in destinations])
        outcomes = []
        for d in destinations:
            gw = gateways.get(d.gateway_id)
            why = ("holds none of the patient's archived exams" if d.id not in holders else
                   "destination inactive" if not d.active else
                   "no HL7 endpoint" if not (d.hl7_host and d.hl7_port) else
                   "gateway inactive" if gw is None or not gw.active or gw.provisioning_state != "READY" else None)
            if why:
                outcomes.append(AdtOutcome(d.id, "skipped", why))
                continue
            outcomes.append(self._send(payload, d, gw, surviving, prior))
        return outcomes

    def _send(self, payload: dict, d: Destination, gw: Gateway, surviving: list, prior: list) -> AdtOutcome:
        from ..hl7.adt import Endpoint

        fg, p = payload["facility_group_id"], payload["patient"]
        endpoint = Endpoint(receiving_application=d.hl7_receiving_application, receiving_facility=d.hl7_receiving_facility)
        jid = job_id(JobType.ADT, fg, payload["event_id"], d.id)
        control_id = hashlib.sha256(jid.encode()).hexdigest()[:20]  # MSH-10 is ST(20); stable across redeliveries
        try:
            event, message = adt_message(payload, endpoint, control_id)
        except ValueError as e:  # the builder names the field, never the value
            raise MalformedInput(f"patient-updated.v1: {e}") from None
        now = self._clock.now()
        mrn = next((i.id for i in surviving if i.type_code == "MR"), surviving[0].id)
        job = Job(
            id=jid, facility_group_id=fg, type=JobType.ADT, state=JobState.QUEUED, destination_id=d.id,
            destination_name=d.name, gateway_id=gw.id, exam_id="", accession_number="", mrn=mrn,
            patient_name="^".join(x for x in (p["family_name"], p.get("given_name", "")) if x), study_instance_uid="",
            facility_id=payload["facility_id"], queued_at=now,
            deadline=self._policy.deadline_from_queued(now, d.max_retries, d.retry_timeout_seconds),
            max_retries=d.max_retries, retry_timeout_seconds=d.retry_timeout_seconds,
            publish_lease_until=now + self._publisher.lease, source_event_id=payload["event_id"],
            hl7={"host": d.hl7_host, "port": d.hl7_port, "message": message, "control_id": control_id})
        if self._jobs.create_job(job):
            metrics.job_created(job)
            self._publisher.publish(job, d, gw)
        else:
            existing = self._jobs.get_job(fg, jid)
            if existing is not None:
                self._publisher.ensure_published(existing, d, gw)
        logs.info("ADT queued", job_id=jid, hl7_event=event, destination_id=d.id, facility_group_id=fg)
        return AdtOutcome(d.id, event, "", jid)

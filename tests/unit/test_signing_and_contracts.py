"""Result-callback signatures and the contract documents."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from shared import contracts, signing
from shared.domain.errors import MalformedInput, Unauthorized
from shared.domain.messages import job_message
from tests.support import exam_event

KEY = b"s" * 32
BODY = b'{"x":1}'


def test_signature_round_trip_and_failures():
    h = signing.sign_headers(KEY, "fg-1", "gw-1", BODY, 1_000_000)
    signing.verify(KEY, h, BODY, 1_000_000, 300)
    signing.verify(KEY, h, BODY, 1_000_300, 300)
    assert signing.parse_gateway_header(h) == ("fg-1", "gw-1")
    cases = [
        (KEY, h, BODY + b" ", 1_000_000),            # body changed
        (b"t" * 32, h, BODY, 1_000_000),             # other key
        (None, h, BODY, 1_000_000),                  # unknown gateway
        (KEY, h, BODY, 1_000_301),                   # replay window passed
        (KEY, {**h, signing.TIMESTAMP_HEADER: "1000001"}, BODY, 1_000_000),  # timestamp changed
        (KEY, {**h, signing.TIMESTAMP_HEADER: "abc"}, BODY, 1_000_000),
        (KEY, {**h, signing.SIGNATURE_HEADER: ""}, BODY, 1_000_000),
    ]
    for key, headers, body, now in cases:
        with pytest.raises(Unauthorized):
            signing.verify(key, headers, body, now, 300)


@pytest.mark.parametrize("value", ["", "fg-1", "/gw", "fg/gw/x"])
def test_gateway_header_malformed(value):
    with pytest.raises(Unauthorized):
        signing.parse_gateway_header({signing.GATEWAY_HEADER: value})


def test_schemas_are_valid_and_examples_validate():
    for name in (contracts.EXAM_STATUS_CHANGED, contracts.JOB_MESSAGE, contracts.JOB_RESULT, contracts.DEAD_LETTER):
        contracts._validator(name)  # check_schema raises on an invalid schema
    contracts.validate(contracts.EXAM_STATUS_CHANGED, exam_event())
    with pytest.raises(MalformedInput):
        contracts.validate(contracts.EXAM_STATUS_CHANGED, {**exam_event(), "event_type": "other"})


def test_job_message_validates():
    from shared.domain.models import JobState, JobType, Job
    from tests.support import T0, destination
    from datetime import timedelta

    job = Job(id="archive-" + "b" * 32, facility_group_id="fg-1", type=JobType.ARCHIVE, state=JobState.QUEUED,
              destination_id="dst-1", destination_name="VNA", gateway_id="gw-1", exam_id="exam-1", accession_number="A",
              mrn="M", patient_name="P", study_instance_uid="1.2.3", facility_id="fac-a", queued_at=T0,
              deadline=T0 + timedelta(hours=1), study_storage_uri="gs://studies/fg-1/1.2.3/")
    data, attrs = job_message(job, destination(moving_ae_title="MOVE", excluded_sop_class_uids=("1.2.840.10008.5.1.4.1.1.104.1",)))
    contracts.validate(contracts.JOB_MESSAGE, json.loads(data))
    assert attrs["job_type"] == "ARCHIVE" and attrs["attempt"] == "1"


def test_openapi_document_covers_the_http_functions():
    doc = yaml.safe_load((Path(contracts.__file__).parent / "openapi.yaml").read_text())
    assert doc["openapi"].startswith("3.1")
    paths = doc["paths"]
    assert "post" in paths["/job-results"] and "get" in paths["/v1/facility-groups/{facility_group_id}/exams/{exam_id}/lock"]
    assert "post" in paths["/sweeps"]
    # The callback body is the JSON Schema file itself, so the two cannot drift apart.
    body = paths["/job-results"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body["oneOf"] == [{"$ref": "job-result.v1.schema.json"}, {"$ref": "#/components/schemas/ResultProbe"}]
    # The link probe's body is the one shared/signing.py recognises (issue 14).
    probe = doc["components"]["schemas"]["ResultProbe"]["properties"]
    assert {k: v["const"] for k, v in probe.items()} == signing.PROBE_BODY
    for code in ("200", "400", "401", "404"):
        assert code in paths["/job-results"]["post"]["responses"]

"""The end-to-end world: the cloud functions in-process on the emulators (on_job_result served over
real HTTP so the agent posts to a URL, as on site), a gateway and a destination, the platform's
study storage in the GCS emulator, and the reference agent with its seed-000 config."""
from __future__ import annotations

import dataclasses
import json
import threading
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Optional

from devstack.processes import free_port
from devstack.pubsub_iam import require_consume
from devstack.studies import StudyFile, make_study, upload
from gateway_agent.agent import Agent
from gateway_agent.config import parse
from shared.adapters.gcs import sa_key_object
from shared.domain.models import FacilityGroup
from shared.services.provisioning import Provisioner, ProvisioningSettings
from tests.support import RESULT_KEY, cloud_event_headers, destination, gateway, load_app, pubsub_envelope, wait_for

def write_instances(files: list[StudyFile], into: Path) -> list:
    """Study files written to disk, as the agent's Instances (what its C-STORE path takes)."""
    from gateway_agent.fetch import read_instance

    out = []
    for f in files:
        path = into / f"{f.sop_instance_uid}.dcm"
        path.write_bytes(f.data)
        out.append(read_instance(path))
    return out


class _HttpFunction:
    """A functions-framework app on a loopback port (werkzeug, threaded)."""

    def __init__(self, name: str):
        import functions_framework
        from werkzeug.serving import make_server

        source = Path(__file__).resolve().parents[2] / "functions" / name / "main.py"
        app = functions_framework.create_app(target=name, source=str(source))
        self._server = make_server("127.0.0.1", free_port(), app, threaded=True)
        self.url = f"http://127.0.0.1:{self._server.server_port}/"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self._server.shutdown()


GATEWAY_DEAD_LETTER_TOPIC = "archsync-gateway-dead-letter"


class E2E:
    FG, GW, DEST = "fg-1", "gw-0123456789", "dst-1"

    def __init__(self, stack, tmp: Path, auth, *, host: str, port: int, called_ae_title: str,
                 provisioning: Optional[dict] = None):
        """``provisioning``: ProvisioningSettings fields to override for the gateway (e.g. a short
        ack deadline and retry backoff, so a test sees redeliveries in seconds)."""
        self.stack, self.tmp, self.auth = stack, tmp, auth
        self.now = datetime.now(timezone.utc)
        self.studies_bucket = stack.study_bucket  # the bucket ARCHSYNC_STUDY_BUCKET names (tests/conftest.py)
        # The gateway is provisioned as the admin API does it (topic, subscription, service account,
        # its bindings on the subscription and on the two buckets, keys, record) and the agent uses
        # the key the admin API's download returns: on the strict stack (issue 12) a missing grant
        # fails these tests as it would fail the site.
        stack.store.save_facility_group(FacilityGroup(self.FG, "Group 1"))
        stack.topic(GATEWAY_DEAD_LETTER_TOPIC, subscription="gateway-dead-letter-audit")
        provisioner = Provisioner(stack.store, stack.cloud(), stack.clock, ProvisioningSettings(
            objects_bucket=stack.objects_bucket, study_bucket=stack.study_bucket,
            gateway_dead_letter_topic=GATEWAY_DEAD_LETTER_TOPIC, **(provisioning or {})))
        self.gw = provisioner.create(gateway(self.GW, topic_id="", subscription_id="", created_at=None), "Pat Admin")
        self.sa_key: dict = json.loads(stack.vault.get(sa_key_object(self.FG, self.GW)))
        stack.secrets.save_result_key(self.FG, self.GW, RESULT_KEY)  # the key the agent config below holds
        self.dest = destination(self.DEST, gateway_id=self.GW, host=host, port=port, called_ae_title=called_ae_title, calling_ae_title="GW_SCU",
                                since=self.now - timedelta(days=1), max_retries=1, retry_timeout_seconds=1)
        stack.store.save_destination(self.dest)
        self.result_endpoint = _HttpFunction("on_job_result")
        self.exam_fn, self.study_fn, self.admin = load_app("on_exam_status_changed"), load_app("on_study_changed"), load_app("admin_api")
        self.agent: Optional[Agent] = None
        self._n = 0

    # -- the platform ------------------------------------------------------------------------
    def uri(self, study_uid: str) -> str:
        return f"gs://{self.studies_bucket}/{self.FG}/{study_uid}/"

    def study(self, study_uid: str, count: int, **kw: Any) -> list[StudyFile]:
        files = make_study(study_uid, count, **kw)
        upload(self.stack.gcs, self.uri(study_uid), files)
        return files

    def set_destination(self, **changes: Any) -> None:
        self.dest = dataclasses.replace(self.dest, **changes)
        self.stack.store.save_destination(self.dest)

    def _deliver(self, client, topic: str, payload: dict) -> None:
        self._n += 1
        resp = client.post("/", json=pubsub_envelope(payload, message_id=f"m-{self._n}"),
                           headers=cloud_event_headers(topic, self.stack.project, f"ce-{self._n}"))
        assert resp.status_code in (200, 204), resp.get_data(as_text=True)

    def exam_completed(self, exam_id: str, study_uid: str) -> None:
        at = datetime.now(timezone.utc)
        self._deliver(self.exam_fn, "archsync-exam-status", {
            "schema_version": "1", "event_type": "exam.status_changed", "event_id": str(uuid.uuid4()),
            "event_time": at.isoformat(), "facility_group_id": self.FG, "facility_id": "fac-a",
            "exam": {"exam_id": exam_id, "accession_number": "ACC-0001", "status": "COMPLETED", "previous_status": "INFLIGHT",
                     "status_first_reached_at": at.isoformat(), "study_instance_uid": study_uid,
                     "study_storage_uri": self.uri(study_uid), "patient": {"mrn": "MRN-777", "name": "DOE^JANE"}}})

    def study_changed(self, exam_id: str, study_uid: str, change: str, instances: list[dict]) -> None:
        self._deliver(self.study_fn, "archsync-study-changed", {
            "schema_version": "1", "event_type": "study.changed", "event_id": str(uuid.uuid4()),
            "event_time": datetime.now(timezone.utc).isoformat(), "facility_group_id": self.FG, "facility_id": "fac-a",
            "change": change, "exam_id": exam_id,
            "patient": {"patient_id": "SYN0001", "name": "SYNTHETIC^PATIENT", "birth_date": "19700101", "sex": "F"},
            "study": {"study_instance_uid": study_uid, "accession_number": "ACC-0001", "study_date": "20261101",
                      "storage_uri": self.uri(study_uid)},
            "instances": instances})

    def retry(self, job_id: str) -> dict:
        resp = self.admin.post(f"/v1/facility-groups/{self.FG}/jobs/{job_id}/retry", headers=self.auth.headers((self.FG,)))
        assert resp.status_code == 200, resp.get_data(as_text=True)
        return resp.get_json()

    # -- the gateway ---------------------------------------------------------------------------
    def config(self, commitment_port: int = 0) -> dict:
        return {
            "job_deliveries": [{
                "name": "E2E gateway", "project_id": self.stack.project, "subscription_id": self.gw.subscription_id,
                "result_endpoint_url": self.result_endpoint.url, "result_endpoint_secure_key": RESULT_KEY.decode(),
                "service_account_json": json.dumps(self.sa_key), "active": True}],
            "max_concurrent_jobs": 2, "dimse_timeout_seconds": 10, "network_timeout_seconds": 3,
            "storage_commitment": {"ae_title": "GW_SCU", "host": "127.0.0.1", "port": commitment_port, "timeout_seconds": 20},
            "work_dir": str(self.tmp), "pubsub_endpoint": self.stack.emulators["pubsub"],
            "storage_endpoint": self.stack.emulators["gcs"],
        }

    def start_agent(self, commitment_port: bool = False) -> Agent:
        # The Pub/Sub emulator serves any pull: the stack checks the subscription's policy first
        # (devstack/pubsub_iam.py, issue 12 item 5).
        config = parse(self.config(free_port() if commitment_port else 0))
        for delivery in config.active_deliveries:
            require_consume(self.stack.emulators["iam"].policies, delivery.service_account_info,
                            delivery.subscription_path)
        self.agent = Agent(config).start()
        return self.agent

    def store_directly(self, files: list[StudyFile]) -> None:
        """C-STORE with dcmtk-independent pynetdicom, as another sender would."""
        from gateway_agent.dimse import Endpoint, Network

        report = Network().store(Endpoint.of(self.dest.__dict__ | {"calling_ae_title": "MODALITY"}),
                                 write_instances(files, self.tmp), None)
        assert not report.failed

    # -- what happened ---------------------------------------------------------------------------
    def jobs(self, type_: Optional[str] = None) -> list[dict]:
        docs = [d.to_dict() for d in self.stack.db.collection(f"facility_groups/{self.FG}/jobs").stream()]
        return [d for d in docs if type_ is None or d["type"] == type_]

    def wait_job(self, type_: str, states: set[str], attempt: int = 1, timeout: float = 90) -> dict:
        def done():
            return next((j for j in self.jobs(type_) if j["state"] in states and j["attempt"] >= attempt), None)
        return wait_for(done, timeout, f"{type_} job in {states}")

    def archive_state(self, exam_id: str) -> Optional[str]:
        doc = self.stack.db.document(f"facility_groups/{self.FG}/exams/{exam_id}/archive_states/{self.DEST}").get()
        return doc.to_dict()["state"] if doc.exists else None

    def close(self) -> None:
        if self.agent:
            self.agent.stop()
        self.result_endpoint.stop()

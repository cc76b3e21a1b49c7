"""Builders and helpers shared by the tests."""
from __future__ import annotations

import base64
import json
import os
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Optional

from shared.domain.models import Destination, ExamStatus, Facility, FacilityGroup, Gateway

T0 = datetime(2026, 11, 1, 8, 0, tzinfo=timezone.utc)
STUDY_UID = "1.2.826.0.1.3680043.8.498.1"


def local_key_file(email: str = "archsync-gw-1@test-project.iam.gserviceaccount.com") -> dict:
    """A real service-account key file (fresh RSA key) for unit tests without the IAM stand-in: it
    parses and signs like a downloaded one, but no token endpoint knows it. Integration tests use
    ``emulators["iam"].mint_key_info(...)``, whose keys do get tokens."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    pem = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    return {"type": "service_account", "project_id": email.split("@")[1].split(".")[0],
            "private_key_id": uuid.uuid4().hex, "private_key": pem, "client_email": email,
            "client_id": "100000000000000000001", "token_uri": "https://oauth2.googleapis.com/token"}


class FakeClock:
    def __init__(self, now: datetime = T0):
        self.t = now

    def now(self) -> datetime:
        return self.t

    def advance(self, **kw: float) -> None:
        self.t += timedelta(**kw)


def gateway(gid: str = "gw-1", fg: str = "fg-1", **kw: Any) -> Gateway:
    base = dict(id=gid, facility_group_id=fg, name=f"Gateway {gid}", topic_id=f"gw-{fg}-{gid}-jobs",
                subscription_id=f"gw-{fg}-{gid}-jobs-sub", facility_ids=(), active=True, created_at=T0 - timedelta(days=30))
    base.update(kw)
    return Gateway(**base)


def destination(did: str = "dst-1", fg: str = "fg-1", gateway_id: str = "gw-1", trigger: Optional[str] = "COMPLETED",
                since: datetime = T0 - timedelta(days=1), **kw: Any) -> Destination:
    base = dict(id=did, facility_group_id=fg, name=f"VNA {did}", host="192.168.0.31", port=11112,
                called_ae_title="VNA_SCP", calling_ae_title="GW_SCU", gateway_id=gateway_id,
                auto_archive=trigger is not None, trigger_status=ExamStatus(trigger) if trigger else None,
                auto_archive_since=since if trigger else None, support_iocm=True, created_at=since)
    base.update(kw)
    return Destination(**base)


def exam_event(status: str = "COMPLETED", *, exam_id: str = "exam-1", fg: str = "fg-1", facility: str = "fac-a",
               first_reached: Optional[datetime] = None, event_time: Optional[datetime] = None,
               event_id: Optional[str] = None, **exam_kw: Any) -> dict:
    event_time = event_time or T0
    exam = {
        "exam_id": exam_id,
        "accession_number": "ACC-0001",
        "status": status,
        "previous_status": None,
        "status_first_reached_at": (first_reached or event_time).isoformat(),
        "study_instance_uid": STUDY_UID,
        "study_storage_uri": f"gs://platform-studies/{fg}/{STUDY_UID}/",
        "patient": {"mrn": "MRN-777", "name": "DOE^JANE"},
    }
    exam.update(exam_kw)
    return {
        "schema_version": "1",
        "event_type": "exam.status_changed",
        "event_id": event_id or str(uuid.uuid4()),
        "event_time": event_time.isoformat(),
        "facility_group_id": fg,
        "facility_id": facility,
        "exam": exam,
    }


def facility_event(facility_id: Optional[str] = "fac-a", *, fg: str = "fg-1", version: int = 1, name: Optional[str] = None,
                   send_adt: Optional[bool] = False, removed: bool = False, event_id: Optional[str] = None,
                   event_time: Optional[datetime] = None) -> dict:
    """A facility-changed.v1 event: of a facility, or of the group itself with ``facility_id=None``."""
    e = {"schema_version": "1", "event_type": "facility.changed" if facility_id else "facility_group.changed",
         "event_id": event_id or str(uuid.uuid4()), "event_time": (event_time or T0).isoformat(),
         "facility_group_id": fg, "version": version}
    if facility_id:
        e["facility_id"] = facility_id
    if removed:
        e["removed"] = True
    else:
        e["name"] = name or (f"Facility {facility_id}" if facility_id else f"Group {fg}")
        if facility_id:
            e["send_adt"] = bool(send_adt)
    return e


def pubsub_envelope(payload: Any, *, raw: Optional[bytes] = None, message_id: str = "m-1") -> dict:
    data = raw if raw is not None else json.dumps(payload).encode()
    return {"message": {"data": base64.b64encode(data).decode(), "attributes": {}, "messageId": message_id,
                        "publishTime": "2026-11-01T08:00:00Z"},
            "subscription": "projects/p/subscriptions/exam-status"}


def cloud_event_headers(topic: str = "archsync-exam-status", project: str = "p", ce_id: str = "ce-1") -> dict:
    return {"ce-id": ce_id, "ce-specversion": "1.0", "ce-type": "google.cloud.pubsub.topic.v1.messagePublished",
            "ce-source": f"//pubsub.googleapis.com/projects/{project}/topics/{topic}", "Content-Type": "application/json"}


@dataclass
class RecordingBus:
    """Delegates to a real bus; can fail the first N publishes (to test job/message divergence)."""

    inner: Any
    fail_first: int = 0
    published: list = field(default_factory=list)

    def publish(self, topic_id: str, data: bytes, attributes: dict) -> str:
        from shared.domain.errors import TransientError

        if self.fail_first > 0:
            self.fail_first -= 1
            raise TransientError("injected publish failure")
        mid = self.inner.publish(topic_id, data, attributes)
        self.published.append((topic_id, json.loads(data), dict(attributes)))
        return mid


def group(fg: str = "fg-1") -> FacilityGroup:
    return FacilityGroup(fg, f"Group {fg}")


def facility(fid: str, fg: str = "fg-1") -> Facility:
    return Facility(fid, fg, f"Facility {fid}")


def load_app(name: str):
    """A functions-framework test client for functions/<name>/main.py."""

    import functions_framework

    source = Path(__file__).resolve().parent.parent / "functions" / name / "main.py"
    return functions_framework.create_app(target=name, source=str(source)).test_client()


RESULT_KEY = b"k" * 32


def result_body(job_id: str, state: str, *, attempt: int = 1, time: Optional[datetime] = None, **kw: Any) -> bytes:
    body = {"schema_version": "1", "job_id": job_id, "attempt": attempt, "state": state,
            "time": (time or datetime.now(timezone.utc)).isoformat()}
    body.update(kw)
    return json.dumps(body).encode()


def post_result(client, body: bytes, *, key: bytes = RESULT_KEY, fg: str = "fg-1", gw: str = "gw-1",
                ts: Optional[int] = None, headers: Optional[dict] = None):
    import time as _time

    from shared.signing import sign_headers

    h = sign_headers(key, fg, gw, body, int(ts if ts is not None else _time.time()))
    h.update(headers or {})
    return client.post("/", data=body, headers=h)


def openapi_response_schema(path: str, method: str, status: str = "200") -> dict:
    """The JSON Schema of one documented response (OpenAPI 3.1 schemas are JSON Schema 2020-12)."""

    import yaml

    doc = yaml.safe_load((Path(__file__).resolve().parent.parent / "shared/contracts/openapi.yaml").read_text())
    schema = doc["paths"][path][method]["responses"][status]
    if "$ref" in schema:
        schema = doc["components"]["responses"][schema["$ref"].rsplit("/", 1)[-1]]
    return {**schema["content"]["application/json"]["schema"], "components": doc["components"]}


def assert_matches_openapi(body: Any, path: str, method: str, status: str = "200") -> None:
    import jsonschema

    schema = openapi_response_schema(path, method, status)
    jsonschema.validate(body, schema, cls=jsonschema.Draft202012Validator)


class AdminAuth:
    """An RSA key pair standing in for the platform's identity provider, and tokens from it."""

    ISSUER = "https://idp.platform.example"
    AUDIENCE = "archsync-admin-api"

    def __init__(self):
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.public_pem = self._key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()

    def token(self, groups=("fg-1",), *, sub: str = "u-1", name: str = "Pat Admin", key=None, **claims: Any) -> str:
        import time as _time

        import jwt

        now = int(_time.time())
        payload = {"sub": sub, "name": name, "iss": self.ISSUER, "aud": self.AUDIENCE, "iat": now, "exp": now + 300,
                   "facility_groups": list(groups), **claims}
        payload = {k: v for k, v in payload.items() if v is not None}
        return jwt.encode(payload, key or self._key, algorithm="RS256")

    def headers(self, groups=("fg-1",), **kw: Any) -> dict:
        return {"Authorization": f"Bearer {self.token(groups, **kw)}"}


def firestore_size(value: Any) -> int:
    """Storage size of a Firestore value as Google documents it ("Storage size calculations"):
    strings UTF-8 bytes + 1, numbers/timestamps 8, booleans/null 1, arrays the sum of their
    elements, maps the sum of key (as a string) + value. The document's size adds its name and 32."""
    if value is None or isinstance(value, bool):
        return 1
    if isinstance(value, (int, float, datetime)):
        return 8
    if isinstance(value, str):
        return len(value.encode()) + 1
    if isinstance(value, bytes):
        return len(value)
    if isinstance(value, (list, tuple)):
        return sum(firestore_size(v) for v in value)
    if isinstance(value, dict):
        return sum(firestore_size(str(k)) + firestore_size(v) for k, v in value.items())
    raise TypeError(type(value).__name__)


def firestore_document_size(path: str, data: dict) -> int:
    """A stored document's size (limit 1 MiB = 1,048,576 bytes): name + fields + 32."""
    return sum(len(seg.encode()) + 1 for seg in path.split("/")) + 16 + firestore_size(data) + 32


def wait_for(check: Callable[[], Any], timeout: float = 60.0, what: str = "condition") -> Any:
    """Poll ``check`` until it returns something truthy (returned), or fail after ``timeout`` s."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def on_site_env() -> dict[str, str]:
    """The environment of an agent process as on site: no emulator variable (*_EMULATOR_HOST) at
    all, so it can only reach the local stack through its config's endpoints and its key, the
    production path (gateway_agent/config.py pubsub_endpoint, storage_endpoint)."""
    return {k: v for k, v in os.environ.items() if not k.endswith("_EMULATOR_HOST")}

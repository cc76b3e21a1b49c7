"""The main job, locally: emulators + functions under functions-framework, a facility group set up
through the admin API, a replayed stream of exam status events delivered by a real Pub/Sub push
subscription, the reference gateway agent (gateway_agent) linked with the seed-000 Job Delivery
fields and doing real DICOM into embedded pynetdicom archives (or Orthanc), the sweeper, and a
report of what happened.

    python -m devstack.demo            (what ./run demo does)
    python -m devstack.demo --orthanc  (the archives are Orthanc instances)
    python -m devstack.demo --serve    (then keep everything running, with the Gateway Management
                                        console signed in through the local identity provider,
                                        until Ctrl-C)
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request
from collections import Counter, defaultdict
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Optional

from devstack import processes

PROJECT = "archsync-demo"
FG = "fg-north"
OTHER_FG = "fg-south"  # another facility group's studies share the bucket (prefix <group>/)
EXAM_TOPIC = "archsync-exam-status"
DEAD_LETTER_TOPIC = "archsync-dead-letter"
FACILITY_TOPIC = "archsync-facility-changed"
FUNCTIONS = ("admin_api", "on_facility_changed", "on_exam_status_changed", "on_job_result", "sweep_jobs", "lock_status")
FACILITIES = (("fac-main", "Main Hospital"), ("fac-east", "East Clinic"), ("fac-west", "West Clinic"))
KEY_BUCKET, OBJECTS_BUCKET = "archsync-demo-keys", "archsync-demo-objects"


# Short windows so a job whose gateway never answers times out within the run, yet long enough
# that a busy machine's agent still reaches its jobs before their result deadline (the agent acks
# an attempt past its deadline without work): east (0 retries) 40 s, the others 62 s.
TIMING = {"ARCHSYNC_DISPATCH_GRACE_SECONDS": "30", "ARCHSYNC_ATTEMPT_ALLOWANCE_SECONDS": "10"}


def _http_json(method: str, url: str, body: Optional[dict] = None, token: str = "") -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else (b"" if method == "POST" else None)
    req = urllib.request.Request(url, method=method, data=data,
                                 headers={"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            raw = resp.read()
            return resp.status, (json.loads(raw) if resp.headers.get_content_type() == "application/json" and raw else raw)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def _facility_events(now: datetime) -> list[dict]:
    """What the platform publishes for its master data (contract facility-changed.v1): the group,
    then its facilities, each with its version."""
    common = {"schema_version": "1", "event_time": now.isoformat(), "facility_group_id": FG, "version": 1}
    events = [{**common, "event_type": "facility_group.changed", "event_id": "evt-fg-north", "name": "North Valley Imaging"}]
    events += [{**common, "event_type": "facility.changed", "event_id": f"evt-{fid}", "facility_id": fid, "name": name,
                "send_adt": True} for fid, name in FACILITIES]
    return events


def _sync_facilities(publisher, topic_path: str, admin: str, token: str, say) -> None:
    """The platform publishes its facility group and facilities; a push subscription delivers them
    to on_facility_changed; the admin API's lists (what the forms show) then hold them."""
    for e in _facility_events(datetime.now(timezone.utc)):
        publisher.publish(topic_path, json.dumps(e).encode()).result()
    listed: dict = {}

    def synced() -> bool:
        _, body = _http_json("GET", f"{admin}/v1/facility-groups/{FG}/facilities", token=token)
        listed.update({f["id"]: f["name"] for f in body.get("facilities", [])})
        return len(listed) == len(FACILITIES)

    _wait(synced, 180, "the facilities to arrive through facility-changed.v1")
    _, groups = _http_json("GET", f"{admin}/v1/facility-groups", token=token)
    say(f"  facility group {groups['facility_groups'][0]['name']!r}: facilities " + ", ".join(sorted(listed.values())))


def _configure(admin: str, token: str, archives: dict, say) -> dict[str, dict]:
    """Seed 000 Steps 1-2 through the admin API: gateways (provisioned for real against the local
    stand-ins) and destinations. The facility group and its facilities came from the platform."""
    base = f"{admin}/v1/facility-groups/{FG}"
    gateways = {}
    for key, body in (("main", {"name": "Main datacenter gateway"}),
                      ("east", {"name": "East clinic gateway", "facility_ids": ["fac-east"]})):
        status, gw = _http_json("POST", f"{base}/gateways", body, token)
        assert status == 201, gw
        # Seed 000 Step 3 "Gather Required Information": both keys come from the admin API.
        _, result_key = _http_json("GET", f"{base}/gateways/{gw['id']}/result-endpoint-key", token=token)
        _, sa_key = _http_json("GET", f"{base}/gateways/{gw['id']}/service-account-key", token=token)
        gateways[key] = {**gw, "result_key": result_key, "sa_key": sa_key}
        say(f"  gateway {gw['name']!r}: subscription {gw['pubsub_subscription_id']}, service account {gw['service_account_email']}")
    common = {"type": "DICOM_SCP", "host": "127.0.0.1", "calling_ae_title": "GW_SCU"}
    destinations = {}
    for key, body in (
        ("vna", {"name": "Enterprise VNA", "called_ae_title": "VNA_ENT", "gateway_id": gateways["main"]["id"],
                 "auto_archive": True, "trigger_status": "COMPLETED", "support_iocm": True, "storage_commitment": True,
                 "max_retries": 2, "retry_timeout_seconds": 1}),
        # A typo in the called AE title: the archive rejects every association (fixed later on).
        ("legacy", {"name": "Legacy PACS archive", "called_ae_title": "LEGACY_ARC", "gateway_id": gateways["main"]["id"],
                    "facility_ids": ["fac-main"], "auto_archive": True, "trigger_status": "PENDING", "max_retries": 1,
                    "retry_timeout_seconds": 1}),
        ("east", {"name": "East clinic archive", "called_ae_title": "EAST_AR", "gateway_id": gateways["east"]["id"],
                  "auto_archive": True, "trigger_status": "INFLIGHT", "max_retries": 0, "retry_timeout_seconds": 1}),
        (None, {"name": "Retired VNA (inactive)", "called_ae_title": "OLD_VNA", "gateway_id": gateways["main"]["id"],
                "auto_archive": True, "trigger_status": "COMPLETED", "active": False}),
        (None, {"name": "Research archive (manual only)", "called_ae_title": "RESEARCH", "gateway_id": gateways["main"]["id"]}),
    ):
        port = archives[key].port if key else 11112
        status, d = _http_json("POST", f"{base}/destinations", {**common, "port": port, **body}, token)
        assert status == 201, d
        if key:
            destinations[key] = d
        say(f"  destination {d['name']!r}: Archive {d['archive']}, gateway {d['gateway_name']!r}, facilities {d['facilities']}")
    status, bad = _http_json("POST", f"{base}/destinations", {**common, "port": 11112, "name": "Typo", "called_ae_title": "HAS SPACE",
                                                               "gateway_id": gateways["east"]["id"], "facility_ids": ["fac-main"],
                                                               "max_retries": -1}, token)
    say(f"  an invalid destination is refused: {status} {sorted(bad['error']['fields'])}")
    status, refused = _http_json("DELETE", f"{base}/gateways/{gateways['main']['id']}", token=token)
    say(f"  deleting a gateway with destinations is refused: {status} {refused['error']['message']}")
    return {"gateways": gateways, "destinations": destinations}


def _events(now: datetime) -> list[dict]:
    """A realistic stream: exams through Pending -> Inflight -> Completed at three facilities, a
    repeat Completed, a duplicate delivery, an exam completed before archiving was configured,
    and one malformed message."""
    def event(n: int, exam: str, facility: str, status: str, at: datetime, first: Optional[datetime] = None) -> dict:
        return {
            "schema_version": "1", "event_type": "exam.status_changed", "event_id": f"evt-{n:03d}",
            "event_time": at.isoformat(), "facility_group_id": FG, "facility_id": facility,
            "exam": {"exam_id": exam, "accession_number": f"ACC{1000 + int(exam[-2:])}", "status": status,
                     "status_first_reached_at": (first or at).isoformat(),
                     "study_instance_uid": _study_uid(exam),
                     "study_storage_uri": f"gs://{STUDIES_BUCKET}/{FG}/{exam}/",
                     "patient": {"mrn": f"MRN{5000 + int(exam[-2:])}", "name": "DEMO^PATIENT"}},
        }

    facilities = ["fac-main", "fac-east", "fac-west"]
    stream, n, t = [], 0, now + timedelta(seconds=1)
    for i in range(1, 10):
        exam, fac = f"exam-{i:02d}", facilities[i % 3]
        for status in ("SCHEDULED", "PENDING", "INFLIGHT", "COMPLETED"):
            n += 1
            stream.append(event(n, exam, fac, status, t))
            t += timedelta(seconds=1)
    first_done = {e["exam"]["exam_id"]: e["event_time"] for e in stream if e["exam"]["status"] == "COMPLETED"}
    # exam-03 is re-opened and completed again: no new archive job (first time only).
    stream.append(event(n + 1, "exam-03", "fac-west", "INFLIGHT", t, first=now + timedelta(seconds=1)))
    stream.append(event(n + 2, "exam-03", "fac-west", "COMPLETED", t + timedelta(seconds=1),
                        first=datetime.fromisoformat(first_done["exam-03"])))
    # exam-20 was completed before auto archive was configured: no retroactive archiving.
    stream.append(event(n + 3, "exam-20", "fac-main", "COMPLETED", t, first=now - timedelta(days=2)))
    stream.append(stream[5])  # a duplicate delivery of an earlier event
    return stream


EXPECTED_JOBS = 9 + 3 + 3  # 9 exams reach Completed (VNA), 3 at fac-main Pending (legacy), 3 at fac-east Inflight
STUDIES_BUCKET = "platform-studies"
INSTANCES_PER_STUDY = 6


def _study_uid(exam: str) -> str:
    return f"1.2.826.0.1.3680043.8.498.{int(exam[-2:]) + 100}"


def _write_studies(gcs_client) -> None:
    from devstack.studies import make_study, upload

    for i in list(range(1, 10)) + [20]:
        exam = f"exam-{i:02d}"
        upload(gcs_client, f"gs://{STUDIES_BUCKET}/{FG}/{exam}/", make_study(_study_uid(exam), INSTANCES_PER_STUDY, series=2))


class _Archive:
    """An archive of the run: embedded pynetdicom SCP or Orthanc, behind one small interface."""

    def __init__(self, ae: str, orthanc: bool, peers: dict, workdir: Path):
        if orthanc:
            from devstack.orthanc import Orthanc

            self._o = Orthanc(workdir / f"orthanc-{ae.lower()}", ae_title=ae, modalities=peers).start()
            self.port, self._e = self._o.dicom_port, None
        else:
            from devstack.archive_scp import EmbeddedArchive

            self._e, self._o = EmbeddedArchive(ae_title=ae, peers=peers).start(), None
            self.port = self._e.port

    def study_instances_all(self) -> set:
        return set(self._o.get("/instances")) if self._o else set(self._e.instances)

    def stop(self) -> None:
        (self._o or self._e).stop()


def _start_archives(orthanc: bool, commit_port: int, log_dir: Path) -> dict:
    peers = {"GW_SCU": ("127.0.0.1", commit_port)}  # where storage commitment reports go
    return {key: _Archive(ae, orthanc, peers, log_dir) for key, ae in (("vna", "VNA_ENT"), ("legacy", "LEGACY_AR"), ("east", "EAST_AR"))}


class _AgentService:
    def __init__(self, agent):
        self.agent = agent

    def stop(self) -> None:
        self.agent.stop()


def _authenticate_gateways(iam, gateways: dict, say) -> dict[str, str]:
    """google-auth's own service-account flow with each downloaded key: the IAM stand-in's token
    endpoint (the key's token_uri) verifies the signed assertion and issues a token for that
    account only."""
    from google.auth.transport.requests import Request
    from google.oauth2 import service_account

    out = {}
    for gw in gateways.values():
        creds = service_account.Credentials.from_service_account_info(
            gw["sa_key"], scopes=["https://www.googleapis.com/auth/devstorage.read_only"])
        creds.refresh(Request())
        out[gw["name"]] = iam.principal_for_token(creds.token) or "refused"
        say(f"  gateway {gw['name']!r} authenticated with its own key: token for {out[gw['name']]}")
    return out


def _cross_group_read(owner_client, gateway: dict, say) -> str:
    """Another facility group's study in the same bucket: the gateway's key may not list it."""
    from google.api_core import exceptions
    from google.cloud import storage
    from google.oauth2 import service_account

    from devstack.studies import make_study, upload

    study_uid = "1.2.826.0.1.3680043.8.498.990"  # a study of the other group's
    other = f"{OTHER_FG}/{study_uid}/"
    upload(owner_client, f"gs://{STUDIES_BUCKET}/{other}", make_study(study_uid, 1))
    creds = service_account.Credentials.from_service_account_info(
        gateway["sa_key"], scopes=["https://www.googleapis.com/auth/devstorage.read_only"])
    client = storage.Client(project=PROJECT, credentials=creds)
    try:
        list(client.list_blobs(STUDIES_BUCKET, prefix=other))
        outcome = "ALLOWED (a missing IAM condition: this must not happen)"
    except exceptions.Forbidden as e:
        outcome = f"{e.code} {e.message}"
    say(f"  gateway {gateway['name']!r} listing gs://{STUDIES_BUCKET}/{other} (group {OTHER_FG}): {outcome}")
    return outcome


def _reads_by_gateway(front, gateways: dict) -> dict[str, dict[str, int]]:
    """What the authorising front allowed and refused each gateway's account (study and IOCM reads)."""
    out = {}
    for gw in gateways.values():
        principal = f"serviceAccount:{gw['service_account_email']}"
        seen = Counter(("allowed" if d.allowed else "refused") for d in front.decisions
                       if d.principal == principal and d.permission.startswith("storage.objects."))
        out[gw["name"]] = dict(seen)
    return out


def _start_agent(gateways: dict, result_url: str, commit_port: int, log_dir: Path, policies: dict) -> _AgentService:
    """The seed-000 Job Delivery form, once per gateway; the east one is saved but not yet Active.
    The Pub/Sub emulator serves any pull: the stack first checks each active delivery's key
    against its subscription's policy (devstack/pubsub_iam.py)."""
    import logging

    from devstack.pubsub_iam import require_consume
    from gateway_agent.__main__ import JsonFormatter
    from gateway_agent.agent import Agent
    from gateway_agent.config import parse

    handler = logging.FileHandler(log_dir / "gateway-agent.log")
    handler.setFormatter(JsonFormatter())
    agent_log = logging.getLogger("gateway_agent")
    agent_log.handlers[:], agent_log.propagate = [handler], False
    agent_log.setLevel(logging.INFO)

    cfg = {"job_deliveries": [{"name": gw["name"], "project_id": PROJECT, "subscription_id": gw["pubsub_subscription_id"],
                               "result_endpoint_url": result_url, "result_endpoint_secure_key": gw["result_key"].decode(),
                               "service_account_json": json.dumps(gw["sa_key"]), "active": key == "main"}
                              for key, gw in gateways.items()],
           "max_concurrent_jobs": 4, "network_timeout_seconds": 3, "dimse_timeout_seconds": 10, "work_dir": str(log_dir),
           "pubsub_endpoint": os.environ["PUBSUB_EMULATOR_HOST"], "storage_endpoint": os.environ["STORAGE_EMULATOR_HOST"],
           "storage_commitment": {"ae_title": "GW_SCU", "host": "127.0.0.1", "port": commit_port, "timeout_seconds": 20}}
    config = parse(cfg)
    for delivery in config.active_deliveries:
        require_consume(policies, delivery.service_account_info, delivery.subscription_path)
    return _AgentService(Agent(config).start())


def _jobs(store) -> list[dict]:
    return [d.to_dict() for d in store._db.collection("facility_groups").document(FG).collection("jobs").stream()]


def _wait(check, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if check():
            return
        time.sleep(0.25)
    raise RuntimeError(f"timed out waiting for {what}")


def _http(method: str, url: str) -> Any:
    req = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def run(quiet: bool = False, log_dir: Optional[Path] = None, orthanc: bool = False, serve: bool = False,
        on_ready: Optional[Callable[[dict], None]] = None) -> dict:
    """``serve``: keep the stack running after the report until Ctrl-C. ``on_ready``: called with
    the summary while everything still runs (the demo's test looks at the console through it)."""
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, flush=True))
    log_dir = log_dir or Path(os.environ.get("ARCHSYNC_LOG_DIR", "/tmp/archsync-demo-logs"))
    started: list[processes.Service] = []
    saved_env = {k: os.environ.get(k) for k in ("FIRESTORE_EMULATOR_HOST", "PUBSUB_EMULATOR_HOST", "STORAGE_EMULATOR_HOST")}
    try:
        say("Starting the Firestore and Pub/Sub emulators, the GCS emulator and the IAM stand-ins ...")
        from devstack.gcs import emulator_url, start_gcs
        from devstack.iam_standin import IamStandIn
        from devstack.infra_grants import seed_bucket_grants
        from devstack.strict import start_strict_storage

        fs, ps, gcs = processes.start_firestore(log_dir), processes.start_pubsub(log_dir), start_gcs(log_dir)
        started += [fs, ps, gcs]
        iam = IamStandIn().start()
        started.append(iam)
        # Cloud Storage as strict as production (issue 12): every request needs a token from the
        # IAM stand-in; each function runs as its own account with infra/'s grants, each gateway
        # with its downloaded key and what provisioning grants it.
        function_keys = log_dir / "function-keys"
        bucket_iam, owner = start_strict_storage(iam, emulator_url(gcs), function_keys)
        started.append(bucket_iam)
        os.environ.update({"FIRESTORE_EMULATOR_HOST": fs.host, "PUBSUB_EMULATOR_HOST": ps.host,
                           "STORAGE_EMULATOR_HOST": bucket_iam.url})
        # The platform's identity provider, local: signs the administrator's JWTs and serves the
        # console's sign-in (OAuth authorization code + PKCE; devstack/idp.py, docs/console.md).
        from devstack.idp import DevIdp, User

        admin_user = User("demo-admin", "Demo Admin", (FG,))
        idp = DevIdp(users=(admin_user,)).start()
        started.append(idp)
        env = {"FIRESTORE_EMULATOR_HOST": fs.host, "PUBSUB_EMULATOR_HOST": ps.host, "STORAGE_EMULATOR_HOST": bucket_iam.url,
               "ARCHSYNC_LOCAL_CREDENTIALS_DIR": str(function_keys),
               "ARCHSYNC_PROJECT_ID": PROJECT, "ARCHSYNC_DEAD_LETTER_TOPIC": DEAD_LETTER_TOPIC,
               "ARCHSYNC_KEY_BUCKET": KEY_BUCKET, "ARCHSYNC_OBJECTS_BUCKET": OBJECTS_BUCKET,
               "ARCHSYNC_STUDY_BUCKET": STUDIES_BUCKET,
               "ARCHSYNC_IAM_EMULATOR_HOST": iam.address, "ARCHSYNC_STORAGE_IAM_EMULATOR_HOST": bucket_iam.url,
               "ARCHSYNC_ADMIN_JWT_PUBLIC_KEYS": idp.public_pem, "ARCHSYNC_ADMIN_JWT_AUDIENCE": idp.AUDIENCE,
               "ARCHSYNC_ADMIN_JWT_ISSUER": idp.ISSUER, "ARCHSYNC_CONSOLE_AUTHORIZE_URL": idp.authorize_url,
               "ARCHSYNC_CONSOLE_TOKEN_URL": idp.token_url, "ARCHSYNC_CONSOLE_CLIENT_ID": idp.CLIENT_ID, **TIMING}
        say("Starting the functions under functions-framework ...")
        fns = {name: processes.start_function(name, env, log_dir) for name in FUNCTIONS}
        started += fns.values()

        from google.cloud import firestore, pubsub_v1, storage

        from shared.adapters.firestore_admin import FirestoreAdminStore

        publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
        store = FirestoreAdminStore(firestore.Client(project=PROJECT))
        gcs_client = storage.Client(project=PROJECT, credentials=owner)
        for bucket in (KEY_BUCKET, OBJECTS_BUCKET, STUDIES_BUCKET):
            gcs_client.create_bucket(bucket)
        seed_bucket_grants(bucket_iam, PROJECT, {"keys": KEY_BUCKET, "generated": OBJECTS_BUCKET, "study": STUDIES_BUCKET})

        def topic(name: str) -> str:
            path = publisher.topic_path(PROJECT, name)
            publisher.create_topic(name=path)
            return path

        dlq = topic(DEAD_LETTER_TOPIC)
        topic("archsync-gateway-dead-letter")
        subscriber.create_subscription(name=subscriber.subscription_path(PROJECT, "dead-letter-audit"), topic=dlq)
        exam_topic = topic(EXAM_TOPIC)
        facility_topic = topic(FACILITY_TOPIC)
        subscriber.create_subscription(request={
            "name": subscriber.subscription_path(PROJECT, "facility-changed-push"), "topic": facility_topic,
            "push_config": {"push_endpoint": f"http://{fns['on_facility_changed'].host}/projects/{PROJECT}/topics/{FACILITY_TOPIC}"},
            "ack_deadline_seconds": 30,
            "dead_letter_policy": {"dead_letter_topic": dlq, "max_delivery_attempts": 5},
        })
        # Push delivery as in production (infra/pubsub.tf): the topic in the path makes the
        # CloudEvent source complete; a dead-letter policy bounds redelivery of failures.
        subscriber.create_subscription(request={
            "name": subscriber.subscription_path(PROJECT, "exam-status-push"), "topic": exam_topic,
            "push_config": {"push_endpoint": f"http://{fns['on_exam_status_changed'].host}/projects/{PROJECT}/topics/{EXAM_TOPIC}"},
            "ack_deadline_seconds": 30,
            "dead_letter_policy": {"dead_letter_topic": dlq, "max_delivery_attempts": 5},
        })
        from devstack.processes import free_port

        commit_port = free_port()
        say(f"Starting three archives ({'Orthanc' if orthanc else 'embedded pynetdicom SCPs'}) ...")
        archives = _start_archives(orthanc, commit_port, log_dir)
        started += archives.values()
        say("Writing the exams' studies to the platform's study storage (GCS emulator) ...")
        _write_studies(gcs_client)
        admin = f"http://{fns['admin_api'].host}"
        console_url = f"{admin}/console/"
        idp.register_redirect(console_url)
        token = idp.token(admin_user)
        say(f"The platform publishes facility group {FG} and its facilities (facility-changed.v1, Pub/Sub push) ...")
        _sync_facilities(publisher, facility_topic, admin, token, say)
        say(f"Configuring facility group {FG} through the admin API (seed 000 Steps 1-2) ...")
        configured = _configure(admin, token, archives, say)
        say("Each gateway's downloaded key against the local stack's token endpoint and Cloud Storage ...")
        gateway_auth = _authenticate_gateways(iam, configured["gateways"], say)
        cross_group = _cross_group_read(gcs_client, configured["gateways"]["main"], say)

        events = _events(datetime.now(timezone.utc))  # after the destinations exist: no retroactive archiving
        say(f"Replaying {len(events)} exam status events and 1 malformed message through Pub/Sub push ...")
        for e in events:
            publisher.publish(exam_topic, json.dumps(e).encode()).result()
        publisher.publish(exam_topic, b'{"schema_version": "1", "event_type": "exam.status_changed"}').result()
        _wait(lambda: len(_jobs(store)) >= EXPECTED_JOBS, 180, "the archive jobs to be queued")
        lock_url = f"http://{fns['lock_status'].host}/v1/facility-groups/{FG}/exams/%s/lock"
        observed_locks = {e: _http("GET", lock_url % e) for e in sorted({j["exam_id"] for j in _jobs(store)})}

        say("Linking the gateways (seed 000 Step 3) and starting the reference gateway agent ...")
        agent = _start_agent(configured["gateways"], f"http://{fns['on_job_result'].host}/", commit_port, log_dir,
                             iam.policies)
        started.append(agent)
        main_done = lambda: [j for j in _jobs(store) if j["gateway_id"] == configured["gateways"]["main"]["id"]  # noqa: E731
                             and j["state"] in ("COMPLETED", "FAILED")]
        _wait(lambda: len(main_done()) >= 12, 240, "the main gateway's jobs to finish")

        say("Fixing the legacy archive's called AE title through the admin API and retrying its failed jobs ...")
        legacy = configured["destinations"]["legacy"]
        status, _ = _http_json("PATCH", f"{admin}/v1/facility-groups/{FG}/destinations/{legacy['id']}",
                               {"called_ae_title": "LEGACY_AR"}, token)
        assert status == 200
        failed_before = sorted(j["failure_reason"] for j in _jobs(store) if j["destination_id"] == legacy["id"])
        for j in _jobs(store):
            if j["destination_id"] == legacy["id"] and j["state"] == "FAILED":
                status, _ = _http_json("POST", f"{admin}/v1/facility-groups/{FG}/jobs/{j['id']}/retry", None, token)
                assert status == 200
        _wait(lambda: all(j["state"] == "COMPLETED" for j in _jobs(store) if j["destination_id"] == legacy["id"]), 180,
              "the retried jobs")

        say("The east gateway's job delivery is not active: waiting for its jobs' result window, then running the sweeper ...")
        # Sweep until every east job has timed out (their deadlines differ by their queue times).
        east_ids = {j["id"] for j in _jobs(store) if j["destination_id"] == configured["destinations"]["east"]["id"]}
        timed_out: list = []

        def swept_all() -> bool:
            timed_out.extend(_http("POST", f"http://{fns['sweep_jobs'].host}/")["timed_out"])
            return east_ids <= set(timed_out)

        _wait(swept_all, 180, "the east jobs' result window")
        sweep = {"timed_out": timed_out}

        summary = _summary(store, subscriber, lock_url, observed_locks, sweep)
        summary["gateway_auth"] = gateway_auth
        summary["cross_group_read"] = cross_group
        summary["storage_reads_by_gateway"] = _reads_by_gateway(bucket_iam, configured["gateways"])
        summary["legacy_failures_before_fix"] = failed_before
        summary["archives"] = {key: len(a.study_instances_all()) for key, a in archives.items()}
        summary["console_url"] = console_url
        _print(summary, say)
        say("\n=== Gateway Management console ===")
        say(f"  console:      {console_url}")
        say(f"  sign in:      {console_url}#sign-in   (local identity provider: 'Sign in as Demo Admin')")
        if on_ready is not None:
            on_ready(summary)
        if serve:
            say("  Everything keeps running (emulators, functions, archives, agent) until Ctrl-C ...")
            _serve_until_interrupted()
        else:
            say("  (the stack stops now: ./run demo --serve keeps it running to click through the console)")
        return summary
    finally:
        for svc in reversed(started):
            svc.stop()
        for k, v in saved_env.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
        say("Stopped all emulators and functions.")


def _serve_until_interrupted() -> None:
    """Wait for Ctrl-C (SIGINT) or SIGTERM, then return so every process is stopped. Both are
    handled explicitly: a shell that starts the demo in the background ignores SIGINT for it."""
    import signal
    import threading

    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not stop.wait(1):
            pass
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _summary(store, subscriber, lock_url: str, observed_locks: dict, sweep: dict) -> dict:
    db = store._db
    jobs = [d.to_dict() for d in db.collection("facility_groups").document(FG).collection("jobs").stream()]
    per_dest: dict[str, Counter] = defaultdict(Counter)
    for j in jobs:
        per_dest[j["destination_name"]][j["state"]] += 1
    exams = sorted({j["exam_id"] for j in jobs})
    names = {d.id: d.name for d in store.list_destinations(FG)}
    archive = {e: {names[a.destination_id]: a.state.value for a in store.archive_states(FG, e)} for e in exams}
    locks_now = {e: _http("GET", lock_url % e)["locked"] for e in exams}
    dl = subscriber.pull(request={"subscription": subscriber.subscription_path(PROJECT, "dead-letter-audit"),
                                  "max_messages": 10, "return_immediately": True}, timeout=10)
    return {
        "facilities": {f.id: (f.name, f.send_adt) for f in store.facility_records(FG)},
        "jobs": len(jobs),
        "jobs_per_destination": {d: dict(c) for d, c in sorted(per_dest.items())},
        "archive_states": archive,
        "locks_seen_during_jobs": {e: v["locked"] for e, v in sorted(observed_locks.items())},
        "lock_message": next((v["message"] for v in observed_locks.values() if v["locked"]), None),
        "locks_held_at_end": sorted(e for e, held in locks_now.items() if held),
        "failure_reasons": sorted({j["failure_reason"] for j in jobs if j.get("failure_reason")}),
        "timed_out": sweep.get("timed_out", []),
        "dead_lettered": [m.message.attributes["reason"] for m in dl.received_messages],
    }


def _print(s: dict, say) -> None:
    say("\n=== Credentials and Cloud Storage IAM on the strict local stack ===")
    for name, principal in s["gateway_auth"].items():
        reads = s["storage_reads_by_gateway"].get(name, {})
        say(f"  {name}: own key -> {principal}; object reads allowed {reads.get('allowed', 0)}, "
            f"refused {reads.get('refused', 0)}")
    say(f"  cross-group read by the main gateway: {s['cross_group_read']}")
    say("\n=== Jobs per destination and state ===")
    for dest, states in s["jobs_per_destination"].items():
        say(f"  {dest:22s} " + ", ".join(f"{k} {v}" for k, v in sorted(states.items())))
    say(f"  total jobs: {s['jobs']}  (the retired VNA is inactive and the research archive has auto archive off: no jobs)")
    say("\n=== Archive state per exam and destination (no entry = NOT ARCHIVED) ===")
    for exam, states in s["archive_states"].items():
        say(f"  {exam}: " + ", ".join(f"{d}={v}" for d, v in sorted(states.items())))
    say("\n=== Order locks (archive triggered at Pending/Inflight) ===")
    held = [e for e, v in s["locks_seen_during_jobs"].items() if v]
    say(f"  held while the jobs were queued: {', '.join(held) or 'none'}")
    say(f"  message shown: {s['lock_message']}")
    say(f"  still held at the end: {', '.join(s['locks_held_at_end']) or 'none (all released)'}")
    say("\n=== Instances held by each archive (sent by the reference gateway agent) ===")
    say("  " + ", ".join(f"{k} {v}" for k, v in s["archives"].items()))
    say("\n=== Legacy archive before its called AE title was fixed (then retried from the admin API) ===")
    for r in sorted(set(s["legacy_failures_before_fix"])):
        say(f"  - {r}")
    say("\n=== Failures ===")
    for r in s["failure_reasons"]:
        say(f"  - {r}")
    say(f"  timed out by the sweeper (archive state UNKNOWN): {', '.join(s['timed_out']) or 'none'}")
    say(f"\n=== Dead-lettered messages: {len(s['dead_lettered'])} ===")
    for r in s["dead_lettered"]:
        say(f"  - {r}")


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="also print the summary as JSON")
    parser.add_argument("--orthanc", action="store_true", help="archive into Orthanc instead of the embedded pynetdicom SCPs")
    parser.add_argument("--serve", action="store_true",
                        help="keep the stack running after the run, for the Gateway Management console, until Ctrl-C")
    args = parser.parse_args(argv)
    summary = run(orthanc=args.orthanc, serve=args.serve)
    if args.json:
        print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Schema-driven fuzzing of the admin API from its OpenAPI document (schemathesis generates the
requests, hypothesis drives them): never a 5xx, never a partial write on an error, never an
effect on another facility group, and successful answers match their documented schema."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import schemathesis
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.domain.models import Facility, FacilityGroup
from tests.support import assert_matches_openapi, load_app

DOC = yaml.safe_load((Path(__file__).resolve().parents[2] / "shared/contracts/openapi.yaml").read_text())
SCHEMA = schemathesis.openapi.from_dict(DOC)
OPERATIONS = [r.ok() for r in SCHEMA.get_all_operations() if type(r).__name__ == "Ok"]
ADMIN = {f"{op.method.upper()} {op.path}": op for op in OPERATIONS if "admin" in (op.tags or [])}
EXAMPLES = 30


def _state(stack) -> str:
    """Everything a request could change: both groups' records and the cloud resources."""
    out = {}
    for fg in ("fg-1", "fg-2"):
        group = stack.db.collection("facility_groups").document(fg)
        for coll in ("gateways", "destinations"):
            out[f"{fg}/{coll}"] = sorted((d.id, json.dumps(d.to_dict(), default=str, sort_keys=True))
                                         for d in group.collection(coll).stream())
    iam = stack.emulators["iam"]
    out["service_accounts"] = sorted(iam.service_accounts)
    out["keys"] = sorted(k for ks in iam.keys.values() for k in ks)
    out["vault"] = sorted(b.name for b in stack.gcs.list_blobs(stack.key_bucket))
    topics = stack.publisher_client.list_topics(request={"project": f"projects/{stack.project}"})
    out["topics"] = sorted(t.name for t in topics)
    return json.dumps(out, sort_keys=True)


def _fg2_state(stack) -> str:
    return json.dumps({k: v for k, v in json.loads(_state(stack)).items() if k.startswith("fg-2")}, sort_keys=True)


@pytest.mark.parametrize("name", sorted(ADMIN))
def test_fuzz_admin_operation(name, stack, admin_env):
    for fg, facs in (("fg-1", ("fac-a", "fac-b")), ("fg-2", ("fac-x",))):
        stack.store.save_facility_group(FacilityGroup(fg, fg))
        for f in facs:
            stack.store.save_facility(Facility(f, fg, f"Facility {f}"))
    stack.topic("archsync-gateway-dead-letter")
    client = load_app("admin_api")
    auth = {"Authorization": f"Bearer {admin_env.token(['fg-1'])}"}
    # Real objects to aim at, in both groups (the caller administers fg-1 only).
    ids = {}
    for fg in ("fg-1", "fg-2"):
        h = {"Authorization": f"Bearer {admin_env.token([fg])}"}
        gw = client.post(f"/v1/facility-groups/{fg}/gateways", json={"name": f"gw {fg}"}, headers=h).json
        d = client.post(f"/v1/facility-groups/{fg}/destinations", headers=h, json={
            "name": "d", "type": "DICOM_SCP", "host": "10.0.0.1", "port": 104, "called_ae_title": "A",
            "calling_ae_title": "B", "gateway_id": gw["id"]}).json
        ids[fg] = (gw["id"], d["id"])
    op = ADMIN[name]
    fg2_before = _fg2_state(stack)

    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
    @given(case=op.as_strategy(), fg=st.sampled_from(["fg-1", "fg-2", None]), real=st.booleans())
    def run(case, fg, real):
        params = dict(case.path_parameters or {})
        if fg is not None:
            params["facility_group_id"] = fg
            if real:  # aim at existing objects of that group
                gw_id, d_id = ids[fg]
                params.update({k: v for k, v in (("gateway_id", gw_id), ("destination_id", d_id)) if k in params})
        path = op.path.format(**params)
        query = {k: str(v) for k, v in (case.query or {}).items()} if not case.query.__class__.__name__ == "NotSet" else {}
        body = None if case.body.__class__.__name__ == "NotSet" else case.body
        before = _state(stack)
        r = client.open(path, method=case.method, headers=auth, query_string=query,
                        data=json.dumps(body) if body is not None else None, content_type="application/json")
        assert r.status_code < 500, (path, body, r.get_data(as_text=True))
        if r.status_code >= 400:
            assert r.is_json and set(r.json) == {"error"}, r.get_data(as_text=True)
            if r.status_code != 503:
                assert _state(stack) == before, f"partial write on {r.status_code}: {path} {body}"
        elif r.is_json and r.status_code != 204 and "key" not in path:
            assert_matches_openapi(r.json, op.path, op.method.lower(), str(r.status_code))
        if "{facility_group_id}" not in op.path:  # GET /v1/facility-groups: the caller's own groups only
            assert r.status_code != 200 or [g["id"] for g in r.json["facility_groups"]] == ["fg-1"], r.json
        elif params.get("facility_group_id") != "fg-1":
            assert r.status_code == 404, (path, r.status_code)

    run()
    assert _fg2_state(stack) == fg2_before  # nothing the fg-1 caller did reached fg-2

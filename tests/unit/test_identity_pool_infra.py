"""infra/identity_pool.tf (docs/scale.md, "Service accounts"): the gateway provisioners may create
and key service accounts in every project of the identity pool, whose IAM and Pub/Sub APIs are on,
and the functions learn the pool from ARCHSYNC_GATEWAY_IDENTITY_PROJECTS."""
from __future__ import annotations

from tests.unit.test_infra import _locals, _resources, _unquote, _variables


def test_the_provisioners_may_manage_accounts_and_keys_in_every_pool_project():
    grant = _resources("google_project_iam_member")["identity_pool"]
    assert grant["for_each"] == "${local.gateway_identity_pool_grants}"
    assert grant["project"] == "${each.value.project}" and grant["role"] == "${each.value.role}"
    assert grant["member"] == "${google_service_account.function[each.value.name].member}"
    grants = _locals()["gateway_identity_pool_grants"]
    # Every pool project x every provisioner (local.gateway_provisioners: admin_api, sweep_jobs) x both roles.
    assert "var.gateway_identity_projects" in grants and "local.gateway_provisioners" in grants
    assert "local.gateway_identity_pool_roles" in grants
    assert {_unquote(r) for r in _locals()["gateway_identity_pool_roles"]} == {
        "roles/iam.serviceAccountAdmin", "roles/iam.serviceAccountKeyAdmin"}
    # The same roles the provisioners hold in this project for the same job (functions.tf).
    assert {_unquote(r) for r in _locals()["gateway_identity_pool_roles"]} < {
        _unquote(r) for r in _locals()["gateway_provisioning_project_roles"]}


def test_pool_projects_have_the_iam_and_pubsub_apis_on():
    services = _resources("google_project_service")["identity_pool"]
    assert services["for_each"] == "${local.gateway_identity_pool_services}"
    assert services["disable_on_destroy"] in (False, "false")
    listed = _locals()["gateway_identity_pool_services"]
    assert "var.gateway_identity_projects" in listed
    assert "iam.googleapis.com" in listed and "pubsub.googleapis.com" in listed


def test_the_pool_is_a_variable_passed_to_the_functions():
    variable = _variables()["gateway_identity_projects"]
    assert variable["type"] == "${list(string)}" and variable["default"] == []

"""The link test against the local stack, finding by finding (issue 14 item 2): each failing link
is reported against the field to fix with the seed's hint, and a working link reports nothing.
The Result Endpoint probe writes nothing in the cloud."""
from __future__ import annotations

import dataclasses

import pytest

from devstack.archive_scp import EmbeddedArchive
from devstack.processes import free_port
from devstack.pubsub_iam import require_consume
from gateway_agent.config import parse
from gateway_agent.linktest import LinkTest
from tests.e2e.harness import E2E


@pytest.fixture
def world(stack, admin_env, tmp_path):
    archive = EmbeddedArchive("ARCHIVE").start()
    e2e = E2E(stack, tmp_path, admin_env, host="127.0.0.1", port=archive.port, called_ae_title="ARCHIVE")
    policies = stack.emulators["iam"].policies
    test = LinkTest(stack.emulators["pubsub"], timeout=10,
                    pull_guard=lambda d: require_consume(policies, d.service_account_info, d.subscription_path))
    yield e2e, test, parse(e2e.config()).deliveries[0]
    e2e.close()
    archive.stop()


def test_a_working_link_reports_nothing_and_the_probe_writes_nothing(world):
    e2e, test, delivery = world
    before = {d.id: d.to_dict() for d in e2e.stack.db.collection_group("jobs").stream()}
    assert test.run(delivery) == {}
    assert {d.id: d.to_dict() for d in e2e.stack.db.collection_group("jobs").stream()} == before


def test_a_wrong_secure_key_is_reported_on_its_field(world):
    _, test, delivery = world
    problems = test.run(dataclasses.replace(delivery, result_endpoint_secure_key="not-the-key-of-this-gateway"))
    assert list(problems) == ["result_endpoint_secure_key"]
    assert "Result Endpoint Secure Key incorrect" in problems["result_endpoint_secure_key"]
    assert "Confirm the Result Endpoint values with the Technical support team" in problems["result_endpoint_secure_key"]


@pytest.mark.parametrize("where", ["nothing listening", "another service"])
def test_a_wrong_result_endpoint_url_is_reported_on_its_field(world, where):
    e2e, test, delivery = world
    url = f"http://127.0.0.1:{free_port()}/" if where == "nothing listening" else e2e.stack.emulators["iam"].token_url
    problems = test.run(dataclasses.replace(delivery, result_endpoint_url=url))
    assert list(problems) == ["result_endpoint_url"] and "Result Endpoint URL incorrect" in problems["result_endpoint_url"]


def test_another_gateways_key_may_not_consume_this_subscription(world):
    e2e, test, delivery = world
    other = e2e.stack.emulators["iam"].mint_key_info(e2e.stack.project, "archsync-gw-ffffffffff")
    problems = test.run(dataclasses.replace(delivery, service_account_info=other))
    assert "may not consume" in problems["subscription_id"] and "different gateways" in problems["subscription_id"]

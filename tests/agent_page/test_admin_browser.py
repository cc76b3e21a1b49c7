"""Seed 000 Step 3 through the agent's admin page, in real headless Chromium, against the local
stack (issue 14 items 2 and 3): sign in (a bad password refused), Add Job Delivery with a bad SA
JSON and a wrong subscription (each shows the seed's hint next to its field), fix them, the link
test passes against the real token endpoint, Pub/Sub emulator and Result Endpoint, the agent
pulls and archives a job without a restart, the recent jobs show it, secrets are not shown back,
and deactivating stops the pull. Each test saves screenshots under test-output/<module>/<test>/."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from devstack.archive_scp import EmbeddedArchive
from devstack.pubsub_iam import require_consume
from gateway_agent.admin.config_file import ConfigFile
from gateway_agent.admin.server import AdminServer
from gateway_agent.agent import Agent
from gateway_agent.config import load
from tests.agent_page.browser import Browser, output_dir
from tests.agent_page.page_support import PASSWORD, write_config
from tests.e2e.harness import E2E
from tests.support import RESULT_KEY, STUDY_UID, local_key_file, wait_for


@pytest.fixture
def out(request) -> Path:
    return output_dir(request)


@pytest.fixture
def browser():
    b = Browser()
    yield b
    b.close()


@pytest.fixture
def archive():
    a = EmbeddedArchive("ARCHIVE").start()
    yield a
    a.stop()


@pytest.fixture
def world(stack, admin_env, archive, tmp_path):
    """The cloud (a provisioned gateway, its destination, the Result Endpoint over HTTP) and an
    agent started with no job delivery, with its admin page on loopback."""
    # A 10 s ack deadline and lease extension (production: 300 s): the Pub/Sub emulator may still
    # hand a message to a streaming pull the agent has just closed (a deactivated delivery); it
    # comes back once that lease lapses, which the last check of the walk-through waits for.
    e2e = E2E(stack, tmp_path, admin_env, host="127.0.0.1", port=archive.port, called_ae_title="ARCHIVE",
              provisioning={"ack_deadline_seconds": 10})
    settings = {k: v for k, v in e2e.config().items() if k != "job_deliveries"}
    settings["lease_extension_seconds"] = 10
    path = write_config(tmp_path / "agent.json", [], **settings)
    policies = stack.emulators["iam"].policies
    agent = Agent(load(path), pull_guard=lambda d: require_consume(policies, d.service_account_info, d.subscription_path))
    agent.start()
    page = AdminServer(agent, ConfigFile(path), load(path).admin_page).start()
    yield e2e, agent, page, path
    page.stop()
    agent.stop()
    e2e.close()


def sign_in(browser: Browser, url: str, password: str) -> None:
    browser.driver.get(url + "/signin")
    browser.fill("#password", password)
    browser.click("#signin")


def test_link_the_gateway_through_its_admin_page(world, browser, out):
    e2e, agent, page, path = world
    url = page.url

    # Sign in: a bad password is refused.
    sign_in(browser, url, "not the password")
    browser.wait_text("#signin-error", "Wrong password")
    browser.screenshot(out, "01-bad-password")
    sign_in(browser, url, PASSWORD)
    browser.wait_text("h1", "Platform")

    # Add Job Delivery with the seed's fields: a key no token endpoint knows, a subscription typo.
    browser.click("#add-delivery")
    browser.wait_text("h1", "Add Job Delivery")
    wrong_key = local_key_file(e2e.sa_key["client_email"]) | {"token_uri": e2e.sa_key["token_uri"]}
    secure_key = RESULT_KEY.decode()
    browser.fill("#name", "Main datacenter")
    browser.fill("#project_id", e2e.stack.project)
    browser.fill("#subscription_id", e2e.gw.subscription_id + "x")
    browser.fill("#result_endpoint_url", e2e.result_endpoint.url)
    browser.fill("#result_endpoint_secure_key", secure_key)
    browser.fill("#service_account_json", json.dumps(wrong_key, indent=2))
    browser.click("#save")
    browser.wait_text("#service_account_json-error", "SA JSON key incorrect or expired")
    browser.wait_text("#service_account_json-error", "Re-download the SA JSON key from the Gateways tab")
    browser.screenshot(out, "02-bad-sa-json-hint")
    assert json.loads(path.read_text())["job_deliveries"] == []  # nothing saved

    # The right key (the downloaded one); the subscription is still wrong. The secure key was kept
    # from the failed attempt (not shown back): left blank.
    assert secure_key not in browser.driver.page_source and wrong_key["private_key_id"] not in browser.driver.page_source
    browser.find("#result_endpoint_secure_key-kept")
    browser.fill("#service_account_json", json.dumps(e2e.sa_key, indent=2))
    browser.click("#save")
    browser.wait_text("#subscription_id-error", "Pub/Sub Subscription ID incorrect")
    browser.wait_text("#subscription_id-error", "Verify the Subscription ID from the Gateways table")
    assert not browser.driver.find_elements("css selector", "#service_account_json-error")
    browser.screenshot(out, "03-wrong-subscription-hint")
    assert json.loads(path.read_text())["job_deliveries"] == []

    # Fixed: the link test passes (token, pull, signed probe), the delivery is saved and pulled.
    browser.fill("#subscription_id", e2e.gw.subscription_id)
    browser.click("#save")
    browser.wait_text(".flash.ok", "saved and linked")
    saved = json.loads(path.read_text())["job_deliveries"]
    assert [(d["name"], d["subscription_id"], d["active"]) for d in saved] == [("Main datacenter", e2e.gw.subscription_id, True)]
    assert saved[0]["service_account_json"] == e2e.sa_key and saved[0]["result_endpoint_secure_key"] == secure_key
    browser.refresh_until_text(url + "/platform", "#delivery-0 .status", "pulling")
    browser.screenshot(out, "04-linked-and-pulling")

    # The agent pulls jobs without a restart: an exam completes, its archive job is done.
    e2e.study(STUDY_UID, 3)
    e2e.exam_completed("exam-1", STUDY_UID)
    job = e2e.wait_job("ARCHIVE", {"COMPLETED"}, timeout=120)
    browser.refresh_until_text(url + "/platform", "#recent-jobs .state", "COMPLETED", timeout=60)
    assert job["id"] in browser.find("#recent-jobs").text
    browser.screenshot(out, "05-recent-job-completed")

    # Secrets are not shown back on edit.
    browser.click("#edit-0")
    browser.wait_text("h1", "Edit Job Delivery")
    source = browser.driver.page_source
    assert secure_key not in source and e2e.sa_key["private_key_id"] not in source
    assert e2e.sa_key["private_key"].splitlines()[1] not in source
    assert browser.find("#result_endpoint_secure_key").get_attribute("value") == ""
    assert browser.find("#service_account_json").get_attribute("value") == ""
    browser.find("#service_account_json-kept")
    browser.screenshot(out, "06-edit-secrets-hidden")

    # Deactivate: the pull stops; a new job stays in the subscription for whoever pulls it next.
    browser.driver.get(url + "/platform")
    browser.click("#deactivate-0")
    browser.wait_text(".flash.ok", "deactivated")
    browser.wait_text("#delivery-0 .status", "inactive")
    browser.screenshot(out, "07-deactivated")
    assert json.loads(path.read_text())["job_deliveries"][0]["active"] is False
    wait_for(lambda: not agent.delivery_status(), 60, "the pull to stop")
    e2e.study("1.2.826.0.1.3680043.8.498.2", 1)
    e2e.exam_completed("exam-2", "1.2.826.0.1.3680043.8.498.2")
    left = e2e.stack.pull(e2e.gw.subscription_id, expect=1, wait=120)
    assert [json.loads(m.data)["study"]["study_instance_uid"] for m in left] == ["1.2.826.0.1.3680043.8.498.2"]
    assert browser.console_errors() == []  # no CSP violation, no script error


def test_a_script_in_a_delivery_name_or_a_job_reason_renders_as_text(tmp_path, browser, out):
    key = local_key_file("archsync-gw-0123456789@test-project.iam.gserviceaccount.com")
    path = write_config(tmp_path / "agent.json", [{
        "name": "<script>window.__xss_name = 1</script>Main", "project_id": "test-project",
        "subscription_id": "gateway-pubsub-gw-0123456789-sub", "result_endpoint_url": "https://results.example.org/job-results",
        "result_endpoint_secure_key": "k" * 40, "service_account_json": key, "active": False}])
    agent = Agent(load(path))
    page = AdminServer(agent, ConfigFile(path), load(path).admin_page).start()
    try:
        job = {"job_id": "job-1", "attempt": 1, "job_type": "ARCHIVE", "destination": {"name": "<b>VNA</b>"}}
        agent.recent.started("<script>window.__xss_delivery = 1</script>", job)
        agent.recent.finished(job, "FAILED", "<script>window.__xss_reason = 1</script><img src=x onerror='window.__xss_img=1'>")
        sign_in(browser, page.url, PASSWORD)
        browser.wait_text("#delivery-0 .name", "<script>window.__xss_name = 1</script>Main")
        browser.wait_text("#recent-jobs .reason", "<script>window.__xss_reason = 1</script><img src=x")
        browser.wait_text("#recent-jobs", "<b>VNA</b>")
        browser.screenshot(out, "01-scripts-as-text")
        ran = browser.driver.execute_script(
            "return [window.__xss_name, window.__xss_delivery, window.__xss_reason, window.__xss_img]")
        assert ran == [None, None, None, None]
        assert not browser.driver.find_elements("css selector", "#recent-jobs img, #recent-jobs b, main script")
    finally:
        page.stop()

"""The Gateway Management console in real headless Chromium against the local stack (issue 14):
seed 000 Step 1 (create a gateway, download its key, a provisioning failure rolled back, deletion
refused, key rotation), Step 2 (a destination refused field by field, then saved; the inline
Active toggle), and Monitoring Archive Jobs (a job from Queued to Completed through the reference
agent, one failed and retried from the Jobs tab, bulk retry by filter, counts, CSV, chart, exam
view with the order lock), and a patient name holding <script> rendered as text. Each test saves
screenshots under test-output/test_console/<test>/."""
from __future__ import annotations

import csv
import io
import json
import re
from html.parser import HTMLParser

import grpc
import pytest
import requests
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

from shared.domain.models import LOCK_MESSAGE
from tests.browser.support import sign_in, until

pytestmark = pytest.mark.timeout(600)


# -- what the server sends ------------------------------------------------------------------------

class _Scripts(HTMLParser):
    def __init__(self):
        super().__init__()
        self.inline, self.handlers, self.srcs = [], [], []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "script":
            (self.srcs if a.get("src") else self.inline).append(a)
        self.handlers += [k for k in a if k.startswith("on")]


def test_console_is_served_with_a_strict_policy_and_no_inline_script(local_stack):
    r = requests.get(local_stack.console_url, timeout=30)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/html")
    csp = r.headers["Content-Security-Policy"]
    assert "script-src 'self';" in csp and "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert "frame-ancestors 'none'" in csp and f"connect-src 'self' {local_stack.idp.url};" in csp
    assert r.headers["X-Content-Type-Options"] == "nosniff" and r.headers["Referrer-Policy"] == "no-referrer"
    page = _Scripts()
    page.feed(r.text)
    assert page.srcs and not page.inline and not page.handlers
    for name in ("app.js", "jobs.js", "console.css"):
        f = requests.get(local_stack.console_url + name, timeout=30)
        assert f.status_code == 200 and "Content-Security-Policy" in f.headers, name
        assert "innerHTML" not in f.text and "insertAdjacentHTML" not in f.text and "eval(" not in f.text, name
    config = requests.get(local_stack.console_url + "config.json", timeout=30).json()
    assert config == {"authorize_url": local_stack.idp.authorize_url, "token_url": local_stack.idp.token_url,
                      "client_id": "archsync-console", "scope": "openid", "configured": True}
    for bad in ("..%2fmain.py", "%2e%2e%2fmain.py", "main.py", "nothing.js", "sub/dir.js", "index.html%00"):
        assert requests.get(local_stack.console_url + bad, timeout=30).status_code == 404, bad
    assert requests.post(local_stack.console_url, timeout=30).status_code == 405
    # The API itself is unchanged: no token, 401.
    assert requests.get(f"{local_stack.admin.url}/v1/facility-groups", timeout=30).status_code == 401


# -- seed 000 Step 1 ------------------------------------------------------------------------------

def _gateway_row(browser, name: str):
    return browser.wait(lambda d: next((r for r in d.find_elements(By.CSS_SELECTOR, "#gateways-table tbody tr")
                                        if r.find_elements(By.CSS_SELECTOR, "td") and
                                        r.find_elements(By.CSS_SELECTOR, "td")[0].text == name), None),
                        f"gateway row {name!r}")


def test_step1_create_a_gateway_download_its_key_and_the_refusals(local_stack, browser, out):
    sign_in(browser, local_stack.console_url)
    assert "code=" not in browser.driver.current_url  # the one-time code left the address bar
    token = browser.driver.execute_script("return sessionStorage.getItem('archsync.token')")
    assert token and "Pat Admin" == browser.text_of("#user")
    browser.click("#tab-gateways")
    # A provisioning failure: IAM refuses the key; everything is rolled back and the modal says so.
    local_stack.emulators["iam"].fail_next("CreateServiceAccountKey", grpc.StatusCode.UNAVAILABLE, times=20)
    browser.click("#new-gateway")
    browser.fill("#gateway-form [name=name]", "Doomed gateway")
    browser.click("#gateway-save")
    browser.wait_text("#gateway-form .form-error", "rolled back", timeout=120)
    browser.screenshot(out, "1-provisioning-rolled-back")
    assert local_stack.api("GET", "/gateways")[1]["gateways"] == []
    local_stack.emulators["iam"].reset()
    # Now for real: name, description, one facility.
    browser.fill("#gateway-form [name=name]", "Main datacenter gateway")
    browser.fill("#gateway-form [name=description]", "Rack 4")
    browser.find("#gateway-form [data-facilities] input[value=fac-a]").click()
    browser.click("#gateway-save")
    row = _gateway_row(browser, "Main datacenter gateway")
    cells = [c.text for c in row.find_elements(By.CSS_SELECTOR, "td")]
    [gw] = local_stack.api("GET", "/gateways")[1]["gateways"]
    assert cells[:6] == ["Main datacenter gateway", "Rack 4", gw["pubsub_subscription_id"], "Pat Admin", "Pat Admin",
                         "Main Hospital"]
    browser.screenshot(out, "2-gateway-created")
    # The SA JSON download icon: a real key file for the gateway's own service account.
    before = browser.files()
    row.find_element(By.CSS_SELECTOR, "button.sa-download").click()
    key = json.loads(browser.download("-service-account", ".json", before).read_text())
    assert key["type"] == "service_account" and key["client_email"] == gw["service_account_email"]
    # View details: rotation of the SA key (a new key, the old one revoked).
    row.find_element(By.CSS_SELECTOR, "button.view-details").click()
    browser.wait_text("#gateway-facts", gw["service_account_email"])
    browser.click("#gw-rotate-sa")
    browser.wait_text("#confirm-text", "Rotate the SA JSON key")
    browser.click("#confirm-ok")
    browser.wait_text("#gateway-details-message", "SA JSON key rotated")
    before = browser.files()
    browser.click("#gw-download-sa")
    rotated = json.loads(browser.download("-service-account", ".json", before).read_text())
    assert rotated["private_key_id"] != key["private_key_id"]
    browser.screenshot(out, "3-key-rotated")
    browser.driver.find_element(By.CSS_SELECTOR, "#gateway-details [data-close]").click()
    # Deletion refused with the seed's reason while a destination is linked.
    status, _ = local_stack.api("POST", "/destinations", {"name": "Linked", "type": "DICOM_SCP", "host": "10.0.0.9", "port": 104,
                                                          "called_ae_title": "VNA", "calling_ae_title": "GW", "gateway_id": gw["id"]})
    assert status == 201
    _gateway_row(browser, "Main datacenter gateway").find_element(By.CSS_SELECTOR, "button.view-details").click()
    browser.click("#gw-delete")
    browser.click("#confirm-ok")
    browser.wait_text("#gateway-details-message", "The gateway has linked destinations: remove all destinations linked to it first.")
    browser.screenshot(out, "4-deletion-refused")
    browser.driver.find_element(By.CSS_SELECTOR, "#gateway-details [data-close]").click()


# -- seed 000 Step 2 ------------------------------------------------------------------------------

def _row(browser, table: str, first_cell: str):
    def find(d):
        for r in d.find_elements(By.CSS_SELECTOR, f"{table} tbody tr"):
            cells = r.find_elements(By.CSS_SELECTOR, "td")
            if cells and cells[0].text == first_cell:
                return r
        return None
    return browser.wait(find, f"row {first_cell!r} in {table}")


def _gateway(local_stack, name: str, facilities: list[str]) -> dict:
    status, gw = local_stack.api("POST", "/gateways", {"name": name, "facility_ids": facilities})
    assert status == 201, gw
    return gw


def test_step2_a_destination_refused_field_by_field_then_saved_and_toggled(local_stack, browser, out):
    gw = _gateway(local_stack, "East clinic gateway", ["fac-b"])
    sign_in(browser, local_stack.console_url)
    browser.click("#tab-destinations")
    browser.click("#new-destination")
    form = "#destination-form"
    browser.fill(f"{form} [name=name]", "East archive")
    browser.fill(f"{form} [name=host]", "10.0.0.31")
    browser.fill(f"{form} [name=port]", "104")
    browser.fill(f"{form} [name=called_ae_title]", "HAS SPACE")
    browser.fill(f"{form} [name=calling_ae_title]", "GW_SCU")
    browser.fill(f"{form} [name=max_retries]", "11")
    browser.fill(f"{form} [name=transfer_syntax_uid]", "not-a-uid")
    Select(browser.find(f"{form} [name=gateway_id]")).select_by_visible_text("East clinic gateway")
    # Only the gateway's own facilities are offered (seed 000 Step 2).
    offered = [el.text for el in browser.all(f"{form} [data-facilities] label")]
    assert offered == ["East Clinic"]
    browser.click("#destination-save")
    # Each bad field shows its own message from the 422 answer, beside the field.
    browser.wait_text(f'{form} [data-error-for="called_ae_title"]', "no spaces")
    assert "0 to 10" in browser.text_of(f'{form} [data-error-for="max_retries"]')
    assert "UID" in browser.text_of(f'{form} [data-error-for="transfer_syntax_uid"]')
    assert browser.driver.find_element(By.CSS_SELECTOR, f'{form} [data-error-for="host"]').text == ""
    browser.screenshot(out, "1-refused-field-by-field")
    named = lambda: [d for d in local_stack.api("GET", "/destinations")[1]["destinations"] if d["name"] == "East archive"]  # noqa: E731
    assert named() == []  # nothing written (the module's other tests have their own destinations)
    # Corrected, with every other field of the modal.
    browser.fill(f"{form} [name=called_ae_title]", "EAST_AR")
    browser.fill(f"{form} [name=max_retries]", "2")
    browser.fill(f"{form} [name=transfer_syntax_uid]", "1.2.840.10008.1.2.1")
    browser.fill(f"{form} [name=moving_ae_title]", "EAST_MOVE")
    browser.fill(f"{form} [name=excluded_sop_class_uids]", "1.2.840.10008.5.1.4.1.1.104.1")
    browser.find(f"{form} [data-facilities] input[value=fac-b]").click()
    browser.find(f"{form} [name=auto_archive]").click()
    browser.find(f"{form} [name=trigger_status][value=PENDING]").click()
    for flag in ("support_iocm", "allow_prefetch", "storage_commitment"):
        browser.find(f"{form} [name={flag}]").click()
    browser.fill(f"{form} [name=hl7_host]", "10.0.0.32")
    browser.fill(f"{form} [name=hl7_port]", "2575")
    browser.fill(f"{form} [name=hl7_receiving_application]", "VNA_ADT")
    browser.click("#destination-save")
    row = _row(browser, "#destinations-table", "East archive")
    cells = [c.text for c in row.find_elements(By.CSS_SELECTOR, "td")]
    assert cells[1:5] == ["DICOM SCP", "Yes (Pending)", "East clinic gateway", "East Clinic"]
    assert row.find_element(By.CSS_SELECTOR, "td.facilities").get_attribute("title") == "East Clinic"  # full list on hover
    [d] = named()
    assert (d["called_ae_title"], d["moving_ae_title"], d["max_retries"], d["retry_timeout_seconds"], d["trigger_status"]) == (
        "EAST_AR", "EAST_MOVE", 2, 10, "PENDING")
    assert (d["support_iocm"], d["allow_prefetch"], d["storage_commitment"], d["active"]) == (True, True, True, True)
    assert (d["hl7_host"], d["hl7_port"], d["hl7_receiving_application"], d["facility_ids"]) == ("10.0.0.32", 2575, "VNA_ADT", ["fac-b"])
    assert d["gateway_id"] == gw["id"] and d["excluded_sop_class_uids"] == ["1.2.840.10008.5.1.4.1.1.104.1"]
    browser.screenshot(out, "2-saved")
    # The inline Active toggle.
    row.find_element(By.CSS_SELECTOR, "input.dst-active").click()
    until(lambda: local_stack.api("GET", f"/destinations/{d['id']}")[1]["active"] is False, "the destination to be inactive")
    browser.wait(lambda dr: not _row(browser, "#destinations-table", "East archive").find_element(
        By.CSS_SELECTOR, "input.dst-active").is_selected(), "the toggle to show inactive")
    _row(browser, "#destinations-table", "East archive").find_element(By.CSS_SELECTOR, "input.dst-active").click()
    until(lambda: local_stack.api("GET", f"/destinations/{d['id']}")[1]["active"] is True, "the destination to be active again")
    browser.screenshot(out, "3-toggled")


# -- Monitoring Archive Jobs ----------------------------------------------------------------------

XSS_NAME = "<script>window.__xss=1</script>^DOE<img src=x onerror=window.__xss=2>"


def _job_rows(browser) -> list[dict]:
    rows = []
    for r in browser.all("#jobs-table tbody tr[data-id]"):
        cells = r.find_elements(By.CSS_SELECTOR, "td")
        rows.append({"id": r.get_attribute("data-id"), "mrn": cells[0].text, "name": cells[2].text, "queued": cells[4].text,
                     "destination": cells[9].text, "state": cells[10].text,
                     "reason": cells[11].get_attribute("title") or "", "retry": cells[12].find_elements(By.CSS_SELECTOR, "button.retry")})
    return rows


def _wait_jobs(browser, check, what: str, timeout: float = 120):
    """Refresh the Jobs tab (the Refresh button; auto-refresh would do it every 10 s) until
    ``check(rows)`` holds."""
    def look(_):
        rows = _job_rows(browser)
        if check(rows):
            return rows
        browser.driver.find_element(By.CSS_SELECTOR, "#refresh-jobs").click()
        return None
    return browser.wait(look, what, timeout)


def _states(rows, destination: str) -> list[str]:
    return sorted(r["state"] for r in rows if r["destination"] == destination)


def test_monitoring_queued_to_completed_fail_retry_bulk_retry_and_escaping(local_stack, browser, out, tmp_path):
    from devstack.archive_scp import EmbeddedArchive

    gw = _gateway(local_stack, "Main datacenter gateway", [])
    vna, legacy = EmbeddedArchive(ae_title="VNA_ENT").start(), EmbeddedArchive(ae_title="LEGACY_AR").start()
    agent = None
    try:
        common = {"type": "DICOM_SCP", "host": "127.0.0.1", "calling_ae_title": "GW_SCU", "gateway_id": gw["id"],
                  "auto_archive": True, "trigger_status": "PENDING", "retry_timeout_seconds": 1}
        status, vna_dst = local_stack.api("POST", "/destinations", {**common, "name": "Enterprise VNA", "port": vna.port,
                                                                    "called_ae_title": "VNA_ENT", "max_retries": 1})
        assert status == 201, vna_dst
        # A typo in the called AE title: the archive rejects every association.
        status, legacy_dst = local_stack.api("POST", "/destinations", {**common, "name": "Legacy PACS", "port": legacy.port,
                                                                       "called_ae_title": "LEGACY_ARC", "max_retries": 0})
        assert status == 201, legacy_dst
        studies = {f"exam-{i}": f"1.2.826.0.1.3680043.8.498.{700 + i}" for i in (1, 2, 3)}
        for uid in studies.values():
            local_stack.upload_study(uid, 3)
        local_stack.exam_event("exam-1", "PENDING", study_uid=studies["exam-1"], patient_name=XSS_NAME, mrn="MRN-XSS")

        sign_in(browser, local_stack.console_url)
        browser.click("#tab-jobs")
        rows = _wait_jobs(browser, lambda rs: len(rs) == 2, "the two queued jobs")
        assert [r["state"] for r in rows] == ["Queued", "Queued"]
        # Patient names are data: the <script> and the onerror are text, nothing ran.
        assert {r["name"] for r in rows} == {XSS_NAME}
        assert browser.driver.execute_script("return window.__xss === undefined")
        assert not browser.all("#jobs-table tbody script") and not browser.all("#jobs-table tbody img")
        assert re.fullmatch(r"\d{2}-[A-Z]{3}-\d{4} \d{1,2}:\d{2} (AM|PM)", rows[0]["queued"])
        browser.wait_text("#job-counts", "Queued: 2")
        browser.screenshot(out, "1-queued")
        # Exam view: the order lock (archive at Pending) with the seed's message.
        browser.all("#jobs-table tbody tr[data-id] button.exam-link")[0].click()
        browser.wait_text("#exam-lock", LOCK_MESSAGE)
        assert browser.text_of("#exam-facts").count(XSS_NAME) == 1
        browser.screenshot(out, "2-exam-locked")

        # The gateway links (seed 000 Step 3) with the keys the admin API hands out; the jobs run.
        _, sa_key = local_stack.api("GET", f"/gateways/{gw['id']}/service-account-key")
        _, result_key = local_stack.api("GET", f"/gateways/{gw['id']}/result-endpoint-key")
        agent = local_stack.start_agent(gw, sa_key, result_key.decode(), tmp_path)
        browser.click("#tab-jobs")
        rows = _wait_jobs(browser, lambda rs: _states(rs, "Enterprise VNA") == ["Completed"]
                          and _states(rs, "Legacy PACS") == ["Failed"], "Completed and Failed")
        [failed] = [r for r in rows if r["state"] == "Failed"]
        assert "Called AE title not recognised" in failed["reason"]  # the full reason on hover
        assert [b.get_attribute("title") for b in failed["retry"]] == ["Retry"]
        assert all(not r["retry"] for r in rows if r["state"] != "Failed")
        browser.screenshot(out, "3-completed-and-failed")

        # Fix the destination in the Destinations tab, then Retry from the Jobs tab.
        browser.click("#tab-destinations")
        _row(browser, "#destinations-table", "Legacy PACS").find_element(By.CSS_SELECTOR, "button.edit-destination").click()
        browser.fill("#destination-form [name=called_ae_title]", "LEGACY_AR")
        browser.click("#destination-save")
        until(lambda: local_stack.api("GET", f"/destinations/{legacy_dst['id']}")[1]["called_ae_title"] == "LEGACY_AR",
              "the fixed AE title")
        browser.click("#tab-jobs")
        rows = _wait_jobs(browser, lambda rs: any(r["retry"] for r in rs), "the Retry icon")
        next(r for r in rows if r["retry"])["retry"][0].click()
        _wait_jobs(browser, lambda rs: _states(rs, "Legacy PACS") == ["Completed"], "the retried job to complete")
        browser.screenshot(out, "4-retried")
        browser.all("#jobs-table tbody tr[data-id] button.exam-link")[0].click()
        mine = {vna_dst["id"], legacy_dst["id"]}
        browser.wait(lambda d: [r.get_attribute("data-state") for r in browser.all("#exam-table tbody tr")
                                if r.get_attribute("data-destination") in mine] == ["ARCHIVED", "ARCHIVED"],
                     "both destinations Archived")
        assert not browser.all("#exam-lock")[0].is_displayed()  # the lock was released

        # Two more exams fail at the legacy archive (typo again); bulk retry by filter after the fix.
        local_stack.api("PATCH", f"/destinations/{legacy_dst['id']}", {"called_ae_title": "LEGACY_ARC"})
        for exam in ("exam-2", "exam-3"):
            local_stack.exam_event(exam, "PENDING", study_uid=studies[exam], mrn=f"MRN-{exam}", patient_name="ROE^RICHARD")
        browser.click("#tab-jobs")
        _wait_jobs(browser, lambda rs: _states(rs, "Legacy PACS") == ["Completed", "Failed", "Failed"]
                   and _states(rs, "Enterprise VNA") == ["Completed"] * 3, "two new failures")
        local_stack.api("PATCH", f"/destinations/{legacy_dst['id']}", {"called_ae_title": "LEGACY_AR"})
        Select(browser.find("#f-destination")).select_by_visible_text("Legacy PACS")
        browser.wait_text("#job-counts", "Failed: 2")
        browser.wait_text("#job-counts", "Completed: 1")
        browser.click("#bulk-retry")
        browser.wait_text("#confirm-text", "Retry 2 failed jobs matching this filter?")
        browser.screenshot(out, "5-bulk-retry-confirmation")
        browser.click("#confirm-ok")
        browser.wait_text("#jobs-message", "Retried 2 jobs")
        _wait_jobs(browser, lambda rs: _states(rs, "Legacy PACS") == ["Completed"] * 3, "the bulk-retried jobs to complete")
        audit = [a for a in local_stack.stack.store.audit_entries(local_stack.FG) if a["action"] == "job.bulk_retry"]
        assert len(audit) == 1 and audit[0]["fields"] == ["destination"] and audit[0]["actor"] == "Pat Admin"
        browser.wait_text("#job-counts", "Completed: 3")
        browser.screenshot(out, "6-bulk-retried")

        # Filters: Type, column search, a date filter with its ×.
        Select(browser.find("#f-destination")).select_by_visible_text("All")
        _wait_jobs(browser, lambda rs: len(rs) == 6, "all six jobs")
        browser.fill("#f-mrn", "MRN-XSS\n")
        _wait_jobs(browser, lambda rs: len(rs) == 2 and {r["mrn"] for r in rs} == {"MRN-XSS"}, "the MRN search")
        browser.fill("#f-mrn", "\n")
        Select(browser.find("#f-type")).select_by_visible_text("DICOM")
        browser.wait_text("#jobs-table tbody", "No jobs match this filter.")
        Select(browser.find("#f-type")).select_by_visible_text("Archive")
        _wait_jobs(browser, lambda rs: len(rs) == 6, "the Archive jobs")
        browser.driver.execute_script(
            "const i = document.querySelector('#f-completed'); const d = new Date();"
            "i.value = `${d.getFullYear()}-${String(d.getMonth() + 1).padStart(2, '0')}-${String(d.getDate()).padStart(2, '0')}`;"
            "i.dispatchEvent(new Event('change'));")
        _wait_jobs(browser, lambda rs: len(rs) == 6, "today's completed jobs")
        browser.driver.execute_script(
            "const i = document.querySelector('#f-completed'); i.value = '2001-01-01'; i.dispatchEvent(new Event('change'));")
        browser.wait_text("#jobs-table tbody", "No jobs match this filter.")
        browser.click("button[data-clear=f-completed]")
        _wait_jobs(browser, lambda rs: len(rs) == 6, "the date filter cleared")
        assert browser.find("#f-completed").get_attribute("value") == ""

        # CSV export of the filtered rows, and the chart of jobs per day by state.
        before = browser.files()
        browser.click("#export-csv")
        exported = list(csv.DictReader(io.StringIO(browser.download("jobs-", ".csv", before).read_text())))
        assert len(exported) == 6 and {r["State"] for r in exported} == {"Completed"}
        assert sum(1 for r in exported if r["Patient Name"] == XSS_NAME) == 2
        bars = browser.wait(lambda d: d.find_elements(By.CSS_SELECTOR, "#jobs-chart rect.bar[data-count]"), "the chart's bars")
        assert sum(int(b.get_attribute("data-count")) for b in bars if b.get_attribute("data-state") == "COMPLETED") == 6
        assert browser.driver.execute_script("return window.__xss === undefined")
        browser.screenshot(out, "7-filters-csv-chart")
    finally:
        if agent:
            agent.stop()
        vna.stop()
        legacy.stop()


def test_gateway_health_cell_when_the_api_gives_it(local_stack, browser):
    """The Connection cell of the health field the observability work adds to each gateway: each
    state's text, and nothing (not an error) when the field is absent."""
    sign_in(browser, local_stack.console_url)
    got = browser.driver.execute_async_script("""
        const done = arguments[arguments.length - 1];
        import('./gateways.js').then((m) => {
          const t = (v) => { const r = m.health(v); return typeof r === 'string' ? r : r.textContent; };
          done([t({state: 'connected', last_contact_at: '2026-10-21T18:38:00Z', silent_since: null}),
                t({state: 'silent', last_contact_at: '2026-10-21T18:38:00Z', silent_since: '2026-10-21T18:38:00Z'}),
                t({state: 'never', last_contact_at: null, silent_since: null}), t(undefined)]);
        }, (e) => done(String(e)));""")
    assert got[0] == "Connected" and got[2] == "Never connected" and got[3] == ""
    assert re.fullmatch(r"Silent since \d{2}-OCT-2026 \d{1,2}:38 (AM|PM)", got[1]), got


def test_another_groups_admin_sees_nothing_and_sign_out_forgets_the_token(local_stack, browser, out):
    sign_in(browser, local_stack.console_url, "Other Group Admin", ready="no-group")
    browser.wait_text("#banner", "Your account administers no facility group.")
    assert not browser.find("#sign-out").get_attribute("hidden")
    assert browser.all("#gateways-table tbody tr") == []  # nothing of fg-1 was ever loaded
    browser.screenshot(out, "1-no-group")
    browser.click("#sign-out")
    browser.wait_text("#signin-message", "Signed out.")
    assert browser.driver.execute_script("return sessionStorage.getItem('archsync.token')") is None

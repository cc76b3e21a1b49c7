"""Server-rendered HTML of the admin page. Every value that comes from data (delivery names, job
reasons, config errors, anything typed) goes through ``e`` (html.escape with quotes), so a
``<script>`` in a name or reason is shown as text; the page has no inline script or style at all
(Content-Security-Policy: script-src 'self'; style-src 'self')."""
from __future__ import annotations

import html
from datetime import datetime
from typing import Iterable, Optional, Sequence

from ..recent import RecentJob
from .forms import FIELDS, LABELS, DeliveryForm


def e(value: object) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def layout(title: str, body: str, *, csrf: Optional[str] = None, flashes: Iterable[tuple[str, str]] = ()) -> str:
    signout = (f'<form method="post" action="/signout" class="inline"><input type="hidden" name="csrf" value="{e(csrf)}">'
               '<button type="submit" class="secondary" id="signout">Sign out</button></form>') if csrf else ""
    nav = '<nav><a href="/platform" class="current">Platform</a></nav>' if csrf else ""
    notes = "".join(f'<div class="flash {e(kind)}" role="status">{e(text)}</div>' for kind, text in flashes)
    return ("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{e(title)} · Gateway</title><link rel=\"stylesheet\" href=\"/static/admin.css\"></head>"
            f"<body><header><span class=\"brand\">GATEWAY</span>{nav}{signout}</header>"
            f"<main><h1>{e(title)}</h1>{notes}{body}</main></body></html>")


def signin(csrf: str, error: Optional[str] = None) -> str:
    err = f'<p class="field-error" id="signin-error">{e(error)}</p>' if error else ""
    body = (f'<form method="post" action="/signin" class="delivery" id="signin-form">{err}'
            f'<input type="hidden" name="csrf" value="{e(csrf)}">'
            '<label for="password">Password</label>'
            '<input type="password" id="password" name="password" autocomplete="current-password" required autofocus>'
            '<p><button type="submit" id="signin">Sign in</button></p></form>')
    return layout("Gateway administration", body)


def _when(at: datetime) -> str:
    return at.astimezone().strftime("%d-%b-%Y %I:%M:%S %p").upper()


def platform(csrf: str, deliveries: Sequence[tuple[int, dict, str]], recent: Sequence[RecentJob], version: str,
             flashes: Iterable[tuple[str, str]], config_error: Optional[str] = None) -> str:
    """``deliveries``: (index in the file, raw delivery, status)."""
    rows = []
    for i, d, status in deliveries:
        active = d.get("active") is True
        action = "deactivate" if active else "activate"
        status_class = "status-pulling" if status == "pulling" else ("status-error" if status.startswith("error") else "")
        rows.append(
            f'<tr id="delivery-{i}"><td class="name">{e(d.get("name"))}</td><td>{e(d.get("project_id"))}</td>'
            f'<td>{e(d.get("subscription_id"))}</td><td>{e(d.get("result_endpoint_url"))}</td>'
            f'<td class="active">{"Yes" if active else "No"}</td><td class="status {status_class}">{e(status)}</td>'
            f'<td><a href="/platform/deliveries/{i}/edit" id="edit-{i}">Edit</a> '
            f'<form method="post" action="/platform/deliveries/{i}/{action}" class="inline">'
            f'<input type="hidden" name="csrf" value="{e(csrf)}"><input type="hidden" name="version" value="{e(version)}">'
            f'<button type="submit" id="{action}-{i}">{action.capitalize()}</button></form></td></tr>')
    if not rows:
        rows.append('<tr><td colspan="7">No job delivery yet: click Add Job Delivery (seed 000 Step 3).</td></tr>')
    error = f'<div class="flash error" id="config-error">The config file is invalid: {e(config_error)}</div>' if config_error else ""
    jobs = [f'<tr><td>{e(_when(j.updated_at))}</td><td>{e(j.job_id)}</td><td>{e(j.attempt)}</td><td>{e(j.job_type)}</td>'
            f'<td>{e(j.delivery)}</td><td>{e(j.destination)}</td><td class="state">{e(j.state)}</td>'
            f'<td class="reason">{e(j.reason)}</td></tr>' for j in recent]
    if not jobs:
        jobs.append('<tr><td colspan="8">No job since the agent started.</td></tr>')
    body = (f'{error}<p><a class="button" href="/platform/deliveries/new" id="add-delivery">Add Job Delivery</a> '
            '<a class="button secondary" href="/platform" id="refresh">Refresh</a></p>'
            '<h2>Job deliveries</h2><table id="deliveries"><thead><tr><th>Name</th><th>Project ID</th><th>Subscription ID</th>'
            '<th>Result Endpoint URL</th><th>Active</th><th>Status</th><th></th></tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table>'
            '<h2>Recent jobs</h2><p class="note">The last jobs this agent handled since it started, newest first.</p>'
            '<table id="recent-jobs"><thead><tr><th>Updated</th><th>Job</th><th>Attempt</th><th>Type</th><th>Job delivery</th>'
            f'<th>Destination</th><th>State</th><th>Reason</th></tr></thead><tbody>{"".join(jobs)}</tbody></table>')
    return layout("Platform", body, csrf=csrf, flashes=flashes)


def delivery_form(csrf: str, action: str, title: str, form: DeliveryForm, version: str, errors: dict[str, str],
                  kept: dict[str, bool], editing: bool) -> str:
    """The Job Delivery form. Secrets are never written into the page: their inputs are always
    empty, with "leave blank to keep" when a value is saved (or was pasted in a failed attempt)."""
    parts = [f'<form method="post" action="{e(action)}" class="delivery" id="delivery-form" autocomplete="off">',
             f'<input type="hidden" name="csrf" value="{e(csrf)}"><input type="hidden" name="version" value="{e(version)}">']
    if errors:
        parts.append('<div class="flash error" id="form-error">The job delivery was not saved: see the messages below.</div>')
    for name, label, secret in FIELDS:
        parts.append(f'<label for="{name}">{e(label)}</label>')
        if name == "service_account_json":
            parts.append('<p class="note">Enter JSON format for service account file (required): copy and paste the full '
                         'contents of the downloaded SA JSON key file.</p>')
        if secret and kept.get(name):
            parts.append(f'<p class="note" id="{name}-kept">A value is kept and not shown: leave blank to keep it, or paste a new one.</p>')
        if name == "service_account_json":
            parts.append(f'<textarea id="{name}" name="{name}" spellcheck="false"></textarea>')
        elif secret:
            parts.append(f'<input type="password" id="{name}" name="{name}" value="" autocomplete="new-password">')
        else:
            parts.append(f'<input type="text" id="{name}" name="{name}" value="{e(getattr(form, name))}">')
        if name in errors:
            parts.append(f'<p class="field-error" id="{name}-error">{e(errors[name])}</p>')
    checked = " checked" if form.active else ""
    parts.append(f'<label for="active"><input type="checkbox" id="active" name="active"{checked}> {e(LABELS["active"])}</label>'
                 '<p class="note">Only active job deliveries are pulled. Saving an active delivery first tests its link '
                 '(the key gets a token, the subscription can be pulled, the Result Endpoint accepts a signed probe).</p>')
    if "active" in errors:
        parts.append(f'<p class="field-error" id="active-error">{e(errors["active"])}</p>')
    parts.append('<p><button type="submit" id="save">Save</button> <a class="button secondary" href="/platform">Cancel</a></p></form>')
    return layout(title, "".join(parts), csrf=csrf)


def message(title: str, text: str, csrf: Optional[str] = None) -> str:
    return layout(title, f'<p id="message">{e(text)}</p><p><a href="/platform">Back to the Platform tab</a></p>', csrf=csrf)

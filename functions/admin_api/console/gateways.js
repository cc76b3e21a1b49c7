// Gateways tab (seed 000 Step 1): the table, the New gateway modal, details with key download and
// rotation, deletion (refused with the seed's reason while destinations are linked).
import { $, clear, confirmAction, h, saveFile, showErrors, wireDialog } from './dom.js';
import { seedDate } from './format.js';

export class GatewaysTab {
  constructor(ctx) {
    this.ctx = ctx;
    this.rows = [];
    this.editing = null;
    this.current = null;
    wireDialog($('#gateway-dialog'));
    wireDialog($('#gateway-details'));
    $('#new-gateway').addEventListener('click', () => this.openForm(null));
    $('#gateway-form').addEventListener('submit', (e) => { e.preventDefault(); this.save(); });
    $('#gw-edit').addEventListener('click', () => { $('#gateway-details').close(); this.openForm(this.current); });
    $('#gw-download-sa').addEventListener('click', () => this.downloadKey(this.current));
    $('#gw-download-result-key').addEventListener('click', () => this.downloadResultKey(this.current));
    $('#gw-rotate-sa').addEventListener('click', () => this.rotate('service-account-key', 'SA JSON key'));
    $('#gw-rotate-result-key').addEventListener('click', () => this.rotate('result-endpoint-key', 'Result Endpoint key'));
    $('#gw-delete').addEventListener('click', () => this.remove());
  }

  path(suffix = '') { return `/v1/facility-groups/${encodeURIComponent(this.ctx.group)}/gateways${suffix}`; }

  async load() {
    const body = await this.ctx.api.get(this.path());
    this.rows = body.gateways;
    this.render();
    return this.rows;
  }

  render() {
    const tbody = clear($('#gateways-table tbody'));
    for (const g of this.rows) {
      tbody.append(h('tr', { 'data-id': g.id },
        h('td', { text: g.name }),
        h('td', { text: g.description, class: 'truncate', title: g.description }),
        h('td', { text: g.pubsub_subscription_id, class: 'mono' }),
        h('td', { text: g.created_by }),
        h('td', { text: g.updated_by }),
        h('td', { text: g.facilities, class: 'truncate', title: g.facilities }),
        h('td', {}, h('input', { type: 'checkbox', checked: g.active, 'aria-label': `Active: ${g.name}`,
          class: 'gw-active', onchange: (e) => this.setActive(g, e.target) })),
        h('td', { class: 'health' }, health(g.health)),
        h('td', {}, h('button', { type: 'button', class: 'icon sa-download', title: 'Download SA JSON key',
          'aria-label': `Download SA JSON key of ${g.name}`, onclick: () => this.downloadKey(g) }, '⬇')),
        h('td', {}, h('button', { type: 'button', class: 'link view-details', onclick: () => this.details(g) }, 'View details')),
      ));
    }
    if (!this.rows.length) tbody.append(h('tr', {}, h('td', { colspan: 10, class: 'empty', text: 'No gateways yet: click New gateway.' })));
  }

  openForm(gateway) {
    this.editing = gateway;
    const form = $('#gateway-form');
    form.reset();
    showErrors(form, null);
    $('#gateway-dialog-title').textContent = gateway ? `Edit gateway ${gateway.name}` : 'New gateway';
    form.elements.name.value = gateway ? gateway.name : '';
    form.elements.description.value = gateway ? gateway.description : '';
    form.elements.active.checked = gateway ? gateway.active : true;
    for (const el of form.querySelectorAll('.edit-only')) el.hidden = !gateway;
    const selected = new Set(gateway ? gateway.facility_ids : []);
    this.ctx.facilityChecks(form.querySelector('[data-facilities]'), this.ctx.facilities, selected);
    $('#gateway-dialog').showModal();
  }

  async save() {
    const form = $('#gateway-form');
    const body = {
      name: form.elements.name.value.trim(),
      description: form.elements.description.value.trim(),
      facility_ids: Array.from(form.querySelectorAll('[data-facilities] input:checked')).map((i) => i.value),
    };
    if (this.editing) body.active = form.elements.active.checked;
    const button = $('#gateway-save');
    showErrors(form, null);
    button.disabled = true;
    button.textContent = this.editing ? 'Saving…' : 'Provisioning…';
    try {
      if (this.editing) await this.ctx.api.patch(this.path(`/${encodeURIComponent(this.editing.id)}`), body);
      else await this.ctx.api.post(this.path(), body);
      $('#gateway-dialog').close();
      await this.load();
      this.ctx.gatewaysChanged();
    } catch (e) {
      if (e.status === 503) {
        // Seed 000: "If provisioning fails, the system rolls back cleanly".
        e.message = `Provisioning failed and was rolled back; nothing was created. ${e.message}`;
      }
      showErrors(form, e);
    } finally {
      button.disabled = false;
      button.textContent = 'Save';
    }
  }

  async setActive(g, box) {
    box.disabled = true;
    try {
      await this.ctx.api.patch(this.path(`/${encodeURIComponent(g.id)}`), { active: box.checked });
      await this.load();
    } catch (e) {
      box.checked = !box.checked;
      this.ctx.banner(e.message);
    } finally {
      box.disabled = false;
    }
  }

  details(g) {
    this.current = g;
    const facts = clear($('#gateway-facts'));
    const rows = [['Name', g.name], ['Description', g.description], ['Gateway id', g.id],
      ['Pub/Sub subscription', g.pubsub_subscription_id], ['Pub/Sub topic', g.pubsub_topic_id],
      ['Service account', g.service_account_email], ['Facilities', g.facilities], ['Active', g.active ? 'Yes' : 'No'],
      ['Created', `${seedDate(g.created_at)} by ${g.created_by}`], ['Updated', `${seedDate(g.updated_at)} by ${g.updated_by}`]];
    if (g.health) rows.push(['Connection', health(g.health)]);
    for (const [k, v] of rows) facts.append(h('dt', { text: k }), h('dd', {}, v));
    $('#gateway-details-message').textContent = '';
    $('#gateway-details').showModal();
  }

  async downloadKey(g) {
    try {
      const resp = await this.ctx.api.request('GET', this.path(`/${encodeURIComponent(g.id)}/service-account-key`), { raw: true });
      saveFile(await resp.blob(), `${g.id}-service-account.json`);
    } catch (e) {
      this.ctx.banner(`SA JSON key download failed: ${e.message}`);
    }
  }

  async downloadResultKey(g) {
    try {
      const resp = await this.ctx.api.request('GET', this.path(`/${encodeURIComponent(g.id)}/result-endpoint-key`), { raw: true });
      saveFile(await resp.blob(), `${g.id}-result-endpoint-key.txt`);
    } catch (e) {
      this.message(`Download failed: ${e.message}`);
    }
  }

  message(text) { $('#gateway-details-message').textContent = text; }

  async rotate(what, label) {
    const g = this.current;
    const warning = what === 'service-account-key'
      ? `Rotate the SA JSON key of ${g.name}? The old key stops working: download the new one and install it on the gateway.`
      : `Rotate the Result Endpoint key of ${g.name}? The old key keeps working for the grace period.`;
    if (!await confirmAction(warning)) return;
    try {
      await this.ctx.api.post(this.path(`/${encodeURIComponent(g.id)}/${what}/rotate`));
      this.message(`${label} rotated: download the new one for the gateway.`);
      await this.load();
    } catch (e) {
      this.message(`Rotation failed: ${e.message}`);
    }
  }

  async remove() {
    const g = this.current;
    if (!await confirmAction(`Delete gateway ${g.name}? Its Pub/Sub topic, subscription and service account are deleted.`)) return;
    try {
      await this.ctx.api.del(this.path(`/${encodeURIComponent(g.id)}`));
      $('#gateway-details').close();
      await this.load();
      this.ctx.gatewaysChanged();
    } catch (e) {
      // Seed 000 Troubleshooting "Gateway cannot be deleted": the API's 409 says why.
      this.message(`The gateway cannot be deleted: ${e.message}`);
    }
  }
}

// The health field (when the API provides it): Connected / Silent since … / Never connected.
export function health(value) {
  if (!value) return '';
  if (value.state === 'connected') return h('span', { class: 'ok', title: `Last contact ${seedDate(value.last_contact_at)}`, text: 'Connected' });
  if (value.state === 'silent') return h('span', { class: 'warn', text: `Silent since ${seedDate(value.silent_since || value.last_contact_at)}` });
  if (value.state === 'never') return h('span', { class: 'muted', text: 'Never connected' });
  return h('span', { text: String(value.state) });
}

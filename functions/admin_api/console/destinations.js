// Destinations tab (seed 000 Step 2): the table with the inline Active toggle and the modal with
// every field; each bad field shows its own message from the 422 answer.
import { $, clear, h, showErrors, wireDialog } from './dom.js';

const TEXT = ['name', 'type', 'host', 'called_ae_title', 'calling_ae_title', 'moving_ae_title', 'gateway_id',
  'transfer_syntax_uid', 'hl7_host', 'hl7_receiving_application', 'hl7_receiving_facility'];
const NUMBERS = ['port', 'max_retries', 'retry_timeout_seconds', 'hl7_port'];
const FLAGS = ['auto_archive', 'support_iocm', 'allow_prefetch', 'storage_commitment', 'active'];
const OPTIONAL = new Set(['moving_ae_title', 'transfer_syntax_uid', 'hl7_host', 'hl7_port', 'hl7_receiving_application', 'hl7_receiving_facility']);

export class DestinationsTab {
  constructor(ctx) {
    this.ctx = ctx;
    this.rows = [];
    this.editing = null;
    const form = $('#destination-form');
    wireDialog($('#destination-dialog'));
    $('#new-destination').addEventListener('click', () => this.openForm(null));
    form.addEventListener('submit', (e) => { e.preventDefault(); this.save(); });
    form.elements.gateway_id.addEventListener('change', () => this.facilityChoices(new Set()));
    form.elements.auto_archive.addEventListener('change', () => this.triggerEnabled());
  }

  path(suffix = '') { return `/v1/facility-groups/${encodeURIComponent(this.ctx.group)}/destinations${suffix}`; }

  async load() {
    const body = await this.ctx.api.get(this.path());
    this.rows = body.destinations;
    this.render();
    return this.rows;
  }

  render() {
    const tbody = clear($('#destinations-table tbody'));
    for (const d of this.rows) {
      tbody.append(h('tr', { 'data-id': d.id },
        h('td', { text: d.name }),
        h('td', { text: d.type === 'DICOM_SCP' ? 'DICOM SCP' : d.type }),
        h('td', { text: d.archive }),
        h('td', { text: d.gateway_name }),
        h('td', { text: d.facilities, class: 'truncate facilities', title: d.facilities }),
        h('td', {}, h('label', { class: 'toggle' }, h('input', { type: 'checkbox', checked: d.active, class: 'dst-active',
          'aria-label': `Active: ${d.name}`, onchange: (e) => this.setActive(d, e.target) }))),
        h('td', {}, h('button', { type: 'button', class: 'link edit-destination', onclick: () => this.openForm(d) }, 'Edit')),
      ));
    }
    if (!this.rows.length) tbody.append(h('tr', {}, h('td', { colspan: 7, class: 'empty', text: 'No destinations yet: click New destination.' })));
  }

  async setActive(d, box) {
    box.disabled = true;
    try {
      await this.ctx.api.post(this.path(`/${encodeURIComponent(d.id)}/${box.checked ? 'activate' : 'deactivate'}`));
      await this.load();
    } catch (e) {
      box.checked = !box.checked;
      this.ctx.banner(e.message);
    } finally {
      box.disabled = false;
    }
  }

  openForm(d) {
    this.editing = d;
    const form = $('#destination-form');
    form.reset();
    showErrors(form, null);
    $('#destination-dialog-title').textContent = d ? `Edit destination ${d.name}` : 'New destination';
    const select = clear(form.elements.gateway_id);
    select.append(h('option', { value: '', text: 'Select a gateway' }));
    for (const g of this.ctx.gateways) select.append(h('option', { value: g.id, text: g.name }));
    if (d) {
      for (const k of TEXT) if (form.elements[k]) form.elements[k].value = d[k] ?? '';
      for (const k of NUMBERS) form.elements[k].value = d[k] ?? '';
      for (const k of FLAGS) form.elements[k].checked = Boolean(d[k]);
      form.elements.excluded_sop_class_uids.value = (d.excluded_sop_class_uids || []).join(', ');
      for (const r of form.querySelectorAll('[name=trigger_status]')) r.checked = r.value === (d.trigger_status || 'COMPLETED');
    }
    this.facilityChoices(new Set(d ? d.facility_ids : []));
    this.triggerEnabled();
    $('#destination-dialog').showModal();
  }

  // Seed 000: "Only facilities already linked to the selected Gateway can be chosen."
  facilityChoices(selected) {
    const form = $('#destination-form');
    const gw = this.ctx.gateways.find((g) => g.id === form.elements.gateway_id.value);
    const allowed = gw && gw.facility_ids.length ? this.ctx.facilities.filter((f) => gw.facility_ids.includes(f.id)) : this.ctx.facilities;
    this.ctx.facilityChecks(form.querySelector('[data-facilities]'), allowed, selected);
  }

  triggerEnabled() {
    const form = $('#destination-form');
    for (const r of form.querySelectorAll('[name=trigger_status]')) r.disabled = !form.elements.auto_archive.checked;
  }

  body() {
    const form = $('#destination-form');
    const body = {};
    for (const k of TEXT) {
      const v = form.elements[k].value.trim();
      if (v !== '' || !OPTIONAL.has(k)) body[k] = v; else body[k] = null;
    }
    for (const k of NUMBERS) {
      const v = form.elements[k].value.trim();
      body[k] = v === '' ? (OPTIONAL.has(k) ? null : v) : Number(v);
    }
    for (const k of FLAGS) body[k] = form.elements[k].checked;
    const excluded = form.elements.excluded_sop_class_uids.value.split(',').map((s) => s.trim()).filter(Boolean);
    body.excluded_sop_class_uids = excluded;
    const trigger = form.querySelector('[name=trigger_status]:checked');
    body.trigger_status = body.auto_archive && trigger ? trigger.value : null;
    body.facility_ids = Array.from(form.querySelectorAll('[data-facilities] input:checked')).map((i) => i.value);
    return body;
  }

  async save() {
    const form = $('#destination-form');
    const button = $('#destination-save');
    showErrors(form, null);
    button.disabled = true;
    try {
      if (this.editing) await this.ctx.api.patch(this.path(`/${encodeURIComponent(this.editing.id)}`), this.body());
      else await this.ctx.api.post(this.path(), this.body());
      $('#destination-dialog').close();
      await this.load();
      this.ctx.destinationsChanged();
    } catch (e) {
      showErrors(form, e);
    } finally {
      button.disabled = false;
    }
  }
}

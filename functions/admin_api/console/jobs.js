// Jobs tab (seed 000 "Monitoring Archive Jobs"): columns, Type filter, date filters with ×, column
// search, Retry on failed jobs, pagination, auto-refresh; counts per state for the filter, retry of
// every failed job matching it (confirmed with the count), CSV export, a chart of jobs per day.
import { $, $$, clear, confirmAction, h, saveFile } from './dom.js';
import { csvCell, dayRange, seedDate, viewerZone } from './format.js';
import { renderChart } from './chart.js';

const TEXT_FILTERS = ['mrn', 'accession', 'patient_name', 'study_uid'];
const DATE_FILTERS = ['queued', 'started', 'completed'];
const STATES = [['QUEUED', 'Queued'], ['IN_PROGRESS', 'In Progress'], ['COMPLETED', 'Completed'], ['FAILED', 'Failed']];
const REFRESH_MS = 10000;
const CHART_EVERY = 6; // refreshes between chart refreshes (one minute)
const CSV_LIMIT = 10000;
const CSV_COLUMNS = [['MRN', 'mrn'], ['Accession', 'accession'], ['Patient Name', 'patient_name'], ['Type', 'type_label'],
  ['Queued Date', 'queued_at'], ['Started Date', 'started_at'], ['Completed Date', 'completed_at'],
  ['Study Instance UID', 'study_instance_uid'], ['Facility', 'facility'], ['Destination', 'destination'],
  ['State', 'state_label'], ['Reason', 'reason'], ['Job id', 'id'], ['Exam id', 'exam_id'], ['Attempt', 'attempt']];

export class JobsTab {
  constructor(ctx) {
    this.ctx = ctx;
    this.cursors = [null]; // cursor of each visited page
    this.page = 0;
    this.next = null;
    this.timer = null;
    this.ticks = 0;
    this.loading = false;
    for (const id of ['f-type', 'f-state', 'f-facility', 'f-destination', 'page-size']) $(`#${id}`).addEventListener('change', () => this.reset());
    for (const name of TEXT_FILTERS) {
      $(`#f-${name}`).addEventListener('change', () => this.reset());
      $(`#f-${name}`).addEventListener('keydown', (e) => { if (e.key === 'Enter') this.reset(); });
    }
    for (const name of DATE_FILTERS) {
      $(`#f-${name}`).addEventListener('change', (e) => {
        // The API takes one date filter at a time (and not with the name search): the last one set wins.
        if (e.target.value) {
          for (const other of DATE_FILTERS) if (other !== name) $(`#f-${other}`).value = '';
          $('#f-patient_name').value = '';
        }
        this.reset();
      });
    }
    $('#f-patient_name').addEventListener('input', (e) => { if (e.target.value) for (const d of DATE_FILTERS) $(`#f-${d}`).value = ''; });
    for (const b of $$('button[data-clear]')) b.addEventListener('click', () => { $(`#${b.dataset.clear}`).value = ''; this.reset(); });
    $('#prev-page').addEventListener('click', () => this.go(this.page - 1));
    $('#next-page').addEventListener('click', () => this.go(this.page + 1));
    $('#refresh-jobs').addEventListener('click', () => this.refresh(true));
    $('#bulk-retry').addEventListener('click', () => this.bulkRetry());
    $('#export-csv').addEventListener('click', () => this.exportCsv());
    $('#clear-filters').addEventListener('click', () => this.clearFilters());
    $('#auto-refresh').addEventListener('change', () => this.schedule());
  }

  path(suffix = '') { return `/v1/facility-groups/${encodeURIComponent(this.ctx.group)}/jobs${suffix}`; }

  fillChoices() {
    for (const [id, items] of [['f-facility', this.ctx.facilities], ['f-destination', this.ctx.destinations]]) {
      const select = $(`#${id}`);
      const keep = select.value;
      clear(select).append(h('option', { value: '', text: 'All' }));
      for (const x of items) select.append(h('option', { value: x.id, text: x.name }));
      select.value = items.some((x) => x.id === keep) ? keep : '';
    }
  }

  // The current filter as the API's query parameters.
  filters() {
    const f = {};
    if ($('#f-type').value) f.type = $('#f-type').value;
    if ($('#f-state').value) f.state = $('#f-state').value;
    if ($('#f-facility').value) f.facility = $('#f-facility').value;
    if ($('#f-destination').value) f.destination = $('#f-destination').value;
    for (const name of TEXT_FILTERS) {
      const v = $(`#f-${name}`).value.trim();
      if (v) f[name] = v;
    }
    for (const name of DATE_FILTERS) {
      const v = $(`#f-${name}`).value;
      if (v) [f[`${name}_from`], f[`${name}_to`]] = dayRange(v);
    }
    return f;
  }

  equalityFilters() {
    const f = this.filters();
    for (const k of Object.keys(f)) if (k === 'patient_name' || k.endsWith('_from') || k.endsWith('_to')) delete f[k];
    return f;
  }

  clearFilters() {
    for (const id of ['f-type', 'f-state', 'f-facility', 'f-destination']) $(`#${id}`).value = '';
    for (const name of [...TEXT_FILTERS, ...DATE_FILTERS]) $(`#f-${name}`).value = '';
    this.reset();
  }

  reset() {
    this.cursors = [null];
    this.page = 0;
    this.refresh(true);
  }

  go(page) {
    if (page < 0 || (page > this.page && !this.next)) return;
    if (page > this.page) this.cursors[page] = this.next;
    this.page = page;
    this.refresh(false);
  }

  show() {
    this.fillChoices();
    this.refresh(true);
    this.schedule();
  }

  hide() {
    clearTimeout(this.timer);
    this.timer = null;
  }

  schedule() {
    clearTimeout(this.timer);
    if ($('#auto-refresh').checked && !$('#panel-jobs').hidden) {
      this.timer = setTimeout(async () => { await this.refresh(++this.ticks % CHART_EVERY === 0); this.schedule(); }, REFRESH_MS);
    }
  }

  message(text, isError = false) {
    const el = $('#jobs-message');
    el.textContent = text;
    el.classList.toggle('error', isError);
  }

  async refresh(withChart) {
    if (this.loading) return;
    this.loading = true;
    const filters = this.filters();
    try {
      const query = { ...filters, page_size: $('#page-size').value, tz: viewerZone() };
      if (this.cursors[this.page]) query.cursor = this.cursors[this.page];
      const [page, counts] = await Promise.all([this.ctx.api.get(this.path(), query), this.ctx.api.get(this.path('/counts'), filters)]);
      this.next = page.next_cursor;
      this.renderRows(page.jobs);
      this.renderCounts(counts);
      $('#page-label').textContent = `Page ${this.page + 1}`;
      $('#prev-page').disabled = this.page === 0;
      $('#next-page').disabled = !this.next;
      if (withChart) this.refreshChart();
      $('#jobs-table').dataset.loaded = String(Date.now());
    } catch (e) {
      if (e.status !== 401) this.message(e.message, true);
    } finally {
      this.loading = false;
    }
  }

  async refreshChart() {
    try {
      const body = await this.ctx.api.get(this.path('/per-day'), { ...this.equalityFilters(), days: 14, tz: viewerZone() });
      renderChart($('#jobs-chart'), body.days, STATES);
    } catch (e) {
      clear($('#jobs-chart')).append(h('p', { class: 'muted', text: `Chart unavailable: ${e.message}` }));
    }
  }

  renderCounts(body) {
    this.counts = body.counts;
    const el = clear($('#job-counts'));
    for (const [state, label] of STATES) {
      el.append(h('button', { type: 'button', class: `count state-${state.toLowerCase()}`, 'data-state': state,
        title: `Show only ${label} jobs`, onclick: () => { $('#f-state').value = state; this.reset(); } },
      `${label}: `, h('strong', { text: body.counts[state] })));
    }
    el.append(h('span', { class: 'count total' }, 'Total: ', h('strong', { text: body.total })));
    $('#bulk-retry').disabled = !body.counts.FAILED;
  }

  renderRows(jobs) {
    const tbody = clear($('#jobs-table tbody'));
    for (const j of jobs) {
      const reason = j.reason || '';
      tbody.append(h('tr', { 'data-id': j.id, 'data-state': j.state },
        h('td', { text: j.mrn }),
        h('td', { text: j.accession }),
        h('td', { text: j.patient_name, class: 'patient-name' }),
        h('td', { text: j.type_label }),
        h('td', { text: seedDate(j.queued_at), class: 'date' }),
        h('td', { text: seedDate(j.started_at), class: 'date' }),
        h('td', { text: seedDate(j.completed_at), class: 'date' }),
        h('td', { text: j.study_instance_uid, class: 'mono truncate', title: j.study_instance_uid }),
        h('td', { text: j.facility }),
        h('td', { text: j.destination }),
        h('td', { text: j.state_label, class: `state state-${j.state.toLowerCase()}` }),
        h('td', { text: reason, class: 'reason truncate', title: reason || null }),
        h('td', { class: 'row-actions' },
          j.retryable ? h('button', { type: 'button', class: 'icon retry', title: 'Retry', 'aria-label': 'Retry',
            onclick: (e) => this.retry(j, e.currentTarget) }, '↻') : null,
          j.exam_id ? h('button', { type: 'button', class: 'link exam-link', title: 'Exam view',
            onclick: () => this.ctx.openExam(j.exam_id) }, 'Exam') : null),
      ));
    }
    if (!jobs.length) tbody.append(h('tr', {}, h('td', { colspan: 13, class: 'empty', text: 'No jobs match this filter.' })));
  }

  async retry(job, button) {
    button.disabled = true;
    try {
      const row = await this.ctx.api.post(this.path(`/${encodeURIComponent(job.id)}/retry`));
      this.message(`Job requeued (attempt ${row.attempt}).`);
    } catch (e) {
      this.message(`Retry refused: ${e.message}`, true);
    }
    await this.refresh(false);
  }

  async bulkRetry() {
    const filters = this.filters();
    delete filters.state;
    const counts = await this.ctx.api.get(this.path('/counts'), { ...filters, state: 'FAILED' });
    const n = counts.counts.FAILED;
    if (!n) { this.message('No failed jobs match this filter.'); return; }
    const capped = n > 100 ? ' (100 now; run it again for the rest)' : '';
    if (!await confirmAction(`Retry ${n} failed job${n === 1 ? '' : 's'} matching this filter${capped}?`)) return;
    try {
      const r = await this.ctx.api.post(this.path('/bulk-retry'), { request_id: crypto.randomUUID(), filters });
      this.message(`Retried ${r.retried} job${r.retried === 1 ? '' : 's'}` + (r.skipped ? `, ${r.skipped} skipped` : '')
        + (r.remaining_failed ? `; ${r.remaining_failed} failed jobs still match` : '') + '.');
    } catch (e) {
      this.message(`Bulk retry failed: ${e.message}`, true);
    }
    await this.refresh(true);
  }

  async exportCsv() {
    const filters = this.filters();
    const rows = [];
    let cursor = null;
    this.message('Exporting…');
    try {
      do {
        const page = await this.ctx.api.get(this.path(), { ...filters, page_size: 200, tz: viewerZone(), ...(cursor ? { cursor } : {}) });
        rows.push(...page.jobs);
        cursor = page.next_cursor;
      } while (cursor && rows.length < CSV_LIMIT);
    } catch (e) {
      this.message(`Export failed: ${e.message}`, true);
      return;
    }
    const lines = [CSV_COLUMNS.map(([label]) => csvCell(label)).join(',')];
    for (const r of rows.slice(0, CSV_LIMIT)) lines.push(CSV_COLUMNS.map(([, key]) => csvCell(r[key])).join(','));
    saveFile(new Blob([lines.join('\r\n') + '\r\n'], { type: 'text/csv' }), `jobs-${this.ctx.group}.csv`);
    this.message(`Exported ${Math.min(rows.length, CSV_LIMIT)} jobs${rows.length >= CSV_LIMIT ? ' (the first 10,000)' : ''}.`);
  }
}

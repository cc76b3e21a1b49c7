// Gateway Management console: sign-in, facility group, tabs. Plain ES modules, no build step.
import { Api, apiBase } from './api.js';
import { beginSignIn, claims, completeSignIn, currentToken, signOut } from './auth.js';
import { DestinationsTab } from './destinations.js';
import { $, $$, clear, h, wireConfirm } from './dom.js';
import { ExamView } from './exam.js';
import { GatewaysTab } from './gateways.js';
import { JobsTab } from './jobs.js';

const ctx = {
  group: null,
  facilities: [],
  gateways: [],
  destinations: [],
  banner(text) {
    const el = $('#banner');
    el.textContent = text;
    el.hidden = !text;
  },
  facilityChecks(container, facilities, selected) {
    clear(container);
    for (const f of facilities) {
      container.append(h('label', {}, h('input', { type: 'checkbox', value: f.id, checked: selected.has(f.id) }), ` ${f.name}`));
    }
    if (!facilities.length) container.append(h('span', { class: 'muted', text: 'No facilities received from the platform yet.' }));
  },
};

let config = null;
let tabs = null;

function showSignedOut(message) {
  $('#signed-in').hidden = true;
  $('#sign-out').hidden = true;
  $('#group-picker').hidden = true;
  $('#user').textContent = '';
  $('#signed-out').hidden = false;
  if (message) $('#signin-message').textContent = message;
  if (!config || !config.configured) {
    $('#sign-in').disabled = true;
    $('#signin-message').textContent = 'Sign-in is not configured for this deployment (docs/console.md).';
  }
}

function select(tab) {
  for (const b of $$('[data-tab]')) b.setAttribute('aria-selected', String(b.dataset.tab === tab));
  for (const p of $$('.panel')) p.hidden = p.id !== `panel-${tab}`;
  if (tab === 'jobs') tabs.jobs.show(); else tabs.jobs.hide();
  if (tab === 'exam') $('#tab-exam').hidden = false;
  window.location.hash = tab;
}

async function loadGroup() {
  const base = `/v1/facility-groups/${encodeURIComponent(ctx.group)}`;
  const [facilities] = await Promise.all([ctx.api.get(`${base}/facilities`)]);
  ctx.facilities = facilities.facilities;
  ctx.gateways = await tabs.gateways.load();
  ctx.destinations = await tabs.destinations.load();
  tabs.jobs.fillChoices();
}

async function start() {
  wireConfirm();
  config = await fetch('config.json', { cache: 'no-store' }).then((r) => r.json());
  $('#sign-in').addEventListener('click', () => beginSignIn(config));
  $('#sign-out').addEventListener('click', () => { signOut(); showSignedOut('Signed out.'); });
  try {
    await completeSignIn(config);
  } catch (e) {
    showSignedOut(e.message);
    return;
  }
  const token = currentToken();
  if (!token) {
    if (window.location.hash === '#sign-in' && config.configured) { beginSignIn(config); return; }
    showSignedOut();
    return;
  }
  ctx.api = new Api(apiBase(), () => currentToken() || '', () => { signOut(); showSignedOut('Your session ended: sign in again.'); });
  tabs = { gateways: new GatewaysTab(ctx), destinations: new DestinationsTab(ctx), jobs: new JobsTab(ctx), exam: new ExamView(ctx) };
  ctx.gatewaysChanged = async () => { ctx.gateways = tabs.gateways.rows; ctx.destinations = await tabs.destinations.load(); };
  ctx.destinationsChanged = () => { ctx.destinations = tabs.destinations.rows; tabs.jobs.fillChoices(); };
  ctx.openExam = (examId) => { select('exam'); tabs.exam.load(examId); };
  const who = claims(token);
  $('#user').textContent = who.name || who.sub || '';
  $('#sign-out').hidden = false;
  $('#signed-out').hidden = true;
  let groups = [];
  try {
    groups = (await ctx.api.get('/v1/facility-groups')).facility_groups;
  } catch (e) {
    if (e.status !== 401) ctx.banner(e.message);
    return;
  }
  if (!groups.length) {
    ctx.banner('Your account administers no facility group.');
    document.body.dataset.ready = 'no-group';
    return;
  }
  const picker = clear($('#group'));
  for (const g of groups) picker.append(h('option', { value: g.id, text: g.name }));
  $('#group-picker').hidden = groups.length < 2;
  ctx.group = groups[0].id;
  picker.addEventListener('change', async () => { ctx.group = picker.value; await loadGroup(); select('gateways'); });
  for (const b of $$('[data-tab]')) b.addEventListener('click', () => select(b.dataset.tab));
  $('#signed-in').hidden = false;
  try {
    await loadGroup();
  } catch (e) {
    if (e.status !== 401) ctx.banner(e.message);
  }
  const wanted = window.location.hash.slice(1);
  select(['gateways', 'destinations', 'jobs'].includes(wanted) ? wanted : 'gateways');
  document.body.dataset.ready = 'true';
}

start();

// The admin API on this page's own origin: the console is served at <API base>/console/.
export class ApiError extends Error {
  constructor(status, body) {
    const e = (body && body.error) || {};
    super(e.message || `HTTP ${status}`);
    this.status = status;
    this.body = body;
  }
}

export function apiBase(loc = window.location) {
  return loc.origin + loc.pathname.replace(/\/console(\/.*)?$/, '');
}

export class Api {
  constructor(base, token, onUnauthorized) {
    this.base = base;
    this.token = token;
    this.onUnauthorized = onUnauthorized;
  }

  async request(method, path, { query, body, raw } = {}) {
    const qs = query ? new URLSearchParams(Object.entries(query).filter(([, v]) => v !== '' && v !== null && v !== undefined)) : null;
    const url = this.base + path + (qs && qs.toString() ? `?${qs}` : '');
    const headers = { Authorization: `Bearer ${this.token()}` };
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    const resp = await fetch(url, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), cache: 'no-store', credentials: 'omit' });
    if (resp.status === 401) {
      this.onUnauthorized();
      throw new ApiError(401, null);
    }
    if (raw && resp.ok) return resp;
    const type = resp.headers.get('Content-Type') || '';
    const data = type.startsWith('application/json') ? await resp.json() : null;
    if (!resp.ok) throw new ApiError(resp.status, data);
    return data;
  }

  get(path, query) { return this.request('GET', path, { query }); }
  post(path, body, query) { return this.request('POST', path, { body, query }); }
  patch(path, body) { return this.request('PATCH', path, { body }); }
  del(path) { return this.request('DELETE', path); }
}

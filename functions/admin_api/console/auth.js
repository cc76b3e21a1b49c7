// Sign-in with the platform's identity provider: OAuth 2.0 authorization code + PKCE (RFC 7636,
// S256) for a public client. Only the one-time code passes through the URL (and leaves the address
// bar at once); the access token (the admin API's JWT) lives in sessionStorage and is sent only as
// "Authorization: Bearer" to this origin.
const PKCE = 'archsync.pkce';
const TOKEN = 'archsync.token';

function b64url(bytes) {
  let s = '';
  for (const b of new Uint8Array(bytes)) s += String.fromCharCode(b);
  return btoa(s).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

export function redirectUri(loc = window.location) {
  return loc.origin + loc.pathname.replace(/\/console(\/.*)?$/, '/console/');
}

export async function beginSignIn(config) {
  const verifier = b64url(crypto.getRandomValues(new Uint8Array(32)));
  const state = b64url(crypto.getRandomValues(new Uint8Array(16)));
  const challenge = b64url(await crypto.subtle.digest('SHA-256', new TextEncoder().encode(verifier)));
  sessionStorage.setItem(PKCE, JSON.stringify({ verifier, state }));
  const url = new URL(config.authorize_url);
  url.search = new URLSearchParams({
    response_type: 'code', client_id: config.client_id, redirect_uri: redirectUri(), scope: config.scope,
    state, code_challenge: challenge, code_challenge_method: 'S256',
  }).toString();
  window.location.assign(url.toString());
}

// Back from the identity provider with ?code=…&state=…: exchange the code for the token.
export async function completeSignIn(config) {
  const params = new URLSearchParams(window.location.search);
  const code = params.get('code');
  if (!code && !params.get('error')) return false;
  window.history.replaceState(null, '', window.location.pathname);
  const saved = JSON.parse(sessionStorage.getItem(PKCE) || 'null');
  sessionStorage.removeItem(PKCE);
  if (params.get('error')) throw new Error(`sign-in refused: ${params.get('error')}`);
  if (!saved || saved.state !== params.get('state')) throw new Error('sign-in failed: start again');
  const resp = await fetch(config.token_url, {
    method: 'POST', headers: { 'Content-Type': 'application/x-www-form-urlencoded' }, credentials: 'omit',
    body: new URLSearchParams({ grant_type: 'authorization_code', code, redirect_uri: redirectUri(),
      client_id: config.client_id, code_verifier: saved.verifier }).toString(),
  });
  const body = await resp.json().catch(() => ({}));
  if (!resp.ok || !body.access_token) throw new Error('sign-in failed: the identity provider refused the code');
  const expires = Date.now() + 1000 * (Number(body.expires_in) || 3600);
  sessionStorage.setItem(TOKEN, JSON.stringify({ token: body.access_token, expires }));
  return true;
}

export function currentToken() {
  const saved = JSON.parse(sessionStorage.getItem(TOKEN) || 'null');
  if (!saved || saved.expires < Date.now() + 5000) return null;
  return saved.token;
}

export function signOut() {
  sessionStorage.removeItem(TOKEN);
  sessionStorage.removeItem(PKCE);
}

// The token's claims, for the header's user name only (the API verifies the token itself).
export function claims(token) {
  try {
    const part = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    return JSON.parse(decodeURIComponent(escape(atob(part))));
  } catch (e) {
    return {};
  }
}

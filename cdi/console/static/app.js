// The console's entry: sign-in (a one-time code from the link's fragment, or a pasted token),
// then the views of one namespace.
import { ApiError, describe, request, setToken, token } from './api.js';
import { EventsView } from './events.js';
import { setupUploadForm } from './upload.js';
import { setupCreateForm, VolumesView } from './volumes.js';
import { VmsView } from './vms.js';

const NS_KEY = 'cdi-console-namespace';
let views = [];
let volumes = null;

function $(id) { return document.getElementById(id); }

function showSignIn(message) {
  for (const v of views) v.stop();
  views = []; volumes = null;
  $('app').hidden = true;
  $('sign-out').hidden = true;
  $('whoami').textContent = '';
  $('signin').hidden = false;
  $('signin-error').textContent = message || '';
  $('token').focus();
}

// The code rides in the fragment (#code=...), which no request, log or Referer carries; it is removed
// from the address bar at once and exchanged for the admin token, which spends it.
async function redeemCode() {
  const params = new URLSearchParams(location.hash.slice(1));
  const code = params.get('code');
  if (!code) return null;
  history.replaceState(null, '', location.pathname + location.search);
  const resp = await fetch('/ui/session', { method: 'POST', headers: { 'Content-Type': 'application/json' },
                                            body: JSON.stringify({ code }), cache: 'no-store', credentials: 'omit' });
  const body = await resp.json().catch(() => ({}));
  if (!resp.ok || !body.token) throw new ApiError(resp.status, body.message || `sign-in failed (${resp.status})`);
  return body.token;
}

async function whoAmI() {
  const review = await request('POST', '/apis/authentication.k8s.io/v1/selfsubjectreviews',
    { apiVersion: 'authentication.k8s.io/v1', kind: 'SelfSubjectReview' });
  return ((review.status || {}).userInfo || {}).username || '?';
}

function showNamespace(ns) {
  for (const v of views) v.stop();
  sessionStorage.setItem(NS_KEY, ns);
  $('namespace').value = ns;
  volumes = new VolumesView(ns);
  views = [volumes, new VmsView(ns), new EventsView(ns)];
}

async function enter() {
  let user;
  try {
    user = await whoAmI();
  } catch (err) {
    setToken(null);
    showSignIn(err instanceof ApiError && err.status === 401
      ? 'This token was not accepted: check that you pasted all of it.' : describe(err));
    return;
  }
  $('signin').hidden = true;
  $('app').hidden = false;
  $('sign-out').hidden = false;
  $('whoami').textContent = `Signed in as ${user}`;
  showNamespace(sessionStorage.getItem(NS_KEY) || 'default');
}

let wired = false;
function setup() {
  if (wired) return;
  wired = true;
  $('signin-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const value = $('token').value.trim();
    $('token').value = '';
    setToken(value);
    await enter();
  });
  $('sign-out').addEventListener('click', () => { setToken(null); showSignIn('Signed out.'); });
  $('namespace-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    showNamespace($('namespace').value.trim());
  });
  const ns = () => $('namespace').value.trim();
  setupCreateForm(ns);
  setupUploadForm(ns, () => volumes);
}

async function main() {
  setup();
  // a sign-in link opened in a tab already showing the console changes only the fragment
  window.addEventListener('hashchange', () => { if (location.hash.includes('code=')) main(); });
  try {
    const t = await redeemCode();
    if (t) setToken(t);
  } catch (err) {
    // the server's own words ("This sign-in link was already used..."): nobody was signed out
    showSignIn(err instanceof ApiError ? err.message : describe(err));
    return;
  }
  if (!token()) { showSignIn(''); return; }
  await enter();
}

main();

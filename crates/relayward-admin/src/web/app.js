// The admin center's shell: sign-in, the page routes (`#/...`), the navigation and the
// signed-in identity. Pages are functions of the route that return what to show; they fetch
// what they need from the API with the signed-in token.

import * as api from './api.js';
import { h, message, replace, field, announce } from './ui.js';
import * as tenant from './tenant.js';
import { statusPage } from './status.js';
import * as operator from './operator.js';

const main = document.getElementById('main');
const nav = document.getElementById('nav');
const who = document.getElementById('who');

/** Who the token is (GET /v1/me) and, for a tenant admin, its tenant; null when signed out. */
let me = null;
/** Said on the sign-in page once (signed out, token no longer valid). */
let signInNotice = null;
/** Said on top of the next page shown: the outcome of what the person just did. */
let flash = null;

const TENANT_PAGES = [
  ['status', 'Status'],
  ['traffic', 'Traffic'],
  ['domains', 'Domains'],
  ['connectors', 'Connectors'],
  ['trace', 'Message trace'],
  ['senders', 'Senders'],
];

const OPERATOR_PAGES = [
  ['tenants', 'Tenants'],
  ['review', 'Blocked and under review'],
  ['audit', 'Audit log'],
  ['queue', 'Queue'],
  ['tokens', 'Tokens'],
];

/** [pattern, page function, title]: the first match wins. */
const ROUTES = [
  [/^t\/(\d+)\/status$/, statusPage, 'Status'],
  [/^t\/(\d+)\/traffic$/, tenant.trafficPage, 'Traffic'],
  [/^t\/(\d+)\/domains$/, tenant.domainsPage, 'Domains'],
  [/^t\/(\d+)\/connectors$/, tenant.connectorsPage, 'Connectors'],
  [/^t\/(\d+)\/connectors\/new$/, tenant.connectorFormPage, 'New connector'],
  [/^t\/(\d+)\/connectors\/(\d+)$/, tenant.connectorFormPage, 'Edit connector'],
  [/^t\/(\d+)\/trace$/, tenant.tracePage, 'Message trace'],
  [/^t\/(\d+)\/trace\/([^/]+)$/, tenant.storyPage, 'Message'],
  [/^t\/(\d+)\/senders$/, tenant.sendersPage, 'Senders'],
  [/^ops\/tenants$/, operator.tenantsPage, 'Tenants', true],
  [/^ops\/review$/, operator.reviewPage, 'Blocked and under review', true],
  [/^ops\/audit$/, operator.auditPage, 'Audit log', true],
  [/^ops\/queue$/, operator.queuePage, 'Queue', true],
  [/^ops\/tokens$/, operator.tokensPage, 'Tokens', true],
];

function home() {
  if (!me) return '#/signin';
  return me.scope === 'operator' ? '#/ops/tenants' : `#/t/${me.tenant_id}/status`;
}

export function go(hash) {
  if (location.hash === hash) route();
  else location.hash = hash;
}

function signOut(notice) {
  api.forget();
  me = null;
  signInNotice = notice;
  replace(who);
  nav.hidden = true;
  replace(nav);
  go('#/signin');
}

function renderWho() {
  const label =
    me.scope === 'operator'
      ? `Operator (token ${me.token_id})`
      : `Tenant admin of ${me.tenant_name || `tenant ${me.tenant_id}`} (token ${me.token_id})`;
  replace(
    who,
    h('span', { class: 'who-label' }, label),
    h('button', { type: 'button', class: 'small', onclick: () => signOut('Signed out: the token is forgotten in this browser.') }, 'Sign out'),
  );
}

function renderNav(path, tenantId) {
  const links = [];
  const link = (hash, label) => {
    // A page's own subpages (a connector's form, a message's story) keep its link current.
    const current = `#/${path}` === hash || `#/${path}`.startsWith(`${hash}/`);
    return h('li', null, h('a', { href: hash, 'aria-current': current ? 'page' : null }, label));
  };
  if (me.scope === 'operator') {
    links.push(h('ul', { class: 'nav-ops' }, OPERATOR_PAGES.map(([p, label]) => link(`#/ops/${p}`, label))));
  }
  if (tenantId) {
    const heading = me.scope === 'operator' ? h('span', { class: 'nav-tenant' }, `Tenant ${tenantId}:`) : null;
    links.push(h('ul', { class: 'nav-tenant-pages' }, heading ? h('li', null, heading) : null, TENANT_PAGES.map(([p, label]) => link(`#/t/${tenantId}/${p}`, label))));
  }
  replace(nav, ...links);
  nav.hidden = false;
}

function signInPage() {
  nav.hidden = true;
  replace(who);
  const input = h('input', { type: 'password', name: 'token', autocomplete: 'off', spellcheck: 'false', required: true, class: 'wide' });
  const button = h('button', { type: 'submit' }, 'Sign in');
  const status = h('div');
  const form = h(
    'form',
    { class: 'signin', novalidate: true },
    field('API token', input, 'An operator token or your tenant-admin token (rw_<id>_...). It is kept in this browser tab only, until you sign out or close the tab.'),
    h('div', { class: 'actions' }, button),
    status,
  );
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const t = input.value.trim();
    if (!t) {
      replace(status, message('error', 'Enter an API token.'));
      input.focus();
      return;
    }
    button.disabled = true;
    try {
      const whoami = await api.call('GET', '/v1/me', undefined, t);
      api.remember(t);
      input.value = '';
      signInNotice = null;
      me = null;
      await identify(whoami);
      go(home());
    } catch (err) {
      const text =
        err.status === 401
          ? `Sign-in failed: this token is wrong or revoked (${err.detail}).`
          : `Sign-in failed: ${err.detail}`;
      replace(status, message('error', text));
      input.setAttribute('aria-invalid', 'true');
      input.focus();
    } finally {
      button.disabled = false;
    }
  });
  const parts = [h('h1', { tabindex: '-1' }, 'Sign in')];
  if (signInNotice) parts.push(message('info', signInNotice));
  parts.push(form);
  return { title: 'Sign in', node: h('div', { class: 'narrow' }, ...parts), focus: input };
}

async function identify(whoami) {
  me = whoami || (await api.get('/v1/me'));
  if (me.tenant_id) {
    try {
      me.tenant_name = (await api.get(`/v1/tenants/${me.tenant_id}`)).name;
    } catch {
      me.tenant_name = null;
    }
  }
  renderWho();
}

let generation = 0;

async function route() {
  const gen = ++generation;
  const raw = location.hash.replace(/^#\/?/, '');
  if (!api.token()) {
    me = null;
    const page = signInPage();
    show(page, 'signin');
    return;
  }
  try {
    if (!me) await identify();
  } catch (err) {
    if (err.status === 401) {
      signOut(`Signed out: the relay no longer accepts this token (${err.detail}).`);
      return;
    }
    show({ title: 'Error', node: message('error', `The relay did not answer: ${err.detail}`) }, raw);
    return;
  }
  if (raw === '' || raw === 'signin') {
    go(home());
    return;
  }
  const hit = ROUTES.map(([re, fn, title, ops]) => [raw.match(re), fn, title, ops]).find(([m]) => m);
  if (!hit) {
    renderNav(raw, me.tenant_id);
    show({ title: 'Not found', node: h('div', null, h('h1', { tabindex: '-1' }, 'No such page'), h('p', null, h('a', { href: home() }, 'Go to the start page'))) }, raw);
    return;
  }
  const [m, fn, title, ops] = hit;
  const tenantId = ops ? null : Number(m[1]);
  renderNav(raw, tenantId || me.tenant_id);
  replace(main, h('p', { class: 'loading' }, 'Loading…'));
  const ctx = {
    me,
    tenantId,
    params: m.slice(1),
    go,
    refresh: route,
    flash: (kind, text) => {
      flash = { kind, text };
    },
  };
  let page;
  try {
    page = await fn(ctx);
  } catch (err) {
    if (err.status === 401) {
      signOut(`Signed out: the relay no longer accepts this token (${err.detail}).`);
      return;
    }
    // 404 for another tenant's pages, 403 for the operator's: the API's answer, said as it is.
    const what = err.status === 404 ? 'Not found' : err.status === 403 ? 'Not allowed' : 'Error';
    page = { title: what, node: h('div', null, h('h1', { tabindex: '-1' }, what), message('error', err.detail), h('p', null, h('a', { href: home() }, 'Go to your start page'))) };
  }
  if (gen !== generation) return;
  show({ title: page.title || title, node: page.node, focus: page.focus }, raw);
}

function show(page, raw) {
  document.title = `${page.title} · relayward`;
  replace(main, page.node);
  if (flash && raw !== 'signin') {
    const heading = main.querySelector('h1');
    const note = message(flash.kind, flash.text);
    if (heading) heading.after(note);
    else main.prepend(note);
  }
  flash = null;
  main.dataset.route = raw;
  const target = page.focus || main.querySelector('h1') || main;
  if (target.tagName === 'H1' && !target.hasAttribute('tabindex')) target.setAttribute('tabindex', '-1');
  // Focus moves to the new page's heading, as a page load would, so keyboard and screen
  // reader users start at its top.
  target.focus();
  announce(page.title);
}

document.getElementById('skip').addEventListener('click', (e) => {
  e.preventDefault();
  main.focus();
});
window.addEventListener('hashchange', route);
route();

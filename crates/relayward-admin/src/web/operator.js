// The operator's pages: every tenant, the blocked and under-review queue, the audit log, the
// relay's queue and the API tokens.

import * as api from './api.js';
import { checkItem, observed, RULES } from './status.js';
import { h, section, table, message, time, timeSecs, ago, number, field, copyButton, confirmButton, busy, showProblem, replace, uid, announce } from './ui.js';

/** Most urgent first. */
const STATE_ORDER = ['blocked_all', 'blocked_unregistered', 'under_review', 'warned', 'probation', 'active'];

const statePill = (state) => h('span', { class: ['pill', `state-${state}`] }, state.replace('_', ' '));

// ---------------------------------------------------------------------------------------------
// Tenants

export async function tenantsPage() {
  const [tenants, traffic] = await Promise.all([api.get('/v1/tenants'), api.get('/v1/traffic?hours=24')]);
  const counts = new Map(traffic.tenants.map((t) => [t.tenant_id, t]));
  const zero = { registered: 0, unregistered: 0, null_sender: 0, refused: 0 };
  const rows = tenants.map((t) => ({ ...t, traffic: counts.get(t.id) || zero }));
  const columns = [
    { key: 'name', label: 'Tenant', value: (r) => r.name.toLowerCase(), cell: (r) => h('a', { href: `#/t/${r.id}/status` }, r.name) },
    { key: 'state', label: 'State', value: (r) => STATE_ORDER.indexOf(r.state), cell: (r) => statePill(r.state) },
    { key: 'unregistered', label: 'Unregistered (24 h)', numeric: true, value: (r) => -r.traffic.unregistered, cell: (r) => number(r.traffic.unregistered) },
    { key: 'null_sender', label: 'Null sender (24 h)', numeric: true, value: (r) => -r.traffic.null_sender, cell: (r) => number(r.traffic.null_sender) },
    { key: 'registered', label: 'Registered (24 h)', numeric: true, value: (r) => -r.traffic.registered, cell: (r) => number(r.traffic.registered) },
    { key: 'refused', label: 'Refused (24 h)', numeric: true, value: (r) => -r.traffic.refused, cell: (r) => number(r.traffic.refused) },
  ];
  // Sorted by state, then by unregistered volume: the tenants to look at first come first.
  let sortKey = 'state';
  let flip = false;
  const holder = h('div');
  const render = (focusKey) => {
    const col = columns.find((c) => c.key === sortKey);
    const unreg = columns.find((c) => c.key === 'unregistered');
    const sorted = rows.slice().sort((a, b) => {
      const d = col.value(a) < col.value(b) ? -1 : col.value(a) > col.value(b) ? 1 : 0;
      const tie = unreg.value(a) - unreg.value(b) || a.id - b.id;
      return (flip ? -d : d) || tie;
    });
    const thead = h(
      'tr',
      null,
      columns.map((c) => {
        const active = c.key === sortKey;
        // Numbers sort largest first, names and states first letter or most urgent first.
        const sortWord = active ? (flip !== Boolean(c.numeric) ? 'descending' : 'ascending') : null;
        const btn = h('button', { type: 'button', class: 'sort', 'data-key': c.key }, c.label, h('span', { 'aria-hidden': 'true' }, sortWord === 'descending' ? ' ▼' : sortWord ? ' ▲' : ''));
        btn.addEventListener('click', () => {
          flip = sortKey === c.key ? !flip : false;
          sortKey = c.key;
          render(c.key);
          announce(`Sorted by ${c.label}`);
        });
        return h('th', { scope: 'col', class: c.numeric ? 'num' : null, 'aria-sort': sortWord }, btn);
      }),
    );
    replace(
      holder,
      h(
        'div',
        { class: 'table-wrap', tabindex: '0', role: 'region', 'aria-label': 'Tenants' },
        h(
          'table',
          { id: 'tenants-table' },
          h('caption', { class: 'visually-hidden' }, 'All tenants; the column buttons sort the table'),
          h('thead', null, thead),
          h(
            'tbody',
            null,
            sorted.map((r) => h('tr', { 'data-tenant': r.id }, columns.map((c) => h('td', { class: c.numeric ? 'num' : null, 'data-label': c.label }, c.cell(r))))),
          ),
        ),
      ),
    );
    if (focusKey) holder.querySelector(`button[data-key="${focusKey}"]`).focus();
  };
  render();
  const node = h('div', null, h('h1', null, 'Tenants'), h('p', null, 'Every tenant with its state and its last 24 hours of mail. Sort by a column with its heading.'), rows.length ? holder : h('p', { class: 'empty' }, 'No tenant yet.'));
  return { title: 'Tenants', node };
}

// ---------------------------------------------------------------------------------------------
// Blocked and under review

async function reviewCard(ctx, t) {
  const [st, audit] = await Promise.all([api.get(`/v1/tenants/${t.id}/status`), api.get(`/v1/audit?tenant_id=${t.id}&limit=50`)]);
  const obs = (st.evidence && st.evidence.observations) || {};
  const decided = ((st.evidence && st.evidence.signals) || []).filter((sg) => sg.level === 'block' || sg.level === 'warn');
  const request = t.state === 'under_review' ? audit.find((e) => e.action === 'tenant.request_unblock') : null;
  const headingId = uid('card');
  const reason = h('input', { type: 'text', maxlength: 2000, class: 'wide' });
  const button = h('button', { type: 'submit' }, `Unblock ${t.name}`);
  const form = h('form', { class: 'inline-form' }, field(`Reason for unblocking ${t.name} (optional)`, reason), button);
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    await busy(button, async () => {
      try {
        await api.post(`/v1/tenants/${t.id}/unblock`, reason.value.trim() ? { reason: reason.value.trim() } : {});
        ctx.flash('ok', `${t.name} unblocked: on probation.`);
        ctx.refresh();
      } catch (err) {
        showProblem(form, err, { reason: reason.id });
      }
    });
  });
  return h(
    'article',
    { class: 'card review', 'aria-labelledby': headingId, 'data-tenant': t.id },
    h('h2', { id: headingId }, h('a', { href: `#/t/${t.id}/status` }, t.name), ' ', statePill(t.state)),
    h('p', null, `Since ${time(st.since_ms, true)}. ${st.summary || ''}`),
    t.state === 'under_review'
      ? h(
          'div',
          { class: 'request' },
          h('h3', null, 'Unblock requested'),
          request ? [h('p', null, `${request.actor} wrote at ${timeSecs(request.at)}:`), h('blockquote', null, request.detail)] : h('p', { class: 'muted' }, 'No comment given with the request.'),
        )
      : null,
    decided.length ? h('p', null, 'Rules: ', decided.map((sg) => `${RULES[sg.rule] || sg.rule} ${observed(sg.rule, sg.observed)} (block at ${observed(sg.rule, sg.block_threshold)})`).join('; ')) : null,
    (obs.top_unregistered_domains || []).length
      ? h('p', null, 'Top unregistered domains: ', obs.top_unregistered_domains.slice(0, 5).map((d) => `${d.key} (${number(d.count)})`).join(', '))
      : null,
    (obs.top_source_ips || []).length ? h('p', null, 'Source IPs: ', obs.top_source_ips.slice(0, 5).map((d) => `${d.key} (${number(d.count)})`).join(', ')) : null,
    st.checklist.length
      ? h(
          'ul',
          { class: 'checklist compact' },
          st.checklist.map(checkItem).map((it) => h('li', { class: it.met ? 'met' : 'unmet' }, h('span', { class: 'tick', 'aria-hidden': 'true' }, it.met ? '✓' : '✗'), h('span', { class: 'visually-hidden' }, it.met ? 'Done: ' : 'Not yet: '), it.text)),
        )
      : null,
    form,
  );
}

export async function reviewPage(ctx) {
  const tenants = await api.get('/v1/tenants');
  const waiting = tenants
    .filter((t) => ['under_review', 'blocked_unregistered', 'blocked_all'].includes(t.state))
    .sort((a, b) => (a.state === 'under_review' ? 0 : 1) - (b.state === 'under_review' ? 0 : 1) || a.id - b.id);
  const cards = await Promise.all(waiting.map((t) => reviewCard(ctx, t)));
  const node = h(
    'div',
    null,
    h('h1', null, 'Blocked and under review'),
    h('p', null, 'Requests for unblock first, then the tenants still blocked. Each with its evidence; unblocking puts the tenant on probation. To block a tenant by hand, use its status page.'),
    cards.length ? cards : h('p', { class: 'empty' }, 'No tenant is blocked or waiting for review.'),
  );
  return { title: 'Blocked and under review', node };
}

// ---------------------------------------------------------------------------------------------
// Audit log

export async function auditPage(ctx) {
  const tenants = await api.get('/v1/tenants');
  const select = h('select', null, h('option', { value: '' }, 'Every tenant and the relay'), tenants.map((t) => h('option', { value: t.id }, t.name)));
  const holder = h('div');
  const load = async () => {
    const q = api.query({ tenant_id: select.value, limit: 200 });
    const entries = await api.get(`/v1/audit${q}`);
    const names = new Map(tenants.map((t) => [t.id, t.name]));
    replace(
      holder,
      table(
        'Audit log',
        [
          { label: 'When', cell: (e) => timeSecs(e.at, true) },
          { label: 'Who', cell: (e) => h('code', null, e.actor) },
          { label: 'What', cell: (e) => h('code', null, e.action) },
          { label: 'Tenant', cell: (e) => (e.tenant_id ? names.get(e.tenant_id) || `#${e.tenant_id}` : '—') },
          { label: 'Object', cell: (e) => e.object },
          { label: 'Detail', cell: (e) => h('span', { class: 'detail' }, e.detail) },
        ],
        entries,
        'No entry.',
      ),
    );
  };
  select.addEventListener('change', () => load().catch((err) => replace(holder, message('error', err.detail))));
  await load();
  const node = h('div', null, h('h1', null, 'Audit log'), h('p', null, 'Every change, newest first, with the token or user that made it.'), field('Show', select), holder);
  return { title: 'Audit log', node };
}

// ---------------------------------------------------------------------------------------------
// Queue

export async function queuePage(ctx) {
  const [messages, tenants] = await Promise.all([api.get('/v1/queue'), api.get('/v1/tenants')]);
  const names = new Map(tenants.map((t) => [t.id, t.name]));
  const results = h('div');
  const op = (m, what, label, button) =>
    busy(button, async () => {
      try {
        await api.post(`/v1/queue/${api.seg(m.queue_id)}/${what}`);
        ctx.flash('ok', `${label}: message ${m.queue_id}.`);
        ctx.refresh();
      } catch (err) {
        replace(results, message('error', err.detail));
      }
    });
  const actions = (m) => {
    const out = [];
    const make = (what, label) => {
      const b = h('button', { type: 'button', class: 'small' }, label);
      b.setAttribute('aria-label', `${label} message ${m.queue_id}`);
      b.addEventListener('click', () => op(m, what, label, b));
      out.push(b);
    };
    if (m.held) make('release', 'Release');
    else make('hold', 'Hold');
    make('retry', 'Retry now');
    const del = confirmButton('Delete', `Delete ${m.queue_id}`, () =>
      api
        .del(`/v1/queue/${api.seg(m.queue_id)}`)
        .then(() => {
          ctx.flash('ok', `Deleted: message ${m.queue_id}.`);
          ctx.refresh();
        })
        .catch((err) => replace(results, message('error', err.detail))),
    );
    del.setAttribute('aria-label', `Delete message ${m.queue_id}`);
    out.push(del);
    return h('div', { class: 'row-actions' }, out);
  };
  const rows = table(
    'Queued messages',
    [
      { label: 'Queue id', cell: (m) => (m.tenant_id ? h('a', { href: `#/t/${m.tenant_id}/trace/${api.seg(m.queue_id)}` }, m.queue_id) : m.queue_id) },
      { label: 'Received', cell: (m) => timeSecs(m.received_at) },
      { label: 'Tenant', cell: (m) => (m.tenant_id ? names.get(m.tenant_id) || `#${m.tenant_id}` : 'relay') },
      { label: 'Sender', cell: (m) => [h('code', null, m.sender || '<>'), ` (${m.sender_class})`] },
      { label: 'Recipients', cell: (m) => h('ul', { class: 'flags' }, m.recipients.map((r) => h('li', null, h('code', null, r.address), `: ${r.status}${r.attempts ? `, ${r.attempts} attempt(s)` : ''}${r.last_reply ? `, last ${r.last_reply}` : ''}`))) },
      { label: 'Held', cell: (m) => (m.held ? 'held' : 'no') },
      { label: 'Actions', cell: actions },
    ],
    messages,
    'The queue is empty.',
  );
  const node = h('div', null, h('h1', null, 'Queue'), h('p', null, 'Messages waiting for delivery. Hold stops delivery attempts, Release resumes them, Retry now attempts every pending recipient at once.'), results, rows);
  return { title: 'Queue', node };
}

// ---------------------------------------------------------------------------------------------
// Tokens

export async function tokensPage(ctx) {
  const [tokens, tenants] = await Promise.all([api.get('/v1/tokens'), api.get('/v1/tenants')]);
  const names = new Map(tenants.map((t) => [t.id, t.name]));
  const results = h('div', { id: 'token-results' });
  const rows = table(
    'API tokens',
    [
      { label: 'Token', cell: (t) => [h('code', null, `${t.token_prefix}…`), h('br'), h('span', { class: 'muted' }, t.label)] },
      { label: 'Scope', cell: (t) => (t.scope === 'operator' ? 'operator' : `tenant ${names.get(t.tenant_id) || t.tenant_id}`) },
      { label: 'Created', cell: (t) => `${timeSecs(t.created_at)} by ${t.created_by}` },
      { label: 'Last used', cell: (t) => ago(t.last_used_at) },
      {
        label: 'Revoked',
        cell: (t) => {
          if (t.revoked_at) return `${timeSecs(t.revoked_at)} by ${t.revoked_by}`;
          if (t.id === ctx.me.token_id) return 'no (this session’s token)';
          const b = confirmButton('Revoke', `Revoke token ${t.id}`, async () => {
            try {
              await api.del(`/v1/tokens/${t.id}`);
              ctx.flash('ok', `Token ${t.id} revoked: it no longer works.`);
              ctx.refresh();
            } catch (err) {
              replace(results, message('error', err.detail));
            }
          });
          b.setAttribute('aria-label', `Revoke token ${t.id} (${t.label})`);
          return b;
        },
      },
    ],
    tokens,
  );
  const scope = h('select', null, h('option', { value: 'tenant' }, 'Tenant admin'), h('option', { value: 'operator' }, 'Operator'));
  const tenant = h('select', null, tenants.map((t) => h('option', { value: t.id }, t.name)));
  const tenantField = field('Tenant', tenant);
  scope.addEventListener('change', () => {
    tenantField.hidden = scope.value !== 'tenant';
  });
  const label = h('input', { type: 'text', maxlength: 100, required: true });
  const button = h('button', { type: 'submit' }, 'Create token');
  const form = h('form', { class: 'card' }, field('Scope', scope), tenantField, field('Label', label, 'Who or what the token is for.'), h('div', { class: 'actions' }, button));
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    await busy(button, async () => {
      try {
        const body = { scope: scope.value, label: label.value.trim() };
        if (scope.value === 'tenant') body.tenant_id = Number(tenant.value);
        const created = await api.post('/v1/tokens', body);
        label.value = '';
        const out = h('input', { type: 'text', readonly: true, value: created.token, class: 'wide token-once' });
        replace(
          results,
          message(
            'ok',
            h('p', null, `Token ${created.id} created. Copy it now: it is shown this once, only a hash of it is kept.`),
            field('New token', out),
            copyButton(created.token, 'new token'),
          ),
        );
        out.focus();
        out.select();
      } catch (err) {
        showProblem(form, err, { label: label.id, scope: scope.id, tenant_id: tenant.id });
      }
    });
  });
  const node = h('div', null, h('h1', null, 'Tokens'), results, section('API tokens', rows), section('Create a token', form));
  return { title: 'Tokens', node };
}

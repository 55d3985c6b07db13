// A tenant's pages besides its status: traffic, domains, connectors, message trace, senders.

import * as api from './api.js';
import { trafficChart } from './chart.js';
import { h, section, table, message, time, timeSecs, ago, number, field, checkbox, copyButton, confirmButton, busy, showProblem, clearProblem, replace } from './ui.js';

async function tenantOf(ctx) {
  return api.get(`/v1/tenants/${ctx.tenantId}`);
}

// ---------------------------------------------------------------------------------------------
// Traffic

export async function trafficPage(ctx) {
  const id = ctx.tenantId;
  const [tenant, day, week] = await Promise.all([tenantOf(ctx), api.get(`/v1/tenants/${id}/traffic?hours=24`), api.get(`/v1/tenants/${id}/traffic?hours=168`)]);
  const node = h(
    'div',
    null,
    h('h1', null, `Traffic of ${tenant.name}`),
    h(
      'p',
      null,
      'Messages accepted per hour by the class of their envelope sender (registered: one of your verified domains; unregistered: any other domain; null: the empty sender of bounces and notifications), and commands refused. State changes are marked on the time axis. Times are UTC.',
    ),
    h('div', { class: 'chart-slot', id: 'chart-24h' }, trafficChart('Last 24 hours', day)),
    h('div', { class: 'chart-slot', id: 'chart-7d' }, trafficChart('Last 7 days', week)),
  );
  return { title: `Traffic of ${tenant.name}`, node };
}

// ---------------------------------------------------------------------------------------------
// Domains

function verifyWords(v) {
  switch (v.status) {
    case 'verified':
      return ['ok', `Verified. ${v.detail}`];
    case 'not_found':
      return ['error', `Not verified: DNS has no TXT record at ${v.domain}. ${v.detail}`];
    case 'wrong_token':
      return ['error', `Not verified: ${v.records_found} TXT record(s) at ${v.domain}, none of them the expected one. ${v.detail}`];
    default:
      return ['error', `Not checked: DNS did not answer. ${v.detail}`];
  }
}

function recordBlock(d) {
  const r = d.verification_record;
  return h(
    'div',
    { class: 'record' },
    h('dl', { class: 'facts' }, h('dt', null, 'Name'), h('dd', null, h('code', null, r.name)), h('dt', null, 'Type'), h('dd', null, h('code', null, r.type)), h('dt', null, 'Value'), h('dd', null, h('code', { class: 'txt-value' }, r.value), ' ', copyButton(r.value, `TXT record value for ${d.domain}`))),
  );
}

export async function domainsPage(ctx) {
  const id = ctx.tenantId;
  const [tenant, domains] = await Promise.all([tenantOf(ctx), api.get(`/v1/tenants/${id}/domains`)]);
  const results = h('div', { id: 'domain-results' });

  const verify = async (d, button) => {
    await busy(button, async () => {
      try {
        const v = await api.post(`/v1/tenants/${id}/domains/${api.seg(d.domain)}/verify`);
        const [kind, text] = verifyWords(v);
        if (v.status === 'verified') {
          ctx.flash('ok', text);
          ctx.refresh();
          return;
        }
        replace(results, message(kind, text));
      } catch (err) {
        replace(results, message('error', err.detail));
      }
    });
  };

  const rows = table(
    'Accepted domains',
    [
      { label: 'Domain', cell: (d) => h('code', null, d.domain) },
      { label: 'Kind', cell: (d) => `${d.kind}${d.match_subdomains ? ', with subdomains' : ''}` },
      { label: 'Status', cell: (d) => h('span', { class: ['pill', d.verified ? 'pill-ok' : 'pill-warn'] }, d.verified ? `verified ${timeSecs(d.verified_at)}` : 'pending verification') },
      { label: 'TXT record to publish', cell: (d) => (d.verified ? h('span', { class: 'muted' }, 'keep it published') : recordBlock(d)) },
      {
        label: 'Actions',
        cell: (d) => {
          const v = h('button', { type: 'button', class: 'small' }, 'Verify');
          v.setAttribute('aria-label', `Verify ${d.domain}`);
          v.addEventListener('click', () => verify(d, v));
          const rm = confirmButton('Remove', `Remove ${d.domain}`, async () => {
            try {
              await api.del(`/v1/tenants/${id}/domains/${api.seg(d.domain)}`);
              ctx.flash('ok', `${d.domain} removed.`);
              ctx.refresh();
            } catch (err) {
              replace(results, message('error', err.detail));
            }
          });
          rm.setAttribute('aria-label', `Remove ${d.domain}`);
          return h('div', { class: 'row-actions' }, d.verified ? null : v, rm);
        },
      },
    ],
    domains,
    'No accepted domain yet.',
  );

  const input = h('input', { type: 'text', name: 'domain', required: true, autocomplete: 'off', spellcheck: 'false' });
  const kind = h('select', { name: 'kind' }, h('option', { value: 'authoritative' }, 'authoritative'), h('option', { value: 'internal-relay' }, 'internal-relay'));
  const sub = checkbox('Match subdomains', { name: 'match_subdomains' });
  const button = h('button', { type: 'submit' }, 'Add domain');
  const form = h(
    'form',
    { class: 'card' },
    field('Domain', input, 'A domain you send from, e.g. contoso.example. It counts once its TXT record is published and verified.'),
    field('Kind', kind),
    sub,
    h('div', { class: 'actions' }, button),
  );
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const domain = input.value.trim();
    if (!domain) {
      showProblem(form, { field: 'domain', detail: 'Enter a domain name.' }, { domain: input.id });
      return;
    }
    await busy(button, async () => {
      try {
        const d = await api.post(`/v1/tenants/${id}/domains`, { domain, kind: kind.value, match_subdomains: sub.querySelector('input').checked });
        ctx.flash('ok', `${d.domain} added, pending verification: publish its TXT record, then press Verify.`);
        ctx.refresh();
      } catch (err) {
        showProblem(form, err, { domain: input.id, kind: kind.id });
      }
    });
  });

  const node = h(
    'div',
    null,
    h('h1', null, `Domains of ${tenant.name}`),
    h('p', null, 'Mail relays as registered only from verified domains. To prove a domain is yours, publish its TXT record in your DNS and press Verify.'),
    results,
    section('Accepted domains', rows),
    section('Add a domain', form),
  );
  return { title: `Domains of ${tenant.name}`, node };
}

// ---------------------------------------------------------------------------------------------
// Connectors

export const FLAGS = {
  recently_changed: 'Created or changed in the last 7 days: make sure the change was yours.',
  wide_ip_range: 'An IP range wider than /24 (IPv4) or /48 (IPv6): it may take in servers that are not yours.',
  no_certificate: 'No TLS client certificate name: servers are recognised by address or password only.',
  unused_30_days: 'Not used for 30 days: delete it if nothing needs it.',
  unregistered_mail_24h: 'Carried mail from unregistered domains in the last 24 hours.',
  cert_name_unverified: 'Its certificate name is under none of your verified domains: it recognises no server until one is verified.',
  auth_lockout_24h: 'Its SMTP AUTH was locked after repeated wrong passwords in the last 24 hours.',
};

function matchedBy(c) {
  const parts = [];
  if (c.ip_ranges.length) parts.push(`IP ${c.ip_ranges.join(', ')}`);
  if (c.cert_name) parts.push(`certificate ${c.cert_name}`);
  if (c.auth_user) parts.push(`AUTH user ${c.auth_user}`);
  return parts.join('; ');
}

export async function connectorsPage(ctx) {
  const id = ctx.tenantId;
  const [tenant, connectors] = await Promise.all([tenantOf(ctx), api.get(`/v1/tenants/${id}/connectors`)]);
  const results = h('div');
  const toggle = async (c, button) => {
    await busy(button, async () => {
      try {
        const after = await api.post(`/v1/tenants/${id}/connectors/${c.id}/${c.enabled ? 'disable' : 'enable'}`);
        ctx.flash('ok', `Connector ${after.name} ${after.enabled ? 'enabled' : 'disabled'}.`);
        ctx.refresh();
      } catch (err) {
        replace(results, message('error', err.detail));
      }
    });
  };
  const rows = table(
    'Connectors',
    [
      { label: 'Name', cell: (c) => [h('strong', null, c.name), h('br'), h('span', { class: 'muted' }, `${c.kind}, #${c.id}`)] },
      { label: 'Recognises', cell: (c) => matchedBy(c) },
      {
        label: 'State',
        cell: (c) => h('span', { class: ['pill', c.blocked ? 'pill-bad' : c.enabled ? 'pill-ok' : 'pill-warn'] }, c.blocked ? 'blocked (5.7.711)' : c.enabled ? 'enabled' : 'disabled'),
      },
      { label: 'Last used', cell: (c) => h('span', { title: timeSecs(c.last_used_at) }, ago(c.last_used_at)) },
      {
        label: 'Audit flags',
        cell: (c) =>
          c.audit.flags.length
            ? h(
                'ul',
                { class: 'flags' },
                c.audit.flags.map((f) =>
                  h('li', null, h('code', null, f), ': ', f === 'unregistered_mail_24h' ? `Carried ${number(c.audit.unregistered_messages_24h)} message(s) from unregistered domains in the last 24 hours.` : FLAGS[f] || ''),
                ),
              )
            : h('span', { class: 'muted' }, 'none'),
      },
      {
        label: 'Actions',
        cell: (c) => {
          const t = h('button', { type: 'button', class: ['small', c.enabled ? 'danger' : null] }, c.enabled ? 'Disable' : 'Enable');
          t.setAttribute('aria-label', `${c.enabled ? 'Disable' : 'Enable'} connector ${c.name}`);
          t.addEventListener('click', () => toggle(c, t));
          const edit = h('a', { href: `#/t/${id}/connectors/${c.id}`, class: 'button-link small' }, 'Edit');
          edit.setAttribute('aria-label', `Edit connector ${c.name}`);
          return h('div', { class: 'row-actions' }, t, edit);
        },
      },
    ],
    connectors,
    'No connector yet: nothing of this tenant can relay.',
  );
  const node = h(
    'div',
    null,
    h('h1', null, `Connectors of ${tenant.name}`),
    h('p', null, 'A connector is how the relay recognises your servers. Review the flagged ones first; disable any you did not set up.'),
    results,
    rows,
    h('p', null, h('a', { href: `#/t/${id}/connectors/new`, class: 'button-link' }, 'Add a connector')),
  );
  return { title: `Connectors of ${tenant.name}`, node };
}

export async function connectorFormPage(ctx) {
  const id = ctx.tenantId;
  const cid = ctx.params[1];
  const [tenant, existing] = await Promise.all([tenantOf(ctx), cid ? api.get(`/v1/tenants/${id}/connectors/${cid}`) : null]);
  const c = existing || { name: '', kind: 'on-premises', ip_ranges: [], cert_name: null, auth_user: null, require_tls: false, allow_unregistered: false, restrict_domains_to_ips: false, restrict_domains_to_cert: false };
  const name = h('input', { type: 'text', required: true, maxlength: 64, value: c.name, autocomplete: 'off' });
  const kind = h('select', null, ['on-premises', 'partner'].map((k) => h('option', { value: k, selected: c.kind === k }, k)));
  const ranges = h('textarea', { rows: 3, class: 'wide', spellcheck: 'false' }, c.ip_ranges.join('\n'));
  const cert = h('input', { type: 'text', value: c.cert_name || '', autocomplete: 'off', spellcheck: 'false' });
  const user = h('input', { type: 'text', value: c.auth_user || '', autocomplete: 'off', spellcheck: 'false' });
  const password = h('input', { type: 'password', autocomplete: 'new-password' });
  const boxes = {
    require_tls: checkbox('Require TLS (STARTTLS before MAIL)', { checked: c.require_tls }),
    allow_unregistered: checkbox('Allow unregistered senders (a server that forwards mail for others)', { checked: c.allow_unregistered }),
    restrict_domains_to_ips: checkbox('Your domains only from these IP ranges', { checked: c.restrict_domains_to_ips }),
    restrict_domains_to_cert: checkbox('Your domains only with this certificate', { checked: c.restrict_domains_to_cert }),
  };
  const button = h('button', { type: 'submit' }, existing ? 'Save changes' : 'Add connector');
  const form = h(
    'form',
    { class: 'card', novalidate: true },
    field('Name', name),
    field('Kind', kind),
    field('IP ranges', ranges, 'One per line, CIDR (192.0.2.0/24, 2001:db8::/48) or a single address.'),
    field('Certificate name', cert, 'The DNS name of your server’s TLS client certificate, under one of your verified domains (mail.contoso.example).'),
    field('SMTP AUTH user', user),
    field(existing ? 'SMTP AUTH password (leave empty to keep it)' : 'SMTP AUTH password', password, 'At least 12 characters; stored as a hash, never shown.'),
    Object.values(boxes),
    h('div', { class: 'actions' }, button, h('a', { href: `#/t/${id}/connectors`, class: 'button-link secondary' }, 'Cancel')),
  );
  const ids = { name: name.id, kind: kind.id, ip_ranges: ranges.id, cert_name: cert.id, auth_user: user.id, auth_password: password.id };
  for (const [k, b] of Object.entries(boxes)) ids[k] = b.querySelector('input').id;
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const lines = ranges.value.split(/[\s,]+/).map((x) => x.trim()).filter(Boolean);
    if (!name.value.trim()) {
      showProblem(form, { field: 'name', detail: 'Give the connector a name.' }, ids);
      return;
    }
    const bad = lines.find((l) => !/^[0-9a-fA-F:.]+(\/\d{1,3})?$/.test(l));
    if (bad) {
      showProblem(form, { field: 'ip_ranges', detail: `${bad} is not an IP address or CIDR range.` }, ids);
      return;
    }
    if (!lines.length && !cert.value.trim() && !user.value.trim()) {
      showProblem(form, { field: 'ip_ranges', detail: 'A connector needs IP ranges, a certificate name or an AUTH user.' }, ids);
      return;
    }
    const body = {
      name: name.value.trim(),
      kind: kind.value,
      ip_ranges: lines,
      cert_name: cert.value.trim() || null,
      auth_user: user.value.trim() || null,
    };
    if (password.value) body.auth_password = password.value;
    for (const [k, b] of Object.entries(boxes)) body[k] = b.querySelector('input').checked;
    await busy(button, async () => {
      try {
        let saved;
        if (existing) {
          // Only what changed: the audit log then says exactly what was changed.
          const changed = {};
          for (const [k, v] of Object.entries(body)) {
            if (JSON.stringify(v) !== JSON.stringify(k === 'auth_password' ? undefined : existing[k])) changed[k] = v;
          }
          saved = await api.patch(`/v1/tenants/${id}/connectors/${existing.id}`, changed);
        } else {
          if (!body.cert_name) delete body.cert_name;
          if (!body.auth_user) delete body.auth_user;
          saved = await api.post(`/v1/tenants/${id}/connectors`, body);
        }
        const warnings = (saved.warnings || []).join(' ');
        ctx.flash(warnings ? 'info' : 'ok', `Connector ${saved.name} saved.${warnings ? ` ${warnings}` : ''}`);
        ctx.go(`#/t/${id}/connectors`);
      } catch (err) {
        showProblem(form, err, ids);
      }
    });
  });
  const title = existing ? `Edit connector ${existing.name}` : 'Add a connector';
  return { title, node: h('div', null, h('h1', null, title), h('p', { class: 'muted' }, `Tenant ${tenant.name}.`), form) };
}

// ---------------------------------------------------------------------------------------------
// Message trace

const KIND_WORDS = {
  received: 'accepted',
  refused: 'refused',
  queued: 'queued',
  attempt: 'delivery attempt',
  delivered: 'delivered',
  deferred: 'deferred',
  bounced: 'bounced',
  dsn_sent: 'DSN sent',
  held: 'held',
  released: 'released',
  deleted: 'deleted',
};

/** `YYYY-MM-DDTHH:MM` of a datetime-local input, read as UTC. */
function utcMs(v) {
  if (!v) return undefined;
  const ms = Date.parse(`${v}:00Z`);
  return Number.isNaN(ms) ? NaN : ms;
}

function eventsTable(id, events, caption) {
  return table(
    caption,
    [
      { label: 'When', cell: (e) => time(e.at_ms, true) },
      { label: 'What', cell: (e) => h('span', { class: ['pill', `kind-${e.kind}`] }, KIND_WORDS[e.kind] || e.kind) },
      { label: 'Queue id', cell: (e) => (e.queue_id ? h('a', { href: `#/t/${id}/trace/${api.seg(e.queue_id)}` }, e.queue_id) : '—') },
      { label: 'Sender', cell: (e) => h('code', null, e.sender === '' ? '<>' : e.sender || '—') },
      { label: 'Recipient', cell: (e) => (e.recipient ? h('code', null, e.recipient) : '—') },
      { label: 'Reply', cell: (e) => (e.reply ? h('code', null, e.reply) : '—') },
      { label: 'Detail', cell: (e) => h('span', { class: 'detail' }, e.detail || '') },
    ],
    events,
    'No event matches.',
  );
}

export async function tracePage(ctx) {
  const id = ctx.tenantId;
  const tenant = await tenantOf(ctx);
  const inputs = {
    sender: h('input', { type: 'text', autocomplete: 'off', spellcheck: 'false' }),
    recipient: h('input', { type: 'text', autocomplete: 'off', spellcheck: 'false' }),
    message_id: h('input', { type: 'text', autocomplete: 'off', spellcheck: 'false' }),
    queue_id: h('input', { type: 'text', autocomplete: 'off', spellcheck: 'false' }),
    since: h('input', { type: 'datetime-local' }),
    until: h('input', { type: 'datetime-local' }),
  };
  const button = h('button', { type: 'submit' }, 'Search');
  const results = h('div', { id: 'trace-results' });
  const form = h(
    'form',
    { class: 'card search', novalidate: true },
    h(
      'div',
      { class: 'grid' },
      field('Sender', inputs.sender, '<> for the null sender'),
      field('Recipient', inputs.recipient),
      field('Message-ID', inputs.message_id),
      field('Queue id', inputs.queue_id),
      field('From (UTC)', inputs.since),
      field('Until (UTC)', inputs.until),
    ),
    h('div', { class: 'actions' }, button),
  );
  const ids = { sender: inputs.sender.id, recipient: inputs.recipient.id, message_id: inputs.message_id.id, queue_id: inputs.queue_id.id, since_ms: inputs.since.id, until_ms: inputs.until.id };
  let shown = [];
  const search = async (cursor) => {
    const since = utcMs(inputs.since.value);
    const until = utcMs(inputs.until.value);
    if (Number.isNaN(since) || Number.isNaN(until)) {
      showProblem(form, { field: Number.isNaN(since) ? 'since_ms' : 'until_ms', detail: 'Not a date and time.' }, ids);
      return;
    }
    const q = api.query({
      tenant_id: id,
      sender: inputs.sender.value.trim(),
      recipient: inputs.recipient.value.trim(),
      message_id: inputs.message_id.value.trim(),
      queue_id: inputs.queue_id.value.trim(),
      since_ms: since,
      until_ms: until === undefined ? undefined : until + 59999,
      limit: 50,
      cursor,
    });
    await busy(button, async () => {
      try {
        const page = await api.get(`/v1/trace${q}`);
        shown = cursor ? shown.concat(page.events) : page.events;
        const more = page.next_cursor ? h('button', { type: 'button', onclick: () => search(page.next_cursor) }, 'Older events') : null;
        replace(results, h('p', { role: 'status' }, `${shown.length} event(s), newest first.`), eventsTable(id, shown, 'Trace events'), more);
        clearProblem(form);
      } catch (err) {
        showProblem(form, err, ids);
      }
    });
  };
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    search();
  });
  const node = h(
    'div',
    null,
    h('h1', null, `Message trace of ${tenant.name}`),
    h('p', null, 'Every message’s steps (accepted, queued, delivery attempts, delivered, bounced) and every refused command. Search by any of these, or leave them empty for the latest events.'),
    form,
    results,
  );
  // The latest events at once.
  setTimeout(() => search(), 0);
  return { title: `Message trace of ${tenant.name}`, node };
}

export async function storyPage(ctx) {
  const id = ctx.tenantId;
  const qid = decodeURIComponent(ctx.params[1]);
  const [tenant, page] = await Promise.all([tenantOf(ctx), api.get(`/v1/trace${api.query({ tenant_id: id, queue_id: qid, limit: 1000 })}`)]);
  let queued = null;
  try {
    queued = await api.get(`/v1/queue/${api.seg(qid)}`);
  } catch (err) {
    if (err.status !== 404 && err.status !== 503) throw err;
  }
  const events = page.events.slice().reverse();
  const first = events.find((e) => e.kind === 'received') || events[0];
  const facts = first
    ? h(
        'dl',
        { class: 'facts' },
        h('dt', null, 'Sender'),
        h('dd', null, h('code', null, first.sender === '' ? '<>' : first.sender || '—'), first.sender_class ? ` (${first.sender_class})` : ''),
        h('dt', null, 'Message-ID'),
        h('dd', null, first.message_id ? h('code', null, first.message_id) : '—'),
        h('dt', null, 'From'),
        h('dd', null, first.client_ip || '—', first.connector_id ? `, connector #${first.connector_id}` : ''),
        h('dt', null, 'Recipients'),
        h('dd', null, [...new Set(events.filter((e) => e.recipient).map((e) => e.recipient))].join(', ') || '—'),
      )
    : null;
  const queue = queued
    ? section(
        'In the queue now',
        h('p', null, queued.held ? 'Held.' : 'Waiting for delivery.'),
        table(
          'Recipients in the queue',
          [
            { label: 'Recipient', cell: (r) => h('code', null, r.address) },
            { label: 'Status', cell: (r) => r.status },
            { label: 'Attempts', numeric: true, cell: (r) => number(r.attempts) },
            { label: 'Last reply', cell: (r) => r.last_reply || '—' },
            { label: 'Next attempt', cell: (r) => timeSecs(r.next_attempt_at) },
          ],
          queued.recipients,
        ),
      )
    : null;
  const title = `Message ${qid}`;
  const node = h(
    'div',
    null,
    h('h1', null, title),
    h('p', { class: 'muted' }, `Tenant ${tenant.name}. Its whole story, oldest first.`),
    events.length ? facts : message('info', 'No trace event of this message.'),
    queue,
    section('What happened', eventsTable(id, events, 'The message’s events, oldest first')),
    h('p', null, h('a', { href: `#/t/${id}/trace` }, 'Back to the search')),
  );
  return { title, node };
}

// ---------------------------------------------------------------------------------------------
// Senders

export async function sendersPage(ctx) {
  const id = ctx.tenantId;
  const [tenant, restricted] = await Promise.all([tenantOf(ctx), api.get(`/v1/tenants/${id}/sender-restrictions`)]);
  const results = h('div');
  const rows = table(
    'Restricted senders',
    [
      { label: 'Sender', cell: (r) => h('code', null, r.sender) },
      { label: 'Why', cell: (r) => `${r.reason} (limit: ${r.limit})` },
      { label: 'Action', cell: (r) => r.action },
      { label: 'Since', cell: (r) => time(r.since_ms) },
      { label: 'Until', cell: (r) => (r.until_ms ? time(r.until_ms) : 'until released') },
      {
        label: 'Release',
        cell: (r) => {
          const b = h('button', { type: 'button', class: 'small' }, 'Release');
          b.setAttribute('aria-label', `Release ${r.sender}`);
          b.addEventListener('click', () =>
            busy(b, async () => {
              try {
                await api.del(`/v1/tenants/${id}/sender-restrictions/${api.seg(r.sender)}`);
                ctx.flash('ok', `${r.sender} released: it may send again.`);
                ctx.refresh();
              } catch (err) {
                replace(results, message('error', err.detail));
              }
            }),
          );
          return b;
        },
      },
    ],
    restricted,
    'No sender is restricted.',
  );
  const node = h(
    'div',
    null,
    h('h1', null, `Senders of ${tenant.name}`),
    h('p', null, 'A sender address over its sending limits gets 550 5.1.8 Access denied, bad outbound sender until it is released or its restriction ends. Release it once you know why it sent so much.'),
    results,
    rows,
  );
  return { title: `Senders of ${tenant.name}`, node };
}

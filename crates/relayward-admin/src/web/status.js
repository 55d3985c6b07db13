// A tenant's status: the state as a banner, the refusal its servers get, when and why (the
// detector's evidence), the connectors involved, the unblock checklist and the way back;
// the reputation rates; for the operator, unblock and block.

import * as api from './api.js';
import { h, section, table, time, percent, number, checkbox, field, busy, showProblem } from './ui.js';

const BANNERS = {
  active: ['ok', 'Active', 'Mail flows: nothing of this tenant is refused for its state.'],
  warned: ['warn', 'Warned', 'The detector saw unusual mail from unregistered domains. Nothing is refused yet; look at the evidence below before it becomes a block.'],
  blocked_unregistered: [
    'bad',
    'Blocked from sending from unregistered domains',
    'Mail from your registered, verified domains still flows. Mail whose envelope sender is from any other domain, and mail with an empty sender (bounces, notifications), is refused until the cause is fixed and the operator lifts the block.',
  ],
  under_review: [
    'warn',
    'Under review',
    'You asked for unblock; the operator is reviewing it. Until the operator decides, mail from unregistered domains and with an empty sender is still refused; registered mail flows.',
  ],
  probation: ['warn', 'On probation', 'The block is lifted: all mail flows again, with tightened detector thresholds until the probation ends.'],
  blocked_all: ['bad', 'Blocked: every message is refused', 'Every message from this tenant’s servers is refused, registered domains included, until the operator lifts the block.'],
};

const RULES = {
  unregistered_volume: 'Messages from unregistered domains',
  unregistered_burst: 'Burst of messages from unregistered domains',
  unregistered_domains: 'Distinct unregistered sender domains',
  unregistered_share: 'Share of the mail from unregistered domains',
  spam_rejections: 'Remote servers refusing the mail as spam',
  header_mismatch: 'Header From not one of your domains',
  spam_verdicts: 'Content scanner’s spam verdicts',
  bounce_rate: 'Hard-bounce rate',
  complaint_rate: 'Spam complaint rate',
};

const RATE_RULES = new Set(['unregistered_share', 'spam_rejections', 'spam_verdicts', 'bounce_rate', 'complaint_rate', 'header_mismatch']);

const WINDOWS = { minute: 'last minute', hour: 'last hour', day: 'last 24 hours', week: 'last 7 days' };

function observed(rule, v) {
  return RATE_RULES.has(rule) && v <= 1 ? percent(v) : number(v);
}

/** `[x] text` -> {met, text}. */
function checkItem(line) {
  const m = /^\[( |x)\] (.*)$/s.exec(line);
  return m ? { met: m[1] === 'x', text: m[2] } : { met: false, text: line };
}

function topTable(caption, rows, keyLabel, extra) {
  return table(
    caption,
    [
      { label: keyLabel, cell: (r) => h('code', null, r.key) },
      { label: 'Messages', numeric: true, cell: (r) => (r.error ? `${number(r.count - r.error)}–${number(r.count)}` : number(r.count)) },
      ...(extra || []),
    ],
    rows,
    'None seen.',
  );
}

function evidenceSections(ctx, st, connectors) {
  const ev = st.evidence;
  if (!ev) return [];
  const obs = ev.observations || {};
  const out = [];
  const signals = (ev.signals || []).filter((sg) => sg.armed || sg.level !== 'clear');
  const decided = signals.filter((sg) => sg.level === 'block' || sg.level === 'warn');
  out.push(
    section(
      'When and why',
      h(
        'dl',
        { class: 'facts' },
        h('dt', null, 'When'),
        h('dd', null, time(ev.at_ms, true)),
        h('dt', null, 'Change'),
        h('dd', null, `${ev.from} → ${ev.to}`),
        h('dt', null, 'Decided by'),
        h('dd', null, ev.cause && ev.cause.kind === 'detector' ? 'the abuse detector' : `${(ev.cause && ev.cause.actor) || 'a person'}`),
        st.summary ? [h('dt', null, 'Summary'), h('dd', null, st.summary)] : null,
      ),
      decided.length
        ? h(
            'p',
            null,
            'The rule(s) that decided: ',
            decided.map((sg, i) => [i ? '; ' : '', h('strong', null, RULES[sg.rule] || sg.rule), ` ${observed(sg.rule, sg.observed)} in the ${WINDOWS[sg.window] || sg.window}, at or above the ${sg.level} level ${observed(sg.rule, sg.level === 'block' ? sg.block_threshold : sg.warn_threshold)}`]),
            '.',
          )
        : null,
      table(
        'Signals: observed values and thresholds',
        [
          { label: 'Rule', cell: (sg) => [h('span', null, RULES[sg.rule] || sg.rule), ' ', h('code', { class: 'muted' }, sg.rule)] },
          { label: 'Window', cell: (sg) => WINDOWS[sg.window] || sg.window },
          { label: 'Observed', numeric: true, cell: (sg) => observed(sg.rule, sg.observed) },
          { label: 'Warn at', numeric: true, cell: (sg) => observed(sg.rule, sg.warn_threshold) },
          { label: 'Block at', numeric: true, cell: (sg) => observed(sg.rule, sg.block_threshold) },
          { label: 'Events', numeric: true, cell: (sg) => number(sg.events) },
          { label: 'Level', cell: (sg) => h('span', { class: ['level', `level-${sg.level}`] }, sg.level) },
        ],
        signals,
        'No signal was armed: the change was made by a person.',
      ),
    ),
  );

  const familiar = obs.familiar_domains;
  const domainNote = {
    label: 'What to do',
    cell: (r) =>
      !familiar || familiar.includes(r.key)
        ? h('span', null, 'Looks like your own traffic: register and verify it (', h('a', { href: `#/t/${st.tenant_id}/domains` }, 'Domains'), ') or declare it forwarded')
        : h('span', { class: 'muted' }, 'One-off spam domain: nothing to register'),
  };
  out.push(
    section(
      'What was sent',
      h('h3', null, 'Top unregistered domains'),
      topTable('Top unregistered domains', obs.top_unregistered_domains || [], 'Domain', [domainNote]),
      h('h3', null, 'Top unregistered sender addresses'),
      topTable('Top unregistered sender addresses', obs.top_unregistered_senders || [], 'Address'),
      h('h3', null, 'Source IP addresses'),
      h('p', { class: 'hint' }, 'The servers that sent the unregistered, null-sender and mismatched mail: find them and secure them.'),
      topTable('Source IP addresses', obs.top_source_ips || [], 'IP address'),
      (obs.samples || []).length
        ? [
            h('h3', null, 'Sample messages'),
            table(
              'Sample messages',
              [
                { label: 'When', cell: (m) => time(m.at_ms, true) },
                { label: 'Sender', cell: (m) => h('code', null, m.sender || '<>') },
                { label: 'From IP', cell: (m) => m.client_ip || '—' },
                { label: 'Connector', cell: (m) => connectorName(connectors, m.connector) },
                { label: 'Queue id', cell: (m) => (m.queue_id ? h('a', { href: `#/t/${st.tenant_id}/trace/${api.seg(m.queue_id)}` }, m.queue_id) : '—') },
              ],
              obs.samples.slice(-10).reverse(),
            ),
          ]
        : null,
    ),
  );

  const involved = (obs.connectors || []).filter((c) => c.windows && (c.windows.day.unregistered_messages || c.windows.day.null_messages || c.windows.hour.messages));
  out.push(
    section(
      'Connectors involved',
      table(
        'Mail of the connectors involved',
        [
          { label: 'Connector', cell: (c) => h('a', { href: `#/t/${st.tenant_id}/connectors` }, connectorName(connectors, c.connector)) },
          { label: 'Messages (last hour)', numeric: true, cell: (c) => number(c.windows.hour.messages) },
          { label: 'Unregistered (last hour)', numeric: true, cell: (c) => number(c.windows.hour.unregistered_messages) },
          { label: 'Unregistered (24 h)', numeric: true, cell: (c) => number(c.windows.day.unregistered_messages) },
          { label: 'Null sender (24 h)', numeric: true, cell: (c) => number(c.windows.day.null_messages) },
        ],
        involved,
        'No connector carried such mail.',
      ),
      h('h3', null, 'Their recent changes'),
      table(
        'Connector changes of the last 7 days',
        [
          { label: 'When', cell: (c) => time(c.at_ms) },
          { label: 'Connector', cell: (c) => connectorName(connectors, c.connector) },
          { label: 'Change', cell: (c) => h('code', null, c.action) },
          { label: 'By', cell: (c) => c.actor },
          { label: 'Detail', cell: (c) => c.detail },
        ],
        ev.connector_changes || [],
        'No connector was created or changed in the 7 days before.',
      ),
    ),
  );
  return out;
}

function connectorName(connectors, id) {
  const c = connectors.find((x) => x.id === id);
  return c ? `${c.name} (#${id})` : `#${id}`;
}

function checklistSection(ctx, st) {
  if (!st.checklist.length) return null;
  const items = st.checklist.map(checkItem);
  return section(
    'Unblock checklist',
    h(
      'ul',
      { class: 'checklist' },
      items.map((it) =>
        h('li', { class: it.met ? 'met' : 'unmet' }, h('span', { class: 'tick', 'aria-hidden': 'true' }, it.met ? '✓' : '✗'), h('span', { class: 'visually-hidden' }, it.met ? 'Done: ' : 'Not yet: '), it.text),
      ),
    ),
  );
}

function requestUnblockForm(ctx, st) {
  if (ctx.me.scope !== 'tenant' || st.state !== 'blocked_unregistered') return null;
  const secured = checkbox('I found the server or account that sent the mail and secured it', {});
  const reviewed = checkbox('I reviewed the connectors and disabled or deleted any I did not set up', {});
  const comment = h('textarea', { rows: 3, maxlength: 2000, class: 'wide' });
  const button = h('button', { type: 'submit' }, 'Request unblock');
  const why = h('p', { class: 'hint', id: 'request-why' });
  const boxes = [secured, reviewed].map((c) => c.querySelector('input'));
  const update = () => {
    const attested = boxes.every((b) => b.checked);
    button.disabled = !(st.can_request_unblock && attested);
    why.textContent = !st.can_request_unblock
      ? 'Not yet: the checklist above says what is still missing (every domain of the evidence that looks like your own traffic registered and verified).'
      : attested
        ? 'The operator reviews the request and lifts the block.'
        : 'Confirm both statements above to ask.';
  };
  boxes.forEach((b) => b.addEventListener('change', update));
  button.setAttribute('aria-describedby', 'request-why');
  const form = h(
    'form',
    { class: 'card' },
    h('p', null, 'When the cause is fixed, ask the operator to lift the block. Your request is recorded with your token in the audit log.'),
    secured,
    reviewed,
    field('What was fixed (optional)', comment),
    h('div', { class: 'actions' }, button),
    why,
  );
  update();
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    if (button.disabled) return;
    await busy(button, async () => {
      try {
        const body = comment.value.trim() ? { comment: comment.value.trim() } : {};
        await api.post(`/v1/tenants/${st.tenant_id}/request-unblock`, body);
        ctx.flash('ok', 'Unblock requested: the operator has been asked to review it.');
        ctx.refresh();
      } catch (err) {
        showProblem(form, err, {});
      }
    });
  });
  return section('Request unblock', form);
}

function operatorActions(ctx, st) {
  if (ctx.me.scope !== 'operator') return null;
  const parts = [];
  if (['blocked_unregistered', 'under_review', 'blocked_all'].includes(st.state)) {
    const reason = h('input', { type: 'text', maxlength: 2000, class: 'wide' });
    const button = h('button', { type: 'submit' }, 'Unblock');
    const form = h(
      'form',
      { class: 'card' },
      h('p', null, 'Lifting the block puts the tenant on probation: its mail flows, with tightened thresholds for the probation period.'),
      field('Reason (optional)', reason),
      h('div', { class: 'actions' }, button),
    );
    form.addEventListener('submit', async (e) => {
      e.preventDefault();
      await busy(button, async () => {
        try {
          await api.post(`/v1/tenants/${st.tenant_id}/unblock`, reason.value.trim() ? { reason: reason.value.trim() } : {});
          ctx.flash('ok', 'Unblocked: the tenant is on probation.');
          ctx.refresh();
        } catch (err) {
          showProblem(form, err, { reason: reason.id });
        }
      });
    });
    parts.push(form);
  }
  const scope = h('select', null, h('option', { value: 'unregistered' }, 'Unregistered and null senders (5.7.750)'), h('option', { value: 'all' }, 'Every message (5.7.705)'));
  const reason = h('input', { type: 'text', maxlength: 2000, required: true, class: 'wide' });
  const button = h('button', { type: 'submit', class: 'danger' }, 'Block');
  const form = h('form', { class: 'card' }, field('Block', scope), field('Reason', reason, 'Recorded with the transition and shown to the tenant.'), h('div', { class: 'actions' }, button));
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    await busy(button, async () => {
      try {
        await api.post(`/v1/tenants/${st.tenant_id}/block`, { scope: scope.value, reason: reason.value.trim() });
        ctx.flash('ok', 'Blocked.');
        ctx.refresh();
      } catch (err) {
        showProblem(form, err, { reason: reason.id, scope: scope.id });
      }
    });
  });
  parts.push(form);
  return section('Operator actions', ...parts);
}

function reputationSection(st) {
  const rep = st.reputation;
  if (!rep) return null;
  const rows = [
    ['Last 24 hours', rep.day],
    ['Last 7 days', rep.week],
  ];
  return section(
    'Reputation',
    h('p', null, 'Level: ', h('strong', { class: ['level', `rep-${rep.level}`], 'data-level': rep.level }, rep.level), ' — hard bounces and spam complaints per delivered recipient (rates count once the volume is representative).'),
    table(
      'Bounce and complaint rates',
      [
        { label: 'Window', cell: (r) => r[0] },
        { label: 'Recipients', numeric: true, cell: (r) => number(r[1].messages) },
        { label: 'Hard bounces', numeric: true, cell: (r) => number(r[1].bounces) },
        { label: 'Bounce rate', numeric: true, cell: (r) => percent(r[1].bounce_rate) },
        { label: 'Complaints', numeric: true, cell: (r) => number(r[1].complaints) },
        { label: 'Complaint rate', numeric: true, cell: (r) => percent(r[1].complaint_rate) },
        { label: 'Representative', cell: (r) => (r[1].representative ? 'yes' : 'not yet') },
      ],
      rows,
    ),
    rep.reasons && rep.reasons.length ? h('ul', null, rep.reasons.map((r) => h('li', null, r))) : h('p', { class: 'muted' }, 'No rate is at a level.'),
  );
}

export async function statusPage(ctx) {
  const id = ctx.tenantId;
  const [tenant, st, connectors] = await Promise.all([
    api.get(`/v1/tenants/${id}`),
    api.get(`/v1/tenants/${id}/status`),
    api.get(`/v1/tenants/${id}/connectors`),
  ]);
  const [kind, title, words] = BANNERS[st.state] || ['warn', st.state, ''];
  const banner = h(
    'section',
    { class: ['banner', `banner-${kind}`], 'aria-labelledby': 'state-title', 'data-state': st.state },
    h('p', { class: 'banner-title', id: 'state-title' }, title),
    st.state === 'probation' && st.probation_until_ms ? h('p', null, `Until ${time(st.probation_until_ms)}.`) : null,
    st.since_ms ? h('p', null, `Since ${time(st.since_ms, true)}.`) : null,
    st.refusal_reply
      ? [h('p', null, 'The refused mail gets this reply, word for word:'), h('pre', { class: 'reply' }, h('code', null, st.refusal_reply))]
      : null,
    h('p', null, words),
  );
  const node = h(
    'div',
    null,
    h('h1', null, `Status of ${tenant.name}`),
    banner,
    ...evidenceSections(ctx, st, connectors),
    checklistSection(ctx, st),
    requestUnblockForm(ctx, st),
    operatorActions(ctx, st),
    reputationSection(st),
  );
  return { title: `Status of ${tenant.name}`, node };
}

export { checkItem, observed, BANNERS, RULES, WINDOWS };

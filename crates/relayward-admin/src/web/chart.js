// The traffic chart: stacked bars per hour drawn as SVG from the traffic API's answer, the
// tenant's state transitions marked on the time axis, and the same numbers as a table for
// those who cannot see the bars.

import { h, s, time, uid, number } from './ui.js';

export const SERIES = [
  { key: 'registered', label: 'Registered', cls: 'reg' },
  { key: 'unregistered', label: 'Unregistered', cls: 'unreg' },
  { key: 'null_sender', label: 'Null sender', cls: 'null' },
  { key: 'refused', label: 'Refused', cls: 'refused' },
];

const STATE_WORDS = {
  active: 'active',
  warned: 'warned',
  blocked_unregistered: 'blocked (unregistered)',
  under_review: 'under review',
  probation: 'probation',
  blocked_all: 'blocked (all)',
};

const HOUR_MS = 3600000;
const H = 280;
const M = { top: 28, right: 12, bottom: 34, left: 48 };

/** A round axis maximum at or above `max`. */
function niceMax(max) {
  if (max <= 4) return 4;
  const p = 10 ** Math.floor(Math.log10(max));
  for (const m of [1, 2, 2.5, 5, 10]) {
    if (m * p >= max) return m * p;
  }
  return 10 * p;
}

const pad = (n) => String(n).padStart(2, '0');
const DAYS = ['Sun', 'Mon', 'Tue', 'Wed', 'Thu', 'Fri', 'Sat'];

/** `traffic`: the answer of GET /v1/tenants/{id}/traffic. */
export function trafficChart(title, traffic) {
  // Drawn at the width it is shown at, so that its text stays legible on a phone.
  const main = document.getElementById('main');
  const W = Math.round(Math.min(960, Math.max(320, (main ? main.clientWidth : 960) - 4)));
  const narrow = W < 640;
  const hours = traffic.hours;
  const n = hours.length;
  const plotW = W - M.left - M.right;
  const plotH = H - M.top - M.bottom;
  const bw = plotW / n;
  const total = (p) => SERIES.reduce((a, sr) => a + p[sr.key], 0);
  const max = niceMax(Math.max(0, ...hours.map(total)));
  const y = (v) => M.top + plotH - (v / max) * plotH;
  const x = (ms) => M.left + ((ms - traffic.from_ms) / HOUR_MS) * bw;
  const titleId = uid('chart');
  const descId = uid('chart-desc');
  const t = traffic.totals;
  const svg = s(
    'svg',
    {
      viewBox: `0 0 ${W} ${H}`,
      class: 'chart',
      role: 'img',
      'aria-labelledby': `${titleId} ${descId}`,
      dataset: { max, hours: n, from: traffic.from_ms, left: M.left, bw, top: M.top, plot: plotH },
    },
    s('title', { id: titleId }, title),
    s(
      'desc',
      { id: descId },
      `${number(t.registered)} registered, ${number(t.unregistered)} unregistered, ${number(t.null_sender)} null-sender messages and ${number(t.refused)} refused commands; ${traffic.transitions.length} state change(s).`,
    ),
  );

  // Grid and y axis.
  for (let i = 0; i <= 4; i += 1) {
    const v = (max / 4) * i;
    svg.append(
      s('line', { class: 'gridline', x1: M.left, x2: W - M.right, y1: y(v), y2: y(v) }),
      s('text', { class: 'axis', x: M.left - 6, y: y(v) + 4, 'text-anchor': 'end' }, number(v)),
    );
  }

  // Bars: one group per hour, stacked in the order of SERIES.
  hours.forEach((p, i) => {
    const g = s('g', { class: 'hour', dataset: { start: p.start_ms } });
    let base = 0;
    for (const sr of SERIES) {
      const v = p[sr.key];
      if (v > 0) {
        const top = y(base + v);
        g.append(
          s(
            'rect',
            {
              class: `bar ${sr.cls}`,
              x: M.left + i * bw + (bw > 4 ? 1 : 0),
              width: Math.max(1, bw - (bw > 4 ? 2 : 0)),
              y: top,
              height: y(base) - top,
              dataset: { series: sr.key, value: v },
            },
            s('title', null, `${time(p.start_ms)}: ${number(v)} ${sr.label.toLowerCase()}`),
          ),
        );
        base += v;
      }
    }
    svg.append(g);
  });

  // X axis labels: every 3 hours over a day, every midnight over a week.
  const every = n <= 48 ? (narrow ? 6 : 3) : 24;
  hours.forEach((p, i) => {
    const d = new Date(p.start_ms);
    if (d.getUTCHours() % every !== 0) return;
    let label = `${pad(d.getUTCHours())}:00`;
    if (every === 24) label = narrow ? DAYS[d.getUTCDay()] : `${DAYS[d.getUTCDay()]} ${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())}`;
    svg.append(
      s('line', { class: 'tick', x1: M.left + i * bw, x2: M.left + i * bw, y1: M.top + plotH, y2: M.top + plotH + 5 }),
      s('text', { class: 'axis', x: M.left + i * bw, y: H - M.bottom + 20, 'text-anchor': 'middle' }, label),
    );
  });
  svg.append(s('line', { class: 'baseline', x1: M.left, x2: W - M.right, y1: M.top + plotH, y2: M.top + plotH }));

  // Transitions, on the time axis.
  traffic.transitions.forEach((tr, i) => {
    const tx = x(tr.at_ms);
    const label = STATE_WORDS[tr.to] || tr.to;
    svg.append(
      s(
        'g',
        { class: `transition to-${tr.to}`, dataset: { at: tr.at_ms, to: tr.to } },
        s('line', { x1: tx, x2: tx, y1: M.top - 6, y2: M.top + plotH }),
        // The label on the side of the line with room for it.
        s('text', { x: tx > W / 2 ? tx - 4 : tx + 4, y: M.top - 10 + (i % 2) * 11, class: 'mark', 'text-anchor': tx > W / 2 ? 'end' : 'start' }, label),
        s('title', null, `${time(tr.at_ms, true)}: ${tr.from} → ${tr.to} by ${tr.actor}`),
      ),
    );
  });

  const legend = h(
    'ul',
    { class: 'legend' },
    SERIES.map((sr) => h('li', null, h('span', { class: `swatch ${sr.cls}`, 'aria-hidden': 'true' }), `${sr.label} (${number(t[sr.key])})`)),
    h('li', null, h('span', { class: 'swatch transition-swatch', 'aria-hidden': 'true' }), 'State change'),
  );

  const numbers = h(
    'details',
    { class: 'numbers' },
    h('summary', null, 'The numbers'),
    h(
      'div',
      { class: 'table-wrap', tabindex: '0', role: 'region', 'aria-label': `${title}: the numbers` },
      h(
        'table',
        null,
        h('caption', { class: 'visually-hidden' }, `${title}, per hour`),
        h('thead', null, h('tr', null, h('th', { scope: 'col' }, 'Hour'), SERIES.map((sr) => h('th', { scope: 'col', class: 'num' }, sr.label)))),
        h(
          'tbody',
          null,
          hours
            .filter((p) => total(p) > 0)
            .map((p) => h('tr', null, h('th', { scope: 'row' }, time(p.start_ms)), SERIES.map((sr) => h('td', { class: 'num' }, number(p[sr.key]))))),
        ),
      ),
      traffic.transitions.length
        ? h(
            'ul',
            null,
            traffic.transitions.map((tr) => h('li', null, `${time(tr.at_ms, true)}: ${tr.from} → ${tr.to} by ${tr.actor}. ${tr.summary}`)),
          )
        : null,
    ),
  );

  return h('figure', { class: 'chart-figure' }, h('figcaption', null, title), svg, legend, numbers);
}

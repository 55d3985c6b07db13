// DOM helpers. Every text goes in as a text node, never as HTML: whatever a sender, a remote
// server or a tenant put in an address, a reply or a label is shown, not run.

const SVG_NS = 'http://www.w3.org/2000/svg';

function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

function set(el, attrs) {
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') {
      el.addEventListener(k.slice(2), v);
    } else if (k === 'class') {
      el.setAttribute('class', Array.isArray(v) ? v.filter(Boolean).join(' ') : v);
    } else if (k === 'dataset') {
      for (const [dk, dv] of Object.entries(v)) el.dataset[dk] = String(dv);
    } else if (k === 'value' && 'value' in el) {
      el.value = v;
    } else if (k === 'checked' || k === 'disabled' || k === 'selected') {
      el[k] = Boolean(v);
    } else {
      el.setAttribute(k, v === true ? '' : String(v));
    }
  }
}

/** An HTML element: h('p', {class: 'x'}, 'text', child, ...). */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  set(el, attrs);
  append(el, children);
  return el;
}

/** An SVG element. */
export function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined) continue;
    if (k === 'dataset') {
      for (const [dk, dv] of Object.entries(v)) el.dataset[dk] = String(dv);
    } else {
      el.setAttribute(k, String(v));
    }
  }
  append(el, children);
  return el;
}

let ids = 0;
/** A fresh element id. */
export function uid(prefix) {
  ids += 1;
  return `${prefix}-${ids}`;
}

const pad = (n) => String(n).padStart(2, '0');

/** `2025-06-01 14:05 UTC`: one zone for everyone reading the same evidence. */
export function time(ms, withSeconds) {
  if (ms === null || ms === undefined) return '—';
  const d = new Date(ms);
  const base = `${d.getUTCFullYear()}-${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())} ${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}`;
  return `${withSeconds ? `${base}:${pad(d.getUTCSeconds())}` : base} UTC`;
}

export const timeSecs = (secs, withSeconds) => (secs === null || secs === undefined ? '—' : time(secs * 1000, withSeconds));

/** `3 h ago`, for "last used". */
export function ago(secs) {
  if (!secs) return 'never';
  const d = Math.max(0, Date.now() / 1000 - secs);
  if (d < 90) return 'just now';
  if (d < 5400) return `${Math.round(d / 60)} min ago`;
  if (d < 172800) return `${Math.round(d / 3600)} h ago`;
  return `${Math.round(d / 86400)} days ago`;
}

export const percent = (x) => `${(100 * x).toFixed(x < 0.01 && x > 0 ? 2 : 1)} %`;

export function number(x) {
  if (typeof x !== 'number') return String(x);
  return Number.isInteger(x) ? x.toLocaleString('en-US') : x.toLocaleString('en-US', { maximumFractionDigits: 3 });
}

/** A table: columns [{label, cell: row => node|text, numeric?}], rows. On a phone each row
 * becomes a card of labelled cells (`data-label`), and what is still too wide scrolls inside
 * its box instead of widening the page. */
export function table(caption, columns, rows, empty) {
  if (!rows.length) return h('p', { class: 'empty' }, empty || 'None.');
  return h(
    'div',
    { class: 'table-wrap', role: 'region', 'aria-label': caption, tabindex: '0' },
    h(
      'table',
      { class: 'stack' },
      h('caption', { class: 'visually-hidden' }, caption),
      h('thead', null, h('tr', null, columns.map((c) => h('th', { scope: 'col', class: c.numeric ? 'num' : null }, c.label)))),
      h(
        'tbody',
        null,
        rows.map((r) => h('tr', null, columns.map((c) => h('td', { class: c.numeric ? 'num' : null, 'data-label': c.label }, c.cell(r))))),
      ),
    ),
  );
}

/** A section with a heading. */
export function section(title, ...children) {
  const id = uid('sec');
  return h('section', { 'aria-labelledby': id }, h('h2', { id }, title), ...children);
}

/** A message in the page: kind `ok`, `error` or `info`. Errors are announced at once. */
export function message(kind, ...children) {
  return h('div', { class: ['msg', `msg-${kind}`], role: kind === 'error' ? 'alert' : 'status' }, ...children);
}

/** Says `text` to screen readers. */
export function announce(text) {
  const live = document.getElementById('live');
  if (live) live.textContent = text;
}

/** A labelled form control. `input` is the control; `hint` is said with it. */
export function field(label, input, hint) {
  const id = input.id || uid('f');
  input.id = id;
  const parts = [h('label', { for: id }, label), input];
  if (hint) {
    const hid = uid('hint');
    input.setAttribute('aria-describedby', hid);
    parts.push(h('p', { class: 'hint', id: hid }, hint));
  }
  return h('div', { class: 'field' }, ...parts);
}

/** A checkbox with its label after it. */
export function checkbox(label, attrs, hint) {
  const input = h('input', { type: 'checkbox', ...attrs });
  const id = input.id || uid('c');
  input.id = id;
  const parts = [input, h('label', { for: id }, label)];
  if (hint) {
    const hid = uid('hint');
    input.setAttribute('aria-describedby', hid);
    parts.push(h('p', { class: 'hint', id: hid }, hint));
  }
  return h('div', { class: 'check' }, ...parts);
}

/** Takes away what `showProblem` showed. */
export function clearProblem(form) {
  for (const el of form.querySelectorAll('[aria-invalid]')) el.removeAttribute('aria-invalid');
  for (const el of form.querySelectorAll('.field-error')) {
    const input = el.closest('.field, .check').querySelector('input, select, textarea');
    if (input) {
      const rest = (input.getAttribute('aria-describedby') || '').split(' ').filter((x) => x && x !== el.id);
      if (rest.length) input.setAttribute('aria-describedby', rest.join(' '));
      else input.removeAttribute('aria-describedby');
    }
    el.remove();
  }
  const top = form.querySelector('.form-error');
  if (top) top.remove();
}

/** Shows the API's validation problem next to the field it names (or above the form). */
export function showProblem(form, err, fieldIds) {
  clearProblem(form);
  const name = err.field && err.field.replace(/\[\d+\]$/, '').replace(/^body\./, '');
  const input = name && fieldIds && fieldIds[name] ? form.querySelector(`#${fieldIds[name]}`) : null;
  if (input) {
    const eid = uid('err');
    input.setAttribute('aria-invalid', 'true');
    const described = input.getAttribute('aria-describedby');
    input.setAttribute('aria-describedby', described ? `${eid} ${described}` : eid);
    input.closest('.field, .check').append(h('p', { class: 'field-error', id: eid }, err.detail));
    input.focus();
  } else {
    form.prepend(h('div', { class: ['msg', 'msg-error', 'form-error'], role: 'alert' }, err.detail));
  }
}

/** A button that copies `text`; says "Copied" when done. */
export function copyButton(text, what) {
  const btn = h('button', { type: 'button', class: 'small' }, 'Copy');
  btn.setAttribute('aria-label', `Copy ${what}`);
  btn.addEventListener('click', async () => {
    let ok = false;
    try {
      await navigator.clipboard.writeText(text);
      ok = true;
    } catch {
      // No clipboard permission: fall back to selecting the text for the person to copy.
      const tmp = h('textarea', { class: 'visually-hidden', readonly: true }, text);
      document.body.append(tmp);
      tmp.select();
      ok = document.execCommand('copy');
      tmp.remove();
    }
    btn.textContent = ok ? 'Copied' : 'Copy failed: select the text';
    announce(ok ? `${what} copied` : `could not copy the ${what}`);
    setTimeout(() => {
      btn.textContent = 'Copy';
    }, 2500);
  });
  return btn;
}

/** A button that asks once more before `action`: the second click confirms. */
export function confirmButton(label, confirmLabel, action) {
  const btn = h('button', { type: 'button', class: 'small danger' }, label);
  let armed = false;
  btn.addEventListener('click', async () => {
    if (!armed) {
      armed = true;
      btn.textContent = confirmLabel;
      btn.classList.add('armed');
      announce(`${confirmLabel}? Press again to confirm.`);
      setTimeout(() => {
        armed = false;
        btn.textContent = label;
        btn.classList.remove('armed');
      }, 5000);
      return;
    }
    btn.disabled = true;
    await action();
  });
  return btn;
}

/** Runs `fn` with `button` disabled, whatever happens. */
export async function busy(button, fn) {
  button.disabled = true;
  try {
    return await fn();
  } finally {
    button.disabled = false;
  }
}

/** Replaces the children of `el`. */
export function replace(el, ...children) {
  el.replaceChildren();
  append(el, children);
}

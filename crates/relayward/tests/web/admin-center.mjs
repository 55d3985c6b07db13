// The web admin center's browser suite. crates/relayward/tests/web.rs starts the relay, makes
// the data (a tenant blocked by the detector, a restricted sender, a queued message) and runs
// this with the URL and tokens in the environment. Asks the test to publish DNS records with
// `@publish-txt DOMAIN VALUE` lines on stdout and waits for `published DOMAIN` on stdin.
// Prints `web suite: N checks passed, 0 failed` and exits 0 when every check held.

import { chromium } from 'playwright-core';
import { createInterface } from 'node:readline';
import { mkdir } from 'node:fs/promises';
import path from 'node:path';

function env(name) {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set`);
  return v;
}

const BASE = env('RELAYWARD_URL');
const SHOTS = env('SCREENSHOTS');
const OPERATOR = env('OPERATOR_TOKEN');
const TENANT = env('TENANT_TOKEN');
const OTHER = env('OTHER_TENANT_TOKEN');
const REVOKED = env('REVOKED_TOKEN');
const TID = env('TENANT_ID');
const OTHER_TID = env('OTHER_TENANT_ID');
const QUEUED = env('QUEUED_ID');
const BLOCKED_REPLY = env('BLOCKED_REPLY');
const SPAM_DOMAINS = ['newco.example', 'newco-mail.example', 'partner-list.example'];
const SECRETS = [OPERATOR, TENANT, OTHER, REVOKED];

const DESKTOP = { width: 1280, height: 800 };
const PHONE = { width: 390, height: 844 };

let passed = 0;
function check(cond, what) {
  if (!cond) throw new Error(`check failed: ${what}`);
  passed += 1;
}

const stdinLines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();

/** Asks the test to publish `value` as a TXT record of `domain`, as the tenant would. */
async function publish(domain, value) {
  console.log(`@publish-txt ${domain} ${value}`);
  const { value: answer } = await stdinLines.next();
  check(answer === `published ${domain}`, `DNS publication of ${domain} (got ${answer})`);
}

async function api(pathname, token) {
  const r = await fetch(`${BASE}${pathname}`, { headers: { Authorization: `Bearer ${token}` } });
  return { status: r.status, body: await r.json() };
}

// ---------------------------------------------------------------------------------------------
// The browser

const browser = await chromium.launch({
  executablePath: env('CHROMIUM'),
  headless: true,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
const context = await browser.newContext({ viewport: DESKTOP, baseURL: BASE });
await context.grantPermissions(['clipboard-read', 'clipboard-write'], { origin: BASE });
const page = await context.newPage();
page.setDefaultTimeout(10000);

const problems = [];
const requests = [];
page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
page.on('console', (m) => {
  const text = m.text();
  // The API's 4xx answers are logged by Chromium as failed loads: they are the point of some
  // checks. Everything else an error says is a fault (a CSP violation above all).
  if (m.type() === 'error' && !text.startsWith('Failed to load resource: the server responded with a status of 4')) {
    problems.push(`console: ${text}`);
  }
});
page.on('request', (r) => requests.push({ url: r.url(), auth: r.headers().authorization || null }));

const main = page.locator('main');

/** Waits until the page for `route` (`t/1/status`) is shown. */
async function shown(route) {
  await page.waitForFunction((r) => document.getElementById('main').dataset.route === r && !document.querySelector('main .loading'), route);
  check((await page.evaluate(() => document.activeElement && document.activeElement.tagName)) !== 'BODY', `focus is in the page after showing ${route}`);
}

async function goTo(route) {
  await page.evaluate((r) => {
    location.hash = `#/${r}`;
  }, route);
  await shown(route);
}

/** Every control has a name people and screen readers can find it by; one h1 per page. */
async function accessible(what) {
  const bad = await page.evaluate(() =>
    [...document.querySelectorAll('input, select, textarea, button, a[href]')]
      .filter((el) => !el.closest('[hidden]') && el.getClientRects().length)
      .filter((el) => {
        if (el.tagName === 'BUTTON' || el.tagName === 'A') return !(el.textContent.trim() || el.getAttribute('aria-label'));
        return !(el.labels && el.labels.length) && !el.getAttribute('aria-label');
      })
      .map((el) => el.outerHTML.slice(0, 100)),
  );
  check(bad.length === 0, `${what}: every control is labelled (${bad.join(' | ')})`);
  check((await page.locator('main h1').count()) === 1, `${what}: one h1`);
}

/** Re-draws the current page at the present viewport size. */
async function redraw() {
  await page.evaluate(() => {
    document.querySelector('main h1').dataset.old = '1';
    window.dispatchEvent(new HashChangeEvent('hashchange'));
  });
  await page.waitForSelector('main h1:not([data-old])');
  await page.waitForFunction(() => !document.querySelector('main .loading'));
}

/** Screenshots of the page as it is at 1280×800, then drawn again at 390×844 (where nothing may
 * widen the page beyond the screen), then back. */
async function shot(name) {
  await accessible(name);
  await page.evaluate(() => window.scrollTo(0, 0));
  await page.screenshot({ path: path.join(SHOTS, `${name}-1280x800.png`) });
  await page.setViewportSize(PHONE);
  await redraw();
  const widths = await page.evaluate(() => [document.documentElement.scrollWidth, window.innerWidth]);
  check(widths[0] <= widths[1], `${name}: legible at 390 px wide without scrolling sideways (${widths})`);
  await page.screenshot({ path: path.join(SHOTS, `${name}-390x844.png`) });
  await page.setViewportSize(DESKTOP);
  await redraw();
}

async function text(locator) {
  return (await locator.innerText()).replace(/\s+/g, ' ');
}

/** Follows a navigation link by keyboard: Tab until it has focus, then Enter. */
async function tabTo(name) {
  for (let i = 0; i < 60; i += 1) {
    await page.keyboard.press('Tab');
    const focused = await page.evaluate(() => document.activeElement && document.activeElement.textContent.trim());
    if (focused === name) return;
  }
  throw new Error(`${name} is not reachable with Tab`);
}

async function signIn(token) {
  await page.goto('/');
  await shown('signin');
  check((await page.evaluate(() => document.activeElement.labels && document.activeElement.labels[0].textContent)) === 'API token', 'the token field has focus');
  await page.keyboard.type(token);
  await page.keyboard.press('Enter');
}

async function signOut() {
  await page.getByRole('button', { name: 'Sign out', exact: true }).click();
  await shown('signin');
  check((await page.evaluate(() => sessionStorage.length)) === 0, 'signing out forgets the token');
}

async function flash(textPart) {
  await page.locator('main .msg', { hasText: textPart }).first().waitFor();
  passed += 1;
}

// ---------------------------------------------------------------------------------------------
// The suite

async function suite() {
  await mkdir(SHOTS, { recursive: true });

  // The shell and its headers.
  const resp = await page.goto('/');
  const headers = resp.headers();
  check(/script-src 'self'/.test(headers['content-security-policy']) && !/unsafe-inline/.test(headers['content-security-policy']), 'CSP without inline script');
  check(headers['x-frame-options'] === 'DENY', 'X-Frame-Options: DENY');
  await shown('signin');
  await accessible('sign-in');

  // Wrong, malformed and revoked tokens say so.
  for (const [bad, what] of [
    [`rw_999_${'A'.repeat(43)}`, 'unknown'],
    ['hello', 'malformed'],
    [REVOKED, 'revoked'],
  ]) {
    await page.getByLabel('API token', { exact: true }).fill(bad);
    await page.getByRole('button', { name: 'Sign in', exact: true }).click();
    const msg = page.locator('main .msg-error');
    await msg.waitFor();
    check(/wrong or revoked/.test(await msg.innerText()), `a ${what} token is refused as wrong or revoked`);
    check((await page.evaluate(() => sessionStorage.length)) === 0, `a ${what} token is not kept`);
  }

  // The tenant admin signs in, by keyboard.
  await signIn(TENANT);
  await shown(`t/${TID}/status`);
  check(/Tenant admin of contoso/.test(await text(page.locator('#who'))), 'signed in as contoso’s admin');
  check(!page.url().includes('rw_'), 'no token in the URL');

  // The block, word for word, and why.
  const banner = page.locator('.banner');
  check((await banner.getAttribute('data-state')) === 'blocked_unregistered', 'the banner says blocked');
  check(/Blocked from sending from unregistered domains/.test(await text(banner)), 'the banner names the block');
  check((await page.locator('pre.reply').innerText()) === BLOCKED_REPLY, 'the exact 5.7.750 reply');
  check(/registered, verified domains still flows/.test(await text(banner)), 'what the block means in plain words');
  const signals = await text(page.getByRole('region', { name: 'Signals: observed values and thresholds', exact: true }));
  check(/block/.test(signals) && /Block at/.test(signals), `the rule that decided with observed values and thresholds: ${signals.slice(0, 200)}`);
  const domainsTable = await text(page.getByRole('region', { name: 'Top unregistered domains', exact: true }));
  for (const d of SPAM_DOMAINS) check(domainsTable.includes(d), `the evidence names ${d}`);
  check((await text(page.getByRole('region', { name: 'Top unregistered sender addresses', exact: true }))).includes('@newco'), 'the evidence names sender addresses');
  check((await text(page.getByRole('region', { name: 'Source IP addresses', exact: true }))).includes('127.0.8.9'), 'the evidence names the source IP');
  check((await text(page.getByRole('region', { name: 'Mail of the connectors involved', exact: true }))).includes('legacy-smtp'), 'the connector involved');
  check((await text(page.getByRole('region', { name: 'Connector changes of the last 7 days', exact: true }))).includes('connector.add'), 'the connectors’ recent changes');
  const firstItem = page.locator('.checklist li').first();
  check((await firstItem.getAttribute('class')) === 'unmet' && (await firstItem.innerText()).includes('partner-list.example'), 'the checklist’s first item is not met and names the domains');
  check(/Level: (good|warn|act|block)/.test(await text(page.getByRole('region', { name: 'Bounce and complaint rates', exact: true }).locator('xpath=..'))), 'the reputation level');
  await page.getByLabel('I found the server or account that sent the mail and secured it', { exact: true }).check();
  await page.getByLabel('I reviewed the connectors and disabled or deleted any I did not set up', { exact: true }).check();
  check(await page.getByRole('button', { name: 'Request unblock', exact: true }).isDisabled(), 'Request unblock stays disabled while the checklist does not allow it');
  await shot('tenant-status-blocked');

  // Traffic, reached by keyboard: the charts draw what the API answers.
  await page.locator('#nav').focus().catch(() => {});
  await page.locator('h1').focus();
  await tabTo('Traffic');
  await page.keyboard.press('Enter');
  await shown(`t/${TID}/traffic`);
  for (const [id, hours] of [
    ['chart-24h', 24],
    ['chart-7d', 168],
  ]) {
    const { body: data } = await api(`/v1/tenants/${TID}/traffic?hours=${hours}`, TENANT);
    const drawn = await page.evaluate((slot) => {
      const svg = document.querySelector(`#${slot} svg`);
      return {
        max: Number(svg.dataset.max),
        left: Number(svg.dataset.left),
        bw: Number(svg.dataset.bw),
        plot: Number(svg.dataset.plot),
        from: Number(svg.dataset.from),
        rects: [...svg.querySelectorAll('g.hour')].flatMap((g) =>
          [...g.querySelectorAll('rect')].map((r) => ({ start: Number(g.dataset.start), series: r.dataset.series, value: Number(r.dataset.value), height: Number(r.getAttribute('height')), x: Number(r.getAttribute('x')) })),
        ),
        marks: [...svg.querySelectorAll('g.transition')].map((g) => ({ at: Number(g.dataset.at), to: g.dataset.to, x: Number(g.querySelector('line').getAttribute('x1')) })),
        rows: document.querySelectorAll(`#${slot} details tbody tr`).length,
      };
    }, id);
    const want = data.hours.flatMap((h) => ['registered', 'unregistered', 'null_sender', 'refused'].filter((k) => h[k] > 0).map((k) => ({ start: h.start_ms, series: k, value: h[k] })));
    check(want.length > 0, `${id}: the API has traffic to draw`);
    check(drawn.rects.length === want.length, `${id}: one bar per hour and class with traffic (${drawn.rects.length} drawn, ${want.length} in the API)`);
    for (const w of want) {
      const r = drawn.rects.find((x) => x.start === w.start && x.series === w.series);
      check(r && r.value === w.value, `${id}: ${w.series} at ${new Date(w.start).toISOString()} is ${w.value}`);
      check(Math.abs(r.height - (w.value / drawn.max) * drawn.plot) < 0.01, `${id}: the bar's height is its value on the axis`);
      const i = data.hours.findIndex((h) => h.start_ms === w.start);
      check(r.x >= drawn.left + i * drawn.bw - 0.01 && r.x < drawn.left + (i + 1) * drawn.bw, `${id}: the bar is at its hour`);
    }
    check(drawn.max >= Math.max(...data.hours.map((h) => h.registered + h.unregistered + h.null_sender + h.refused)), `${id}: the axis holds the tallest hour`);
    check(drawn.marks.length === data.transitions.length && data.transitions.length >= 1, `${id}: every state change is marked (${drawn.marks.length})`);
    for (const [i, t] of data.transitions.entries()) {
      const m = drawn.marks[i];
      check(m.at === t.at_ms && m.to === t.to, `${id}: the mark of the change to ${t.to}`);
      check(Math.abs(m.x - (drawn.left + ((t.at_ms - drawn.from) / 3600000) * drawn.bw)) < 0.01, `${id}: the change is marked at its time`);
    }
    check(drawn.rows === data.hours.filter((h) => h.registered + h.unregistered + h.null_sender + h.refused > 0).length, `${id}: the numbers table`);
    if (hours === 24) check(data.transitions.some((t) => t.to === 'blocked_unregistered') && data.totals.unregistered > 0 && data.totals.refused > 0, 'the block and the unregistered and refused mail are in the last day');
    if (hours === 168) check(data.totals.registered > 100 && data.totals.null_sender > 0, 'the week shows the ordinary traffic');
  }
  await shot('tenant-traffic');

  // Domains: add the evidence's domains, publish, verify.
  await page.getByRole('link', { name: 'Domains', exact: true }).click();
  await shown(`t/${TID}/domains`);
  await page.getByLabel('Domain', { exact: true }).fill('not a domain');
  await page.getByRole('button', { name: 'Add domain', exact: true }).click();
  const domainField = page.getByLabel('Domain', { exact: true });
  await page.locator('.field-error').waitFor();
  check((await domainField.getAttribute('aria-invalid')) === 'true', 'an invalid domain is marked at its field');
  for (const [i, d] of SPAM_DOMAINS.entries()) {
    await page.getByLabel('Domain', { exact: true }).fill(d);
    await page.getByRole('button', { name: 'Add domain', exact: true }).click();
    await flash(`${d} added`);
    const row = page.locator('tr', { has: page.locator('code', { hasText: new RegExp(`^${d.replace('.', '\\.')}$`) }) });
    const value = await row.locator('.txt-value').innerText();
    check(value.startsWith('relayward-verification='), `the TXT record to publish for ${d}`);
    if (i === 0) {
      await row.getByRole('button', { name: `Copy TXT record value for ${d}` }).click();
      await page.waitForFunction(() => document.getElementById('live').textContent.includes('copied'));
      check((await page.evaluate(() => navigator.clipboard.readText())) === value, 'Copy puts the TXT value on the clipboard');
      await shot('tenant-domains');
    }
    await page.getByRole('button', { name: `Verify ${d}` }).click();
    const notYet = page.locator('#domain-results .msg-error');
    await notYet.waitFor();
    check(/Not verified: DNS has no TXT record/.test(await notYet.innerText()), `before publishing, ${d} is not verified and the page says why`);
    await publish(d, value);
    await page.getByRole('button', { name: `Verify ${d}` }).click();
    await flash('Verified.');
    const after = page.locator('tr', { has: page.locator('code', { hasText: new RegExp(`^${d.replace('.', '\\.')}$`) }) });
    check(/verified/.test(await after.innerText()), `${d} shows verified`);
  }

  // Back on the status page: the checklist's domain item is met now.
  await page.getByRole('link', { name: 'Status', exact: true }).click();
  await shown(`t/${TID}/status`);
  check((await page.locator('.checklist li').first().getAttribute('class')) === 'met', 'the checklist’s domain item is met');

  // Connectors: the flags explained; disable the suspicious one; add and edit one.
  await page.getByRole('link', { name: 'Connectors', exact: true }).click();
  await shown(`t/${TID}/connectors`);
  const legacy = page.locator('tr', { hasText: 'legacy-smtp' });
  const flags = await text(legacy);
  for (const f of ['recently_changed', 'wide_ip_range', 'no_certificate', 'unregistered_mail_24h']) check(flags.includes(f), `legacy-smtp is flagged ${f}`);
  check(/wider than \/24/.test(flags) && /Carried \d+ message\(s\) from unregistered domains/.test(flags), 'the flags are explained');
  await page.getByRole('button', { name: 'Disable connector legacy-smtp', exact: true }).click();
  await flash('Connector legacy-smtp disabled.');
  check(/disabled/.test(await text(page.locator('tr', { hasText: 'legacy-smtp' }))), 'legacy-smtp shows disabled');
  check(/enabled/.test(await text(page.locator('tr', { hasText: 'onprem' }))), 'onprem stays enabled');
  await shot('tenant-connectors');
  await page.getByRole('link', { name: 'Add a connector', exact: true }).click();
  await shown(`t/${TID}/connectors/new`);
  await page.getByLabel('Name', { exact: true }).fill('scanner');
  await page.getByLabel('IP ranges', { exact: true }).fill('300.1.2.3/40');
  await page.getByRole('button', { name: 'Add connector', exact: true }).click();
  await page.locator('.field-error').waitFor();
  check((await page.getByLabel('IP ranges', { exact: true }).getAttribute('aria-invalid')) === 'true', 'the API’s validation problem is shown at the IP ranges field');
  check(/300\.1\.2\.3/.test(await page.locator('.field-error').innerText()), 'the problem names the bad range');
  await page.getByLabel('IP ranges', { exact: true }).fill('127.0.10.5');
  await page.getByRole('button', { name: 'Add connector', exact: true }).click();
  await shown(`t/${TID}/connectors`);
  await flash('Connector scanner saved.');
  await page.getByRole('link', { name: 'Edit connector scanner', exact: true }).click();
  await page.waitForFunction((t) => new RegExp(`^t/${t}/connectors/\\d+$`).test(document.getElementById('main').dataset.route || ''), TID);
  await page.getByRole('button', { name: 'Save changes', exact: true }).waitFor();
  check((await page.getByLabel('IP ranges', { exact: true }).inputValue()) === '127.0.10.5/32', 'the edit form holds the connector');
  await page.getByLabel('Require TLS (STARTTLS before MAIL)', { exact: true }).check();
  await page.getByRole('button', { name: 'Save changes', exact: true }).click();
  await shown(`t/${TID}/connectors`);
  await flash('Connector scanner saved.');

  // Message trace: search, then a message's whole story.
  await page.getByRole('link', { name: 'Message trace', exact: true }).click();
  await shown(`t/${TID}/trace`);
  await page.locator('#trace-results table').waitFor();
  await page.getByLabel('Sender', { exact: true }).fill('late0@newco.example');
  await page.getByRole('button', { name: 'Search', exact: true }).click();
  await page.locator('#trace-results', { hasText: '1 event(s)' }).waitFor();
  check((await text(page.locator('#trace-results'))).includes(BLOCKED_REPLY), 'a refused MAIL is in the trace with its reply');
  await page.getByLabel('Sender', { exact: true }).fill('staff0@newco.example');
  await page.getByRole('button', { name: 'Search', exact: true }).click();
  await page.locator('#trace-results td', { hasText: 'staff0@newco.example' }).first().waitFor();
  await shot('tenant-trace');
  await page.getByLabel('Sender', { exact: true }).fill('staff0@newco.example');
  await page.getByRole('button', { name: 'Search', exact: true }).click();
  await page.locator('#trace-results td', { hasText: 'staff0@newco.example' }).first().waitFor();
  const link = page.locator('#trace-results a').first();
  const qid = await link.innerText();
  await link.click();
  await shown(`t/${TID}/trace/${qid}`);
  const story = await text(main);
  check(story.includes(`Message ${qid}`) && story.includes('accepted') && story.includes('queued'), 'the message’s story, from acceptance on');
  check(story.includes('staff0@newco.example') && story.includes('client@elsewhere.example'), 'its sender and recipient');
  await shot('tenant-message');

  // Senders: the restricted newsletter, and why; released.
  await page.getByRole('link', { name: 'Senders', exact: true }).click();
  await shown(`t/${TID}/senders`);
  const restricted = page.locator('tr', { hasText: 'newsletter@contoso.example' });
  check(/limit/.test(await text(restricted)), 'the restricted sender and why');
  await shot('tenant-senders');
  await page.getByRole('button', { name: 'Release newsletter@contoso.example', exact: true }).click();
  await flash('newsletter@contoso.example released');
  check((await page.locator('tr', { hasText: 'newsletter@contoso.example' }).count()) === 0, 'the sender is no longer restricted');

  // Request unblock, by keyboard.
  await page.getByRole('link', { name: 'Status', exact: true }).click();
  await shown(`t/${TID}/status`);
  const request = page.getByRole('button', { name: 'Request unblock', exact: true });
  check(await request.isDisabled(), 'Request unblock waits for the two statements');
  await page.getByLabel('I found the server or account that sent the mail and secured it', { exact: true }).press('Space');
  await page.getByLabel('I reviewed the connectors and disabled or deleted any I did not set up', { exact: true }).press('Space');
  check(await request.isEnabled(), 'Request unblock is enabled once the checklist allows it');
  await page.getByLabel('What was fixed (optional)', { exact: true }).fill('The legacy relay host was compromised; it is off and its connector disabled. The newco domains are ours and verified now.');
  await request.press('Enter');
  await flash('Unblock requested');
  check((await page.locator('.banner').getAttribute('data-state')) === 'under_review', 'the banner says under review');
  await shot('tenant-status-under-review');

  // Another tenant's pages stay out of reach, whatever the URL says.
  for (const p of ['status', 'traffic', 'domains', 'connectors', 'trace', 'senders', 'trace/ABC123', 'connectors/1']) {
    await goTo(`t/${OTHER_TID}/${p}`);
    const body = await text(main);
    check(/Not found/.test(body) && body.includes(`tenant ${OTHER_TID} not found`), `a tenant token gets 404 for the other tenant’s ${p} page`);
    check(!/fabrikam/i.test(await text(page.locator('body'))), `nothing of the other tenant shows on its ${p} page`);
  }
  for (const p of ['tenants', 'review', 'audit', 'queue', 'tokens']) {
    await goTo(`ops/${p}`);
    check(/Not allowed/.test(await text(main)), `a tenant token gets 403 for the operator’s ${p} page`);
  }
  const direct = await page.evaluate(async (other) => {
    const r = await fetch(`/v1/tenants/${other}/domains`, { headers: { Authorization: `Bearer ${sessionStorage.getItem('relayward.token')}` } });
    return r.status;
  }, OTHER_TID);
  check(direct === 404, 'the API itself refuses the other tenant’s domains to this token');

  // Sign out: the token is gone and no page shows without one.
  await signOut();
  check(/Signed out/.test(await text(main)), 'signing out says so');
  await page.evaluate((t) => {
    location.hash = `#/t/${t}/status`;
  }, TID);
  await shown('signin');

  // The other tenant's admin sees its own tenant only.
  await signIn(OTHER);
  await shown(`t/${OTHER_TID}/status`);
  check((await page.locator('.banner').getAttribute('data-state')) === 'active', 'the other tenant is active');
  await goTo(`t/${TID}/status`);
  check((await text(main)).includes(`tenant ${TID} not found`) && !/contoso/i.test(await text(main)), 'the other tenant’s admin cannot reach contoso');
  await signOut();

  // The operator: every tenant, sortable; the request; unblock.
  await signIn(OPERATOR);
  await shown('ops/tenants');
  check(/Operator/.test(await text(page.locator('#who'))), 'signed in as the operator');
  const firstRow = () => page.locator('#tenants-table tbody tr').first();
  check((await firstRow().getAttribute('data-tenant')) === TID && /under review/.test(await text(firstRow())), 'sorted by state, the tenant under review comes first');
  await page.getByRole('button', { name: 'Registered (24 h)', exact: true }).click();
  check((await page.locator('th[aria-sort] button').innerText()).startsWith('Registered'), 'the sorted column is marked');
  await page.getByRole('button', { name: 'Unregistered (24 h)', exact: true }).click();
  check((await firstRow().getAttribute('data-tenant')) === TID, 'sorted by unregistered volume, contoso comes first');
  check((await page.locator('th[aria-sort]').getAttribute('aria-sort')) === 'descending', 'the largest volume first is said to be descending');
  await page.getByRole('button', { name: 'Unregistered (24 h)', exact: true }).click();
  check((await firstRow().getAttribute('data-tenant')) !== TID, 'a second press reverses the order');
  check((await page.locator('th[aria-sort]').getAttribute('aria-sort')) === 'ascending', 'and says so');
  await page.getByRole('button', { name: 'State', exact: true }).click();
  await shot('operator-tenants');

  await page.getByRole('link', { name: 'Blocked and under review', exact: true }).click();
  await shown('ops/review');
  const card = page.locator(`article[data-tenant="${TID}"]`);
  const cardText = await text(card);
  check(/Unblock requested/.test(cardText) && cardText.includes('The legacy relay host was compromised'), 'the operator sees the request and its comment');
  check(cardText.includes('newco') && cardText.includes('127.0.8.9'), 'with the evidence');
  await shot('operator-review');
  await card.getByLabel('Reason for unblocking contoso (optional)', { exact: true }).fill('reviewed with the tenant');
  await card.getByRole('button', { name: 'Unblock contoso', exact: true }).click();
  await flash('contoso unblocked');
  check((await page.locator(`article[data-tenant="${TID}"]`).count()) === 0, 'contoso leaves the queue');

  await page.getByRole('link', { name: 'Audit log', exact: true }).click();
  await shown('ops/audit');
  const audit = await text(main);
  for (const a of ['tenant.request_unblock', 'domain.verify', 'connector.update', 'sender.unrestrict', 'tenant.state']) check(audit.includes(a), `the audit log shows ${a}`);
  await shot('operator-audit');

  await page.getByRole('link', { name: 'Queue', exact: true }).click();
  await shown('ops/queue');
  await page.getByRole('button', { name: `Hold message ${QUEUED}` }).click();
  await flash(`Hold: message ${QUEUED}`);
  check(/held/.test(await text(page.locator('tr', { hasText: QUEUED }))), 'the message is held');
  await shot('operator-queue');
  await page.getByRole('button', { name: `Release message ${QUEUED}` }).click();
  await flash(`Release: message ${QUEUED}`);
  check(!(await page.getByRole('button', { name: `Release message ${QUEUED}` }).count()), 'the message is released');

  await page.getByRole('link', { name: 'Tokens', exact: true }).click();
  await shown('ops/tokens');
  check(/revoked|by token/.test(await text(page.locator('tr', { hasText: 'former admin' }))), 'the revoked token shows revoked');
  await page.getByLabel('Scope', { exact: true }).selectOption('tenant');
  await page.getByLabel('Tenant', { exact: true }).selectOption({ label: 'fabrikam' });
  await page.getByLabel('Label', { exact: true }).fill('made in the browser');
  await page.getByRole('button', { name: 'Create token', exact: true }).click();
  const made = await page.getByLabel('New token', { exact: true }).inputValue();
  check(/^rw_\d+_/.test(made), 'the new token is shown once');
  const whoami = await api('/v1/me', made);
  check(whoami.status === 200 && String(whoami.body.tenant_id) === OTHER_TID, 'the new token works, for fabrikam');
  SECRETS.push(made);
  await shot('operator-tokens');
  const madeId = made.split('_')[1];
  const revoke = page.getByRole('button', { name: `Revoke token ${madeId} (made in the browser)` });
  await revoke.click();
  await revoke.click();
  await flash(`Token ${madeId} revoked`);
  check((await api('/v1/me', made)).status === 401, 'a revoked token no longer works');

  await goTo(`t/${TID}/status`);
  check((await page.locator('.banner').getAttribute('data-state')) === 'probation', 'the operator sees contoso on probation');
  await signOut();

  // The tenant's banner shows probation.
  await signIn(TENANT);
  await shown(`t/${TID}/status`);
  const probation = page.locator('.banner');
  check((await probation.getAttribute('data-state')) === 'probation' && /On probation/.test(await text(probation)) && /Until \d{4}-/.test(await text(probation)), 'the tenant’s banner shows probation and until when');
  await shot('tenant-status-probation');
  await signOut();

  // Throughout: no script or CSP error, nothing fetched from elsewhere, tokens only ever in
  // the Authorization header, no cookie.
  check(problems.length === 0, `no error in the page: ${problems.join(' | ')}`);
  const origin = new URL(BASE).origin;
  const foreign = requests.filter((r) => new URL(r.url).origin !== origin);
  check(foreign.length === 0, `nothing fetched from elsewhere: ${foreign.map((r) => r.url).join(' ')}`);
  const leaked = requests.filter((r) => SECRETS.some((s) => r.url.includes(s)));
  check(leaked.length === 0, 'no token in any URL');
  const bare = requests.filter((r) => new URL(r.url).pathname.startsWith('/v1/') && !r.auth);
  check(bare.length === 0, `every API request carries the token in its header (${bare.map((r) => r.url).join(' ')})`);
  check((await context.cookies()).length === 0, 'no cookie');
}

let failure = null;
try {
  await suite();
} catch (e) {
  failure = e;
  try {
    await page.screenshot({ path: path.join(SHOTS, 'failure.png'), fullPage: true });
    console.log(`page at failure (${page.url()}): ${(await main.innerText()).slice(0, 2000)}`);
  } catch {
    // The failure itself is what matters.
  }
} finally {
  await browser.close();
}
if (failure) {
  console.error(failure.stack || String(failure));
  console.log(`web suite: ${passed} checks passed, 1 failed`);
  process.exit(1);
}
console.log(`web suite: ${passed} checks passed, 0 failed`);
process.exit(0);

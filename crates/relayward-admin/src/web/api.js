// The admin API as the pages use it: JSON under /v1 with the signed-in token.
//
// The token lives in sessionStorage only: it goes with this tab, never into a URL, a cookie or
// the browser's history, and every request carries it in the Authorization header.

const KEY = 'relayward.token';

export function token() {
  return sessionStorage.getItem(KEY);
}

export function remember(t) {
  sessionStorage.setItem(KEY, t);
}

export function forget() {
  sessionStorage.removeItem(KEY);
}

/** An RFC 9457 problem the API answered (or a network failure, status 0). */
export class ApiError extends Error {
  constructor(status, problem) {
    const detail = (problem && problem.detail) || (status ? `HTTP ${status}` : 'the relay did not answer');
    super(detail);
    this.status = status;
    this.detail = detail;
    this.title = (problem && problem.title) || '';
    this.field = (problem && problem.field) || null;
  }
}

/** Calls the API; resolves to the JSON body (null for 204), rejects with an ApiError. */
export async function call(method, path, body, withToken) {
  const t = withToken === undefined ? token() : withToken;
  const headers = { Accept: 'application/json' };
  if (t) headers.Authorization = `Bearer ${t}`;
  const init = { method, headers, cache: 'no-store', credentials: 'omit', referrerPolicy: 'no-referrer' };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let resp;
  try {
    resp = await fetch(path, init);
  } catch (e) {
    throw new ApiError(0, { detail: `the relay did not answer (${e.message})` });
  }
  const text = await resp.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = null;
    }
  }
  if (!resp.ok) throw new ApiError(resp.status, data);
  return data;
}

export const get = (path) => call('GET', path);
export const post = (path, body) => call('POST', path, body === undefined ? {} : body);
export const patch = (path, body) => call('PATCH', path, body);
export const del = (path) => call('DELETE', path);

/** A path segment, escaped. */
export const seg = (s) => encodeURIComponent(String(s));

/** A query string of the defined, non-empty values. */
export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v !== undefined && v !== null && v !== '') q.set(k, String(v));
  }
  const s = q.toString();
  return s ? `?${s}` : '';
}

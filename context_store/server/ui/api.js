// API calls with the key the user typed. The key lives in sessionStorage (this tab only) and only ever
// travels in the Authorization header: never in a URL, a cookie or the page's markup.
const KEY = "cs.console.key";
let onUnauthorized = null;

export const auth = {
  get key() { return sessionStorage.getItem(KEY); },
  set(key) { sessionStorage.setItem(KEY, key); },
  clear() { sessionStorage.removeItem(KEY); },
  onUnauthorized(fn) { onUnauthorized = fn; },
};

// -> {ok, status, data, message, missing}; never throws. ``missing``: the server has no such endpoint (a 404
// without a ``field``, unlike a 404 for an unknown name), shown as "not available" by the panel.
export async function api(path, { method = "GET", body, key, quiet = false } = {}) {
  const headers = { Accept: "application/json" };
  const k = key === undefined ? auth.key : key;
  if (k) headers.Authorization = `Bearer ${k}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let res;
  try {
    res = await fetch(path, {
      method, headers, body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "omit", cache: "no-store", referrerPolicy: "no-referrer",
    });
  } catch (e) {
    return { ok: false, status: 0, data: null, message: `server unreachable (${e.message})`, missing: false };
  }
  let data = null;
  try { data = await res.json(); } catch { data = null; }
  const missing = res.status === 404 && !(data && data.field);
  let message = "";
  if (!res.ok) {
    message = missing ? "not available on this server" : (data && data.message) || `HTTP ${res.status}`;
  }
  if (res.status === 401 && !quiet && onUnauthorized) onUnauthorized(message);
  return { ok: res.ok, status: res.status, data, message, missing };
}

export function qs(params) {
  const p = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== "") p.set(k, String(v));
  const s = p.toString();
  return s ? `?${s}` : "";
}

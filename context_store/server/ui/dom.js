// Tiny DOM helpers. Text always goes in through textContent: values from the store are never parsed as HTML.
const SVG_NS = "http://www.w3.org/2000/svg";

function build(el, attrs, children) {
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
    else if (k === "text") el.textContent = String(v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

export const h = (tag, attrs = {}, ...children) => build(document.createElement(tag), attrs, children);
export const s = (tag, attrs = {}, ...children) => build(document.createElementNS(SVG_NS, tag), attrs, children);

export function clear(el) { while (el.firstChild) el.firstChild.remove(); return el; }

// A titled panel: {el, body}. ``id`` names it for people and tests alike.
export function panel(title, id, ...extra) {
  const body = h("div", { class: "panel-body" }, h("p", { class: "muted" }, "loading…"));
  const el = h("section", { class: "panel", id }, h("h2", {}, title, ...extra), body);
  return { el, body };
}

// Show an endpoint's failure in a panel: "not available" when the server lacks the endpoint, else the message.
export function showError(body, res) {
  clear(body);
  if (res.missing) {
    body.append(h("p", { class: "na", "data-status": res.status }, "not available on this server"));
  } else {
    body.append(h("p", { class: "error", role: "alert", "data-status": res.status },
      `${res.status ? `${res.status}: ` : ""}${res.message}`));
  }
}

export function table(headers, rows, attrs = {}) {
  return h("table", attrs,
    h("thead", {}, h("tr", {}, headers.map((x) => h("th", {}, x)))),
    h("tbody", {}, rows));
}

export function badge(ok, yes = "ok", no = "failing") {
  return h("span", { class: `badge ${ok ? "good" : "bad"}` }, ok ? yes : no);
}

export function fmtSeconds(sec) {
  if (sec === null || sec === undefined) return "–";
  const a = Math.abs(sec);
  if (a >= 86400) return `${(sec / 86400).toFixed(1)} d`;
  if (a >= 3600) return `${(sec / 3600).toFixed(1)} h`;
  if (a >= 60) return `${(sec / 60).toFixed(1)} min`;
  return `${sec.toFixed(a < 10 ? 2 : 0)} s`;
}

export function fmtValue(v) {
  if (v === null || v === undefined) return "null";
  if (Array.isArray(v)) {
    const shown = v.slice(0, 4).map((x) => (typeof x === "number" ? +x.toFixed(4) : x));
    return v.length > 4 ? `[${shown.join(", ")}, … (${v.length})]` : JSON.stringify(v);
  }
  if (typeof v === "object") return JSON.stringify(v);
  return String(v);
}

export function fmtTags(tags) {
  return Object.entries(tags || {}).map(([k, v]) => h("span", { class: "tag" }, v ? `${k}=${v}` : k));
}

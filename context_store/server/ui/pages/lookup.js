// Lookup: a feature service's join keys -> values, serving statuses and provenance, through the Tecton API
// (POST /api/v1/feature-service/metadata, then /get-features with every metadataOption on).
import { api } from "../api.js";
import { clear, fmtSeconds, fmtValue, h, panel, showError, table } from "../dom.js";

const PREFIX = "/api/v1/feature-service";
const state = { service: "", meta: null, values: {} }; // the last form, kept across page changes

function typed(raw, dtype) {
  const t = dtype && dtype.type;
  if (t === "int64" || t === "int32") return /^-?\d+$/.test(raw) ? Number(raw) : raw;
  if (t === "float64" || t === "float32") return raw === "" ? null : Number(raw);
  if (t === "boolean") return raw === "true";
  return raw;
}

function field(kind, k) {
  const id = `lookup-${kind}-${k.name}`;
  return h("label", { for: id }, `${k.name} `,
    h("input", { id, "data-kind": kind, "data-name": k.name, "data-type": k.dataType && k.dataType.type,
      value: state.values[id] || "", required: kind === "key" }));
}

async function loadKeys(keys, msg) {
  const service = state.service;
  if (!service) { clear(keys); return null; }
  const res = await api(`${PREFIX}/metadata`, { method: "POST", body: { params: { featureServiceName: service } } });
  if (!res.ok) { state.meta = null; showError(keys, res); return null; }
  state.meta = res.data;
  clear(keys).append(...res.data.inputJoinKeys.map((k) => field("key", k)),
    ...res.data.inputRequestContextKeys.map((k) => field("ctx", k)));
  clear(msg);
  return res.data;
}

function result(body, res, meta) {
  clear(body);
  const values = res.data.result.features;
  const md = (res.data.metadata && res.data.metadata.features) || [];
  const views = Object.fromEntries((meta.featureValues || []).map((f) => [f.name, f.featureViewName]));
  const now = Date.now() / 1000;
  const rows = values.map((v, i) => {
    const m = md[i] || {};
    const age = m.effectiveTime ? now - Date.parse(m.effectiveTime) / 1000 : null;
    return h("tr", { "data-feature": m.name, "data-value": JSON.stringify(v), "data-status": m.status },
      h("td", {}, m.name), h("td", { class: "value" }, fmtValue(v)),
      h("td", {}, h("span", { class: `status st-${m.status}` }, m.status)),
      h("td", {}, views[m.name] || (m.name || "").split(".")[0]),
      h("td", {}, m.effectiveTime || "–"), h("td", { class: "num" }, age === null ? "–" : fmtSeconds(age)),
      h("td", {}, (m.dataType && m.dataType.type) || ""));
  });
  const slo = res.data.metadata && res.data.metadata.sloInfo;
  body.append(table(["feature", "value", "status", "view", "effective time", "age", "type"], rows,
    { id: "lookup-table" }));
  if (slo) body.append(h("p", { class: "muted" }, `server time ${(slo.serverTimeSeconds * 1000).toFixed(2)} ms`));
}

export function render(root) {
  const p = panel("Lookup (get-features)", "lookup");
  const out = panel("Values", "lookup-result");
  clear(p.body);
  clear(out.body).append(h("p", { class: "muted" }, "choose a feature service and enter its join keys"));
  const svc = h("input", { id: "lookup-service", list: "lookup-services", value: state.service, required: true,
    placeholder: "feature service" });
  const options = h("datalist", { id: "lookup-services" });
  const keys = h("div", { class: "keys", id: "lookup-keys" });
  const msg = h("div");
  const form = h("form", { id: "lookup-form", class: "stack" },
    h("label", { for: "lookup-service" }, "feature service ", svc), options, keys, msg,
    h("button", { type: "submit", id: "lookup-submit" }, "Get features"));
  p.body.append(form);
  root.append(p.el, out.el);
  svc.addEventListener("change", () => { state.service = svc.value.trim(); loadKeys(keys, msg); });
  form.addEventListener("input", (e) => { if (e.target.id) state.values[e.target.id] = e.target.value; });
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    if (state.service !== svc.value.trim() || !state.meta) {
      state.service = svc.value.trim();
      if (!(await loadKeys(keys, msg))) return;
      if (keys.querySelector("input:invalid")) return; // fields just appeared: let the person fill them
    }
    const joinKeyMap = {}, requestContextMap = {};
    for (const input of keys.querySelectorAll("input")) {
      const target = input.dataset.kind === "key" ? joinKeyMap : requestContextMap;
      target[input.dataset.name] = typed(input.value.trim(), { type: input.dataset.type });
    }
    out.body.replaceChildren(h("p", { class: "muted" }, "loading…"));
    const res = await api(`${PREFIX}/get-features`, { method: "POST", body: { params: {
      featureServiceName: state.service, joinKeyMap, requestContextMap,
      metadataOptions: { includeNames: true, includeDataTypes: true, includeEffectiveTimes: true,
        includeServingStatus: true, includeSloInfo: true },
    } } });
    if (!res.ok) return showError(out.body, res);
    result(out.body, res, state.meta);
  });
  // Offer the services the catalog knows (when the server has a catalog); typing a name works without it.
  const ready = api("/v1/catalog?kind=feature_service", { quiet: true }).then((res) => {
    if (res.ok) options.append(...(res.data.items || []).map((it) => h("option", { value: it.name })));
    if (state.service) return loadKeys(keys, msg);
    return null;
  });
  return { ready };
}

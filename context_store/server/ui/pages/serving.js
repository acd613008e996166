// Serving: QPS and p50/p99 latency of this server process (GET /v1/status/serving), refreshed every 2 s.
import { api } from "../api.js";
import { lineChart } from "../charts.js";
import { clear, h, panel, showError, table } from "../dom.js";

function draw(qps, lat, routes, data) {
  const pts = data.series || [];
  const win = data.window_seconds || 300;
  clear(qps).append(lineChart(pts, [{ key: "qps", label: "requests/s" }], { window: win, id: "chart-qps" }));
  clear(lat).append(lineChart(pts, [{ key: "p50_ms", label: "p50" }, { key: "p99_ms", label: "p99" }],
    { window: win, unit: " ms", id: "chart-latency" }));
  if (pts.length < 2) qps.append(h("p", { class: "muted" }, `collecting (a point every ${data.interval_seconds || 2} s)`));
  const rows = Object.entries(data.routes || {}).map(([r, v]) => h("tr", { "data-route": r },
    h("td", {}, r), h("td", { class: "num" }, String(v.requests)), h("td", { class: "num" }, v.qps.toFixed(2)),
    h("td", { class: "num" }, v.p50_ms.toFixed(2)), h("td", { class: "num" }, v.p99_ms.toFixed(2)),
    h("td", { class: "num" }, String(v.errors)), h("td", {}, v.serving ? "" : "console/ops")));
  clear(routes).append(rows.length
    ? table(["route", "requests", "req/s", "p50 ms", "p99 ms", "4xx/5xx", ""], rows, { id: "routes-table" })
    : h("p", { class: "muted" }, "no requests in the window yet"));
}

export function render(root) {
  const q = panel("Requests per second", "serving-qps");
  const l = panel("Latency (p50, p99)", "serving-latency");
  const r = panel("Routes over the window", "serving-routes");
  root.append(q.el, l.el, r.el);
  const refresh = async () => {
    const res = await api("/v1/status/serving");
    if (!res.ok) { showError(q.body, res); clear(l.body); clear(r.body); return; }
    draw(q.body, l.body, r.body, res.data);
  };
  const timer = setInterval(refresh, 2000);
  return { ready: refresh(), stop: () => clearInterval(timer) };
}

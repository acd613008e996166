// Views: freshness, SLO and stream lag per view (GET /v1/status/views), data-quality runs (/v1/status/quality).
import { api } from "../api.js";
import { badge, clear, fmtSeconds, h, panel, showError, table } from "../dom.js";

function lagText(lag) {
  if (!lag || !lag.length) return "–";
  const entries = lag.reduce((a, l) => a + (l.entries || 0), 0);
  const secs = Math.max(0, ...lag.map((l) => l.seconds || 0));
  return `${entries} entries · ${fmtSeconds(secs)}`;
}

async function freshness(body) {
  const res = await api("/v1/status/views");
  if (!res.ok) return showError(body, res);
  clear(body);
  const rows = (res.data.views || []).map((v) => h("tr", { "data-view": v.view, class: v.slo_breached ? "breach" : "" },
    h("td", {}, v.view), h("td", {}, v.kind),
    h("td", { class: "num" }, fmtSeconds(v.freshness_seconds)),
    h("td", { class: "num" }, fmtSeconds(v.expected_freshness_seconds)),
    h("td", {}, v.expected_freshness_seconds == null ? "–" : badge(!v.slo_breached, "within SLO", "SLO breached")),
    h("td", {}, v.newest_event_time || "–"),
    h("td", { title: (v.lag || []).map((l) => `${l.source}[${l.partition}]: ${l.entries}`).join("\n") }, lagText(v.lag)),
    h("td", { class: "num" }, String(v.late ?? 0)), h("td", { class: "num" }, String(v.rejected ?? 0))));
  body.append(h("p", { class: "muted" }, `workspace ${res.data.workspace} · now ${res.data.now}`),
    table(["view", "kind", "freshness", "expected", "SLO", "newest event", "stream lag", "late", "rejected"], rows,
      { id: "views-table" }));
}

async function quality(body) {
  const res = await api("/v1/status/quality");
  if (!res.ok) return showError(body, res);
  clear(body);
  const runs = res.data.runs || [];
  if (!runs.length) return body.append(h("p", { class: "muted" }, "no expectation runs yet"));
  const rows = runs.map((r) => {
    const failed = (r.results || []).filter((x) => !x.passed);
    return h("tr", { "data-view": r.view, "data-run": r.run_id },
      h("td", {}, r.view), h("td", {}, r.stage), h("td", {}, r.at), h("td", {}, badge(r.passed, "passed", "failed")),
      h("td", {}, `${(r.results || []).length - failed.length}/${(r.results || []).length}`),
      h("td", {}, failed.map((x) => `${x.feature}: ${x.expectation} (observed ${JSON.stringify(x.observed)})`).join("; ")));
  });
  body.append(table(["view", "stage", "at", "result", "passed", "failures"], rows, { id: "quality-table" }));
}

export function render(root) {
  const f = panel("Freshness and stream lag", "views-freshness");
  const q = panel("Data quality", "views-quality");
  root.append(f.el, q.el);
  const refresh = () => Promise.all([freshness(f.body), quality(q.body)]);
  const timer = setInterval(refresh, 5000);
  return { ready: refresh(), stop: () => clearInterval(timer) };
}

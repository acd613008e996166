// Hand-made SVG line charts (no library): a time axis and one polyline per series.
import { h, s } from "./dom.js";

const W = 640, H = 200, L = 48, R = 12, T = 10, B = 24;

function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 2.5, 5, 10]) if (v <= m * p) return m * p;
  return 10 * p;
}

// points: [{t, ...}], lines: [{key, label, cls}], window: seconds shown, unit: y-axis suffix
export function lineChart(points, lines, { window = 300, unit = "", id } = {}) {
  const now = points.length ? points[points.length - 1].t : Date.now() / 1000;
  const t0 = now - window;
  const ymax = niceMax(Math.max(0, ...points.flatMap((p) => lines.map((l) => p[l.key] || 0))) * 1.05);
  const x = (t) => L + ((t - t0) / window) * (W - L - R);
  const y = (v) => T + (1 - v / ymax) * (H - T - B);
  const svg = s("svg", { class: "chart", viewBox: `0 0 ${W} ${H}`, role: "img", id,
    "aria-label": lines.map((l) => l.label).join(", ") });
  for (let i = 0; i <= 4; i++) {
    const v = (ymax * i) / 4;
    svg.append(s("line", { class: "grid", x1: L, x2: W - R, y1: y(v), y2: y(v) }));
    svg.append(s("text", { class: "axis", x: L - 6, y: y(v) + 4, "text-anchor": "end" },
      `${+v.toPrecision(3)}${unit}`));
  }
  for (let i = 0; i <= 5; i++) {
    const t = t0 + (window * i) / 5;
    svg.append(s("text", { class: "axis", x: x(t), y: H - 6, "text-anchor": "middle" },
      i === 5 ? "now" : `-${Math.round(window - (window * i) / 5)}s`));
  }
  lines.forEach((l, i) => {
    const pts = points.filter((p) => p.t >= t0).map((p) => `${x(p.t).toFixed(1)},${y(p[l.key] || 0).toFixed(1)}`);
    if (pts.length) {
      svg.append(s("polyline", { class: `line s${i}`, points: pts.join(" "), "data-series": l.key,
        "data-points": pts.length }));
    }
  });
  const last = points[points.length - 1];
  const legend = h("div", { class: "legend" }, lines.map((l, i) => h("span", { class: `key s${i}` },
    `${l.label}${last ? `: ${+(last[l.key] || 0).toFixed(3)}${unit}` : ""}`)));
  return h("figure", { class: "chart-box" }, svg, legend);
}

// Catalog: every definition (GET /v1/catalog), search (/v1/catalog/search?q=), one item with its lineage.
import { api, qs } from "../api.js";
import { clear, fmtTags, h, panel, showError, table } from "../dom.js";

let lastQuery = ""; // kept across page changes (never in the URL: the hash only names an item)
const link = (name) => h("a", { href: `#/catalog/${encodeURIComponent(name)}`, class: "item-link" }, name);

function list(body, items, scored) {
  clear(body);
  if (!items.length) return body.append(h("p", { class: "muted" }, "nothing found"));
  const rows = items.map((it) => h("tr", { "data-name": it.name, "data-kind": it.kind },
    h("td", {}, h("span", { class: `kind k-${it.kind}` }, it.kind)),
    h("td", {}, link(it.name)),
    h("td", {}, it.description || ""),
    h("td", {}, it.owner || ""),
    h("td", {}, fmtTags(it.tags)),
    scored ? h("td", {}, typeof it.score === "number" ? it.score.toFixed(3) : "") : null));
  body.append(table(["kind", "name", "description", "owner", "tags", scored ? "score" : null].filter(Boolean), rows,
    { id: "catalog-table" }));
}

async function load(body, q) {
  const res = await api(q ? `/v1/catalog/search${qs({ q })}` : "/v1/catalog");
  if (!res.ok) return showError(body, res);
  list(body, res.data.items || [], Boolean(q));
}

function hops(label, refs) {
  return h("div", { class: "hops" }, h("h3", {}, label),
    refs && refs.length ? h("ul", {}, refs.map((r) => h("li", {}, h("span", { class: `kind k-${r.kind}` }, r.kind),
      " ", link(r.name)))) : h("p", { class: "muted" }, "none"));
}

async function detail(body, name) {
  const res = await api(`/v1/catalog/${encodeURIComponent(name)}`);
  if (!res.ok) return showError(body, res);
  const it = res.data;
  clear(body);
  body.append(
    h("p", {}, h("span", { class: `kind k-${it.kind}` }, it.kind), " ", h("strong", { id: "detail-name" }, it.name)),
    h("p", {}, it.description || h("span", { class: "muted" }, "no description")),
    h("p", {}, "owner: ", it.owner || "–", " · entities: ", (it.entities || []).join(", ") || "–", " ",
      fmtTags(it.tags)),
    h("div", { class: "lineage", id: "catalog-lineage" }, hops("upstream", it.upstream),
      h("div", { class: "hop-self" }, "→ ", h("strong", {}, it.name), " →"), hops("downstream", it.downstream)));
  if (Array.isArray(it.lineage) && it.lineage.length) {
    body.append(h("p", { class: "chain" }, "lineage: ",
      it.lineage.map(([kind, n], i) => [i ? " → " : "", h("span", { title: kind }, n)])));
  }
  if (Array.isArray(it.features) && it.features.length) {
    body.append(table(["feature", "type", "description"],
      it.features.map((f) => h("tr", {}, h("td", {}, f.name), h("td", {}, f.dtype || ""), h("td", {}, f.description || "")))));
  }
}

export function render(root, [name]) {
  const input = h("input", { id: "catalog-q", type: "search", placeholder: "search names, descriptions, tags",
    value: lastQuery });
  const form = h("form", { id: "catalog-search", class: "inline" }, input, h("button", { type: "submit" }, "Search"));
  const items = panel("Catalog", "catalog-list");
  items.body.before(form);
  root.append(items.el);
  let ready = load(items.body, lastQuery);
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    lastQuery = input.value.trim();
    load(items.body, lastQuery);
  });
  if (name) {
    const d = panel(name, "catalog-detail");
    root.append(d.el);
    ready = Promise.all([ready, detail(d.body, name)]);
  }
  return { ready };
}

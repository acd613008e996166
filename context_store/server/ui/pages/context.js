// Agent context: GET /v1/context/{entity}?max_tokens=&query=&service= rendered as the agent receives it:
// ``text`` verbatim, its token count against the budget, and what was left out to fit.
import { api, qs } from "../api.js";
import { clear, h, panel, showError } from "../dom.js";

const state = { entity: "", max_tokens: "", query: "", service: "" };

function input(name, { label, ...attrs }) {
  const el = h("input", { id: `context-${name}`, value: state[name], ...attrs });
  el.addEventListener("input", () => { state[name] = el.value; });
  return h("label", { for: el.id }, `${label} `, el);
}

function show(body, c) {
  clear(body);
  const budget = c.max_tokens ? ` of a budget of ${c.max_tokens}` : " (no budget: not counted)";
  const omitted = Object.entries(c.omitted || {});
  body.append(
    h("p", { id: "context-meta", "data-served-at": c.served_at, "data-service": c.context_service },
      `${c.context_service} · entity ${c.entity_id} · served at ${c.served_at}`),
    h("p", { id: "context-tokens", "data-tokens": c.tokens ?? "" },
      c.tokens === null || c.tokens === undefined ? `tokens not counted${budget}` : `${c.tokens} tokens${budget}`),
    h("div", { id: "context-omitted" }, omitted.length
      ? [h("span", {}, "left out for the budget: "),
        h("ul", {}, omitted.map(([k, n]) => h("li", { "data-section": k, "data-count": n }, `${k}: ${n}`)))]
      : h("span", { class: "muted" }, "nothing left out")),
    h("ul", { class: "notes", id: "context-notes" }, (c.notes || []).map((n) => h("li", {}, n))),
    h("pre", { id: "context-text", class: "agent-text" }, c.text));
}

export function render(root) {
  const p = panel("Agent context preview", "context");
  const out = panel("What the agent sees", "context-result");
  clear(p.body);
  clear(out.body).append(h("p", { class: "muted" }, "enter an entity id"));
  const form = h("form", { id: "context-form", class: "stack" },
    input("entity", { label: "entity id", required: true }),
    input("max_tokens", { label: "max tokens", type: "number", min: 1, placeholder: "no budget" }),
    input("query", { label: "query (optional)", placeholder: "adds matching knowledge" }),
    input("service", { label: "context service", placeholder: "default: the only one" }),
    h("button", { type: "submit", id: "context-submit" }, "Preview"));
  p.body.append(form);
  root.append(p.el, out.el);
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    out.body.replaceChildren(h("p", { class: "muted" }, "loading…"));
    const path = `/v1/context/${encodeURIComponent(state.entity.trim())}${qs({
      max_tokens: state.max_tokens, query: state.query.trim(), service: state.service.trim() })}`;
    const res = await api(path);
    if (!res.ok) return showError(out.body, res);
    show(out.body, res.data);
  });
  return { ready: Promise.resolve() };
}

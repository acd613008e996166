// The console shell: sign-in, hash routing (#/catalog, #/catalog/NAME, #/views, ...), one page at a time.
import { api, auth } from "./api.js";
import { clear, h } from "./dom.js";
import * as catalog from "./pages/catalog.js";
import * as views from "./pages/views.js";
import * as serving from "./pages/serving.js";
import * as lookup from "./pages/lookup.js";
import * as context from "./pages/context.js";

const PAGES = { catalog, views, serving, lookup, context };
const $ = (id) => document.getElementById(id);
let stop = null; // the current page's cleanup (timers)
let firstPanel = false;

// Load time as a person sees it: navigation start -> the first panel rendered with its data (or its error).
function markFirstPanel() {
  if (firstPanel) return;
  firstPanel = true;
  performance.mark("cs:first-panel");
  document.documentElement.dataset.firstPanelMs = String(Math.round(performance.now()));
}

// A probe every key that may read passes: tells signed-in, no-auth (loopback) and a wrong key apart.
const probe = (key) => api("/v1/status/serving", { key, quiet: true });

function showLogin(message) {
  if (stop) { stop(); stop = null; }
  $("page").hidden = true;
  $("nav").hidden = true;
  $("logout").hidden = true;
  $("who").textContent = "";
  $("login").hidden = false;
  const err = $("login-error");
  err.textContent = message || "";
  err.hidden = !message;
  $("login-key").focus();
  markFirstPanel();
}

function showApp(who) {
  $("login").hidden = true;
  $("nav").hidden = false;
  $("page").hidden = false;
  $("who").textContent = who;
  $("logout").hidden = !auth.key;
  route();
}

async function route() {
  if ($("page").hidden) return;
  if (stop) { stop(); stop = null; }
  const [name, ...rest] = (location.hash.replace(/^#\/?/, "") || "catalog").split("/");
  const page = PAGES[name] || catalog;
  for (const a of document.querySelectorAll("#nav a")) a.classList.toggle("active", a.dataset.page === name);
  const root = clear($("page"));
  root.dataset.page = name in PAGES ? name : "catalog";
  const result = page.render(root, rest.map(decodeURIComponent));
  stop = (result && result.stop) || null;
  if (result && result.ready) await result.ready;
  markFirstPanel();
}

async function signIn(event) {
  event.preventDefault();
  const input = $("login-key");
  const key = input.value.trim();
  input.value = "";
  if (!key) return showLogin("enter an API key");
  $("login-submit").disabled = true;
  const res = await probe(key);
  $("login-submit").disabled = false;
  if (!res.ok) {
    const why = res.status === 401 ? "this key was not accepted" : res.message;
    return showLogin(`Sign-in failed: ${why}${res.status === 401 && res.message ? ` (${res.message})` : ""}`);
  }
  auth.set(key);
  showApp("signed in");
}

async function start() {
  $("login-form").addEventListener("submit", signIn);
  $("logout").addEventListener("click", () => { auth.clear(); showLogin("signed out"); });
  auth.onUnauthorized((message) => { auth.clear(); showLogin(`Signed out: ${message}`); });
  window.addEventListener("hashchange", route);
  const res = await probe(auth.key);
  if (res.ok) return showApp(auth.key ? "signed in" : "no auth (loopback)");
  if (res.status === 401) {
    const had = auth.key;
    auth.clear();
    return showLogin(had ? `Signed out: ${res.message}` : "");
  }
  $("page").hidden = false;
  $("page").append(h("p", { class: "error", role: "alert" }, `Server error: ${res.message}`));
  markFirstPanel();
}

start();

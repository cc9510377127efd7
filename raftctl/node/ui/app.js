// raftctl dashboard: plain JS, no build step. Every figure comes from the v1 API with the token the
// user typed (kept in sessionStorage); views update live from blocking queries (?index=N&wait=30s).
// The DOM is built only with createElement/textContent (see h()), so names from users are never parsed
// as HTML.
"use strict";

const TOKEN_KEY = "raftctl.token";
const MAX_JOBS = 100;        // per-job detail is fetched for at most this many jobs
const MAX_EVENTS = 300;

const S = {
  gen: 0,                    // bumped on login/logout: loops of an older session stop
  status: null, machines: [], jobs: [], details: {}, placements: {}, discovery: {}, events: [],
  efficiency: null, live: false, lastError: "",
};

// -- DOM helpers ------------------------------------------------------------------------
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "style") Object.assign(el.style, v);   // CSSOM, which the CSP allows (style attributes it does not)
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}
const $ = (id) => document.getElementById(id);
const pill = (text, cls) => h("span", { class: `pill ${cls || text}` }, text);

function table(headers, rows, attrs) {
  return h("table", attrs || {},
    h("thead", {}, h("tr", {}, headers.map((x) => typeof x === "string" ? h("th", {}, x) : h("th", { class: x.cls }, x.t)))),
    h("tbody", {}, rows));
}

function toast(message, isError) {
  const t = h("div", { class: "toast" + (isError ? " error" : ""), role: "status" }, message);
  document.body.append(t);
  setTimeout(() => t.remove(), 5000);
}

// -- units ------------------------------------------------------------------------------------
function cpu(m) { m = Math.round(m); return m % 1000 === 0 ? `${m / 1000}` : `${m}m`; }
function mem(b) {
  for (const [u, f] of [["Ti", 2 ** 40], ["Gi", 2 ** 30], ["Mi", 2 ** 20], ["Ki", 2 ** 10]]) {
    if (b >= f) return (b % f === 0 ? `${b / f}` : (b / f).toFixed(1)) + u;
  }
  return `${Math.round(b)}`;
}
function pct(a, b) { return b ? `${Math.round((100 * a) / b)}%` : "-"; }
function ago(ms) {
  const s = Math.max(0, (Date.now() - ms) / 1000);
  return s < 60 ? `${Math.round(s)}s ago` : s < 3600 ? `${Math.round(s / 60)}m ago` : `${Math.round(s / 3600)}h ago`;
}
function bar(part, whole, cls) {
  const w = whole ? Math.min(100, (100 * part) / whole) : 0;
  return h("span", { class: "bar" }, h("span", { class: cls || "", style: { width: `${w.toFixed(1)}%` } }));
}

// -- API ------------------------------------------------------------------------------------
class ApiError extends Error {
  constructor(status, code, message) { super(message); this.status = status; this.code = code; }
}

async function api(method, path, body) {
  const headers = { Authorization: `Bearer ${sessionStorage.getItem(TOKEN_KEY) || ""}`, Accept: "application/json" };
  const init = { method, headers, cache: "no-store" };
  if (body !== undefined) { headers["Content-Type"] = "application/json"; init.body = JSON.stringify(body); }
  const resp = await fetch(path, init);
  let data = null;
  try { data = await resp.json(); } catch (e) { data = null; }
  if (!resp.ok) {
    const err = (data && data.error) || {};
    if (resp.status === 401) { logout("The token was refused (401): sign in again."); }
    throw new ApiError(resp.status, err.code || "http_error", `${err.message || resp.statusText}` +
      (err.field ? ` (field ${err.field})` : ""));
  }
  return { data, index: Number(resp.headers.get("X-Raftctl-Index") || (data && data.index) || 0) };
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const enc = encodeURIComponent;

// A blocking-query loop: returns as soon as the resource's index moves past the last one seen.
async function watch(gen, path, onData) {
  let index = 0, delay = 500;
  while (gen === S.gen) {
    try {
      const sep = path.includes("?") ? "&" : "?";
      const { data, index: idx } = await api("GET", index ? `${path}${sep}index=${index}&wait=30s` : path);
      if (gen !== S.gen) return;
      setLive(true);
      if (!index || idx !== index) onData(data);
      index = idx || index;
      delay = 500;
    } catch (e) {
      if (gen !== S.gen) return;
      setLive(false, e.message);
      await sleep(delay);
      delay = Math.min(delay * 2, 5000);
    }
  }
}

const wakers = {};   // name -> function that ends a poll loop's current sleep early
async function poll(gen, everyMs, fn, name) {
  while (gen === S.gen) {
    try { await fn(); setLive(true); } catch (e) { if (gen === S.gen) setLive(false, e.message); }
    await new Promise((resolve) => {
      const t = setTimeout(resolve, everyMs);
      if (name) wakers[name] = () => { clearTimeout(t); resolve(); };
    });
  }
}

function setLive(ok, why) {
  S.live = ok;
  if (why) S.lastError = why;
  const el = $("live");
  el.className = "live " + (ok ? "ok" : "stale");
  el.textContent = ok ? "live" : `reconnecting: ${S.lastError}`;
}

// Per-job details, placements and discovery: refreshed (at most one run at a time) when jobs,
// machines/placements or events move.
let detailRun = null, detailAgain = false;
function refreshDetails(gen) {
  if (detailRun) { detailAgain = true; return; }
  detailRun = (async () => {
    do {
      detailAgain = false;
      const names = S.jobs.slice(0, MAX_JOBS).map((j) => j.name);
      const details = {}, placements = {}, discovery = {};
      await Promise.all(names.map(async (name) => {
        try {
          const [d, p] = await Promise.all([api("GET", `/v1/jobs/${enc(name)}`), api("GET", `/v1/jobs/${enc(name)}/placements`)]);
          details[name] = d.data; placements[name] = p.data.placements;
          const service = (d.data.spec && d.data.spec.service) || name;
          discovery[service] = (await api("GET", `/v1/discovery/${enc(service)}`)).data;
        } catch (e) { /* a job deleted meanwhile */ }
      }));
      if (gen !== S.gen) return;
      Object.assign(S, { details, placements, discovery });
      render();
    } while (detailAgain && gen === S.gen);
  })().finally(() => { detailRun = null; });
}

function start() {
  const gen = ++S.gen;
  Object.assign(S, { status: null, machines: [], jobs: [], details: {}, placements: {}, discovery: {}, events: [], efficiency: null });
  $("login").hidden = true;
  for (const id of ["view", "nav", "live", "logout"]) $(id).hidden = false;
  render();
  poll(gen, 2000, async () => { S.status = (await api("GET", "/v1/status")).data; if (view() === "cluster") render(); });
  poll(gen, 3000, async () => {   // only while the page shows it; entering the view fetches at once
    if (view() !== "efficiency") return;
    S.efficiency = (await api("GET", "/v1/efficiency")).data;
    render();
  }, "efficiency");
  watch(gen, "/v1/machines", (d) => { S.machines = d.machines; refreshDetails(gen); render(); });
  watch(gen, "/v1/jobs", (d) => { S.jobs = d.jobs; refreshDetails(gen); render(); });
  let after = 0;
  watch(gen, "/v1/events", (d) => {
    const fresh = d.events.filter((e) => e.seq > after);
    if (fresh.length) after = fresh[fresh.length - 1].seq;
    S.events = S.events.concat(fresh).slice(-MAX_EVENTS);
    if (fresh.length) refreshDetails(gen);
    if (view() === "events" || view() === "cluster") render();
  });
}

function logout(message) {
  S.gen++;
  sessionStorage.removeItem(TOKEN_KEY);
  for (const id of ["view", "nav", "live", "logout"]) $(id).hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message || "";
  $("token").value = "";
  $("token").focus();
}

async function login(ev) {
  ev.preventDefault();
  const token = $("token").value.trim();
  if (!token) return;
  sessionStorage.setItem(TOKEN_KEY, token);
  try {
    await api("GET", "/v1/status");
    $("token").value = "";
    start();
  } catch (e) {
    sessionStorage.removeItem(TOKEN_KEY);
    $("login-error").textContent = `Sign-in failed: ${e.message}`;
  }
}

// -- actions -------------------------------------------------------------------------------
async function drain(id, undo) {
  try {
    await api("POST", `/v1/machines/${enc(id)}/${undo ? "undrain" : "drain"}`, undo ? undefined : {});
    toast(undo ? `Machine ${id} undrained` : `Draining machine ${id}: its replicas move within their disruption budgets`);
  } catch (e) {
    toast(`${undo ? "Undrain" : "Drain"} of ${id} failed: ${e.message}`, true);
  }
}

// -- views -----------------------------------------------------------------------------------
const VIEWS = { cluster: viewCluster, machines: viewMachines, jobs: viewJobs, deploys: viewDeploys,
  discovery: viewDiscovery, events: viewEvents, efficiency: viewEfficiency };
function view() { const v = location.hash.replace(/^#/, ""); return VIEWS[v] ? v : "cluster"; }

function render() {
  if (!sessionStorage.getItem(TOKEN_KEY)) return;
  const v = view();
  for (const a of document.querySelectorAll("#nav a")) a.classList.toggle("active", a.dataset.view === v);
  $("view").replaceChildren(...[].concat(VIEWS[v]()));
}

function card(k, v, note) {
  return h("div", { class: "card", "data-card": k }, h("div", { class: "k" }, k), h("div", { class: "v" }, v),
    note ? h("div", { class: "k" }, note) : null);
}

function viewCluster() {
  const st = S.status;
  if (!st) return [h("h1", {}, "Cluster"), h("p", { class: "muted" }, "loading…")];
  const up = S.machines.filter((m) => m.state === "active").length;
  const running = S.jobs.reduce((n, j) => n + j.counts.running, 0);
  const leader = st.members.find((m) => m.leader);
  return [
    h("h1", {}, "Cluster"),
    h("div", { class: "cards" },
      card("leader", leader ? (leader.id || leader.raft) : "none"), card("term", st.term),
      card("commit index", st.commit_index), card("state index", st.index),
      card("machines active", `${up} / ${S.machines.length}`), card("jobs", S.jobs.length),
      card("replicas running", running), card("quorum", st.has_quorum ? "yes" : "NO")),
    h("h2", {}, "Control replicas ", h("span", { class: "muted" }, `(as seen by ${st.node}, ${st.state})`)),
    table(["replica", "raft", "API", "role", { t: "match index", cls: "num" }, { t: "lag", cls: "num" }, "connected"],
      st.members.map((m) => h("tr", {},
        h("td", {}, m.id || "?", m.self ? h("span", { class: "muted" }, " (this page)") : ""),
        h("td", { class: "mono" }, m.raft), h("td", { class: "mono" }, m.api || ""),
        h("td", {}, m.leader ? pill("leader") : pill("follower", "")),
        h("td", { class: "num" }, m.match_index ?? (m.leader ? st.commit_index : "–")),
        h("td", { class: "num" }, m.lag ?? (m.leader ? 0 : "–")),
        h("td", {}, m.connected === undefined ? (m.self ? "self" : "–") : (m.connected ? "yes" : pill("no", "down"))))),
      { class: "members" }),
    h("h2", {}, "Latest events"), eventsTable(S.events.slice(-8)),
  ];
}

function viewMachines() {
  const domains = new Map();
  for (const m of S.machines) {
    const fd = m.fault_domain || {};
    const key = `${fd.region || "?"} / ${fd.zone || "?"}`;
    if (!domains.has(key)) domains.set(key, []);
    domains.get(key).push(m);
  }
  const out = [h("h1", {}, "Machines ", h("span", { class: "muted" }, `(${S.machines.length}, by region / zone)`))];
  for (const key of [...domains.keys()].sort()) {
    const ms = domains.get(key);
    out.push(h("div", { class: "domain" }, h("h3", {}, key, h("span", { class: "muted" }, ` · ${ms.length} machines`)),
      table(["machine", "state", "rack", "address", "CPU allocated", "memory allocated", { t: "replicas", cls: "num" }, ""],
        ms.map((m) => {
          const draining = !!m.drain;
          return h("tr", { "data-machine": m.id },
            h("td", { class: "mono" }, m.id), h("td", {}, pill(m.state)),
            h("td", {}, (m.fault_domain || {}).rack || ""), h("td", { class: "mono" }, m.address),
            h("td", { class: "res" }, bar(m.allocated.cpu, m.resources.cpu), `${cpu(m.allocated.cpu)} / ${cpu(m.resources.cpu)}`),
            h("td", { class: "res" }, bar(m.allocated.memory, m.resources.memory), `${mem(m.allocated.memory)} / ${mem(m.resources.memory)}`),
            h("td", { class: "num" }, m.placements),
            h("td", {}, draining
              ? h("button", { class: "btn secondary", type: "button", "data-action": "undrain", onclick: () => drain(m.id, true) }, "Undrain")
              : h("button", { class: "btn", type: "button", "data-action": "drain", disabled: m.state === "down",
                onclick: () => { if (confirm(`Drain machine ${m.id}? Its replicas will move elsewhere.`)) drain(m.id, false); } }, "Drain")));
        }))));
  }
  if (!S.machines.length) out.push(h("p", { class: "muted" }, "No machines registered yet."));
  return out;
}

function livePlacements(name) {
  return (S.placements[name] || []).filter((p) => p.desired === "run" && p.state !== "stopped" && p.state !== "lost");
}

function viewJobs() {
  const out = [h("h1", {}, "Jobs ", h("span", { class: "muted" }, `(${S.jobs.length})`))];
  out.push(table(["job", "version", "status", { t: "healthy / wanted", cls: "num" }, "replicas (where they run)", "pending"],
    S.jobs.map((j) => {
      const d = S.details[j.name] || {};
      const pl = livePlacements(j.name).sort((a, b) => a.replica - b.replica);
      return h("tr", { "data-job": j.name },
        h("td", {}, h("strong", {}, j.name)), h("td", {}, `v${j.version}`), h("td", {}, pill(j.status, j.status === "running" ? "running" : "stopped")),
        h("td", { class: "num" }, `${j.counts.healthy} / ${j.replicas}`),
        h("td", {}, h("div", { class: "replicas" }, pl.map((p) => h("span", {
          class: `replica ${p.state === "running" ? p.health : p.state}`, "data-replica": p.replica, "data-machine": p.machine,
          title: `${p.id}: ${p.state}/${p.health}, version ${p.version}, ${p.address || ""}`,
        }, `#${p.replica}@${p.machine}`)))),
        h("td", { class: "muted" }, d.pending_reason || ""));
    })));
  if (!S.jobs.length) out.push(h("p", { class: "muted" }, "No jobs yet: raftctl job run FILE"));
  return out;
}

function viewDeploys() {
  const rows = [];
  for (const j of S.jobs) {
    const d = S.details[j.name];
    const dep = d && d.deployment;
    if (!dep) continue;
    const fresh = livePlacements(j.name).filter((p) => p.version === d.version && p.state === "running" && p.health === "healthy").length;
    const want = d.replicas || 0;
    rows.push(h("tr", { "data-job": j.name },
      h("td", {}, h("strong", {}, j.name)), h("td", {}, `v${dep.version}`), h("td", {}, pill(dep.status)),
      h("td", {}, h("span", { class: "progress" }, h("span", { style: { width: `${want ? Math.min(100, (100 * fresh) / want) : 100}%` } })),
        ` ${fresh} / ${want} healthy on v${d.version}`),
      h("td", {}, dep.canary ? (dep.promoted ? "canaries promoted" : `${dep.canary} canaries, waiting for promotion`) : ""),
      h("td", { class: "muted" }, [dep.held, dep.reason].filter(Boolean).join("; ")),
      h("td", { class: "muted" }, dep.started_at ? ago(dep.started_at) : "")));
  }
  return [h("h1", {}, "Deploys"), rows.length
    ? table(["job", "version", "status", "progress", "canary", "notes", "started"], rows)
    : h("p", { class: "muted" }, "No deploys recorded.")];
}

function viewDiscovery() {
  const rows = [];
  for (const service of Object.keys(S.discovery).sort()) {
    const eps = S.discovery[service].endpoints || [];
    rows.push(h("tr", { "data-service": service }, h("td", {}, h("strong", {}, service)), h("td", { class: "num" }, eps.length),
      h("td", {}, h("div", { class: "replicas" }, eps.map((e) => h("span", { class: "replica healthy", title: `${e.placement} on ${e.machine}` },
        `${e.address}:${e.port}`))))));
  }
  return [h("h1", {}, "Discovery ", h("span", { class: "muted" }, "(healthy, published endpoints)")),
    rows.length ? table(["service", { t: "endpoints", cls: "num" }, "addresses"], rows) : h("p", { class: "muted" }, "No services.")];
}

function eventsTable(events) {
  return table(["when", "kind", "what"], events.slice().reverse().map((e) => h("tr", {},
    h("td", { class: "when" }, new Date(e.at).toLocaleTimeString()), h("td", { class: "kind" }, e.kind), h("td", {}, e.message))),
  { class: "events" });
}

function viewEvents() {
  return [h("h1", {}, "Events ", h("span", { class: "muted" }, `(latest ${S.events.length}, newest first)`)), eventsTable(S.events)];
}

function resCells(r) {
  const cell = (res, fmt) => [
    h("td", { class: "res" }, bar(r.allocated[res], r.capacity[res]), `${fmt(r.allocated[res])} / ${fmt(r.capacity[res])}`),
    h("td", { class: "num" }, r.reported[res] ? fmt(r.used[res]) : "?"),
    h("td", { class: "num" }, fmt(r.idle[res])),
    h("td", { class: "num" }, r.stranded[res] ? fmt(r.stranded[res]) : "–")];
  return [cell("cpu", cpu), cell("memory", mem)];
}
const RES_HEAD = ["CPU alloc / cap", { t: "CPU used", cls: "num" }, { t: "CPU idle", cls: "num" }, { t: "CPU stranded", cls: "num" },
  "mem alloc / cap", { t: "mem used", cls: "num" }, { t: "mem idle", cls: "num" }, { t: "mem stranded", cls: "num" }];

function viewEfficiency() {
  const e = S.efficiency;
  if (!e) return [h("h1", {}, "Efficiency"), h("p", { class: "muted" }, "loading…")];
  const c = e.cluster, fit = c.fit;
  return [
    h("h1", {}, "Efficiency"),
    h("div", { class: "cards" },
      card("CPU allocated", `${cpu(c.allocated.cpu)} / ${cpu(c.capacity.cpu)} (${pct(c.allocated.cpu, c.capacity.cpu)})`),
      card("CPU used", !c.reported.cpu ? "?" : c.reported.cpu === c.placements
        ? `${cpu(c.used.cpu)} (${pct(c.used.cpu, c.allocated.cpu)} of alloc)` : cpu(c.used.cpu),
        `${c.reported.cpu} of ${c.placements} replicas reporting`),
      card("memory allocated", `${mem(c.allocated.memory)} / ${mem(c.capacity.memory)}`),
      card("memory used", c.reported.memory ? mem(c.used.memory) : "?", `${c.reported.memory} of ${c.placements} replicas reporting`),
      card("stranded", `${cpu(c.stranded.cpu)} CPU, ${mem(c.stranded.memory)}`),
      card("machines in use", `${c.machines_in_use} / ${c.machines}`),
      card("could fit on", fit.lower_bound === null ? "more than all" : `${fit.lower_bound} machine${fit.lower_bound === 1 ? "" : "s"}`,
        `first-fit-decreasing: ${fit.first_fit_decreasing}` + (fit.unplaceable ? `, ${fit.unplaceable} fit nowhere` : ""))),
    h("h2", {}, "By zone"),
    table(["zone", { t: "machines", cls: "num" }, ...RES_HEAD], e.domains.zone.map((d) => h("tr", {},
      h("td", {}, d.domain), h("td", { class: "num" }, d.machines), resCells(d)))),
    h("h2", {}, "By machine"),
    table(["machine", "state", ...RES_HEAD], e.machines.map((m) => h("tr", { "data-machine": m.id },
      h("td", { class: "mono" }, m.id), h("td", {}, pill(m.state)), resCells(m)))),
    h("h2", {}, "By job"),
    table(["job", { t: "replicas", cls: "num" }, { t: "CPU alloc", cls: "num" }, { t: "CPU used", cls: "num" }, { t: "CPU util", cls: "num" },
      { t: "mem alloc", cls: "num" }, { t: "mem used", cls: "num" }, { t: "mem util", cls: "num" }],
    e.jobs.map((j) => h("tr", {}, h("td", {}, j.job), h("td", { class: "num" }, j.replicas),
      h("td", { class: "num" }, cpu(j.allocated.cpu)), h("td", { class: "num" }, j.reported.cpu ? cpu(j.used.cpu) : "?"),
      h("td", { class: "num" }, j.utilisation.cpu === null ? "?" : `${Math.round(100 * j.utilisation.cpu)}%`),
      h("td", { class: "num" }, mem(j.allocated.memory)), h("td", { class: "num" }, j.reported.memory ? mem(j.used.memory) : "?"),
      h("td", { class: "num" }, j.utilisation.memory === null ? "?" : `${Math.round(100 * j.utilisation.memory)}%`)))),
    h("p", { class: "muted" }, "Usage is what agents last reported (cgroup or psutil) within 15 s; '?' means no report yet. ",
      "Stranded: free CPU beside too little memory for the smallest replica (or the reverse). ",
      "Fit: the placements re-packed ignoring spread, constraints and ports."),
  ];
}

// -- boot --------------------------------------------------------------------------------------
window.addEventListener("hashchange", () => {
  if (view() === "efficiency") { S.efficiency = null; if (wakers.efficiency) wakers.efficiency(); }
  render();
});
document.addEventListener("DOMContentLoaded", () => {
  $("login").addEventListener("submit", login);
  $("logout").addEventListener("click", () => logout("Signed out."));
  if (sessionStorage.getItem(TOKEN_KEY)) start(); else logout("");
});

// Operations console: keeps the server-rendered page current over ws/pipelines/.
//
// The page was rendered as of event `seq` (in #ops-initial); the feed replays what
// happened after it and then streams. Rows on the page are updated in place; a
// pipeline that is not on the page (new, or an older one that changed, e.g. retried)
// is added at the top when this is the newest page and it matches the filters the
// browser can evaluate. The alert strip and stat cards are re-read from the server
// (a small fragment) shortly after state changes: pushed by events, never polled.

import { connectFeed } from "./live.js";
import { liveFragment } from "./console_detail.js";

const root = document.getElementById("content-main");
const table = document.getElementById("live-console");
const statusEl = document.getElementById("live-status");
const newerEl = document.getElementById("ops-newer");
const initial = JSON.parse(document.getElementById("ops-initial").textContent);
const T = JSON.parse(document.getElementById("ops-strings").textContent);
// Codes (state, result, status, kind, job type, module) as words in the page's language;
// phases and messages arrive already translated (the server renders them per socket).
const word = (table, code) => (code && T.labels[table][code]) || code || "";
const jobLook = (j) => (j.result ? word("result", j.result) : word("state", j.state));
const filters = initial.filters || {};
const firstPage = root.dataset.firstPage === "1";
const COUNTERS_DELAY_MS = 1500;
const canOperate = root.dataset.canOperate === "1";
const DONE = new Set(["success", "partial", "failed", "cancelled", "superseded"]);
const RETRYABLE = new Set(["error", "cancelled", "skipped"]);

function fmt(template, values) {
  return template.replace(/%\((\w+)\)s/g, (_, k) => String(values[k] ?? ""));
}

function el(tag, attrs = {}, text = "") {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text) node.textContent = text;
  return node;
}

function bar(percent) {
  const td = el("td");
  if (percent === null || percent === undefined) {
    td.append(el("span", { class: "quiet" }, "—"));
    return td;
  }
  const outer = el("span", { class: "live-bar" });
  const inner = el("span");
  inner.style.width = percent + "%";
  outer.append(inner);
  td.append(outer, " ", el("span", { class: "live-pct" }, Math.round(percent) + "%"));
  return td;
}

const detailBase = root.dataset.detailBase;
const expanded = new Map(); // pipeline id -> refresh function of its open detail

function pipelineRow(p, old) {
  const tr = el("tr", { class: "pipeline-row" });
  const name = el("td");
  const toggle = el("button", { type: "button", class: "ops-expand", "data-id": p.id,
                                "aria-expanded": String(expanded.has(p.id)), title: T.details }, expanded.has(p.id) ? "▾" : "▸");
  name.append(toggle, " ", [word("kind", p.kind), p.year || "", p.module ? "/ " + word("module", p.module) : ""]
    .filter(Boolean).join(" ") + " ");
  const link = el("a", { href: detailBase + p.id + "/", class: "short-id-link" });
  link.append(el("code", { class: "short-id", title: p.id }, p.id.slice(0, 8)));
  name.append(link);
  const created = old && old.querySelector(".created");
  if (created) name.append(" ", created.cloneNode(true));
  const status = el("td");
  status.append(el("span", { class: "chip " + p.status, "data-role": "status" }, word("status", p.status)));
  const jobs = p.jobs_finished + "/" + p.jobs_total + " " + T.finished + (p.error_count ? ", " + p.error_count + " " + T.errors : "");
  tr.append(name, status, bar(p.progress.percent ?? 0), el("td", {}, p.progress.phase || ""), el("td", {}, jobs));
  if (canOperate) tr.append(actionsCell("pipeline", p.id, pipelineActions(p)));
  return tr;
}

function jobRow(j) {
  const tr = el("tr", { class: "job-row", "data-job": String(j.id) });
  const state = el("td");
  state.append(el("span", { class: "chip " + (j.result || j.state), "data-role": "state" }, jobLook(j)));
  tr.append(el("td", {}, "#" + j.id + " " + word("job_type", j.job_type) + (j.det ? " [" + j.det + "]" : "")), state,
            bar(j.progress.percent), el("td", {}, j.progress.phase || ""), el("td", {}, j.status_message || ""));
  if (canOperate) tr.append(actionsCell("job", j.id, jobActions(j)));
  return tr;
}

// --- controls -------------------------------------------------------------------------
// Buttons only for operators (the server says so in data-can-operate; a viewer's page
// has none), and only where the state allows; the server still decides (409).

function pipelineActions(p) {
  const out = [];
  if (!DONE.has(p.status)) out.push("cancel");
  if (p.status === "failed" || p.status === "partial" || p.status === "cancelled") out.push("retry");
  return out;
}

function jobActions(j) {
  const out = [];
  if (j.state !== "finished") out.push("cancel");
  if (j.state === "finished" && RETRYABLE.has(j.result)) out.push("retry");
  if (j.state === "running") out.push("recover");
  return out;
}

function actionsCell(target, id, actions) {
  const td = el("td", { class: "actions" });
  for (const action of actions) {
    td.append(el("button", { type: "button", class: "button ops-act", "data-action": action,
                             "data-target": target, "data-id": String(id) }, T.actions[action]), " ");
  }
  return td;
}

function describe(target, id) {
  if (target === "queue") return id;
  if (target === "pipeline") {
    const p = feed.store.pipelines.get(id);
    return [p.kind, p.year || "", p.module ? "/ " + p.module : "", id.slice(0, 8)].filter(Boolean).join(" ");
  }
  const j = feed.store.jobs.get(Number(id));
  return "#" + id + " " + j.job_type + (j.det ? " [" + j.det + "]" : "");
}

const dialog = document.getElementById("ops-dialog");
const flash = document.getElementById("ops-flash");
let pending = null; // {target, id, action, name}

function openDialog(target, id, action) {
  const name = describe(target, id);
  pending = { target, id, action, name };
  const key = target + "." + action;
  document.getElementById("ops-dialog-title").textContent = fmt(T.titles[key], { name });
  document.getElementById("ops-dialog-effect").textContent = T.effects[key];
  document.getElementById("ops-dialog-error").replaceChildren();
  document.getElementById("ops-reason").value = "";
  document.getElementById("ops-force").checked = false;
  document.getElementById("ops-force-label").hidden = action !== "recover";
  dialog.showModal();
  document.getElementById("ops-reason").focus();
}

function refusal(status, body) {
  const box = document.getElementById("ops-dialog-error");
  const head = T.refused[String(status)] || T.refused.other;
  const parts = [el("strong", {}, head)];
  if (status !== 404 && body && body.detail) parts.push(" ", el("span", { class: "detail" }, body.detail));
  if (body && body.errors) parts.push(" ", el("span", {}, Object.values(body.errors).flat().join(" ")));
  const hint = body && T.hints[body.code];
  box.replaceChildren(...parts);
  if (hint) box.append(el("p", { class: "hint" }, hint));
  box.dataset.status = String(status);
  box.dataset.code = (body && body.code) || "";
}

async function confirmPending(event) {
  event.preventDefault();
  if (!pending) return;
  const { target, id, action, name } = pending;
  const payload = { reason: document.getElementById("ops-reason").value.trim() };
  if (action === "recover") payload.force = document.getElementById("ops-force").checked;
  const url = `/api/v1/${target}s/${id}/${action}/`;
  const button = document.getElementById("ops-confirm");
  button.disabled = true;
  try {
    const response = await fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: {
        "Content-Type": "application/json",
        "Accept": "application/json",
        "X-CSRFToken": dialog.querySelector("input[name=csrfmiddlewaretoken]").value,
      },
      body: JSON.stringify(payload),
    });
    if (response.status === 202) {
      dialog.close();
      pending = null;
      flash.textContent = fmt(T.done[action], { name });
      if (target === "queue") loadQueues();
      return;
    }
    let body = null;
    try { body = await response.json(); } catch (e) { /* not JSON */ }
    refusal(response.status, body);
    if (target === "queue") loadQueues();
  } catch (e) {
    refusal("network", null);
  } finally {
    button.disabled = false;
  }
}

if (dialog) {
  root.addEventListener("click", (event) => {
    const button = event.target.closest("button.ops-act");
    if (button) openDialog(button.dataset.target, button.dataset.id, button.dataset.action);
  });
  document.getElementById("ops-dialog-form").addEventListener("submit", confirmPending);
  document.getElementById("ops-back").addEventListener("click", () => { pending = null; dialog.close(); });
}

// Filters the browser can check on an event; the others (alert, date range) need the
// server, so under them nothing is added live (rows on the page still update).
function matches(p) {
  if (filters.alert || filters.since || filters.until) return false;
  if (filters.year && String(p.year) !== String(filters.year)) return false;
  if (filters.module && p.module !== filters.module) return false;
  if (filters.kind && p.kind !== filters.kind) return false;
  if (filters.status && p.status !== filters.status) return false;
  if (filters.has_errors && !p.error_count) return false;
  if (filters.q) {
    const q = filters.q.trim().toLowerCase();
    const text = [p.id, p.kind, p.module, p.progress.phase || "", String(p.year || "")].join(" ").toLowerCase();
    if (!p.id.startsWith(q) && !text.includes(q)) return false;
  }
  return true;
}

function body(pipelineId) {
  return table.querySelector(`tbody[data-pipeline="${pipelineId}"]`);
}

let newer = 0;
function insertTop(p) {
  if (!firstPage) {
    newer += 1;
    newerEl.hidden = false;
    newerEl.textContent = T.newer + " (" + newer + ")";
    return null;
  }
  table.querySelector("tbody.empty")?.remove();
  const tbody = el("tbody", { class: "pipeline arrived", "data-pipeline": p.id });
  table.querySelector("thead").after(tbody);
  return tbody;
}

function renderPipeline(p, { insert = true } = {}) {
  let tbody = body(p.id);
  if (!tbody) {
    if (!insert || !matches(p)) return;
    tbody = insertTop(p);
    if (!tbody) return;
    // Its jobs already in the store (the event carried them one by one).
    for (const j of feed.store.jobs.values()) if (j.pipeline_id === p.id) renderJob(j);
  }
  const old = tbody.querySelector("tr.pipeline-row");
  const row = pipelineRow(p, old);
  old ? old.replaceWith(row) : tbody.prepend(row);
  const refresh = expanded.get(p.id);
  if (refresh) refresh();
}

// --- inline detail: the server-rendered DAG, jobs, errors and timeline -----------------

function toggleDetail(id) {
  const tbody = body(id);
  if (!tbody) return;
  const open = tbody.querySelector("tr.detail-row");
  if (open) {
    open.remove();
    expanded.delete(id);
  } else {
    const cell = el("td", { colspan: String(table.querySelectorAll("thead th").length) });
    const box = el("div", { class: "detail-body" }, "…");
    cell.append(box);
    const tr = el("tr", { class: "detail-row" });
    tr.append(cell);
    tbody.querySelector("tr.pipeline-row").after(tr);
    const refresh = liveFragment(box, detailBase + id + "/fragment/");
    expanded.set(id, refresh);
    refresh.now();
  }
  const button = tbody.querySelector("button.ops-expand");
  button.setAttribute("aria-expanded", String(expanded.has(id)));
  button.textContent = expanded.has(id) ? "▾" : "▸";
}

table.addEventListener("click", (event) => {
  const button = event.target.closest("button.ops-expand");
  if (button) toggleDetail(button.dataset.id);
});

function renderJob(j) {
  const tbody = body(j.pipeline_id);
  if (!tbody) return;
  const row = jobRow(j);
  const old = tbody.querySelector(`tr[data-job="${j.id}"]`);
  if (old) { old.replaceWith(row); return; }
  // Keep jobs in id order under their pipeline.
  const after = [...tbody.querySelectorAll("tr.job-row")].find((tr) => Number(tr.dataset.job) > j.id);
  after ? after.before(row) : tbody.append(row);
}

// --- counters: re-read after state changes (not after progress), at most every 1.5 s ---
let countersTimer = null;
function refreshCountersSoon() {
  if (countersTimer) return;
  countersTimer = setTimeout(async () => {
    countersTimer = null;
    const url = root.dataset.counters + (filters.alert ? "?alert=" + encodeURIComponent(filters.alert) : "");
    try {
      const response = await fetch(url, { credentials: "same-origin" });
      if (response.ok) {
        document.getElementById("ops-counters").innerHTML = await response.text();
        root.dataset.countersAt = String(Date.now());
      }
    } catch (e) { /* offline: the next event tries again */ }
    loadQueues();
  }, COUNTERS_DELAY_MS);
}

// --- queues and workers panel (a server fragment; a Celery inspect takes up to 1 s) ---
const queuesBox = document.getElementById("ops-queues");
let queuesBusy = false;
async function loadQueues() {
  if (queuesBusy) return;
  queuesBusy = true;
  try {
    const response = await fetch(queuesBox.dataset.url, { credentials: "same-origin" });
    if (response.ok) queuesBox.innerHTML = await response.text();
  } catch (e) { /* offline: the next state change reads again */ }
  queuesBusy = false;
}
loadQueues();

let feed = null;
feed = connectFeed(root.dataset.feed, {
  onSnapshot(store) {
    // A resync: update what the page shows; do not pull in the snapshot's other pipelines.
    for (const p of store.pipelines.values()) renderPipeline(p, { insert: false });
    for (const j of store.jobs.values()) renderJob(j);
    refreshCountersSoon();
  },
  onJob(j, ev) {
    renderJob(j);
    if (ev.kind !== "progress") refreshCountersSoon();
  },
  onPipeline(p) { renderPipeline(p); },
  onStatus(status, detail) {
    statusEl.dataset.status = status;
    statusEl.textContent = status === "live" ? fmt(T.live, { seq: feed ? feed.store.seq : detail.seq })
      : status === "reconnecting" ? fmt(T.reconnecting, detail)
      : T[status] || status;
  },
  onEvent(ev) {
    if (statusEl.dataset.status === "live") statusEl.textContent = fmt(T.live, { seq: ev.seq });
  },
}, { initial });
// The page's rows again, from the same data, with what only the script adds (buttons).
for (const p of feed.store.pipelines.values()) renderPipeline(p, { insert: false });
for (const j of feed.store.jobs.values()) renderJob(j);
window.sluiceFeed = feed; // for debugging and the browser tests

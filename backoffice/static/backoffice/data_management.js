// Data management page: actions and live progress (plain JavaScript module, no build step).
//
// The page is rendered whole on the server. This module
//  - calls the REST API for actions (create/open/close a year, upload, recalculate,
//    validate, export);
//  - follows ws/years/<year>/ (live.js) and draws each running pipeline's bar in its
//    slot: exports and validations on their part, other module-less pipelines (unit sync) on the
//    year bar, uploads on their file's row, recalculations on their module;
//  - when a job or pipeline finishes, fetches the page again and swaps its sections
//    (one renderer, the server's: numbers, chips and translations never disagree).
// Every handler is delegated from the page root, so swapped sections need no rebinding.

import { connectFeed } from "./live.js";

const root = document.querySelector(".dm-page");
const S = JSON.parse(document.getElementById("dm-strings").textContent);
const SECTIONS = ["dm-yearbar", "dm-runs-section", "dm-modules-section", "dm-history-section"];
const DONE = new Set(["success", "partial", "failed", "cancelled", "superseded"]);
const TARGET_OF = { csv_ingest: "data_entries", factor_ingest: "factors" };
const REFRESH_DEBOUNCE_MS = 250;

const state = {
  feed: null,
  slotOf: new Map(),     // pipeline id -> slot, for pipelines this page started
  message: new Map(),    // pipeline id -> latest job status message
  shown: new Map(),      // slot -> pipeline id last drawn there (kept at 100 % after a swap)
  trace: {},             // slot -> percentages drawn, in order (for tests and debugging)
};
window.sluiceDm = state;

function csrfToken() {
  const input = document.querySelector("input[name=csrfmiddlewaretoken]");
  if (input) return input.value;
  const m = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
  return m ? decodeURIComponent(m[1]) : "";
}

function fmt(template, values) {
  return template.replace(/%\((\w+)\)s/g, (_, k) => String(values[k] ?? ""));
}

async function api(method, url, body) {
  let res;
  try {
    res = await fetch(url, {
      method, credentials: "same-origin",
      headers: { "X-CSRFToken": csrfToken(), "Content-Type": "application/json", Accept: "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch {
    return { ok: false, status: 0, data: { detail: S.network } };
  }
  let data = null;
  try { data = await res.json(); } catch { data = null; }
  return { ok: res.ok, status: res.status, data: data || {} };
}

// --- messages ---------------------------------------------------------------------------

function showError(target, data) {
  target.replaceChildren();
  if (!data) return;
  target.append(document.createTextNode(`${S.failed} ${data.detail || ""}`));
  const reasons = data.reasons || {};
  const items = Object.entries(reasons).flatMap(([scope, list]) => list.map((r) => `${scope}: ${r}`));
  if (items.length) {
    const ul = document.createElement("ul");
    for (const text of items) {
      const li = document.createElement("li");
      li.textContent = text;
      ul.append(li);
    }
    target.append(ul);
  }
}

const actionError = () => document.getElementById("dm-action-error");

// --- live slots -------------------------------------------------------------------------

function slotFor(p) {
  if (state.slotOf.has(p.id)) return state.slotOf.get(p.id);
  if (p.kind === "export") return "export";
  if (p.kind === "validation") return "validation";
  if (!p.module) return "year";
  for (const j of state.feed.store.jobs.values()) {
    if (j.pipeline_id === p.id && TARGET_OF[j.job_type]) return `t:${p.module}:${TARGET_OF[j.job_type]}`;
  }
  // Placed by the server (it knows an upload's target from the pipeline's params).
  const placed = root.querySelector(`.dm-live[data-pipeline="${CSS.escape(p.id)}"]`);
  if (placed) return placed.dataset.slot;
  return `m:${p.module}`;
}

function slotEl(slot) {
  return root.querySelector(`.dm-live[data-slot="${CSS.escape(slot)}"]`);
}

function draw(slot, { percent, status, label, phase, message, pipeline }) {
  const el = slotEl(slot);
  if (!el) return;
  el.hidden = false;
  el.dataset.status = status;
  if (pipeline) el.dataset.pipeline = pipeline;
  const pct = Math.max(0, Math.min(100, percent || 0));
  el.querySelector(".live-bar > span").style.width = pct + "%";
  el.querySelector(".live-bar").setAttribute("aria-valuenow", String(Math.round(pct)));
  el.querySelector(".live-pct").textContent = Math.floor(pct) + "%";
  const chip = el.querySelector("[data-role=status]");
  chip.className = "chip " + status;
  chip.textContent = label;
  el.querySelector(".dm-phase").textContent = phase || "";
  el.querySelector(".dm-msg").textContent = message || "";
  (state.trace[slot] ||= []).push(Math.floor(pct));
}

function statusLabel(status) {
  return (S.statuses && S.statuses[status]) || status;
}

function drawPipeline(p) {
  const slot = slotFor(p);
  const held = state.shown.get(slot);
  const other = held && held !== p.id ? state.feed?.store.pipelines.get(held) : null;
  // A finished pipeline does not take a slot back from one still running there.
  if (other && !DONE.has(other.status) && DONE.has(p.status)) return;
  state.shown.set(slot, p.id);
  draw(slot, {
    percent: DONE.has(p.status) ? 100 : p.progress.percent, status: p.status, label: statusLabel(p.status),
    phase: p.progress.phase, message: state.message.get(p.id) || "", pipeline: p.id,
  });
}

// --- refresh (fetch the page again, swap its sections) -----------------------------------

let renderedSeq = Number(root.dataset.seq || 0); // the event seq the shown sections are current to
let refreshTimer = null;
let refreshing = false;
let refreshAgain = false;

function scheduleRefresh() {
  clearTimeout(refreshTimer);
  refreshTimer = setTimeout(refresh, REFRESH_DEBOUNCE_MS);
}

function focusSelector(el) {
  if (!el || el === document.body || !root.contains(el)) return null;
  if (el.id) return "#" + CSS.escape(el.id);
  const row = el.closest("tr.dm-target");
  if (row && el.classList.length) {
    return `tr.dm-target[data-module="${row.dataset.module}"][data-target="${row.dataset.target}"] .${el.classList[el.classList.length - 1]}`;
  }
  const entry = el.closest("li[data-job]");
  if (entry) return `li[data-job="${entry.dataset.job}"] summary`;
  return null;
}

async function refresh() {
  if (refreshing) { refreshAgain = true; return; }
  refreshing = true;
  try {
    const res = await fetch(location.href, { credentials: "same-origin", headers: { Accept: "text/html" } });
    if (!res.ok) return;
    const doc = new DOMParser().parseFromString(await res.text(), "text/html");
    renderedSeq = Number(doc.querySelector(".dm-page")?.dataset.seq || renderedSeq);
    const open = [...root.querySelectorAll("li[data-job] details[open]")].map((d) =>
      `li[data-job="${d.closest("li").dataset.job}"] ${d.classList.length ? "details." + d.classList[0] : "details:not([class])"}`);
    const checks = [...root.querySelectorAll("tr.dm-target")].map((tr) =>
      [tr.dataset.module, tr.dataset.target, tr.querySelector("[data-role=check]")?.textContent || ""]);
    const errorBox = actionError()?.cloneNode(true);
    const focus = focusSelector(document.activeElement);
    for (const id of SECTIONS) {
      const fresh = doc.getElementById(id);
      const old = document.getElementById(id);
      if (fresh && old) old.replaceWith(document.importNode(fresh, true));
    }
    for (const sel of open) root.querySelector(sel)?.setAttribute("open", "");
    for (const [module, target, text] of checks) {
      const el = root.querySelector(`tr.dm-target[data-module="${module}"][data-target="${target}"] [data-role=check]`);
      if (el && text) el.textContent = text;
    }
    if (errorBox && errorBox.childNodes.length) actionError()?.replaceWith(errorBox);
    if (focus) root.querySelector(focus)?.focus();
    // The store is newer than the fetched page for progress; and a bar this page showed
    // stays at its final state instead of vanishing.
    for (const [, id] of state.shown) {
      const p = state.feed?.store.pipelines.get(id);
      if (p) drawPipeline(p);
    }
    for (const d of root.querySelectorAll("details.dm-updates[open]")) loadUpdates(d);
    setLiveStatus(lastStatus);
  } finally {
    refreshing = false;
    if (refreshAgain) { refreshAgain = false; scheduleRefresh(); }
  }
}

// --- live feed --------------------------------------------------------------------------

let lastStatus = "static";

function setLiveStatus(status) {
  lastStatus = status;
  const el = document.getElementById("live-status");
  if (!el) return;
  el.dataset.status = status;
  el.textContent = S[status] || status;
}

function startFeed() {
  const path = root.dataset.feed;
  if (!path) return;
  state.feed = connectFeed(path, {
    onSnapshot(store, snap) {
      // Something happened between the render and this snapshot (a pipeline finished
      // in between): the sections are stale, fetch them again.
      if (snap.seq > renderedSeq) scheduleRefresh();
      // ?watch=<pipeline>: the one this page just started (a year's unit sync), shown
      // to its end even if it finished before the page loaded.
      const watch = new URLSearchParams(location.search).get("watch");
      for (const p of store.pipelines.values()) {
        if (!DONE.has(p.status) || p.id === watch) drawPipeline(p);
      }
    },
    onJob(job) {
      if (job.status_message) state.message.set(job.pipeline_id, job.status_message);
      if (job.state === "finished") scheduleRefresh();
    },
    onPipeline(p, ev) {
      const known = state.shown.get(slotFor(p)) === p.id;
      drawPipeline(p);
      if (!known || DONE.has(p.status) || ev.kind === "state") scheduleRefresh();
    },
    onStatus: setLiveStatus,
  });
}

// --- actions ----------------------------------------------------------------------------

async function createYear(form) {
  const year = Number(form.querySelector("input[name=year]").value);
  const res = await api("POST", "/api/v1/years/", { year });
  if (!res.ok) { showError(actionError(), res.data); return; }
  const url = new URL(location.href);
  url.search = `?year=${year}&watch=${res.data.pipeline_id}`;
  location.assign(url.toString());
}

async function setOpen(button, open) {
  const year = button.dataset.year;
  if (!window.confirm(fmt(open ? S.confirmOpen : S.confirmClose, { year }))) return;
  button.disabled = true;
  const res = await api("PATCH", `/api/v1/years/${year}/`, { is_open: open });
  if (!res.ok) {
    button.disabled = false;
    showError(actionError(), res.data);
    return;
  }
  showError(actionError(), null);
  await refresh();
}

async function recalculate(button) {
  const module = button.dataset.module;
  button.disabled = true;
  const res = await api("POST", "/api/v1/pipelines/", { kind: "recalculate", year: Number(root.dataset.year), module });
  button.disabled = false;
  if (!res.ok) { showError(actionError(), res.data); return; }
  state.slotOf.set(res.data.pipeline_id, `m:${module}`);
  draw(`m:${module}`, { percent: 0, status: "queued", label: S.queued, pipeline: res.data.pipeline_id });
  state.shown.set(`m:${module}`, res.data.pipeline_id);
}

// A whole-year run (validation, export) started from its button: its bar is the slot's.
async function startYearRun(button, path, body, slot) {
  button.disabled = true;
  const res = await api("POST", `/api/v1/years/${root.dataset.year}/${path}/`, body);
  button.disabled = false;
  if (!res.ok) { showError(actionError(), res.data); return false; }
  state.slotOf.set(res.data.pipeline_id, slot);
  state.shown.set(slot, res.data.pipeline_id);
  const held = state.feed?.store.pipelines.get(res.data.pipeline_id);
  if (held) drawPipeline(held);
  else draw(slot, { percent: 0, status: "queued", label: S.queued, pipeline: res.data.pipeline_id });
  return true;
}

async function validateYear(button) {
  await startYearRun(button, "validations", undefined, "validation");
}

async function exportYear(button) {
  if (!(await startYearRun(button, "exports", { format: button.dataset.format }, "export"))) return;
  scheduleRefresh(); // the new export's row (its link appears when the pipeline ends)
}

// The header line, checked like the server does (ingestion.parsing.header_problems):
// the delimiter giving more columns, trimmed, lower-cased, quotes removed.
async function headerProblems(file, row) {
  if (!/\.csv$/i.test(file.name)) return S.notCsv;
  const head = await file.slice(0, 65536).text();
  const line = head.replace(/^\uFEFF/, "").split(/\r?\n/)[0];
  if (!line.trim()) return S.emptyFile;
  const split = (d) => line.split(d).map((c) => c.trim().replace(/^"(.*)"$/, "$1").trim().toLowerCase());
  const comma = split(","), semi = split(";");
  const cols = semi.length > comma.length ? semi : comma;
  const known = row.dataset.columns.split(",");
  const missing = row.dataset.required.split(",").filter((c) => c && !cols.includes(c));
  if (missing.length) return fmt(S.missingColumns, { columns: missing.join(", ") });
  const unknown = cols.filter((c) => !known.includes(c));
  if (unknown.length) return fmt(S.unknownColumns, { columns: unknown.join(", ") });
  return "";
}

async function upload(row, file) {
  const check = row.querySelector("[data-role=check]");
  check.textContent = "";
  const problem = await headerProblems(file, row);
  if (problem) { check.textContent = problem; return; }
  const { module, target } = row.dataset;
  const slot = `t:${module}:${target}`;
  const body = new FormData();
  body.append("file", file, file.name);
  body.append("target", target);
  const xhr = new XMLHttpRequest();
  xhr.open("POST", `/api/v1/years/${root.dataset.year}/modules/${module}/uploads/`);
  xhr.setRequestHeader("X-CSRFToken", csrfToken());
  xhr.setRequestHeader("Accept", "application/json");
  xhr.upload.onprogress = (ev) => {
    if (ev.lengthComputable) {
      draw(slot, { percent: (100 * ev.loaded) / ev.total, status: "running", label: S.uploading, phase: file.name });
    }
  };
  draw(slot, { percent: 0, status: "running", label: S.uploading, phase: file.name });
  state.shown.delete(slot);
  xhr.onload = () => {
    let data = {};
    try { data = JSON.parse(xhr.responseText); } catch { data = {}; }
    if (xhr.status === 202) {
      state.slotOf.set(data.pipeline_id, slot);
      state.shown.set(slot, data.pipeline_id);
      const held = state.feed?.store.pipelines.get(data.pipeline_id);
      if (held) drawPipeline(held);
      else draw(slot, { percent: 0, status: "queued", label: S.queued, pipeline: data.pipeline_id });
    } else {
      slotEl(slot).hidden = true;
      check.textContent = `${S.failed} ${data.detail || xhr.status}`;
    }
  };
  xhr.onerror = () => {
    slotEl(slot).hidden = true;
    check.textContent = S.network;
  };
  xhr.send(body);
}

async function loadUpdates(details) {
  const res = await fetch(details.dataset.url, { credentials: "same-origin" });
  if (res.ok) details.querySelector(".dm-updates-body").innerHTML = await res.text();
}

// --- delegated handlers -----------------------------------------------------------------

root.addEventListener("click", (ev) => {
  const button = ev.target.closest("button");
  if (!button || !root.contains(button)) return;
  if (button.id === "dm-open-year") setOpen(button, true);
  else if (button.id === "dm-close-year") setOpen(button, false);
  else if (button.classList.contains("dm-recalc")) recalculate(button);
  else if (button.classList.contains("dm-export")) exportYear(button);
  else if (button.id === "dm-validate") validateYear(button);
  else if (button.classList.contains("dm-upload")) button.closest("tr").querySelector("input.dm-file").click();
});

root.addEventListener("change", (ev) => {
  const t = ev.target;
  if (t.id === "dm-year") t.form.submit();
  else if (t.closest("#dm-history-filters")) t.form.submit();
  else if (t.classList.contains("dm-file") && t.files.length) {
    upload(t.closest("tr"), t.files[0]);
    t.value = "";
  }
});

root.addEventListener("submit", (ev) => {
  if (ev.target.id === "dm-create-year") {
    ev.preventDefault();
    createYear(ev.target);
  }
});

root.addEventListener("toggle", (ev) => {
  const d = ev.target;
  if (d.matches?.("details.dm-updates") && d.open) loadUpdates(d);
}, true);

// Drag and drop: a file dropped on a row the user may upload to.
function dropRow(ev) {
  const row = ev.target.closest?.("tr.dm-target");
  return row && row.querySelector("input.dm-file") ? row : null;
}
root.addEventListener("dragover", (ev) => {
  const row = dropRow(ev);
  if (!row) return;
  ev.preventDefault();
  row.classList.add("drag");
});
root.addEventListener("dragleave", (ev) => dropRow(ev)?.classList.remove("drag"));
root.addEventListener("drop", (ev) => {
  const row = dropRow(ev);
  if (!row) return;
  ev.preventDefault();
  row.classList.remove("drag");
  if (ev.dataTransfer.files.length) upload(row, ev.dataTransfer.files[0]);
});

// The year selector and the filters apply on change; their buttons are for no-JS use.
root.classList.add("js");

startFeed();

// The Sources page: cards kept current over the console feed (see backoffice/sources_page.py).
//
// An event of a pipeline a card shows (its last run) updates that card's chip and bar at
// once; an event of any other "source" pipeline (a run just started by beat or another
// operator) or a run reaching its end re-reads the cards from the API (last run, next
// run, success rate), at most once per REFRESH_MS. No polling: only events trigger it.
import { connectFeed } from "./live.js";

const root = document.querySelector(".sources-page");
const strings = JSON.parse(document.getElementById("sources-strings").textContent);
const cards = new Map(); // source id -> card data (last_run, next_run, success_rate, enabled)
for (const card of JSON.parse(document.getElementById("sources-initial").textContent)) cards.set(card.id, card);
const DONE = new Set(["success", "partial", "failed", "cancelled", "superseded"]);
const REFRESH_MS = 300;
const lang = document.documentElement.lang || undefined;

function when(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  return d.toLocaleString(lang, { dateStyle: "medium", timeStyle: "medium", timeZone: "UTC" }) + " UTC";
}

function format(template, values) {
  return template.replace(/%\((\w+)\)s/g, (_, key) => String(values[key]));
}

function field(section, name) {
  return section.querySelector(`[data-field="${name}"]`);
}

function render(card) {
  const section = document.getElementById("source-" + card.id);
  if (!section) return;
  const run = card.last_run;
  const chip = field(section, "status");
  let state = run ? run.status : "not_started";
  let label = run ? (run.unchanged ? strings.status.unchanged : strings.status[run.status] || run.status)
                  : strings.status.never;
  if (!card.enabled && !(run && !DONE.has(run.status))) {
    state = "cancelled";
    label = strings.status.paused;
  }
  chip.className = "chip " + state;
  chip.textContent = label;
  chip.dataset.state = run && run.unchanged ? "unchanged" : state;
  const last = field(section, "last-run");
  if (run) {
    last.replaceChildren();
    const a = document.createElement("a");
    a.href = `/admin/pipelines/pipeline/live/${run.pipeline_id}/`;
    a.textContent = when(run.started_at);
    last.append(a);
  } else {
    last.textContent = strings.never;
  }
  field(section, "next-run").textContent = card.next_run ? when(card.next_run) : strings.paused;
  const rate = card.success_rate;
  field(section, "rate").textContent = rate && rate.runs
    ? format(strings.rate, { ok: rate.succeeded, runs: rate.runs }) : strings.no_rate;
  const bar = field(section, "progress");
  const running = run && !DONE.has(run.status);
  bar.hidden = !running;
  bar.firstElementChild.style.width = (run ? run.progress_percent : 0) + "%";
  field(section, "message").textContent = run ? (running ? run.phase : run.message) : "";
}

let refreshTimer = null;
function refreshSoon() {
  if (refreshTimer) return;
  refreshTimer = setTimeout(async () => {
    refreshTimer = null;
    const response = await fetch(root.dataset.api, { credentials: "same-origin", headers: { Accept: "application/json" } });
    if (!response.ok) return;
    for (const card of (await response.json()).results) {
      cards.set(card.id, card);
      render(card);
    }
  }, REFRESH_MS);
}

function onPipeline(pipeline) {
  if (pipeline.kind !== "source") return;
  for (const card of cards.values()) {
    if (card.last_run && card.last_run.pipeline_id === pipeline.id) {
      card.last_run = { ...card.last_run, status: pipeline.status, progress_percent: pipeline.progress.percent,
                        phase: pipeline.progress.phase };
      render(card);
      if (DONE.has(pipeline.status)) refreshSoon(); // its message, the rate and the next run changed
      return;
    }
  }
  refreshSoon(); // a run this page has not seen yet
}

const status = document.getElementById("live-status");
for (const card of cards.values()) render(card);
connectFeed(root.dataset.feed, {
  onPipeline,
  onSnapshot() { refreshSoon(); }, // after a reconnect: whatever happened meanwhile
  onStatus(state) {
    status.dataset.status = state;
    status.textContent = strings[state] || state;
  },
});

// Sluice live feeds: a small browser module (plain JavaScript, no build step).
//
//   import { connectFeed } from "/static/backoffice/live.js";
//   const feed = connectFeed("/ws/pipelines/", {
//     onSnapshot(store) {},          // whole state replaced (first connect, resync)
//     onPipeline(pipeline, event) {},// one pipeline changed
//     onJob(job, event) {},          // one job changed (job.pipeline_id is set)
//     onStatus(status, detail) {},   // "connecting" | "replaying" | "live" | "reconnecting" | "denied" | "closed"
//   });
//   feed.store.pipelines  // Map id -> pipeline dict (+ pipeline_seq)
//   feed.store.jobs       // Map id -> job dict (+ pipeline_id)
//   feed.resync(); feed.close();
//   connectFeed(path, callbacks, { initial: { seq, pipelines, jobs } })  // start after a server render
//
// Protocol and guarantees: docs/LIVE.md. In short: the server sends a snapshot, or
// with ?after=SEQ the events missed since SEQ; events carry a global `seq` and a
// per-pipeline `pipeline_seq` that has no gaps. Events are absolute (they carry the
// whole job and pipeline), so applying one twice is harmless and we drop anything
// not newer than what we hold for its pipeline.

const BACKOFF_START_MS = 500;
const BACKOFF_MAX_MS = 15000;
// Different worker processes publish independently: an event can overtake the one
// before it by a few milliseconds. Wait this long for the missing one before resyncing.
const GAP_WAIT_MS = 1000;
// Reconnect asking for a little before the last seq seen: an event overtaken just
// before the drop is then replayed too (duplicates are dropped by pipeline_seq).
const REPLAY_OVERLAP = 100;
// Close codes after which retrying cannot help (see backoffice/live.py).
const PERMANENT_CLOSE_CODES = new Set([4401, 4403, 4404]);

export function connectFeed(path, callbacks = {}, options = {}) {
  const cb = {
    onSnapshot() {}, onPipeline() {}, onJob() {}, onStatus() {}, onEvent() {},
    ...callbacks,
  };
  const store = { pipelines: new Map(), jobs: new Map(), seq: 0 };
  // A page rendered on the server passes what it rendered (``{seq, pipelines, jobs}``):
  // the feed then starts with the events after that seq instead of a snapshot.
  if (options.initial) {
    for (const p of options.initial.pipelines || []) store.pipelines.set(p.id, p);
    for (const j of options.initial.jobs || []) store.jobs.set(j.id, j);
    store.seq = options.initial.seq || 0;
  }
  let exactAfter = Boolean(options.initial && store.seq > 0);
  const pending = new Map(); // pipeline id -> Map(pipeline_seq -> event) held for a gap
  let socket = null;
  let attempt = 0;
  let closed = false;
  let synced = false; // a snapshot or a replay has been received on this socket
  let gapTimer = null;
  let retryTimer = null;

  function url() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    let query = "";
    // After a gap our seq cannot be trusted as a cursor: start from a snapshot.
    if (exactAfter) {
      // The server render is exact as of its seq: no overlap (an overlap would replay
      // events of pipelines the page chose not to show).
      query = "?after=" + store.seq;
      exactAfter = false;
    } else if (store.seq > 0 && pending.size === 0) {
      query = "?after=" + Math.max(0, store.seq - REPLAY_OVERLAP);
    }
    // Job messages come in the page's language (the server renders them per socket).
    const lang = document.documentElement.lang;
    if (lang) query += (query ? "&" : "?") + "lang=" + encodeURIComponent(lang);
    return scheme + "//" + location.host + path + query;
  }

  function open() {
    synced = false;
    cb.onStatus(store.seq > 0 ? "replaying" : "connecting", { attempt });
    socket = new WebSocket(url());
    socket.onmessage = (msg) => handle(JSON.parse(msg.data));
    socket.onclose = (ev) => {
      socket = null;
      if (closed) return;
      if (PERMANENT_CLOSE_CODES.has(ev.code)) {
        closed = true;
        cb.onStatus("denied", { code: ev.code });
        return;
      }
      const delay = Math.min(BACKOFF_MAX_MS, BACKOFF_START_MS * 2 ** attempt) * (0.75 + Math.random() / 2);
      attempt += 1;
      cb.onStatus("reconnecting", { attempt, delay, code: ev.code });
      retryTimer = setTimeout(open, delay);
    };
  }

  function handle(msg) {
    if (msg.type === "snapshot") {
      applySnapshot(msg);
    } else if (msg.type === "replayed") {
      store.seq = Math.max(store.seq, msg.seq);
      goLive();
    } else if (msg.type === "job.update" || msg.type === "pipeline.update") {
      applyEvent(msg);
    }
  }

  function goLive() {
    if (!synced) {
      synced = true;
      attempt = 0;
      cb.onStatus("live", { seq: store.seq });
    }
  }

  function applySnapshot(snap) {
    pending.clear();
    clearTimeout(gapTimer);
    gapTimer = null;
    store.pipelines.clear();
    store.jobs.clear();
    for (const p of snap.pipelines) store.pipelines.set(p.id, p);
    for (const j of snap.jobs) store.jobs.set(j.id, j);
    store.seq = snap.seq;
    store.edges = snap.edges || [];
    store.rows = snap.rows || [];
    cb.onSnapshot(store, snap);
    goLive();
  }

  function applyEvent(ev) {
    const held = store.pipelines.get(ev.pipeline_id);
    // A pipeline we hold nothing about (older than the snapshot's window, or new):
    // its event carries the whole pipeline, so it starts our copy.
    const have = held ? held.pipeline_seq : ev.pipeline_seq - 1;
    if (ev.pipeline_seq <= have) return; // duplicate (replay overlap, resync seam)
    if (ev.pipeline_seq > have + 1) {
      holdForGap(ev);
      return;
    }
    commit(ev);
    drain(ev.pipeline_id);
  }

  function commit(ev) {
    store.seq = Math.max(store.seq, ev.seq);
    const pipeline = { ...ev.pipeline, pipeline_seq: ev.pipeline_seq };
    store.pipelines.set(ev.pipeline_id, pipeline);
    if (ev.job) {
      const job = { ...ev.job, pipeline_id: ev.pipeline_id };
      store.jobs.set(job.id, job);
      cb.onJob(job, ev);
    }
    cb.onPipeline(pipeline, ev);
    cb.onEvent(ev);
  }

  function drain(pipelineId) {
    const held = pending.get(pipelineId);
    if (!held) return;
    let next = store.pipelines.get(pipelineId).pipeline_seq + 1;
    while (held.has(next)) {
      const ev = held.get(next);
      held.delete(next);
      commit(ev);
      next += 1;
    }
    if (held.size === 0) pending.delete(pipelineId);
    if (pending.size === 0) {
      clearTimeout(gapTimer);
      gapTimer = null;
    }
  }

  function holdForGap(ev) {
    if (!pending.has(ev.pipeline_id)) pending.set(ev.pipeline_id, new Map());
    pending.get(ev.pipeline_id).set(ev.pipeline_seq, ev);
    if (!gapTimer) {
      gapTimer = setTimeout(() => {
        gapTimer = null;
        if (pending.size) resync(); // the channel layer dropped a message
      }, GAP_WAIT_MS);
    }
  }

  function resync() {
    if (socket && socket.readyState === WebSocket.OPEN) {
      cb.onStatus("replaying", { resync: true });
      synced = false;
      socket.send(JSON.stringify({ action: "resync" }));
    }
  }

  function close() {
    closed = true;
    clearTimeout(retryTimer);
    clearTimeout(gapTimer);
    if (socket) socket.close(1000);
    cb.onStatus("closed", {});
  }

  open();
  return {
    store,
    resync,
    close,
    // For tests and debugging: drop the connection as a network failure would.
    drop() { if (socket) socket.close(4000); },
    get socket() { return socket; },
  };
}

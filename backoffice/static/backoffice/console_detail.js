// A pipeline's detail (DAG, jobs, errors, timeline) is rendered on the server; this
// re-reads it when the pipeline's live events say something changed. Calls are
// coalesced: at most one read in flight and one per REFRESH_MS, the last one always
// happens (the final state is never missed).

const REFRESH_MS = 800;

export function liveFragment(container, url) {
  let timer = null;
  let again = false;
  let busy = false;

  async function load() {
    timer = null;
    if (busy) { again = true; return; }
    busy = true;
    try {
      const response = await fetch(url, { credentials: "same-origin" });
      if (response.ok) {
        // Keep open <details> open across refreshes (the operator is reading them).
        const open = new Set([...container.querySelectorAll("details[open][data-error-for]")].map((d) => d.dataset.errorFor));
        const closed = new Set([...container.querySelectorAll("details:not([open])[data-error-for]")].map((d) => d.dataset.errorFor));
        container.innerHTML = await response.text();
        for (const d of container.querySelectorAll("details[data-error-for]")) {
          if (open.has(d.dataset.errorFor)) d.open = true;
          if (closed.has(d.dataset.errorFor)) d.open = false;
        }
        container.dataset.loadedAt = String(Date.now());
      }
    } catch (e) { /* offline: the next event reads again */ }
    busy = false;
    if (again) { again = false; schedule(); }
  }

  function schedule() {
    if (!timer) timer = setTimeout(load, REFRESH_MS);
  }
  schedule.now = () => { clearTimeout(timer); load(); };
  return schedule;
}

"""Job kinds that ship with the engine itself."""

from __future__ import annotations

import time
from datetime import datetime

from django.utils.translation import gettext_noop

from pipelines import retention
from pipelines.context import JobContext
from pipelines.messages import msg
from pipelines.registry import Outcome, register


@register("noop", queue="default")
def noop(ctx: JobContext) -> Outcome:
    """Does nothing, optionally for a while in steps: smoke tests, benchmarks, worker checks."""
    seconds = float(ctx.params.get("sleep", 0) or 0)
    steps = max(1, int(ctx.params.get("steps", 1)))
    for step in range(steps):
        if seconds:
            time.sleep(seconds / steps)
        ctx.checkpoint()
        if steps > 1:
            ctx.progress(step + 1, steps, phase="sleeping")
    return Outcome(message=msg(gettext_noop("No-op done after %(seconds)ss"), seconds=f"{seconds:g}"))


@register(retention.PURGE_JOB_TYPE, queue="default")
def retention_purge(ctx: JobContext) -> Outcome:
    """The purge started from the Retention page: batches, a real percentage, stoppable
    by cancel between batches (what was purged stays purged; a retry carries on)."""
    cutoff = datetime.fromisoformat(ctx.params["cutoff"])
    total = ctx.params.get("total")

    def report(state: retention.Progress) -> None:
        ctx.checkpoint()
        ctx.progress(state.done, state.total or None, phase=state.phase, message=retention.summary(state),
                     force=state.phase == "done")

    state = retention.purge(cutoff=cutoff, on_progress=report, total=total if isinstance(total, int) else None)
    return Outcome(message=retention.summary(state), meta={
        "deleted": dict(state.deleted), "files_removed": state.files_removed, "bytes_freed": state.bytes_freed,
    })

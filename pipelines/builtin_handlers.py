"""Job kinds that ship with the engine itself."""

from __future__ import annotations

import time

from django.utils.translation import gettext_noop

from pipelines.engine import JobContext
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

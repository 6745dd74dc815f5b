"""Job kinds for tests only, loaded by the test workers via SLUICE_HANDLER_MODULES.

``*_iso`` kinds run on the ``test_isolated`` queue, which only test-owned workers
consume: a test that kills or restarts a worker must not race the session worker.
"""

from __future__ import annotations

import os
import time

from django.db import connection

from pipelines.context import JobContext
from pipelines.models import JobResult
from pipelines.registry import Outcome, register

EFFECT_TABLE = "test_job_effects"
ISOLATED_QUEUE = "test_isolated"


@register("test_fail", queue="recalc")
def fail(ctx: JobContext) -> Outcome:
    ctx.set_stage("compute")
    raise ValueError(f"boom in {ctx.job.det or 'job'}")


@register("test_fail_once", queue="recalc")
def fail_once(ctx: JobContext) -> Outcome:
    """Fails its first attempt only: what an operator's retry is for."""
    ctx.set_stage("compute")
    if ctx.attempt == 1:
        raise ValueError("transient upstream glitch")
    return Outcome(message=f"succeeded on attempt {ctx.attempt}")


@register("test_warn", queue="default")
def warn(ctx: JobContext) -> Outcome:
    return Outcome(JobResult.WARNING, "3 rows loaded, 1 rejected", {"rows_loaded": 3, "rows_rejected": 1})


def _effect(ctx: JobContext) -> Outcome:
    """Works in checkpointed steps, then records one row per committed effect."""
    seconds = float(ctx.params.get("sleep", 0))
    steps = 20
    for i in range(steps):
        time.sleep(seconds / steps)
        ctx.progress(i + 1, steps, phase="working", meta={"pid": os.getpid()}, force=i == 0)
        ctx.checkpoint()
    with ctx.effect() as eff:
        with connection.cursor() as cursor:
            cursor.execute(f"INSERT INTO {EFFECT_TABLE} (job_id, attempt) VALUES (%s, %s)", [ctx.job_id, ctx.attempt])
        eff.outcome = Outcome(message="effect written")
    return eff.outcome


register("test_effect", queue="ingest")(_effect)
register("test_effect_iso", queue=ISOLATED_QUEUE)(_effect)


@register("noop_iso", queue=ISOLATED_QUEUE)
def noop_iso(ctx: JobContext) -> Outcome:
    return Outcome(message="done")

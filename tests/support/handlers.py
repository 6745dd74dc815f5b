"""Job kinds for tests only, loaded by the test workers via SLUICE_HANDLER_MODULES."""

from __future__ import annotations

import time

from django.db import connection

from pipelines.engine import JobContext
from pipelines.models import JobResult
from pipelines.registry import Outcome, register

EFFECT_TABLE = "test_job_effects"


@register("test_fail", queue="recalc")
def fail(ctx: JobContext) -> Outcome:
    ctx.set_stage("compute")
    raise ValueError(f"boom in {ctx.job.det or 'job'}")


@register("test_warn", queue="default")
def warn(ctx: JobContext) -> Outcome:
    return Outcome(JobResult.WARNING, "3 rows loaded, 1 rejected", {"rows_loaded": 3, "rows_rejected": 1})


@register("test_effect", queue="ingest")
def effect(ctx: JobContext) -> Outcome:
    """Sleeps in checkpointed steps, then records one row per committed effect."""
    seconds = float(ctx.params.get("sleep", 0))
    steps = 20
    for i in range(steps):
        time.sleep(seconds / steps)
        ctx.progress(i + 1, steps, phase="working")
        ctx.checkpoint()
    with ctx.effect() as eff:
        with connection.cursor() as cursor:
            cursor.execute(f"INSERT INTO {EFFECT_TABLE} (job_id, attempt) VALUES (%s, %s)", [ctx.job_id, ctx.attempt])
        eff.outcome = Outcome(message="effect written")
    return eff.outcome

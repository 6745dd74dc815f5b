"""Job handlers for ingestion kinds (csv_ingest, factor_ingest, unit_sync, emission_recalc, aggregation).

Thin on purpose: each handler calls one service in ``ingestion.services``.
"""

from __future__ import annotations

from ingestion import services
from pipelines.engine import JobContext
from pipelines.registry import Outcome, register


@register("csv_ingest", queue="ingest")
def csv_ingest(ctx: JobContext) -> Outcome:
    return services.ingest_run(ctx=ctx)


@register("factor_ingest", queue="ingest")
def factor_ingest(ctx: JobContext) -> Outcome:
    return services.ingest_run(ctx=ctx)


@register("emission_recalc", queue="recalc")
def emission_recalc(ctx: JobContext) -> Outcome:
    return services.recalc_run(ctx=ctx)


@register("aggregation", queue="aggregate")
def aggregation(ctx: JobContext) -> Outcome:
    return services.aggregation_run(ctx=ctx)


@register("unit_sync", queue="default")
def unit_sync(ctx: JobContext) -> Outcome:
    return services.unit_sync_run(ctx=ctx)

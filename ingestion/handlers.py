"""Job handlers of the ingestion app, registered with the engine from the declarations
in ``ingestion.job_types`` (name, queue, count keys).

Thin on purpose: each handler calls one job body (``ingestion.jobs``, ``ingestion.unit_sync``,
``ingestion.exports.services``, ``ingestion.validations.services``).
"""

from __future__ import annotations

from collections.abc import Callable

from ingestion import jobs, unit_sync
from ingestion.exports import services as exports
from ingestion.job_types import (
    AGGREGATION,
    CSV_INGEST,
    EMISSION_RECALC,
    EXPORT,
    FACTOR_INGEST,
    UNIT_SYNC,
    VALIDATE_YEAR,
    JobTypeDecl,
)
from ingestion.validations import services as validations
from pipelines.context import JobContext
from pipelines.registry import Handler, Outcome, register


def _register(decl: JobTypeDecl) -> Callable[[Handler], Handler]:
    return register(decl.name, queue=decl.queue, counts=decl.counts)


@_register(CSV_INGEST)
def csv_ingest(ctx: JobContext) -> Outcome:
    return jobs.ingest_run(ctx=ctx)


@_register(FACTOR_INGEST)
def factor_ingest(ctx: JobContext) -> Outcome:
    return jobs.ingest_run(ctx=ctx)


@_register(EMISSION_RECALC)
def emission_recalc(ctx: JobContext) -> Outcome:
    return jobs.recalc_run(ctx=ctx)


@_register(AGGREGATION)
def aggregation(ctx: JobContext) -> Outcome:
    return jobs.aggregation_run(ctx=ctx)


@_register(UNIT_SYNC)
def unit_sync_job(ctx: JobContext) -> Outcome:
    return unit_sync.unit_sync_run(ctx=ctx)


@_register(EXPORT)
def export(ctx: JobContext) -> Outcome:
    return exports.export_run(ctx=ctx)


@_register(VALIDATE_YEAR)
def validate_year(ctx: JobContext) -> Outcome:
    return validations.validation_run(ctx=ctx)

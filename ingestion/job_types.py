"""The ingestion app's job types, declared once: names, queues and count keys.

``ingestion.handlers`` registers each with the engine (``pipelines.registry``); the
planner, the selectors and the back-office pages read the names from here.
"""

from __future__ import annotations

from dataclasses import dataclass

from ingestion.modules import TARGET_DATA, TARGET_FACTORS


@dataclass(frozen=True)
class JobTypeDecl:
    name: str
    queue: str
    # The keys of the job's ``meta`` that are counts (shown in lists and live events).
    counts: tuple[str, ...] = ()


_INGEST_COUNTS = (
    "rows_total", "rows_loaded", "rows_rejected", "rows_processed", "rows_skipped", "duplicate_of_upload",
)
CSV_INGEST = JobTypeDecl("csv_ingest", queue="ingest", counts=_INGEST_COUNTS)
FACTOR_INGEST = JobTypeDecl(
    "factor_ingest", queue="ingest", counts=(*_INGEST_COUNTS, "factors_upserted", "factors_stale")
)
EMISSION_RECALC = JobTypeDecl("emission_recalc", queue="recalc", counts=("rows_processed", "rows_without_factor"))
AGGREGATION = JobTypeDecl("aggregation", queue="aggregate", counts=("totals_written", "rows_without_factor"))
UNIT_SYNC = JobTypeDecl("unit_sync", queue="default", counts=("units_synced", "reports_created"))
# Issue 15: a year's results written to a file, and the read-only checks of a year.
EXPORT = JobTypeDecl("export", queue="export", counts=("rows_total", "rows_written"))
VALIDATE_YEAR = JobTypeDecl("validate_year", queue="default",
                            counts=("findings_error", "findings_warning", "findings_info"))

JOB_TYPES = (CSV_INGEST, FACTOR_INGEST, EMISSION_RECALC, AGGREGATION, UNIT_SYNC, EXPORT, VALIDATE_YEAR)

# Pipeline kinds of the year-wide jobs above (module-less pipelines of one year).
EXPORT_KIND = "export"
VALIDATION_KIND = "validation"

# The ingest job type of each upload target.
INGEST_JOB_TYPES = {TARGET_DATA: CSV_INGEST.name, TARGET_FACTORS: FACTOR_INGEST.name}
# The job types that load a fetched file (what a scheduled source's fetch feeds).
LOADING_JOB_TYPES = (CSV_INGEST.name, FACTOR_INGEST.name, UNIT_SYNC.name)

"""Reads of scheduled sources: what a card (and the API) shows for each."""

from __future__ import annotations

from datetime import datetime
from typing import Any, TypedDict

from django.db.models import QuerySet

from ingestion.job_types import LOADING_JOB_TYPES
from ingestion.models import Source, SourceRun
from ingestion.sources import schedule
from pipelines.models import DONE_STATUSES, Job, PipelineStatus
from pipelines.redaction import redact_urls

# The success rate is over this many most recent finished runs.
SUCCESS_RATE_WINDOW = 20


class LastRun(TypedDict):
    pipeline_id: str
    status: str
    trigger: str
    started_at: datetime
    finished_at: datetime | None
    progress_percent: float
    phase: str
    message: str
    unchanged: bool


class SuccessRate(TypedDict):
    runs: int
    succeeded: int
    rate: float | None


def source_queryset() -> QuerySet[Source]:
    """Every source; callers narrow it to the user's modules (``backoffice.access.narrow``)."""
    return Source.objects.select_related("periodic_task")


def _fetch_message(pipeline_id: Any) -> tuple[str, bool]:
    """The run's message: the first job that failed, else the fetch job's (it says "unchanged")."""
    jobs = list(Job.objects.filter(pipeline_id=pipeline_id).order_by("id")
                .values_list("job_type", "result", "status_message", "meta__unchanged"))
    unchanged = any(j[0] == "source_fetch" and j[3] is True for j in jobs)
    failed = next((j for j in jobs if j[1] == "error"), None)
    if failed is not None:
        return failed[2], unchanged
    ingest = next((j for j in jobs if j[0] in LOADING_JOB_TYPES and j[1] != "skipped"), None)
    fetch_job = next((j for j in jobs if j[0] == "source_fetch"), None)
    chosen = ingest or fetch_job
    return (chosen[2] if chosen else ""), unchanged


def last_run(source: Source) -> LastRun | None:
    run = SourceRun.objects.filter(source=source).select_related("pipeline").first()
    if run is None:
        return None
    p = run.pipeline
    message, unchanged = _fetch_message(p.pk)
    return {"pipeline_id": str(p.pk), "status": p.status, "trigger": run.trigger, "started_at": run.created_at,
            "finished_at": p.finished_at, "progress_percent": p.progress_percent, "phase": p.phase,
            "message": message, "unchanged": unchanged}


def success_rate(source: Source) -> SuccessRate:
    statuses = list(SourceRun.objects.filter(source=source, pipeline__status__in=DONE_STATUSES)
                    .values_list("pipeline__status", flat=True)[:SUCCESS_RATE_WINDOW])
    ok = sum(1 for s in statuses if s == PipelineStatus.SUCCESS)
    return {"runs": len(statuses), "succeeded": ok, "rate": round(ok / len(statuses), 3) if statuses else None}


def source_card(source: Source) -> dict[str, Any]:
    """Everything a card or an API item shows about one source."""
    return {
        "id": source.pk,
        "name": source.name,
        "kind": source.kind,
        "location": redact_urls(source.location),
        "auth_secret": source.auth_secret,
        "auth_header": source.auth_header,
        "module": source.module,
        "target": source.target,
        "year_rule": source.year_rule,
        "year": source.year,
        "cron": source.cron,
        "interval_seconds": source.interval_seconds,
        "enabled": source.enabled,
        "schedule_text": schedule.describe(source),
        "next_run": schedule.next_run(source),
        "last_run": last_run(source),
        "success_rate": success_rate(source),
        "created_at": source.created_at,
        "updated_at": source.updated_at,
    }

"""Reads shaped for the API: the pipelines page with its jobs, details, row errors.

Kept beside the views because they serve only the API's shapes; the domain reads they
build on live in ``pipelines.selectors`` and ``pipelines.events``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from django.db.models import Prefetch, QuerySet

from backoffice import access
from backoffice.api.filters import StatsFilter, validated
from ingestion import selectors as ingestion_selectors
from pipelines import counters, events, selectors, stats
from pipelines.models import Job, Pipeline
from pipelines.redaction import redact_values


def pipelines_visible(*, user: Any) -> QuerySet[Pipeline]:
    return access.filter_pipelines(Pipeline.objects.all(), user)


def pipeline_list(*, user: Any) -> QuerySet[Pipeline]:
    """Visible pipelines, newest first, each with its jobs prefetched for the page only."""
    return (
        pipelines_visible(user=user)
        .select_related("created_by")
        .prefetch_related(Prefetch("jobs", queryset=selectors.slim_jobs()))
        .order_by("-created_at", "-id")
    )


def _slim_job_dict(job: Job) -> dict[str, Any]:
    # ``meta`` is deferred; ``job_dict`` reads the ``counts`` projected in SQL.
    return dict(events.job_dict(job))


def _pipeline_fields(pipeline: Pipeline) -> dict[str, Any]:
    return {
        **events.pipeline_dict(pipeline),
        "warning_count": pipeline.warning_count,
        "last_error": pipeline.last_error,
        "created_by": pipeline.created_by.get_username() if pipeline.created_by else None,
        "created_at": pipeline.created_at,
        "started_at": pipeline.started_at,
        "finished_at": pipeline.finished_at,
    }


def pipeline_item(pipeline: Pipeline) -> dict[str, Any]:
    return {**_pipeline_fields(pipeline), "jobs": [_slim_job_dict(j) for j in pipeline.jobs.all()]}


def pipeline_detail(*, pipeline: Pipeline) -> dict[str, Any]:
    snapshot = selectors.pipeline_snapshot(pipeline_id=pipeline.pk)
    return {
        **_pipeline_fields(pipeline),
        "params": redact_values(pipeline.params),  # a directory source URL may carry credentials
        "jobs": snapshot["jobs"],
        "edges": snapshot["edges"],
        "seq": snapshot["seq"],
        "pipeline_seq": snapshot["pipeline_seq"],
    }


def jobs_visible(*, user: Any) -> QuerySet[Job]:
    return access.filter_jobs(Job.objects.all(), user)


def job_stats(*, user: Any, params: Any) -> dict[str, Any]:
    """``GET /jobs/stats/`` for ``user`` with the query's filters.

    The counts come from the trigger-kept tally (``pipelines.counters``), narrowed the
    same way as the jobs (scope, year, module, job type, queue), unless a creation-time
    window (``since``/``until``) is asked: the tally has no creation time, and a window
    is an index range anyway.
    """
    fs = validated(StatsFilter, params, jobs_visible(user=user))
    data = fs.form.cleaned_data
    counts = None
    if data.get("since") is None and data.get("until") is None:
        counts = counters.job_counts(
            modules=access.granted_modules(user), year=data.get("year"), module=data.get("module"),
            job_type=data.get("job_type"), queue=data.get("queue"),
        )
    return stats.job_stats(jobs=fs.qs, counts=counts)


def job_list(*, user: Any) -> QuerySet[Job]:
    return (
        jobs_visible(user=user)
        .select_related("pipeline")
        .defer("meta", "error", "params", "effect_outcome")
        .annotate(counts=selectors.counts_expression())
        .order_by("-created_at", "-id")
    )


def job_list_item(job: Job) -> dict[str, Any]:
    return {
        **_slim_job_dict(job),
        "pipeline_id": str(job.pipeline_id),
        "year": job.pipeline.year,
        "module": job.pipeline.module,
        "created_at": job.created_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
    }


def job_detail(*, job: Job) -> dict[str, Any]:
    return {
        **job_list_item(job),
        "depends_on": sorted(job.depends_on.values_list("pk", flat=True)),
        "params": redact_values(job.params),
        "meta": job.meta,
        "error": job.error,
        "max_attempts": job.max_attempts,
        "celery_task_id": job.celery_task_id,
        "worker": job.worker,
        "heartbeat_at": job.heartbeat_at,
        "cancel_requested": job.cancel_requested,
        "queued_at": job.queued_at,
    }


def job_row_errors(*, job: Job) -> Iterator[dict[str, Any]]:
    """Every row error of a job: from ingestion's full store when it has one, else meta."""
    found = False
    for error in ingestion_selectors.job_row_errors(job_id=job.pk):
        found = True
        yield error
    if found:
        return
    # Kinds that keep their (few) row errors only in meta.
    yield from (job.meta or {}).get("row_errors", []) or []

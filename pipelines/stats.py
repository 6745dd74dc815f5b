"""Job statistics for ``GET /api/v1/jobs/stats/``: counts, duration percentiles, throughput."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.db.models import Aggregate, Count, F, FloatField, Func, QuerySet
from django.utils import timezone

from pipelines.models import Job, JobResult, JobState

DURATION_SAMPLE = 10_000


class Percentile(Aggregate):
    """PostgreSQL ``percentile_cont(p) WITHIN GROUP (ORDER BY expr)``."""

    function = "percentile_cont"
    template = "%(function)s(%(fraction)s) WITHIN GROUP (ORDER BY %(expressions)s)"
    output_field = FloatField()

    def __init__(self, expression: Any, fraction: float, **extra: Any) -> None:
        super().__init__(expression, fraction=float(fraction), **extra)


class Seconds(Func):
    """Seconds between two timestamps (``EXTRACT(EPOCH FROM a - b)``)."""

    template = "EXTRACT(EPOCH FROM (%(expressions)s))"
    arg_joiner = " - "
    output_field = FloatField()


def _finished_ok(jobs: QuerySet[Job]) -> QuerySet[Job]:
    return jobs.filter(
        state=JobState.FINISHED,
        result__in=[JobResult.SUCCESS, JobResult.WARNING],
        started_at__isnull=False,
        finished_at__isnull=False,
    )


def duration_medians(*, since: datetime, min_samples: int = 1) -> dict[str, float]:
    """Median run time in seconds of recent successful jobs per type (since ``since``,
    at most the newest ``DURATION_SAMPLE``: cheap on a large history)."""
    recent = Job.objects.filter(
        pk__in=_finished_ok(Job.objects.filter(created_at__gte=since))
        .order_by("-created_at", "-id")
        .values("pk")[:DURATION_SAMPLE]
    )
    rows = (
        recent.order_by()
        .values("job_type")
        .annotate(n=Count("id"), p50=Percentile(Seconds(F("finished_at"), F("started_at")), 0.5))
    )
    return {r["job_type"]: float(r["p50"]) for r in rows if r["n"] >= min_samples and r["p50"] is not None}


def job_stats(*, jobs: QuerySet[Job]) -> dict[str, Any]:
    """Counts by state/result/type/queue, durations per type and throughput of ``jobs``.

    1. Counts: one GROUP BY over the four columns (one table scan, not four), summed
       per dimension here; the combinations are few.
    2. Durations: percentiles of the most recent ``DURATION_SAMPLE`` successful jobs
       (newest first on the ``job_newest`` index): "how long do jobs take now", and
       cheap with millions of historical rows.
    3. Throughput: jobs finished in the last minute and hour.
    """
    by: dict[str, dict[str, int]] = {"state": {}, "result": {}, "job_type": {}, "queue": {}}
    for values in jobs.order_by().values("state", "result", "job_type", "queue").annotate(n=Count("id")):
        row: dict[str, Any] = dict(values)
        for dimension, counts in by.items():
            key = str(row[dimension]) if row[dimension] is not None else "none"
            counts[key] = counts.get(key, 0) + row["n"]

    now = timezone.now()
    finished = jobs.filter(state=JobState.FINISHED, finished_at__gte=now - timedelta(hours=1))
    last_minute = finished.filter(finished_at__gte=now - timedelta(minutes=1)).count()
    last_hour = finished.count()
    return {
        "total": sum(by["state"].values()),
        "by_state": by["state"],
        "by_result": by["result"],
        "by_job_type": by["job_type"],
        "by_queue": by["queue"],
        "durations": durations(jobs=jobs),
        "throughput": {
            "finished_last_minute": last_minute,
            "finished_last_hour": last_hour,
            "per_minute_last_hour": round(last_hour / 60.0, 2),
        },
    }


def durations(*, jobs: QuerySet[Job]) -> dict[str, Any]:
    """p50/p95 run time overall and per job type of the newest ``DURATION_SAMPLE``
    successful jobs among ``jobs`` (newest first on the ``job_newest`` index)."""
    recent = Job.objects.filter(
        pk__in=_finished_ok(jobs).order_by("-created_at", "-id").values("pk")[:DURATION_SAMPLE]
    )
    seconds = Seconds(F("finished_at"), F("started_at"))
    by_type = {
        r["job_type"]: {"count": r["n"], "p50_seconds": _round(r["p50"]), "p95_seconds": _round(r["p95"])}
        for r in recent.order_by()
        .values("job_type")
        .annotate(n=Count("id"), p50=Percentile(seconds, 0.5), p95=Percentile(seconds, 0.95))
        .order_by("job_type")
    }
    overall = recent.aggregate(n=Count("id"), p50=Percentile(seconds, 0.5), p95=Percentile(seconds, 0.95))
    return {
        "sample": overall["n"],
        "p50_seconds": _round(overall["p50"]),
        "p95_seconds": _round(overall["p95"]),
        "by_job_type": by_type,
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), 3)

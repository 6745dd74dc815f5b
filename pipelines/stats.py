"""Job statistics for ``GET /api/v1/jobs/stats/``: counts, duration percentiles, throughput."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.db.models import Aggregate, Count, F, FloatField, Func, QuerySet
from django.utils import timezone

from pipelines.models import Job, JobResult, JobState


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
    """Median run time in seconds of successful jobs per type, since ``since``."""
    rows = (
        _finished_ok(Job.objects.filter(created_at__gte=since))
        .values("job_type")
        .annotate(n=Count("id"), p50=Percentile(Seconds(F("finished_at"), F("started_at")), 0.5))
    )
    return {r["job_type"]: float(r["p50"]) for r in rows if r["n"] >= min_samples and r["p50"] is not None}


def job_stats(*, jobs: QuerySet[Job]) -> dict[str, Any]:
    """Counts by state/result/type/queue, durations per type and throughput of ``jobs``."""

    def count_by(field: str) -> dict[str, int]:
        return {
            str(k) if k is not None else "none": n
            for k, n in jobs.order_by().values_list(field).annotate(n=Count("id")).values_list(field, "n")
        }

    durations = {
        r["job_type"]: {
            "count": r["n"],
            "p50_seconds": _round(r["p50"]),
            "p95_seconds": _round(r["p95"]),
        }
        for r in _finished_ok(jobs)
        .order_by()
        .values("job_type")
        .annotate(
            n=Count("id"),
            p50=Percentile(Seconds(F("finished_at"), F("started_at")), 0.5),
            p95=Percentile(Seconds(F("finished_at"), F("started_at")), 0.95),
        )
    }
    overall = _finished_ok(jobs).aggregate(
        p50=Percentile(Seconds(F("finished_at"), F("started_at")), 0.5),
        p95=Percentile(Seconds(F("finished_at"), F("started_at")), 0.95),
    )
    now = timezone.now()
    finished = jobs.filter(state=JobState.FINISHED, finished_at__isnull=False)
    last_minute = finished.filter(finished_at__gte=now - timedelta(minutes=1)).count()
    last_hour = finished.filter(finished_at__gte=now - timedelta(hours=1)).count()
    return {
        "total": sum(count_by("state").values()),
        "by_state": count_by("state"),
        "by_result": count_by("result"),
        "by_job_type": count_by("job_type"),
        "by_queue": count_by("queue"),
        "durations": {
            "p50_seconds": _round(overall["p50"]),
            "p95_seconds": _round(overall["p95"]),
            "by_job_type": durations,
        },
        "throughput": {
            "finished_last_minute": last_minute,
            "finished_last_hour": last_hour,
            "per_minute_last_hour": round(last_hour / 60.0, 2),
        },
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), 3)

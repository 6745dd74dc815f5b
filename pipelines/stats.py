"""Job statistics for ``GET /api/v1/jobs/stats/``: counts, duration percentiles, throughput."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from django.core.exceptions import EmptyResultSet
from django.db import connection
from django.db.models import Count, F, FloatField, Func, Q, QuerySet
from django.utils import timezone
from psycopg import sql

from pipelines.counters import JobCount
from pipelines.models import Job, JobResult, JobState

DURATION_SAMPLE = 10_000


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


Sample = tuple[int, float | None, float | None]  # count, p50, p95 (seconds)


def _sample(jobs: QuerySet[Job]) -> tuple[dict[str, Sample], Sample]:
    """``({job_type: (count, p50, p95)}, overall)`` of the newest ``DURATION_SAMPLE``
    successful jobs among ``jobs``.

    The sample is one walk of the ``job_ok_newest`` index (it carries the type and both
    timestamps: no table reads), and PostgreSQL reduces it with ``percentile_cont``:
    only a few numbers leave the database. (``WHERE pk IN (newest 10,000)`` made
    PostgreSQL hash-join the whole job table; shipping the 10,000 values to Python to
    sort them cost more than the walk.)
    """
    newest = (
        _finished_ok(jobs)
        .order_by("-created_at", "-id")
        .values_list("job_type", Seconds(F("finished_at"), F("started_at")))[:DURATION_SAMPLE]
    )
    try:
        subquery, params = newest.query.sql_with_params()
    except EmptyResultSet:  # narrowed to nothing (a user whose last module grant went)
        return {}, (0, None, None)
    with connection.cursor() as cursor:
        cursor.execute(
            sql.SQL(
                """SELECT GROUPING(job_type), job_type, count(*),
                          percentile_cont(0.5) WITHIN GROUP (ORDER BY s::float8),
                          percentile_cont(0.95) WITHIN GROUP (ORDER BY s::float8)
                   FROM ({}) AS sample (job_type, s)
                   GROUP BY ROLLUP (job_type)"""
            ).format(sql.SQL(subquery)),  # the ORM's own SQL; values are parameters
            params,
        )
        rows = cursor.fetchall()
    per_type: dict[str, Sample] = {}
    overall: Sample = (0, None, None)
    for total_row, job_type, n, p50, p95 in rows:
        if total_row:
            overall = (int(n), p50, p95)
        else:
            per_type[job_type] = (int(n), p50, p95)
    return per_type, overall


def duration_medians(*, since: datetime, min_samples: int = 1) -> dict[str, float]:
    """Median run time in seconds of recent successful jobs per type (since ``since``,
    at most the newest ``DURATION_SAMPLE``: cheap on a large history)."""
    per_type, _ = _sample(Job.objects.filter(created_at__gte=since))
    return {t: float(p50) for t, (n, p50, _) in per_type.items() if p50 is not None and n >= min_samples}


def job_stats(*, jobs: QuerySet[Job], counts: Iterable[JobCount] | None = None) -> dict[str, Any]:
    """Counts by state/result/type/queue, durations per type and throughput of ``jobs``.

    1. Counts: ``counts`` when the caller has them from the maintained tally
       (``pipelines.counters.job_counts`` with the same narrowing as ``jobs``), else one
       GROUP BY over the four columns (one table scan, not four); summed per dimension
       here, the combinations are few.
    2. Durations: percentiles of the most recent ``DURATION_SAMPLE`` successful jobs
       (newest first on the ``job_ok_newest`` index): "how long do jobs take now", and
       cheap with millions of historical rows.
    3. Throughput: jobs finished in the last minute and hour.
    """
    if counts is None:
        grouped = jobs.order_by().values("state", "result", "job_type", "queue").annotate(n=Count("id"))
        counts = [JobCount(r["state"], r["result"], r["job_type"], r["queue"], r["n"]) for r in grouped]
    by: dict[str, dict[str, int]] = {"state": {}, "result": {}, "job_type": {}, "queue": {}}
    for count in counts:
        for dimension, tally in by.items():
            value = getattr(count, dimension)
            key = str(value) if value is not None else "none"
            tally[key] = tally.get(key, 0) + count.n

    now = timezone.now()
    recent = jobs.filter(state=JobState.FINISHED, finished_at__gte=now - timedelta(hours=1)).aggregate(
        hour=Count("id"), minute=Count("id", filter=Q(finished_at__gte=now - timedelta(minutes=1)))
    )
    last_minute, last_hour = recent["minute"], recent["hour"]
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
    successful jobs among ``jobs``."""
    per_type, overall = _sample(jobs)
    by_type = {
        job_type: {"count": n, "p50_seconds": _round(p50), "p95_seconds": _round(p95)}
        for job_type, (n, p50, p95) in sorted(per_type.items())
    }
    return {
        "sample": overall[0],
        "p50_seconds": _round(overall[1]),
        "p95_seconds": _round(overall[2]),
        "by_job_type": by_type,
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), 3)

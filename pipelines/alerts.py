"""Anomaly detection from job data, for ``GET /api/v1/alerts/`` and the console strip.

Each alert kind is a query over jobs (never a flag someone has to remember to set), so
an anomaly is reported even when it comes from a bug in the code meant to prevent it.
The platform's design makes the first four impossible; the console still looks:

- ``rows_all_rejected``: an ingest that finished with rows and none loaded.
- ``transaction_poisoned``: an error raised by a statement run after a failed one
  ("current transaction is aborted", SQLSTATE 25P02).
- ``deadlock``: a deadlock error (40P01), typically among sibling jobs.
- ``aggregation_amplified``: more than one aggregation job in one pipeline, or two
  aggregations of the same year running at overlapping times (last 24 hours).
- ``stuck``: running with a heartbeat older than ``SLUICE_STALE_AFTER_SECONDS``.
- ``queue_stalled``: jobs waiting in a queue that is not paused and that nobody consumes
  (no job of it started or sent a heartbeat lately).
- ``slow``: far above the usual duration of its kind (``SLOW_FACTOR`` times the median of
  recent successful runs, and at least ``SLOW_MIN_SECONDS`` more).

Finished-job alerts look back ``SLUICE_ALERT_WINDOW_HOURS`` (on the ``job_newest``
index) so the endpoint stays cheap with millions of historical jobs.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta
from typing import Any, TypedDict

from django.conf import settings
from django.db.models import Count, DurationField, ExpressionWrapper, F, Max, Q, QuerySet, RowRange, Window
from django.db.models.functions import Coalesce, Now
from django.utils import timezone

from pipelines.models import Job, JobResult, JobState, QueueState
from pipelines.registry import job_types_counting
from pipelines.stats import duration_medians

ALERT_KINDS = (
    "rows_all_rejected",
    "transaction_poisoned",
    "deadlock",
    "aggregation_amplified",
    "stuck",
    "queue_stalled",
    "slow",
)
SLOW_FACTOR = 5.0
SLOW_MIN_SECONDS = 30.0
SLOW_MIN_SAMPLES = 5
ITEM_LIMIT = 50


class AlertItem(TypedDict):
    kind: str
    pipeline_id: str
    job_id: int
    job_type: str
    year: int | None
    module: str
    message: str


def _window_start() -> Any:
    hours = float(getattr(settings, "SLUICE_ALERT_WINDOW_HOURS", 168))
    return timezone.now() - timedelta(hours=hours)


def _recent(jobs: QuerySet[Job]) -> QuerySet[Job]:
    return jobs.filter(created_at__gte=_window_start())


def alert_jobs(kind: str, jobs: QuerySet[Job] | None = None, *, workers: list[Any] | None = None) -> QuerySet[Job]:
    """The jobs exhibiting ``kind`` among ``jobs`` (default: all jobs)."""
    base = jobs if jobs is not None else Job.objects.all()
    if kind == "rows_all_rejected":
        return _recent(base).filter(
            # The job types that load rows (they declare the count at registration).
            job_type__in=job_types_counting("rows_loaded"), state=JobState.FINISHED,
            meta__rows_rejected__gt=0, meta__rows_loaded=0,
        )
    if kind == "transaction_poisoned":
        # result=error first: the (result, created_at) index narrows to the rare failures
        # before any JSON is read.
        return _recent(base).filter(result=JobResult.ERROR).filter(
            Q(error__type="InFailedSqlTransaction")
            | Q(error__message__icontains="current transaction is aborted")
            | Q(status_message__icontains="current transaction is aborted")
        )
    if kind == "deadlock":
        return _recent(base).filter(result=JobResult.ERROR).filter(
            Q(error__type="DeadlockDetected")
            | Q(error__message__icontains="deadlock detected")
            | Q(status_message__icontains="deadlock detected")
        )
    if kind == "aggregation_amplified":
        # Concurrency anomalies matter while they can still bite: the last day only
        # (a window sort over a week of aggregations costs about a second at 1M jobs).
        return _aggregation_amplified(base.filter(created_at__gte=timezone.now() - timedelta(hours=24)))
    if kind == "stuck":
        stale = timezone.now() - timedelta(seconds=settings.SLUICE_STALE_AFTER_SECONDS)
        return base.filter(state=JobState.RUNNING).filter(
            Q(heartbeat_at__lt=stale) | Q(heartbeat_at__isnull=True, started_at__lt=stale)
        )
    if kind == "queue_stalled":
        return base.filter(state=JobState.QUEUED, queue__in=stalled_queues(workers=workers))
    if kind == "slow":
        return _slow(base)
    raise ValueError(f"unknown alert kind {kind!r}")


def _aggregation_amplified(jobs: QuerySet[Job]) -> QuerySet[Job]:
    """Aggregations in a pipeline that has more than one, or that overlap an earlier one of their year.

    Both read the window's aggregations from the ``job_aggregation_newest`` index alone
    (it carries every column used here):

    - doubled: a hashed ``GROUP BY pipeline_id HAVING count > 1``;
    - overlap without a self-join (quadratic on a large history): ordered by start time
      within a year, a run overlaps an earlier one when it starts before the latest end
      among the runs that started before it (a running job's end is "now"). The year is
      the copy on the job (``pipeline_year``), not a join to 28,000 pipelines a day.
    """
    aggregations = jobs.filter(job_type="aggregation")
    doubled = (
        aggregations.order_by()
        .values("pipeline_id")
        .annotate(n=Count("id"))
        .filter(n__gt=1)
        .values("pipeline_id")
    )
    overlapping = (
        aggregations.filter(started_at__isnull=False, pipeline_year__isnull=False)
        .annotate(
            earlier_end=Window(
                Max(Coalesce("finished_at", Now())),
                partition_by=[F("pipeline_year")],
                order_by=[F("started_at").asc(), F("id").asc()],
                frame=RowRange(start=None, end=-1),
            )
        )
        .filter(earlier_end__gt=F("started_at"))
        .values("pk")
    )
    return aggregations.filter(Q(pipeline_id__in=doubled) | Q(pk__in=overlapping))


# The run time of a finished job, written as the ``job_run_time`` index's expression so
# "ran longer than X" is an index range scan, not a scan of the whole window.
RUN_TIME = ExpressionWrapper(F("finished_at") - F("started_at"), output_field=DurationField())


def _slow(jobs: QuerySet[Job]) -> QuerySet[Job]:
    medians = duration_medians(since=_window_start(), min_samples=SLOW_MIN_SAMPLES)
    now = timezone.now()
    since = _window_start()
    ok = [JobResult.SUCCESS, JobResult.WARNING]
    # Every branch complete on its own (type, state, bound), so PostgreSQL answers the OR
    # with one index scan per branch (job_state_* for running, job_run_time for finished).
    condition = Q(pk__in=[])
    for job_type, median in medians.items():
        limit = timedelta(seconds=max(SLOW_FACTOR * median, median + SLOW_MIN_SECONDS))
        condition |= Q(job_type=job_type, state=JobState.RUNNING, started_at__lt=now - limit)
        condition |= Q(job_type=job_type, state=JobState.FINISHED, result__in=ok, run_time__gt=limit,
                       created_at__gte=since)
    return jobs.alias(run_time=RUN_TIME).filter(condition)


def stalled_queues(*, workers: list[Any] | None = None) -> list[str]:
    """Queues holding work that nobody is consuming.

    From job data, not a Celery broadcast (which waits its full timeout): a queue is
    stalled when, outside a pause, a job has been waiting longer than the stale
    threshold while no job of that queue started or sent a heartbeat within it. A
    queue whose consumers are merely busy (fresh heartbeats) is not stalled. When a
    live worker list is at hand (``workers``), a queue some worker consumes is not
    stalled either.
    """
    threshold = timezone.now() - timedelta(seconds=settings.SLUICE_STALE_AFTER_SECONDS)
    paused = set(QueueState.objects.filter(paused=True).values_list("name", flat=True))
    waiting = set(
        Job.objects.filter(state=JobState.QUEUED, queued_at__lt=threshold)
        .exclude(queue__in=paused)
        .values_list("queue", flat=True)
        .distinct()
    )
    if not waiting:
        return []
    alive = set(
        Job.objects.filter(queue__in=waiting)
        .filter(Q(state=JobState.RUNNING, heartbeat_at__gte=threshold) | Q(started_at__gte=threshold))
        .values_list("queue", flat=True)
        .distinct()
    )
    consumed = {q for w in workers or [] for q in w.get("queues", [])}
    return sorted(waiting - alive - consumed)


def _message(kind: str, job: Job) -> str:
    if kind == "rows_all_rejected":
        return f"All {job.meta.get('rows_rejected')} rows rejected: {job.status_message}"
    if kind in ("transaction_poisoned", "deadlock"):
        return str((job.error or {}).get("message") or job.status_message)[:500]
    if kind == "stuck":
        return f"No heartbeat since {job.heartbeat_at.isoformat() if job.heartbeat_at else 'start'} on {job.worker}"
    if kind == "queue_stalled":
        return f"Waiting in queue {job.queue} since {job.queued_at.isoformat() if job.queued_at else '?'}"
    if kind == "slow":
        end = job.finished_at or timezone.now()
        return f"Ran {(end - job.started_at).total_seconds():.0f}s" if job.started_at else "slow"
    return job.status_message[:500]


def alert_summary(*, jobs: QuerySet[Job], kinds: Iterable[str] = ALERT_KINDS) -> dict[str, Any]:
    """Counters per kind and up to ``ITEM_LIMIT`` newest items per kind."""
    counts: dict[str, int] = {}
    items: list[AlertItem] = []
    for kind in kinds:
        qs = alert_jobs(kind, jobs)
        counts[kind] = qs.count()
        if not counts[kind]:
            # Without a match, "newest 50" would walk the whole created_at index.
            continue
        for job in qs.select_related("pipeline").order_by("-created_at", "-id")[:ITEM_LIMIT]:
            items.append(
                {
                    "kind": kind,
                    "pipeline_id": str(job.pipeline_id),
                    "job_id": job.pk,
                    "job_type": job.job_type,
                    "year": job.pipeline.year,
                    "module": job.pipeline.module,
                    "message": _message(kind, job),
                }
            )
    return {"counts": counts, "total": sum(counts.values()), "items": items}


def pipelines_with_alert(kind: str, jobs: QuerySet[Job] | None = None) -> QuerySet[Any]:
    """Pipeline ids having a job with alert ``kind``: a subquery for the list filter."""
    return alert_jobs(kind, jobs).values("pipeline_id")

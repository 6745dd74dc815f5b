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
index) so the endpoint stays cheap with millions of historical jobs; the two error
kinds are partial indexes of their own (``job_poisoned``, ``job_deadlock``), and
``aggregation_amplified`` reads the suspects a trigger records when an aggregation
starts (migration ``aggregation_suspects``) instead of comparing a day of runs.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from datetime import timedelta
from typing import Any, TypedDict

from django.conf import settings
from django.db.models import DurationField, ExpressionWrapper, F, Q, QuerySet
from django.utils import timezone

from pipelines.models import DEADLOCK_ERROR, POISONED_ERROR, AggregationSuspect, Job, JobResult, JobState, QueueState
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
    hours = settings.SLUICE_ALERT_WINDOW_HOURS
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
        # Written as the partial index job_poisoned's predicate (result, then the
        # condition): the count reads only the index entries of such errors.
        return _recent(base).filter(result=JobResult.ERROR).filter(POISONED_ERROR)
    if kind == "deadlock":
        return _recent(base).filter(result=JobResult.ERROR).filter(DEADLOCK_ERROR)  # job_deadlock
    if kind == "aggregation_amplified":
        # Concurrency anomalies matter while they can still bite: the last day only.
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

    Read among the *suspects* only (``pipelines_aggregation_suspect``, kept by a trigger:
    migration ``aggregation_suspects``): every aggregation that shares a pipeline with
    another or overlaps one of its year, a run not finished counting as never ending —
    a superset of what this can report, normally empty. The few suspect rows in
    ``jobs`` are read in one query and the exact rule applied to them here:

    - doubled: another aggregation of the same pipeline among ``jobs``;
    - overlap: an aggregation of the same year among ``jobs`` that started earlier (by
      start time, then id) and ended after this one started (a running one's end is
      "now"). Such an earlier run is a suspect too (the trigger records both of a pair),
      so looking among the suspects misses none.

    ``jobs`` carries the window and the user's modules, applied to both sides of each
    pair, as the window query over all of the day's aggregations did.
    """
    suspects = list(
        jobs.filter(job_type="aggregation", pk__in=AggregationSuspect.objects.values("job_id"))
        .values_list("pk", "pipeline_id", "pipeline_year", "started_at", "finished_at")
    )
    if not suspects:  # the normal case: nothing more to read
        return jobs.none()
    per_pipeline = Counter(pipeline_id for _, pipeline_id, *_ in suspects)
    flagged = {pk for pk, pipeline_id, *_ in suspects if per_pipeline[pipeline_id] > 1}
    now = timezone.now()
    by_year: dict[int, list[tuple[Any, int, Any]]] = defaultdict(list)
    for pk, _, year, started, finished in suspects:
        if started is not None and year is not None:
            by_year[year].append((started, pk, finished or now))
    for runs in by_year.values():
        latest_end = None  # among the runs that started earlier (by start, then id)
        for started, pk, end in sorted(runs, key=lambda run: run[:2]):
            if latest_end is not None and latest_end > started:
                flagged.add(pk)
            latest_end = end if latest_end is None else max(latest_end, end)
    return jobs.filter(pk__in=sorted(flagged))


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

"""Reads about queues and workers, for the API, the console and ``sluice_status``."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypedDict

from celery import current_app
from django.db.models import Count, Min
from django.utils import timezone

from pipelines import registry
from pipelines.dispatch import queue_depths
from pipelines.models import Job, JobState, QueueState
from workers.heartbeat import heartbeats


class QueueInfo(TypedDict):
    name: str
    depth: int | None
    queued_jobs: int
    oldest_waiting_seconds: float | None
    running: int
    paused: bool
    consumers: list[str]


class WorkerInfo(TypedDict):
    hostname: str
    queues: list[str]
    concurrency: int | None
    active: int
    last_heartbeat: float | None
    version: str


def worker_list(*, timeout: float = 1.0) -> list[WorkerInfo]:
    """Live workers from Celery's broadcast inspect (answers within ``timeout``)."""
    inspect = current_app.control.inspect(timeout=timeout)
    # Each broadcast waits its whole timeout for replies: ask the three at once.
    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = [pool.submit(fn) for fn in (inspect.stats, inspect.active, inspect.active_queues)]
        stats, active, queues = ((f.result() or {}) for f in futures)
    hostnames = sorted(set(stats) | set(active) | set(queues))
    try:
        beats = heartbeats(hostnames)
    except Exception:  # noqa: BLE001 - Redis down: list the workers without their records
        beats = {}
    workers: list[WorkerInfo] = []
    for hostname in hostnames:
        info = stats.get(hostname, {})
        beat = beats.get(hostname, {})
        pool = info.get("pool", {}) if isinstance(info, dict) else {}
        workers.append(
            {
                "hostname": hostname,
                "queues": sorted(q["name"] for q in queues.get(hostname, [])),
                "concurrency": pool.get("max-concurrency"),
                "active": len(active.get(hostname, [])),
                # The worker's own record (workers.heartbeat), not the time of this request.
                "last_heartbeat": beat.get("heartbeat"),
                "version": beat.get("version", ""),
            }
        )
    return workers


def queue_list(*, workers: list[WorkerInfo] | None = None) -> list[QueueInfo]:
    try:
        depths: dict[str, int | None] = dict(queue_depths())
    except Exception:  # noqa: BLE001 - show the rest even if Redis is unreachable
        depths = {}
    now = timezone.now()
    paused = set(QueueState.objects.filter(paused=True).values_list("name", flat=True))
    waiting = {
        row["queue"]: row
        for row in Job.objects.filter(state=JobState.QUEUED)
        .values("queue")
        .annotate(n=Count("id"), oldest=Min("queued_at"))
    }
    running = dict(
        Job.objects.filter(state=JobState.RUNNING).values("queue").annotate(n=Count("id")).values_list("queue", "n")
    )
    result: list[QueueInfo] = []
    for name in registry.queues():
        row: dict[str, Any] = dict(waiting.get(name) or {})
        oldest = row.get("oldest")
        result.append(
            {
                "name": name,
                "depth": depths.get(name),
                "queued_jobs": int(row.get("n", 0)),
                "oldest_waiting_seconds": round((now - oldest).total_seconds(), 1) if oldest else None,
                "running": int(running.get(name, 0)),
                "paused": name in paused,
                "consumers": sorted(w["hostname"] for w in (workers or []) if name in w["queues"]),
            }
        )
    return result

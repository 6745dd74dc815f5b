"""Prometheus metrics, computed at scrape time from PostgreSQL and Redis.

A custom collector (not counters incremented in-process) because the truth is shared
by every worker and web process: whichever process is scraped reports the same figures.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from django.db.models import Count
from django.http import HttpRequest, HttpResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import CollectorRegistry, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from pipelines.models import Job, JobEvent, JobState, QueueState

logger = logging.getLogger(__name__)

DURATION_BUCKETS = (0.1, 0.5, 1, 5, 15, 60, 300, 1800)


class SluiceCollector(Collector):
    def collect(self) -> Iterator[Any]:
        from pipelines.dispatch import queue_depths

        depth = GaugeMetricFamily("sluice_queue_depth", "Messages waiting in the Redis queue", labels=["queue"])
        try:
            for queue, n in queue_depths().items():
                depth.add_metric([queue], n)
        except Exception:  # a scrape must not fail because Redis is down
            logger.warning("queue depth unavailable for /metrics", exc_info=True)
        yield depth

        paused = GaugeMetricFamily("sluice_queue_paused", "1 when the queue is paused", labels=["queue"])
        for name, is_paused in QueueState.objects.values_list("name", "paused"):
            paused.add_metric([name], 1 if is_paused else 0)
        yield paused

        jobs = GaugeMetricFamily(
            "sluice_jobs", "Jobs by state, result and type", labels=["state", "result", "job_type"]
        )
        for row in Job.objects.values("state", "result", "job_type").annotate(n=Count("id")):
            jobs.add_metric([row["state"], row["result"] or "", row["job_type"]], row["n"])
        yield jobs

        yield from self._durations()

        events = GaugeMetricFamily("sluice_events_total", "Events recorded and pushed (last seq)")
        events.add_metric([], JobEvent.objects.order_by("-seq").values_list("seq", flat=True).first() or 0)
        yield events

    def _durations(self) -> Iterator[Any]:
        from django.db import connection

        hist = HistogramMetricFamily("sluice_job_duration_seconds", "Finished job durations", labels=["job_type"])
        bounds = ", ".join(str(b) for b in DURATION_BUCKETS)
        with connection.cursor() as cursor:
            cursor.execute(
                f"""SELECT job_type,
                           width_bucket(extract(epoch FROM finished_at - started_at), ARRAY[{bounds}]::float[]),
                           count(*), sum(extract(epoch FROM finished_at - started_at))
                    FROM pipelines_job WHERE state = %s AND started_at IS NOT NULL AND finished_at IS NOT NULL
                    GROUP BY 1, 2""",
                [JobState.FINISHED],
            )
            rows = cursor.fetchall()
        per_type: dict[str, tuple[list[int], float]] = {}
        for job_type, bucket, n, total in rows:
            counts, seconds = per_type.setdefault(job_type, ([0] * (len(DURATION_BUCKETS) + 1), 0.0))
            counts[int(bucket)] += int(n)
            per_type[job_type] = (counts, seconds + float(total or 0))
        for job_type, (counts, seconds) in per_type.items():
            cumulative, buckets = 0, []
            for bound, n in zip([*map(str, DURATION_BUCKETS), "+Inf"], counts, strict=True):
                cumulative += n
                buckets.append((bound, cumulative))
            hist.add_metric([job_type], buckets=buckets, sum_value=seconds)
        yield hist


_registry = CollectorRegistry(auto_describe=False)
_registry.register(SluiceCollector())


def metrics_view(request: HttpRequest) -> HttpResponse:
    return HttpResponse(generate_latest(_registry), content_type=CONTENT_TYPE_LATEST)

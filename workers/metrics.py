"""Prometheus metrics, computed at scrape time from PostgreSQL and Redis.

A custom collector (not counters incremented in-process) because the truth is shared
by every worker and web process: whichever process is scraped reports the same figures.

A scrape stays cheap however large the job history grows: jobs are counted only while
unfinished (index on state) or when created within ``SLUICE_METRICS_WINDOW_SECONDS``
(index on created_at); nothing aggregates the whole job table. Access needs the bearer
token ``SLUICE_METRICS_TOKEN`` or a staff session.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connection
from django.db.models import Count
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import CollectorRegistry, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from pipelines.dispatch import queue_depths
from pipelines.models import Job, JobEvent, JobState, QueueState

logger = logging.getLogger(__name__)

DURATION_BUCKETS = (0.1, 0.5, 1, 5, 15, 60, 300, 1800)
ACTIVE_STATES = [JobState.NOT_STARTED, JobState.QUEUED, JobState.RUNNING]


class SluiceCollector(Collector):
    def collect(self) -> Iterator[Any]:
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

        jobs = GaugeMetricFamily("sluice_jobs", "Unfinished jobs by state and type", labels=["state", "job_type"])
        active = Job.objects.filter(state__in=ACTIVE_STATES)
        for row in active.values("state", "job_type").annotate(n=Count("id")):
            jobs.add_metric([row["state"], row["job_type"]], row["n"])
        yield jobs

        since = timezone.now() - timedelta(seconds=settings.SLUICE_METRICS_WINDOW_SECONDS)
        finished = GaugeMetricFamily(
            "sluice_jobs_finished",
            "Finished jobs by result and type, among jobs created within SLUICE_METRICS_WINDOW_SECONDS",
            labels=["result", "job_type"],
        )
        recent = Job.objects.filter(created_at__gte=since, state=JobState.FINISHED)
        for done in recent.values("result", "job_type").annotate(n=Count("id")):
            finished.add_metric([done["result"] or "", done["job_type"]], done["n"])
        yield finished

        yield from self._durations(since)

        events = GaugeMetricFamily("sluice_events_total", "Events recorded and pushed (last seq)")
        events.add_metric([], JobEvent.objects.order_by("-seq").values_list("seq", flat=True).first() or 0)
        yield events

    def _durations(self, since: datetime) -> Iterator[Any]:
        hist = HistogramMetricFamily(
            "sluice_job_duration_seconds",
            "Durations of finished jobs created within SLUICE_METRICS_WINDOW_SECONDS",
            labels=["job_type"],
        )
        with connection.cursor() as cursor:
            cursor.execute(
                """SELECT job_type,
                          width_bucket(extract(epoch FROM finished_at - started_at), %s::float8[]),
                          count(*), sum(extract(epoch FROM finished_at - started_at))
                   FROM pipelines_job
                   WHERE created_at >= %s AND state = %s AND started_at IS NOT NULL AND finished_at IS NOT NULL
                   GROUP BY 1, 2""",
                [[float(b) for b in DURATION_BUCKETS], since, JobState.FINISHED],
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


def _scrape_allowed(request: HttpRequest) -> bool:
    token = settings.SLUICE_METRICS_TOKEN
    scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
    if token and scheme.lower() == "bearer" and hmac.compare_digest(credentials.strip().encode(), token.encode()):
        return True
    user = getattr(request, "user", None)
    return bool(user is not None and user.is_authenticated and user.is_active and user.is_staff)


def metrics_view(request: HttpRequest) -> HttpResponse:
    if not _scrape_allowed(request):
        response = HttpResponse("metrics need a bearer token (SLUICE_METRICS_TOKEN) or a staff login\n",
                                status=401, content_type="text/plain")
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    return HttpResponse(generate_latest(_registry), content_type=CONTENT_TYPE_LATEST)

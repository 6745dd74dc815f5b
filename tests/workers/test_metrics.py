"""Ops scrape /metrics: queue depth, jobs by state, durations, events."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from pipelines import services
from pipelines.models import Job

pytestmark = pytest.mark.django_db


def test_metrics_report_jobs_durations_and_queue_pause(client) -> None:  # type: ignore[no-untyped-def]
    pipeline = services.pipeline_start_noop(width=2)
    now = timezone.now()
    Job.objects.filter(pipeline=pipeline).update(
        state="finished", result="success", started_at=now - timedelta(seconds=2), finished_at=now
    )
    services.queue_pause(queue="ingest", actor="ops")
    body = client.get("/metrics").content.decode()
    assert 'sluice_jobs{job_type="noop",result="success",state="finished"} 4.0' in body
    assert 'sluice_job_duration_seconds_bucket{job_type="noop",le="1"} 0.0' in body
    assert 'sluice_job_duration_seconds_bucket{job_type="noop",le="5"} 4.0' in body
    assert 'sluice_queue_paused{queue="ingest"} 1.0' in body
    assert "sluice_queue_depth" in body and "sluice_events_total" in body

"""Ops scrape /metrics: queue depth, jobs by state, durations, events — with a token, cheaply."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from pipelines import services
from pipelines.models import Job
from tests.support.fixtures import UserFactory

pytestmark = pytest.mark.django_db

TOKEN = "scrape-token-for-tests"


@pytest.fixture
def scraper(settings: Any) -> Client:
    settings.SLUICE_METRICS_TOKEN = TOKEN
    return Client(HTTP_AUTHORIZATION=f"Bearer {TOKEN}")


def test_metrics_report_jobs_durations_and_queue_pause(scraper: Client) -> None:
    pipeline = services.pipeline_start_noop(width=2)
    now = timezone.now()
    Job.objects.filter(pipeline=pipeline).update(
        state="finished", result="success", started_at=now - timedelta(seconds=2), finished_at=now
    )
    running = services.pipeline_start_noop(width=1)
    Job.objects.filter(pipeline=running).update(state="running", started_at=now)
    services.queue_pause(queue="ingest", actor="ops")
    body = scraper.get("/metrics").content.decode()
    assert 'sluice_jobs_finished{job_type="noop",result="success"} 4.0' in body
    assert 'sluice_jobs{job_type="noop",state="running"} 3.0' in body
    assert 'sluice_job_duration_seconds_bucket{job_type="noop",le="1"} 0.0' in body
    assert 'sluice_job_duration_seconds_bucket{job_type="noop",le="5"} 4.0' in body
    assert 'sluice_queue_paused{queue="ingest"} 1.0' in body
    assert "sluice_queue_depth" in body and "sluice_events_total" in body


def test_metrics_need_the_token_or_a_staff_login(settings: Any) -> None:
    settings.SLUICE_METRICS_TOKEN = TOKEN
    anonymous = Client().get("/metrics")
    assert anonymous.status_code == 401 and anonymous["WWW-Authenticate"].startswith("Bearer")
    assert b"sluice_" not in anonymous.content
    assert Client(HTTP_AUTHORIZATION="Bearer wrong-token").get("/metrics").status_code == 401
    assert Client(HTTP_AUTHORIZATION=f"Bearer {TOKEN}").get("/metrics").status_code == 200
    plain, staff = Client(), Client()
    plain.force_login(UserFactory(username="someone"))
    staff.force_login(UserFactory(username="ops", is_staff=True))
    assert plain.get("/metrics").status_code == 401
    assert staff.get("/metrics").status_code == 200
    # No token configured: the bearer header opens nothing (an empty token is no secret).
    settings.SLUICE_METRICS_TOKEN = ""
    assert Client(HTTP_AUTHORIZATION="Bearer ").get("/metrics").status_code == 401


def test_finished_jobs_count_only_within_the_window(scraper: Client, settings: Any) -> None:
    settings.SLUICE_METRICS_WINDOW_SECONDS = 3600
    old, new = services.pipeline_start_noop(width=1), services.pipeline_start_noop(width=2)
    now = timezone.now()
    Job.objects.filter(pipeline__in=[old, new]).update(
        state="finished", result="success", started_at=now - timedelta(seconds=1), finished_at=now
    )
    Job.objects.filter(pipeline=old).update(created_at=now - timedelta(hours=2))
    body = scraper.get("/metrics").content.decode()
    assert 'sluice_jobs_finished{job_type="noop",result="success"} 4.0' in body  # `new` only
    assert 'sluice_job_duration_seconds_count{job_type="noop"} 4.0' in body


def test_a_scrape_reads_the_job_table_only_through_indexes(scraper: Client) -> None:
    """No query of a scrape aggregates the whole job table (it grows without bound)."""
    services.pipeline_start_noop(width=2)
    with CaptureQueriesContext(connection) as queries:
        assert scraper.get("/metrics").status_code == 200
    job_queries = [q["sql"] for q in queries.captured_queries if re.search(r'\bpipelines_job\b', q["sql"])]
    assert len(job_queries) >= 3
    with connection.cursor() as cursor:
        # With sequential scans priced out, a query that can use an index does; one that
        # must read every row still shows a Seq Scan.
        cursor.execute("SET LOCAL enable_seqscan = off")
        for sql in job_queries:
            cursor.execute(f"EXPLAIN {sql}")
            plan = "\n".join(row[0] for row in cursor.fetchall())
            assert "Seq Scan on pipelines_job" not in plan, f"{sql}\n{plan}"

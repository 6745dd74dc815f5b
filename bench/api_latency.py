"""API latency with a big table: 1,000,000 jobs in 200,000 pipelines.

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/sluice REDIS_URL=redis://127.0.0.1:6379/12 \\
        .venv/bin/python bench/api_latency.py [--requests 200] [--keep]

1. Creates a scratch database ``sluice_bench_api`` next to DATABASE_URL's (never the
   real one) and migrates it.
2. Seeds in SQL (``INSERT … SELECT generate_series``, not the ORM): 200,000 pipelines
   over 5 modules x 6 years spread over ~7 days, 5 jobs each (ingest → 3 recalcs →
   aggregation) with edges, counts meta, and a 500-row-error meta on 1 % of ingests
   (what the list must never ship); ``VACUUM (ANALYZE)``.
3. Times the API in-process through Django's test client (full middleware, auth,
   DRF, serialisation; no network): the pipelines list first page, a filtered page, a
   deep page (cursor 100,000 pipelines in), and pipeline details, plus extras; the
   Operations console's first render and its counters fragment.
4. Prints a table, and as its last line one JSON object with the figures in ms.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench._scratch import drop_scratch_database, scratch_database_url  # noqa: E402

# Overridable so two people can bench on one PostgreSQL server at once.
DB_NAME = os.environ.get("SLUICE_BENCH_API_DB", "sluice_bench_api")
PIPELINES = 200_000
JOBS_PER_PIPELINE = 5

SEED_SQL = [
    # Pipelines: newest first is i = 1; 3 s apart → about 7 days of history.
    f"""
    INSERT INTO pipelines_pipeline (id, kind, year, module, status, params, created_at, started_at, finished_at,
        updated_at, jobs_total, jobs_finished, error_count, warning_count, progress_percent, phase, last_error,
        last_pipeline_seq)
    SELECT md5('p' || i)::uuid,
           (ARRAY['upload', 'upload', 'upload', 'recalculate', 'unit_sync'])[1 + i % 5],
           2020 + i % 6,
           (ARRAY['headcount', 'professional_travel', 'buildings', 'equipment', 'purchases'])[1 + (i / 7) % 5],
           CASE WHEN i <= 20 THEN 'running' WHEN i % 50 = 0 THEN 'failed' WHEN i % 23 = 0 THEN 'partial'
                ELSE 'success' END,
           '{{}}'::jsonb,
           now() - i * interval '3 seconds',
           now() - i * interval '3 seconds' + interval '1 second',
           CASE WHEN i <= 20 THEN NULL ELSE now() - i * interval '3 seconds' + interval '30 seconds' END,
           now() - i * interval '3 seconds' + interval '30 seconds',
           {JOBS_PER_PIPELINE},
           CASE WHEN i <= 20 THEN 2 ELSE {JOBS_PER_PIPELINE} END,
           CASE WHEN i % 50 = 0 THEN 1 ELSE 0 END,
           CASE WHEN i % 23 = 0 THEN 1 ELSE 0 END,
           CASE WHEN i <= 20 THEN 40 ELSE 100 END,
           '',
           CASE WHEN i % 50 = 0 THEN 'csv_ingest #' || i || ': header is wrong' ELSE '' END,
           12
    FROM generate_series(1, {PIPELINES}) AS i
    """,
    # Jobs: k = 1 ingest, 2..4 recalcs, 5 aggregation; ids dense so edges are arithmetic.
    f"""
    INSERT INTO pipelines_job (id, pipeline_id, job_type, queue, det, params, state, result, status_message,
        status_key, status_params, phase,
        progress_processed, progress_total, meta, error, attempts, max_attempts, celery_task_id, worker,
        heartbeat_at, cancel_requested, effect_committed, effect_outcome, dispatch_when_ready, created_at,
        queued_at, dispatched_at, started_at, finished_at, updated_at)
    SELECT (i - 1) * {JOBS_PER_PIPELINE} + k,
           md5('p' || i)::uuid,
           CASE k WHEN 1 THEN 'csv_ingest' WHEN 5 THEN 'aggregation' ELSE 'emission_recalc' END,
           CASE k WHEN 1 THEN 'ingest' WHEN 5 THEN 'aggregate' ELSE 'recalc' END,
           CASE WHEN k BETWEEN 2 AND 4 THEN 'det' || k ELSE '' END,
           '{{}}'::jsonb,
           CASE WHEN i <= 20 AND k > 2 THEN 'queued' ELSE 'finished' END,
           CASE WHEN i <= 20 AND k > 2 THEN NULL WHEN i % 50 = 0 AND k = 1 THEN 'error'
                WHEN i % 50 = 0 THEN 'skipped' ELSE 'success' END,
           CASE WHEN k = 1 THEN '48,210 rows loaded, 17 rejected' ELSE 'done' END,
           '', '{{}}'::jsonb,
           '',
           1000, 1000,
           CASE WHEN k = 1 AND i % 100 = 0 THEN
                    jsonb_build_object('rows_total', 1000, 'rows_loaded', 500, 'rows_rejected', 500,
                        'row_errors', (SELECT jsonb_agg(jsonb_build_object('row', r, 'column', 'fte',
                                       'reason', 'not a number')) FROM generate_series(1, 500) AS r))
                WHEN k = 1 THEN jsonb_build_object('rows_total', 1000, 'rows_loaded', 983, 'rows_rejected', 17)
                ELSE jsonb_build_object('rows_processed', 1000) END,
           NULL, 1, 3, '', 'bench@host', NULL, false, k = 1, NULL, false,
           now() - i * interval '3 seconds',
           now() - i * interval '3 seconds',
           now() - i * interval '3 seconds',
           now() - i * interval '3 seconds' + k * interval '1 second',
           now() - i * interval '3 seconds' + k * interval '1 second' + interval '2 seconds',
           now() - i * interval '3 seconds' + k * interval '1 second' + interval '2 seconds'
    FROM generate_series(1, {PIPELINES}) AS i, generate_series(1, {JOBS_PER_PIPELINE}) AS k
    """,
    f"SELECT setval(pg_get_serial_sequence('pipelines_job', 'id'), {PIPELINES * JOBS_PER_PIPELINE})",
    # Edges: recalcs depend on the ingest, the aggregation on the recalcs.
    f"""
    INSERT INTO pipelines_job_depends_on (from_job_id, to_job_id)
    SELECT base + k, base + 1 FROM generate_series(0, {PIPELINES - 1}) AS p, generate_series(2, 4) AS k,
        LATERAL (SELECT p * {JOBS_PER_PIPELINE} AS base) b
    UNION ALL
    SELECT base + 5, base + k FROM generate_series(0, {PIPELINES - 1}) AS p, generate_series(2, 4) AS k,
        LATERAL (SELECT p * {JOBS_PER_PIPELINE} AS base) b
    """,
    # What autovacuum does to a table at rest: statistics, and the visibility map that
    # index-only scans need (the console's cards count from an index alone).
    "VACUUM (ANALYZE)",
]


def scratch_url(*, reuse: bool = False) -> str:
    if reuse:  # a database seeded by an earlier ``--keep`` run
        from urllib.parse import urlsplit, urlunsplit

        base = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/sluice")
        return urlunsplit(urlsplit(base)._replace(path="/" + DB_NAME))
    return scratch_database_url(DB_NAME)


def drop_scratch() -> None:
    drop_scratch_database(DB_NAME)


def seed() -> float:
    from django.db import connection

    t0 = time.perf_counter()
    with connection.cursor() as cur:
        for sql in SEED_SQL:
            cur.execute(sql)
    return time.perf_counter() - t0


def cursor_at(offset: int) -> str:
    """A cursor positioned ``offset`` pipelines into the newest-first order."""
    from rest_framework.pagination import Cursor

    from backoffice.api.base import NewestFirstCursor
    from pipelines.models import Pipeline

    created = Pipeline.objects.order_by("-created_at", "-id").values_list("created_at", flat=True)[offset]
    paginator = NewestFirstCursor()
    paginator.base_url = "/"
    url = paginator.encode_cursor(Cursor(offset=0, reverse=False, position=str(created)))  # type: ignore[arg-type]
    return url.split("cursor=", 1)[1]


def timed(client: Any, urls: list[str]) -> list[float]:
    samples = []
    for url in urls:
        t0 = time.perf_counter()
        response = client.get(url)
        elapsed = (time.perf_counter() - t0) * 1000
        assert response.status_code == 200, (url, response.status_code, response.content[:300])
        samples.append(elapsed)
    return samples


def whole_table_scrape() -> float:
    """ms for the queries /metrics ran per scrape before it was windowed (whole job table)."""
    from django.db import connection

    t0 = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute("SELECT state, result, job_type, count(*) FROM pipelines_job GROUP BY 1, 2, 3")
        cursor.fetchall()
        cursor.execute(
            """SELECT job_type, width_bucket(extract(epoch FROM finished_at - started_at),
                                             ARRAY[0.1, 0.5, 1, 5, 15, 60, 300, 1800]::float[]),
                      count(*), sum(extract(epoch FROM finished_at - started_at))
               FROM pipelines_job WHERE state = 'finished' AND started_at IS NOT NULL AND finished_at IS NOT NULL
               GROUP BY 1, 2"""
        )
        cursor.fetchall()
    return (time.perf_counter() - t0) * 1000


def parts(user: Any, rounds: int = 5) -> dict[str, float]:
    """Median ms of each read behind the console and /alerts/, called in-process (no HTTP)."""
    from django.http import QueryDict

    from backoffice import console
    from backoffice.api import selectors
    from pipelines import alerts, stats
    from pipelines.models import Job

    reads: dict[str, Any] = {f"alert_{kind}": (lambda kind=kind: alerts.alert_jobs(kind, Job.objects.all()).count())
                             for kind in alerts.ALERT_KINDS}
    reads["stat_cards"] = lambda: console.stat_cards(user=user)
    reads["jobs_stats_body"] = lambda: selectors.job_stats(user=user, params=QueryDict(""))
    reads["duration_sample"] = lambda: stats.durations(jobs=Job.objects.all())
    reads["console_page_rows"] = lambda: console.pipeline_page(user=user, filters={})
    out = {}
    for name, read in reads.items():
        samples = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            read()
            samples.append((time.perf_counter() - t0) * 1000)
        out[f"part_{name}_ms"] = pct(samples, 0.5)
        print(f"{'part ' + name:<34}{pct(samples, 0.5):>10.2f}")
    return out


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return round(ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))], 2)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=200, help="timed requests per scenario")
    parser.add_argument("--keep", action="store_true", help="keep the scratch database")
    parser.add_argument("--reuse", action="store_true", help="time a database kept by an earlier --keep run")
    parser.add_argument("--only", default="", help="comma-separated scenarios to time (default: all)")
    parser.add_argument("--parts", action="store_true", help="also time each console/alert read in-process")
    args = parser.parse_args()

    url = scratch_url(reuse=args.reuse)
    os.environ["DATABASE_URL"] = url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    # A benchmark serves nothing: settings need a key when DEBUG is off (config/settings.py).
    os.environ.setdefault("DJANGO_SECRET_KEY", "bench-only-not-a-secret")
    # Django's test client calls itself "testserver"; DEBUG stays off (it would log every query).
    os.environ.setdefault("DJANGO_ALLOWED_HOSTS", "testserver")
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.test import Client

    call_command("migrate", "--no-input", verbosity=0)
    seed_seconds = 0.0 if args.reuse else seed()
    from pipelines.models import Job, Pipeline

    print(f"seeded {Pipeline.objects.count():,} pipelines, {Job.objects.count():,} jobs in {seed_seconds:.1f}s")

    user = get_user_model().objects.filter(username="bench").first() or get_user_model().objects.create_superuser(
        "bench", "bench@example.org", None
    )
    client = Client()
    client.force_login(user)
    rng = random.Random(4)
    n = args.requests
    deep = cursor_at(100_000)
    ids = [str(pk) for pk in Pipeline.objects.order_by("?").values_list("pk", flat=True)[:n]]
    scenarios: dict[str, list[str]] = {
        "list": ["/api/v1/pipelines/"] * n,
        "filtered": [
            f"/api/v1/pipelines/?year={2020 + rng.randrange(6)}&module={rng.choice(['headcount', 'buildings'])}"
            for _ in range(n)
        ],
        "filtered_status": ["/api/v1/pipelines/?status=failed"] * n,
        "filtered_errors": ["/api/v1/pipelines/?has_errors=true&module=buildings"] * n,
        "deep": [f"/api/v1/pipelines/?cursor={deep}"] * n,
        "detail": [f"/api/v1/pipelines/{pid}/" for pid in ids],
        "jobs_list": ["/api/v1/jobs/?job_type=csv_ingest"] * n,
        "job_detail": [f"/api/v1/jobs/{rng.randrange(1, PIPELINES * JOBS_PER_PIPELINE)}/" for _ in range(n)],
        # A Prometheus scrape (staff session): indexed, windowed queries only.
        "metrics": ["/metrics"] * n,
    }
    # The Operations console: its first render (alert strip, stat cards, first page of
    # 20 pipelines with their jobs) and the counters fragment it re-reads on state changes.
    scenarios["console"] = ["/admin/pipelines/pipeline/live/"] * n
    scenarios["console_counters"] = ["/admin/pipelines/pipeline/live/counters/"] * n
    slow = {"stats": ["/api/v1/jobs/stats/"] * 5, "alerts": ["/api/v1/alerts/"] * 5}
    results: dict[str, float] = {}
    print(f"{'scenario':<18}{'p50 ms':>10}{'p95 ms':>10}{'max ms':>10}")
    only = set(filter(None, args.only.split(",")))
    for name, urls in {**scenarios, **slow}.items():
        if only and name not in only:
            continue
        timed(client, urls[:5])  # warm caches and connections
        samples = timed(client, urls)
        results[f"{name}_p50_ms"] = pct(samples, 0.50)
        results[f"{name}_p95_ms"] = pct(samples, 0.95)
        print(f"{name:<18}{pct(samples, 0.5):>10.2f}{pct(samples, 0.95):>10.2f}{max(samples):>10.2f}")
    if args.parts:
        results.update(parts(user))
    # For comparison, what a scrape used to run: the whole-table aggregates.
    old_scrape = [whole_table_scrape() for _ in range(5)]
    results["metrics_whole_table_p50_ms"] = pct(old_scrape, 0.5)
    print(f"{'metrics (old SQL)':<18}{pct(old_scrape, 0.5):>10.2f}{pct(old_scrape, 0.95):>10.2f}"
          f"{max(old_scrape):>10.2f}")
    page = client.get("/api/v1/pipelines/").json()
    size = len(json.dumps(page))
    results.update({"pipelines": PIPELINES, "jobs": PIPELINES * JOBS_PER_PIPELINE, "requests": n,
                    "seed_seconds": round(seed_seconds, 1), "list_page_bytes": size})
    from django.db import connections

    connections.close_all()
    if not args.keep:
        drop_scratch()
    print(json.dumps(results, sort_keys=True))


if __name__ == "__main__":
    main()

"""Export benchmark: a year export's time and the worker's peak memory, 100k vs 1M rows.

Usage (servers from the environment, like the tests; the script creates and drops its
own database ``BENCH_DATABASE_NAME`` on that server, default ``sluice_bench_export``):

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/sluice REDIS_URL=redis://127.0.0.1:6379/13 \\
        .venv/bin/python bench/export.py [--small 100000] [--large 1000000] [--formats csv,xlsx]

1. Two years, each with professional-travel data entries of ``--small`` and ``--large``
   rows loaded through a real ingest (``bench/ingest.py``'s generator), a factor for
   every category and the emissions and totals computed by a recalculation pipeline.
2. For each year and format, ``POST``-equivalent ``export_start`` and a real Celery
   worker (1 process, every queue) runs the ``export`` job. Peak RSS of the worker's pool
   process is sampled every 20 ms while it runs; the job's time is ``finished_at -
   started_at``.
3. The ratio large/small of peak RSS says whether memory is bounded (it should stay
   near 1 while rows grow 10x); the rows/s say what it costs.
The last line is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.ingest import RssSampler, drop_database, generate, scratch_environment, start_worker  # noqa: E402


def bench_database_url() -> tuple[str, str]:
    base = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/sluice")
    name = os.environ.get("BENCH_DATABASE_NAME", "sluice_bench_export")
    return base, urlsplit(base)._replace(path="/" + name).geturl()


def wait_done(pipeline_id: object) -> None:
    from pipelines.models import Pipeline

    while not Pipeline.objects.get(pk=pipeline_id).is_done:
        time.sleep(0.1)


def seed_year(year: int, rows: int, tmp: Path) -> None:
    """A year with ``rows`` data entries, a factor for each category, emissions and totals."""
    from django.db import connection
    from django.utils import timezone

    from ingestion import services
    from ingestion.models import Unit

    _, sync = services.year_create(year=year, actor=None)
    wait_done(sync.pk)
    units = list(Unit.objects.filter(active=True).exclude(kind="faculty").values_list("unit_id", flat=True))
    path = tmp / f"travel_{year}.csv"
    generate(path, rows=rows, units=units)
    with open(path, "rb") as f:
        _, pipeline = services.upload_create(year=year, module="professional_travel", target="data_entries",
                                             file=f, filename=path.name, actor=None)
    wait_done(pipeline.pk)
    path.unlink()
    with connection.cursor() as cur:
        cur.execute(
            """INSERT INTO ingestion_factor (year, module, det, category, kg_co2e_per_unit, source, stale,
                                             upload_id, updated_at)
               SELECT DISTINCT year, module, det, category, 0.1, 'bench', false, 0, %s
               FROM ingestion_dataentry WHERE year = %s""",
            [timezone.now(), year],
        )
    recalc = services.pipeline_start_recalculate(year=year, module="professional_travel", actor=None)
    wait_done(recalc.pk)


def run_export(year: int, fmt: str, worker_pid: int) -> dict[str, float]:
    from ingestion.exports import services as exports
    from ingestion.models import Export
    from pipelines.models import Job

    sampler = RssSampler(worker_pid)
    sampler.start()
    export, pipeline = exports.export_start(year=year, fmt=fmt, actor=None)
    wait_done(pipeline.pk)
    peak = sampler.stop()
    job = Job.objects.get(pipeline=pipeline)
    if job.result != "success":
        raise RuntimeError(f"export ended {job.result}: {job.status_message}")
    export = Export.objects.get(pk=export.pk)
    seconds = (job.finished_at - job.started_at).total_seconds()
    return {"rows": export.rows or 0, "seconds": round(seconds, 2), "rows_per_s": round((export.rows or 0) / seconds),
            "peak_rss_mb": round(peak / 2**20, 1), "file_mb": round((export.size or 0) / 2**20, 1)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--small", type=int, default=100_000)
    parser.add_argument("--large", type=int, default=1_000_000)
    parser.add_argument("--formats", default="csv,xlsx")
    args = parser.parse_args()

    base_url, url = bench_database_url()
    tmp = scratch_environment(base_url, url, "sluice-bench-export-")
    name = urlsplit(url).path.lstrip("/")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    worker = start_worker(env, tmp / "worker.log", name="bench-export")
    try:
        import psutil

        years = {"small": (2098, args.small), "large": (2099, args.large)}
        for year, rows in years.values():
            t0 = time.monotonic()
            seed_year(year, rows, tmp)
            print(f"seeded {year}: {rows:,} entries in {time.monotonic() - t0:.1f}s", flush=True)
        idle = max(c.memory_info().rss for c in psutil.Process(worker.pid).children(recursive=True))
        result: dict[str, object] = {"idle_rss_mb": round(idle / 2**20, 1)}
        for fmt in args.formats.split(","):
            for size, (year, _) in years.items():
                run = run_export(year, fmt, worker.pid)
                print(f"{fmt} {size}: {run['rows']:,} rows in {run['seconds']}s ({run['rows_per_s']:,} rows/s), "
                      f"{run['file_mb']} MB, worker peak RSS {run['peak_rss_mb']} MB", flush=True)
                result[f"{fmt}_{size}"] = run
            small, large = result[f"{fmt}_small"], result[f"{fmt}_large"]
            assert isinstance(small, dict) and isinstance(large, dict)
            result[f"{fmt}_rss_ratio_large_small"] = round(large["peak_rss_mb"] / small["peak_rss_mb"], 2)
        result["load_avg_1m"] = round(os.getloadavg()[0], 2)
        print(json.dumps(result))
    finally:
        os.killpg(worker.pid, 15)
        worker.wait(timeout=30)
        from django.db import connections

        connections.close_all()
        shutil.rmtree(tmp, ignore_errors=True)
        drop_database(base_url, name)


if __name__ == "__main__":
    main()

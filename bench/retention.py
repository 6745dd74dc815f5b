"""Retention purge on a long history: how long each batch holds its locks, and whether a
transition on another pipeline ever waits for the purge.

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/sluice \\
        .venv/bin/python bench/retention.py [--pipelines 20000] [--batch-size 200]

1. Creates a scratch database ``sluice_bench_retention`` next to DATABASE_URL's (never
   the real one) and migrates it; stored files go to a temporary directory.
2. Seeds in SQL: ``--pipelines`` finished pipelines 100+ days old (5 jobs each with
   edges, 12 events each, 50 row errors on every tenth ingest, one upload with its
   file each) and 1,000 recent ones that must stay; ``VACUUM (ANALYZE)``.
3. Times the dry run, then the purge with ``--batch-size``, recording each batch's
   duration (one transaction each: the longest is the longest any lock is held). Meanwhile
   a second connection keeps doing what a transition does to a recent pipeline (lock its
   row, update, commit) and records how long each took, as it did for 3 s before the
   purge (the baseline on the same machine).
4. Prints a table and, as its last line, one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench._scratch import drop_scratch_database, scratch_database_url, setup_django  # noqa: E402

DB_NAME = os.environ.get("SLUICE_BENCH_RETENTION_DB", "sluice_bench_retention")
RECENT = 1000


def seed(old: int) -> None:
    from django.db import connection

    total = old + RECENT
    sql = [
        "INSERT INTO ingestion_year (year, is_open, config, created_at, updated_at)"
        " VALUES (2020, false, '{}', now(), now())",
        # i <= RECENT: a day old; the rest 100+ days.
        f"""
        INSERT INTO pipelines_pipeline (id, kind, year, module, status, params, created_at, started_at, finished_at,
            updated_at, jobs_total, jobs_finished, error_count, warning_count, progress_percent, phase, last_error,
            last_pipeline_seq)
        SELECT md5('p' || i)::uuid, 'upload', 2020, 'headcount', 'success', jsonb_build_object('upload_id', i),
               now() - (CASE WHEN i <= {RECENT} THEN 1 ELSE 100 END) * interval '1 day' - i * interval '1 second',
               now() - (CASE WHEN i <= {RECENT} THEN 1 ELSE 100 END) * interval '1 day' - i * interval '1 second',
               now() - (CASE WHEN i <= {RECENT} THEN 1 ELSE 100 END) * interval '1 day' - i * interval '1 second',
               now(), 5, 5, 0, 0, 100, '', '', 12
        FROM generate_series(1, {total}) AS i
        """,
        f"""
        INSERT INTO pipelines_job (id, pipeline_id, job_type, queue, det, params, state, result, status_message, phase,
            progress_processed, progress_total, meta, error, attempts, max_attempts, celery_task_id, worker,
            heartbeat_at, cancel_requested, effect_committed, effect_outcome, dispatch_when_ready, created_at,
            queued_at, dispatched_at, started_at, finished_at, updated_at)
        SELECT (i - 1) * 5 + k, md5('p' || i)::uuid,
               CASE k WHEN 1 THEN 'csv_ingest' WHEN 5 THEN 'aggregation' ELSE 'emission_recalc' END,
               'default', '', '{{}}'::jsonb, 'finished', 'success', 'done', '', 1, 1,
               jsonb_build_object('rows_total', 1000, 'rows_loaded', 950, 'rows_rejected', 50),
               NULL, 1, 3, '', 'bench', NULL, false, false, NULL, false, now(), now(), now(), now(), now(), now()
        FROM generate_series(1, {total}) AS i, generate_series(1, 5) AS k
        """,
        f"SELECT setval(pg_get_serial_sequence('pipelines_job', 'id'), {total * 5})",
        f"""
        INSERT INTO pipelines_job_depends_on (from_job_id, to_job_id)
        SELECT p * 5 + k, p * 5 + 1 FROM generate_series(0, {total - 1}) AS p, generate_series(2, 4) AS k
        UNION ALL
        SELECT p * 5 + 5, p * 5 + k FROM generate_series(0, {total - 1}) AS p, generate_series(2, 4) AS k
        """,
        f"""
        INSERT INTO pipelines_jobevent (seq, pipeline_id, job_id, pipeline_seq, type, kind, year, module, payload,
            created_at)
        SELECT (i - 1) * 12 + e, md5('p' || i)::uuid, (i - 1) * 5 + 1 + (e % 5), e, 'job.update', 'state', 2020,
               'headcount', '{{"state": "finished"}}'::jsonb, now()
        FROM generate_series(1, {total}) AS i, generate_series(1, 12) AS e
        """,
        f"UPDATE pipelines_eventcounter SET value = {total * 12}",
        f"""
        INSERT INTO ingestion_rowerror (job_id, "row", "column", reason)
        SELECT (i - 1) * 5 + 1, r, 'fte', 'not a number'
        FROM generate_series(1, {total}) AS i, generate_series(1, 50) AS r WHERE i % 10 = 0
        """,
        f"""
        INSERT INTO ingestion_upload (id, year_id, module, target, original_name, stored_name, sha256, size,
            line_count, row_count, delimiter, pipeline_id, created_at)
        SELECT i, 2020, 'headcount', 'data_entries', 'staff.csv', 'uploads/bench/' || i || '.csv', md5('u' || i),
               64, 1, 1, ',', md5('p' || i)::uuid,
               (SELECT created_at FROM pipelines_pipeline WHERE id = md5('p' || i)::uuid)
        FROM generate_series(1, {total}) AS i
        """,
        f"SELECT setval(pg_get_serial_sequence('ingestion_upload', 'id'), {total})",
        "VACUUM (ANALYZE)",
    ]
    with connection.cursor() as cur:
        for statement in sql:
            cur.execute(statement)


def write_files(media: Path, total: int) -> None:
    folder = media / "uploads" / "bench"
    folder.mkdir(parents=True)
    for i in range(1, total + 1):
        (folder / f"{i}.csv").write_bytes(b"x" * 64)


class Probe(threading.Thread):
    """What a transition does to a recent pipeline, over and over: lock, update, commit."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.stop = threading.Event()
        self.durations: list[float] = []

    def run(self) -> None:
        from django.db import connection, transaction

        from pipelines.models import Pipeline

        target = Pipeline.objects.order_by("-created_at").values_list("pk", flat=True).first()
        while not self.stop.is_set():
            started = time.perf_counter()
            with transaction.atomic():
                Pipeline.objects.select_for_update().filter(pk=target).update(phase="probe")
            self.durations.append(time.perf_counter() - started)
            time.sleep(0.005)
        connection.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pipelines", type=int, default=20_000, help="old (purgeable) pipelines")
    parser.add_argument("--batch-size", type=int, default=200)
    parser.add_argument("--keep", action="store_true", help="keep the scratch database")
    args = parser.parse_args()

    media = Path(tempfile.mkdtemp(prefix="sluice-bench-retention-"))
    os.environ["SLUICE_MEDIA_ROOT"] = str(media)
    setup_django(scratch_database_url(DB_NAME))
    from pipelines import retention

    t0 = time.perf_counter()
    seed(args.pipelines)
    write_files(media, args.pipelines + RECENT)
    seeded = time.perf_counter() - t0

    t0 = time.perf_counter()
    dry = retention.plan(cutoff=retention.cutoff_for(90))
    dry_s = time.perf_counter() - t0

    # The same transitions with no purge running: the baseline on this machine.
    baseline = Probe()
    baseline.start()
    time.sleep(3)
    baseline.stop.set()
    baseline.join()
    base_ms = sorted(d * 1000 for d in baseline.durations)

    marks, phases = [time.perf_counter()], ["start"]
    probe = Probe()
    probe.start()
    t0 = time.perf_counter()
    state = retention.purge(cutoff=retention.cutoff_for(90), batch_size=args.batch_size,
                            on_progress=lambda s: (marks.append(time.perf_counter()), phases.append(s.phase)),
                            total=dry.units)
    purge_s = time.perf_counter() - t0
    probe.stop.set()
    probe.join()

    steps = list(zip(itertools.pairwise(marks), phases[1:], strict=True))[:-1]  # the last is the "done" report
    batches = [b - a for (a, b), _ in steps]
    by_phase = {ph: [b - a for (a, b), p in steps if p == ph] for ph in ("pipelines", "sweep")}
    probe_ms = sorted(d * 1000 for d in probe.durations)
    figures = {
        "old_pipelines": args.pipelines, "recent_pipelines": RECENT, "batch_size": args.batch_size,
        "dry_run_s": round(dry_s, 2), "purge_s": round(purge_s, 2),
        "deleted": dict(state.deleted), "files_removed": state.files_removed,
        "batches": len(batches),
        "batch_ms_p50": round(statistics.median(batches) * 1000, 1),
        "batch_ms_max": round(max(batches) * 1000, 1),
        **{f"{ph}_batch_ms_p50": round(statistics.median(v) * 1000, 1) for ph, v in by_phase.items() if v},
        "pipelines_per_s": round(state.deleted["pipelines"] / purge_s),
        "probe_transitions": len(probe_ms),
        "probe_ms_p50": round(statistics.median(probe_ms), 2),
        "probe_ms_max": round(probe_ms[-1], 2),
        "baseline_ms_p50": round(statistics.median(base_ms), 2),
        "baseline_ms_max": round(base_ms[-1], 2),
    }
    print(f"seeded {args.pipelines:,} old + {RECENT:,} recent pipelines in {seeded:.1f}s")
    print(f"dry run {dry_s:.2f}s: {dry.counts}")
    print(f"purge {purge_s:.2f}s in {len(batches)} batches: p50 {figures['batch_ms_p50']} ms, "
          f"max {figures['batch_ms_max']} ms per batch (one transaction each)")
    print(f"a transition on a recent pipeline meanwhile ({len(probe_ms)} of them): "
          f"p50 {figures['probe_ms_p50']} ms, max {figures['probe_ms_max']} ms "
          f"(without a purge: p50 {figures['baseline_ms_p50']} ms, max {figures['baseline_ms_max']} ms)")
    print(json.dumps(figures))
    if not args.keep:
        from django.db import connections

        connections.close_all()
        drop_scratch_database(DB_NAME)


if __name__ == "__main__":
    main()

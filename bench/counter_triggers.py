"""What the console's counters cost the engine: job transitions with and without them.

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/sluice .venv/bin/python bench/counter_triggers.py

Migration `console_counters` adds, on every job transition, the tally triggers (a pipeline lookup
and two delta-row inserts) and two partial indexes (a successful finish, an aggregation
row). This times what the engine's claim and finish statements cost with them and
without them (triggers disabled and the two indexes dropped, inside a transaction that
is rolled back), alternating the two sides over several rounds on the same rows of a
scratch database (``sluice_bench_counters``, 40,000 jobs), in a server-side loop (the
figure is PostgreSQL's work, not round trips on a busy VM). ``bench/pipeline_overhead.py`` gives the whole engine's
figure these microseconds are to be compared with. Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench._scratch import drop_scratch_database, scratch_database_url, setup_django  # noqa: E402

DB_NAME = os.environ.get("SLUICE_BENCH_COUNTERS_DB", "sluice_bench_counters")
PIPELINES = 8_000

SEED = f"""
INSERT INTO pipelines_pipeline (id, kind, year, module, status, params, created_at, updated_at, jobs_total,
    jobs_finished, error_count, warning_count, progress_percent, phase, last_error, last_pipeline_seq)
SELECT md5('p' || i)::uuid, 'upload', 2020 + i % 6,
       (ARRAY['headcount', 'professional_travel', 'buildings', 'equipment', 'purchases'])[1 + i % 5],
       'running', '{{}}'::jsonb, now() - i * interval '3 seconds', now(), 5, 0, 0, 0, 0, '', '', 0
FROM generate_series(1, {PIPELINES}) AS i;
INSERT INTO pipelines_job (pipeline_id, job_type, queue, det, params, state, status_message, status_key,
    status_params, phase,
    progress_processed, meta, attempts, max_attempts, celery_task_id, worker, cancel_requested, effect_committed,
    dispatch_when_ready, created_at, queued_at, updated_at)
SELECT md5('p' || i)::uuid,
       CASE k WHEN 1 THEN 'csv_ingest' WHEN 5 THEN 'aggregation' ELSE 'emission_recalc' END,
       CASE k WHEN 1 THEN 'ingest' WHEN 5 THEN 'aggregate' ELSE 'recalc' END,
       '', '{{}}'::jsonb, 'queued', '', '', '{{}}'::jsonb, '', 0, '{{}}'::jsonb, 0, 3, '', '', false, false, false,
       now() - i * interval '3 seconds', now(), now()
FROM generate_series(1, {PIPELINES}) AS i, generate_series(1, 5) AS k;
VACUUM (ANALYZE);
"""
# What the console's migrations added to a transition, removed for the "without" side:
# console_counters (tally triggers, a partial index) and the alerts' (the aggregation
# suspects trigger and its GiST index, the two error indexes). ``--without alerts``
# removes the latter only.
WITHOUT_ALERTS = [
    "ALTER TABLE pipelines_job DISABLE TRIGGER job_aggregation_suspects_update",
    "DROP INDEX job_aggregation_span",
    "DROP INDEX job_aggregation_pipeline",
    "DROP INDEX job_poisoned",
    "DROP INDEX job_deadlock",
]
WITHOUT = [
    "ALTER TABLE pipelines_job DISABLE TRIGGER job_tally_update",
    "ALTER TABLE pipelines_job DISABLE TRIGGER job_pipeline_year",
    "DROP INDEX job_ok_newest",
    *WITHOUT_ALERTS,
]
# The engine's claim and finish statements, run server-side in one loop so the figure is
# PostgreSQL's work (what the triggers and indexes add), not round trips on a busy VM.
# Start and end times from the clock, not the transaction's start: one after the other,
# as the engine's (with now() every run of the loop would share one instant).
LOOP = """
DO $$
DECLARE job_id bigint;
BEGIN
    FOREACH job_id IN ARRAY %s::bigint[] LOOP
        UPDATE pipelines_job SET state = 'running', started_at = clock_timestamp(), heartbeat_at = now(),
            attempts = attempts + 1, worker = 'bench@host', updated_at = now() WHERE id = job_id AND state = 'queued';
        UPDATE pipelines_job SET state = 'finished', result = 'success', finished_at = clock_timestamp(),
            status_message = 'done', updated_at = now() WHERE id = job_id AND state = 'running';
    END LOOP;
END $$"""


def one_side(conn: object, ids: list[int], *, with_counters: bool, without: list[str] = WITHOUT) -> float:
    """Microseconds per transition (claim + finish of each job), rolled back afterwards."""
    cur = conn.cursor()  # type: ignore[attr-defined]
    cur.execute("BEGIN")
    if not with_counters:
        for sql in without:
            cur.execute(sql)
    literal = "'{" + ",".join(str(i) for i in ids) + "}'"
    t0 = time.perf_counter()
    cur.execute(LOOP % literal)
    elapsed = time.perf_counter() - t0
    cur.execute("ROLLBACK")
    return elapsed / (2 * len(ids)) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=3000, help="jobs claimed and finished per round and side")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--without", choices=["all", "alerts"], default="all",
                        help="what the 'without' side removes: every console addition, or the alerts' only")
    args = parser.parse_args()
    without = WITHOUT if args.without == "all" else WITHOUT_ALERTS
    url = scratch_database_url(DB_NAME)
    setup_django(url)
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        for statement in SEED.split(";\n"):
            if statement.strip():
                conn.execute(statement)
        rows = conn.execute("SELECT id FROM pipelines_job ORDER BY random() LIMIT %s", [args.jobs]).fetchall()
        ids = [r[0] for r in rows]
        one_side(conn, ids[:300], with_counters=True)  # warm caches
        one_side(conn, ids[:300], with_counters=False, without=without)
        with_us, without_us = [], []
        for _ in range(args.rounds):
            without_us.append(one_side(conn, ids, with_counters=False, without=without))
            with_us.append(one_side(conn, ids, with_counters=True))
    if not args.keep:
        drop_scratch_database(DB_NAME)
    result = {
        "jobs": args.jobs, "rounds": args.rounds, "without": args.without,
        "without_us": [round(x, 1) for x in without_us], "with_us": [round(x, 1) for x in with_us],
        "without_median_us": round(statistics.median(without_us), 1),
        "with_median_us": round(statistics.median(with_us), 1),
    }
    result["added_us_per_transition"] = round(result["with_median_us"] - result["without_median_us"], 1)
    print(f"per transition (median of {args.rounds}): without {result['without_median_us']} us, "
          f"with {result['with_median_us']} us")
    print(json.dumps(result))


if __name__ == "__main__":
    main()

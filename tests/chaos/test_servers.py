"""Chaos: Redis and PostgreSQL fail under running pipelines."""

from __future__ import annotations

import time
from typing import Any

import pytest
import redis as redis_lib
from django.db import connection

from pipelines.models import Job
from tests.chaos import harness
from tests.chaos.conftest import recovered_after, upload, wait_pipeline
from tests.chaos.harness import CaseResult, check_totals, compare_rows, db_retry
from tests.chaos.test_workers import _assert_clean, _ingest, _measure, _rows, _wait_phase
from tests.conftest import wait_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.worker, pytest.mark.slow]


@pytest.mark.chaos(case="redis_down")
def test_redis_killed_for_5_s_mid_pipeline(stack: Any, chaos_year: Any, chaos_case: CaseResult) -> None:
    workers = [stack.worker("redis-a", concurrency=2), stack.worker("redis-b", concurrency=2)]
    stack.beat()
    chaos_year(_rows())
    data = harness.data_file(_rows(), seed=11)
    pipeline = upload(data)
    _wait_phase(_ingest(pipeline), "validating")
    # when Redis dies (kill -9) and comes back empty 5 s later: every message in it is gone
    fault_at = time.time()
    stack.redis.kill9()
    time.sleep(5)
    stack.redis.start()
    done = wait_pipeline(pipeline.pk, timeout=240)
    _measure(chaos_case, done, data, fault_at)
    dead = [w.name for w in workers if w.proc.poll() is not None]
    chaos_case.notes.append("Redis restarted empty; " + (f"workers died: {dead}" if dead else "workers rode it out"))
    assert not dead
    _assert_clean(chaos_case, done)


@pytest.mark.chaos(case="redis_results_flushed")
def test_redis_result_keys_flushed_mid_chord(stack: Any, chaos_year: Any, chaos_case: CaseResult) -> None:
    stack.worker("flush-a", concurrency=2)
    stack.beat()
    chaos_year(_rows())
    data = harness.data_file(_rows(), seed=12)
    pipeline = upload(data)
    wait_until(lambda: Job.objects.filter(pipeline=pipeline, job_type="emission_recalc", state="running").exists(),
               timeout=180, interval=0.01, message="a recalc to run")
    # when every result key (task results, chord counters) disappears mid-chord
    fault_at = time.time()
    client = redis_lib.Redis.from_url(stack.redis.url)
    keys = list(client.scan_iter(match="celery-task*", count=1000))
    if keys:
        client.delete(*keys)
    done = wait_pipeline(pipeline.pk, timeout=240)
    _measure(chaos_case, done, data, fault_at)
    chaos_case.notes.append(f"{len(keys)} result/chord keys deleted")
    _assert_clean(chaos_case, done)


@pytest.mark.chaos(case="pg_restart")
def test_postgresql_restarted_mid_job(stack: Any, chaos_year: Any, chaos_case: CaseResult, chaos_pg: Any) -> None:
    if chaos_pg is None:
        pytest.skip("needs the private PostgreSQL that `make chaos` starts (the shared server is never restarted)")
    worker = stack.worker("pg-a", concurrency=2)
    stack.beat()
    chaos_year(_rows())
    data = harness.data_file(_rows(), seed=13)
    pipeline = upload(data)
    _wait_phase(_ingest(pipeline), "applying")
    # when PostgreSQL restarts (every session ended) in the middle of the apply
    fault_at = time.time()
    chaos_pg.restart()
    connection.close()
    done = wait_pipeline(pipeline.pk, timeout=240)
    db_retry(lambda: _measure(chaos_case, done, data, fault_at))
    ingest = db_retry(lambda: _ingest(pipeline))
    failed = worker.log_text().count("raised unexpected")
    chaos_case.notes.append(f"pg_ctl restart -m fast; ingest attempts {ingest.attempts}; "
                            f"{failed} delivery failed on a closed connection")
    _assert_clean(chaos_case, done)
    # (the delivery running at the restart may fail; none after it on a dead connection)
    assert failed <= 1, worker.log_text()[-3000:]


@pytest.mark.chaos(case="pg_terminate")
def test_postgresql_backends_terminated_mid_job(stack: Any, chaos_year: Any, chaos_case: CaseResult) -> None:
    stack.worker("term-a", concurrency=2)
    stack.beat()
    chaos_year(_rows())
    data = harness.data_file(_rows(), seed=14)
    pipeline = upload(data)
    _wait_phase(_ingest(pipeline), "applying")
    # when every other session on this (the test's own) database is terminated mid-apply
    fault_at = time.time()
    with connection.cursor() as cur:
        cur.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()")
        ended = cur.fetchone()[0]
    done = wait_pipeline(pipeline.pk, timeout=240)
    _measure(chaos_case, done, data, fault_at)
    chaos_case.notes.append(f"{ended} backends terminated; ingest attempts {_ingest(pipeline).attempts}")
    _assert_clean(chaos_case, done)


INJECT = """
CREATE SEQUENCE chaos_inject_seq;
CREATE FUNCTION chaos_inject() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE n bigint := nextval('chaos_inject_seq');  -- a sequence survives the rollback it causes
BEGIN
  IF n = 1 THEN RAISE EXCEPTION 'chaos: injected deadlock' USING ERRCODE = '40P01'; END IF;
  IF n = 2 THEN RAISE EXCEPTION 'chaos: injected serialization failure' USING ERRCODE = '40001'; END IF;
  RETURN NULL;
END $$;
CREATE TRIGGER chaos_inject BEFORE INSERT ON ingestion_dataentry FOR EACH STATEMENT EXECUTE FUNCTION chaos_inject();
"""
UNINJECT = """
DROP TRIGGER IF EXISTS chaos_inject ON ingestion_dataentry;
DROP FUNCTION IF EXISTS chaos_inject();
DROP SEQUENCE IF EXISTS chaos_inject_seq;
"""


@pytest.mark.chaos(case="db_retryable")
@pytest.mark.chaos_ci
def test_injected_deadlock_and_serialization_failure_inside_a_load(
    stack: Any, chaos_year: Any, chaos_case: CaseResult
) -> None:
    stack.worker("inject", concurrency=1)
    chaos_year(_rows())
    data = harness.data_file(_rows(), seed=15)
    with connection.cursor() as cur:
        cur.execute(INJECT)
    try:
        # when the apply's INSERT fails with 40P01, then (next attempt) with 40001
        fault_at = time.time()
        pipeline = upload(data)
        done = wait_pipeline(pipeline.pk, timeout=180)
    finally:
        with connection.cursor() as cur:
            cur.execute(UNINJECT)
    compare_rows(chaos_case, data)
    check_totals(chaos_case, data)
    chaos_case.recovery_s = recovered_after(done, fault_at)
    ingest = _ingest(pipeline)
    chaos_case.notes.append(f"ingest attempts {ingest.attempts} (deadlock, serialization failure, success); "
                            "time to recover = upload to finish, backoff 2 s + 4 s included")
    assert ingest.attempts == 3, (ingest.attempts, ingest.status_message, ingest.error)
    _assert_clean(chaos_case, done)

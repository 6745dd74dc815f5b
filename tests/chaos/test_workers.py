"""Chaos: worker processes killed, paused, restarted, and messages delivered twice."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import pytest

from ingestion.models import DataEntry
from pipelines import services
from pipelines.models import Job
from tests.chaos import harness
from tests.chaos.conftest import recovered_after, upload, wait_pipeline
from tests.chaos.harness import MODULE, YEAR, CaseResult, check_totals, compare_rows
from tests.conftest import wait_until
from workers.tasks import run_job

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.worker, pytest.mark.slow]


def _rows() -> int:
    return 100_000 if harness.full_scale() else 12_000


def _ingest(pipeline: Any) -> Job:
    return Job.objects.get(pipeline=pipeline, job_type="csv_ingest")


def _wait_phase(job: Job, phase: str, timeout: float = 120) -> Job:
    return wait_until(
        lambda: (j := Job.objects.get(pk=job.pk)).phase == phase and j.state == "running" and j,
        timeout=timeout, interval=0.02, message=f"job {job.pk} to reach {phase}",
    )


def _measure(case: CaseResult, pipeline: Any, data: bytes, fault_at: float) -> None:
    case.recovery_s = recovered_after(pipeline, fault_at)
    compare_rows(case, data)
    check_totals(case, data)


def _assert_clean(case: CaseResult, pipeline: Any) -> None:
    assert pipeline.status == "success", (pipeline.status, pipeline.last_error)
    assert (case.rows_lost, case.rows_duplicated, case.totals_correct) == (0, 0, True), case.notes


@pytest.mark.chaos(case="pool_kill")
@pytest.mark.chaos_ci
def test_kill_9_of_the_pool_process_mid_apply(stack: Any, chaos_year: Any, chaos_case: CaseResult) -> None:
    worker = stack.worker("pool", concurrency=1)
    chaos_year(_rows())
    data = harness.data_file(_rows(), seed=1)
    pipeline = upload(data)
    # when the ingest is applying its rows, its pool process dies (OOM killer, segfault)
    job = _wait_phase(_ingest(pipeline), "applying")
    fault_at = time.time()
    for pid in stack.pool_pids(worker):
        os.kill(pid, signal.SIGKILL)
    committed = Job.objects.get(pk=job.pk).effect_committed
    # then the worker's main process re-queues it and a new pool process runs it again
    done = wait_pipeline(pipeline.pk, timeout=180)
    _measure(chaos_case, done, data, fault_at)
    job.refresh_from_db()
    chaos_case.notes.append(f"killed {'after' if committed else 'before'} the apply committed; "
                            f"ingest attempts {job.attempts}")
    assert worker.proc.poll() is None, "the worker's main process survives its child"
    _assert_clean(chaos_case, done)


@pytest.mark.chaos(case="main_kill")
def test_kill_9_of_the_worker_main_process_mid_apply(stack: Any, chaos_year: Any, chaos_case: CaseResult) -> None:
    first = stack.worker("main-a", concurrency=1)
    stack.beat()
    chaos_year(_rows())
    data = harness.data_file(_rows(), seed=2)
    pipeline = upload(data)
    job = _wait_phase(_ingest(pipeline), "applying")
    # when the main process alone is killed (its pool process is orphaned) and the
    # supervisor starts a new worker
    fault_at = time.time()
    os.kill(first.proc.pid, signal.SIGKILL)
    stack.worker("main-b", concurrency=1)
    done = wait_pipeline(pipeline.pk, timeout=240)
    _measure(chaos_case, done, data, fault_at)
    job.refresh_from_db()
    chaos_case.notes.append(f"ingest attempts {job.attempts}: {job.status_message[:80]}")
    _assert_clean(chaos_case, done)


@pytest.mark.chaos(case="chord_kill")
@pytest.mark.chaos_ci
def test_kill_9_of_every_worker_during_the_recalc_chord(
    stack: Any, chaos_year: Any, chaos_case: CaseResult
) -> None:
    workers = [stack.worker("chord-a", concurrency=2), stack.worker("chord-b", concurrency=2)]
    stack.beat()
    chaos_year(_rows())
    data = harness.data_file(_rows(), seed=3)
    pipeline = upload(data)
    wait_until(lambda: Job.objects.filter(pipeline=pipeline, job_type="emission_recalc", state="running").exists(),
               timeout=180, interval=0.01, message="a recalc to run")
    # when every worker dies at once (parent and pool) in the middle of the chord
    fault_at = time.time()
    for w in workers:
        w.kill9()
    # and two fresh workers come up
    stack.worker("chord-c", concurrency=2)
    stack.worker("chord-d", concurrency=2)
    done = wait_pipeline(pipeline.pk, timeout=240)
    _measure(chaos_case, done, data, fault_at)
    recalcs = Job.objects.filter(pipeline=pipeline, job_type="emission_recalc")
    chaos_case.notes.append("recalc attempts " + ",".join(str(j.attempts) for j in recalcs.order_by("id")))
    _assert_clean(chaos_case, done)


@pytest.mark.chaos(case="duplicate_delivery")
@pytest.mark.chaos_ci
def test_duplicate_delivery_of_a_running_and_a_finished_job(
    stack: Any, chaos_year: Any, chaos_case: CaseResult
) -> None:
    worker = stack.worker("dup", concurrency=2)
    chaos_year(_rows())
    data = harness.data_file(_rows(), seed=4)
    pipeline = upload(data)
    job = _wait_phase(_ingest(pipeline), "validating")
    # when the running ingest's message is delivered again (twice), as a broker does on a
    # visibility timeout or a reconnect
    fault_at = time.time()
    for _ in range(2):
        run_job.apply_async(args=[job.pk], task_id=job.celery_task_id, queue=job.queue)
    done = wait_pipeline(pipeline.pk, timeout=180)
    # and, once finished, every job's message is delivered again
    for j in Job.objects.filter(pipeline=pipeline):
        run_job.apply_async(args=[j.pk], task_id=j.celery_task_id, queue=j.queue)
    jobs = Job.objects.filter(pipeline=pipeline).count()
    wait_until(lambda: worker.log_text().count("not run: already finished") >= jobs, timeout=60,
               message="the duplicates of the finished jobs to be dropped")
    _measure(chaos_case, done, data, fault_at)
    attempts = sorted(Job.objects.filter(pipeline=pipeline).values_list("attempts", flat=True))
    chaos_case.notes.append(f"attempts of the {jobs} jobs: {attempts}; every duplicate refused by the claim")
    assert attempts == [1] * jobs, "a duplicate must neither restart nor re-run a job"
    _assert_clean(chaos_case, done)


@pytest.mark.chaos(case="cancel_down_retry")
def test_cancel_while_every_worker_is_down_then_retry(stack: Any, chaos_year: Any, chaos_case: CaseResult) -> None:
    worker = stack.worker("cancel-a", concurrency=1)
    stack.beat()
    chaos_year(_rows())
    old = harness.data_file(_rows(), seed=5)
    assert wait_pipeline(upload(old).pk, timeout=180).status == "success"
    data = harness.data_file(_rows(), seed=6)
    pipeline = upload(data)
    _wait_phase(_ingest(pipeline), "validating")
    # when every worker dies mid-ingest and the operator cancels while none is up
    worker.kill9()
    services.pipeline_cancel(pipeline_id=pipeline.pk, reason="chaos: cancel with no worker")
    stack.worker("cancel-b", concurrency=1)
    cancelled = wait_pipeline(pipeline.pk, timeout=120)
    # then the pipeline ends cancelled and the previous data is untouched ...
    assert cancelled.status == "cancelled", cancelled.status
    lost_old = CaseResult(case="-")
    compare_rows(lost_old, old)
    assert (lost_old.rows_lost, lost_old.rows_duplicated) == (0, 0), "a cancelled load left half-written data"
    # ... and a retry loads the new file
    fault_at = time.time()
    services.pipeline_retry(pipeline_id=pipeline.pk, reason="chaos: retry")
    done = wait_pipeline(pipeline.pk, timeout=180)
    _measure(chaos_case, done, data, fault_at)
    chaos_case.notes.append("cancelled with no worker up; previous data intact; time to recover = retry to finish")
    _assert_clean(chaos_case, done)


@pytest.mark.chaos(case="pause_restart_resume")
def test_pause_restart_all_workers_resume(stack: Any, chaos_year: Any, chaos_case: CaseResult) -> None:
    first = [stack.worker("pause-a", concurrency=1), stack.worker("pause-b", concurrency=1)]
    stack.beat()
    chaos_year(_rows())
    # when the ingest queue is paused and an upload arrives ...
    services.queue_pause(queue="ingest", reason="chaos")
    data = harness.data_file(_rows(), seed=7)
    pipeline = upload(data)
    ingest = _ingest(pipeline)
    wait_until(lambda: "paused" in Job.objects.get(pk=ingest.pk).status_message, timeout=60,
               message="the ingest to wait on the paused queue")
    # ... every worker is restarted (warm shutdown, new processes) ...
    for w in first:
        w.stop()
    stack.worker("pause-c", concurrency=1)
    stack.worker("pause-d", concurrency=1)
    time.sleep(3)  # a paused queue must keep the job waiting across the restart, not just for an instant
    ingest.refresh_from_db()
    assert ingest.state == "queued" and not DataEntry.objects.filter(year=YEAR, module=MODULE).exists()
    # ... and the queue is resumed
    fault_at = time.time()
    services.queue_resume(queue="ingest", reason="chaos")
    done = wait_pipeline(pipeline.pk, timeout=180)
    _measure(chaos_case, done, data, fault_at)
    chaos_case.notes.append("nothing ran while paused (across the restart); time to recover = resume to finish")
    _assert_clean(chaos_case, done)

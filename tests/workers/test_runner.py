"""The job runner (``workers.runner``, ``workers.tasks``) end to end on real Celery workers (subprocesses), Redis
and PostgreSQL."""

from __future__ import annotations

import os
import signal
from typing import Any

import pytest
from django.db import transaction

from pipelines import dispatch, services
from pipelines.dispatch import queue_depths
from pipelines.models import Job, JobEvent, Pipeline
from pipelines.services import JobSpec
from tests.support.fixtures import wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.worker]


def _overlap(a: Job, b: Job) -> bool:
    return a.started_at < b.finished_at and b.started_at < a.finished_at


def test_fan_out_runs_in_parallel_and_the_callback_once_after_all(celery_worker: Any, wait_for_pipeline: Any) -> None:
    # given a 1 -> 2 -> 1 DAG whose jobs take 0.6 s each, on a worker with 2 processes
    pipeline = services.pipeline_start_noop(width=2, sleep=0.6)
    # when it runs
    pipeline = wait_for_pipeline(pipeline.pk)
    start, mid1, mid2, end = pipeline.jobs.order_by("id")
    # then the middle jobs overlapped in time, and the callback ran once, after both
    assert pipeline.status == "success" and pipeline.progress_percent == 100.0
    assert _overlap(mid1, mid2), "the parallel jobs did not run at the same time"
    assert start.finished_at <= min(mid1.started_at, mid2.started_at)
    assert end.started_at >= max(mid1.finished_at, mid2.finished_at)
    assert end.attempts == 1
    claims = JobEvent.objects.filter(job=end, payload__job__state="running").count()
    assert claims == 1, "the aggregation callback must run exactly once"
    # and the history replays in order with a gapless per-pipeline sequence
    pseqs = list(JobEvent.objects.filter(pipeline=pipeline).order_by("seq").values_list("pipeline_seq", flat=True))
    assert pseqs == list(range(1, len(pseqs) + 1))


def test_a_failing_middle_job_skips_the_callback_and_is_named(celery_worker: Any, wait_for_pipeline: Any) -> None:
    pipeline = services.pipeline_plan(
        kind="test",
        specs=[
            JobSpec("start", "noop"),
            JobSpec("ok", "noop", det="ok", depends_on=("start",)),
            JobSpec("bad", "test_fail", det="flights", depends_on=("start",)),
            JobSpec("end", "noop", depends_on=("ok", "bad")),
        ],
    )
    pipeline = wait_for_pipeline(pipeline.pk)
    _start, _ok, bad, end = pipeline.jobs.order_by("id")
    assert pipeline.status == "partial"  # start and ok produced output
    assert (bad.result, end.result) == ("error", "skipped")
    assert bad.error["type"] == "ValueError" and bad.error["stage"] == "compute"
    assert "boom in flights" in bad.error["message"] and "Traceback" in bad.error["traceback"]
    assert bad.status_message == "Error in compute: ValueError: boom in flights"
    assert f"#{bad.pk}" in end.status_message
    assert pipeline.last_error.startswith(f"test_fail flights #{bad.pk}")


def test_retry_after_a_failure_completes_the_pipeline(celery_worker: Any, wait_for_pipeline: Any) -> None:
    pipeline = services.pipeline_plan(
        kind="test", specs=[JobSpec("a", "test_fail_once"), JobSpec("b", "noop", depends_on=("a",))]
    )
    assert wait_for_pipeline(pipeline.pk).status == "failed"
    services.pipeline_retry(pipeline_id=pipeline.pk, actor="operator1")
    pipeline = wait_for_pipeline(pipeline.pk)
    a, b = pipeline.jobs.order_by("id")
    assert pipeline.status == "success"
    assert (a.result, a.attempts, a.status_message) == ("success", 2, "succeeded on attempt 2")
    assert b.result == "success"


def test_cancel_while_running_is_terminal_and_rolls_back_the_effect(
    celery_worker: Any, wait_for_pipeline: Any, effect_table: Any
) -> None:
    pipeline = services.pipeline_plan(
        kind="test", specs=[JobSpec("a", "test_effect", params={"sleep": 3}), JobSpec("b", "noop", depends_on=("a",))]
    )
    a = pipeline.jobs.order_by("id").first()
    wait_for(lambda: Job.objects.get(pk=a.pk).progress_processed >= 2, message="job to make progress")
    services.pipeline_cancel(pipeline_id=pipeline.pk, actor="op", reason="stop")
    pipeline = wait_for_pipeline(pipeline.pk)
    # the worker notices at its next checkpoint and stops: once it says so, its handler
    # is over and can no longer write the effect
    wait_for(lambda: f"job stopped: job {a.pk} attempt 1 was cancelled" in celery_worker.log_text(), timeout=15,
             message="the worker to stop the cancelled job")
    a.refresh_from_db()
    assert (a.state, a.result) == ("finished", "cancelled")
    assert effect_table(a.pk) == [], "a cancelled job must not commit its effect"
    assert Pipeline.objects.get(pk=pipeline.pk).status == "cancelled"


def test_cancel_while_queued_never_runs(
    worker_factory: Any, wait_for_pipeline: Any, effect_table: Any, isolated_queue: str
) -> None:
    # given a job waiting in a queue no worker consumes yet
    pipeline = services.pipeline_plan(kind="test", specs=[JobSpec("a", "test_effect_iso")])
    a = pipeline.jobs.get()
    services.job_cancel(job_id=a.pk, actor="op")
    # when a worker comes up and receives the message
    late = worker_factory("late", queues=isolated_queue)
    wait_for(lambda: queue_depths()[isolated_queue] == 0, timeout=10, message="the message to be consumed")
    wait_for(lambda: f"job {a.pk} not run:" in late.log_text(), timeout=10, message="the worker to refuse the job")
    a.refresh_from_db()
    assert a.result == "cancelled" and a.attempts == 0
    assert effect_table(a.pk) == []


def test_kill_9_of_the_whole_worker_is_recovered_and_the_effect_applied_once(
    worker_factory: Any, wait_for_pipeline: Any, effect_table: Any, isolated_queue: str, settings: Any
) -> None:
    settings.SLUICE_STALE_AFTER_SECONDS = 2  # the reaper's threshold, as the test workers beat every 0.3 s
    # given a job running on a worker that then dies with SIGKILL (parent and pool)
    doomed = worker_factory("doomed", queues=isolated_queue)
    pipeline = services.pipeline_plan(
        kind="test",
        specs=[JobSpec("a", "test_effect_iso", params={"sleep": 2}), JobSpec("b", "noop_iso", depends_on=("a",))],
    )
    a = pipeline.jobs.order_by("id").first()
    wait_for(lambda: Job.objects.get(pk=a.pk).progress_processed >= 2, message="job to run")
    doomed.kill9()
    assert Job.objects.get(pk=a.pk).state == "running"
    # when its heartbeat goes stale, the reaper (beat) recovers it onto a new worker
    worker_factory("rescuer", queues=isolated_queue)
    wait_for(lambda: services.reap(queue_depths={}).recovered, timeout=15, interval=0.5, message="reaper")
    pipeline = wait_for_pipeline(pipeline.pk, timeout=30)
    # then the pipeline completes and the effect was applied exactly once
    a.refresh_from_db()
    assert pipeline.status == "success"
    assert a.attempts == 2
    assert len(effect_table(a.pk)) == 1


def test_kill_9_of_a_pool_process_is_requeued_at_once_by_the_worker(
    worker_factory: Any, wait_for_pipeline: Any, effect_table: Any, isolated_queue: str
) -> None:
    # given a job whose pool process is killed mid-run (the worker parent survives)
    worker_factory("survivor", queues=isolated_queue)
    pipeline = services.pipeline_plan(kind="test", specs=[JobSpec("a", "test_effect_iso", params={"sleep": 2})])
    a = pipeline.jobs.get()
    pid = wait_for(lambda: Job.objects.get(pk=a.pk).meta.get("pid"), message="job to report its pid")
    os.kill(pid, signal.SIGKILL)
    # then the worker's main process re-queues the job at once (no reaper runs here, and
    # the heartbeat is still fresh), another delivery runs it, and the effect is applied once
    pipeline = wait_for_pipeline(pipeline.pk, timeout=30)
    a.refresh_from_db()
    assert pipeline.status == "success"
    requeued = JobEvent.objects.filter(job=a, payload__job__state="queued", payload__job__attempts=1).last()
    assert "its worker process died" in requeued.payload["job"]["status_message"]
    assert a.attempts == 2
    assert len(effect_table(a.pk)) == 1


def test_a_paused_queue_stays_paused_across_a_worker_restart(
    worker_factory: Any, wait_for_pipeline: Any, isolated_queue: str
) -> None:
    services.queue_pause(queue=isolated_queue, actor="ops")
    first = worker_factory("before-restart", queues=isolated_queue)
    pipeline = services.pipeline_plan(kind="test", specs=[JobSpec("a", "noop_iso")])
    a = pipeline.jobs.get()
    wait_for(lambda: "paused" in Job.objects.get(pk=a.pk).status_message, message="worker to see the pause")
    first.stop()
    after = worker_factory("after-restart", queues=isolated_queue)
    # the first worker took the message; send it again (as the reaper would) so the new
    # worker receives it and must find the pause in the database
    dispatch.send([a.pk])
    wait_for(lambda: f"job {a.pk} not run: queue paused" in after.log_text(), timeout=10,
             message="the new worker to see the pause")
    a.refresh_from_db()
    assert a.state == "queued" and a.status_message == f"Waiting: queue {isolated_queue} is paused"
    services.queue_resume(queue=isolated_queue, actor="ops")
    assert wait_for_pipeline(pipeline.pk).status == "success"


def test_a_job_planned_in_a_rolled_back_transaction_never_runs(isolated_queue: str) -> None:
    # no worker consumes the isolated queue, so its messages stay countable
    before = queue_depths().get(isolated_queue, 0)

    class Abort(Exception):
        pass

    with pytest.raises(Abort), transaction.atomic():
        services.pipeline_plan(kind="test", specs=[JobSpec("a", "noop_iso")])
        raise Abort
    assert not Pipeline.objects.exists()
    assert queue_depths().get(isolated_queue, 0) == before
    # whereas a committed plan does send its message
    services.pipeline_plan(kind="test", specs=[JobSpec("a", "noop_iso")])
    assert queue_depths().get(isolated_queue, 0) == before + 1

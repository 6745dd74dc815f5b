"""Redelivery of a running job's own message: a live owner keeps the job, a dead one
is taken over (real worker subprocesses, Redis and PostgreSQL)."""

from __future__ import annotations

from typing import Any

import pytest

from pipelines import services
from pipelines.models import Job, JobEvent
from pipelines.services import JobSpec
from tests.support.fixtures import wait_for
from workers.tasks import run_job

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.worker]


def _running_job(isolated_queue: str, seconds: float) -> Job:
    pipeline = services.pipeline_plan(
        kind="test", specs=[JobSpec("a", "test_effect_iso", params={"sleep": seconds})]
    )
    job = pipeline.jobs.get()
    return wait_for(
        lambda: (j := Job.objects.get(pk=job.pk)).progress_processed >= 2 and j, message="the job to run"
    )


def _redeliver(job: Job, queue: str) -> None:
    """What the broker does on a visibility timeout or a reconnect: the same message again."""
    run_job.apply_async(args=[job.pk], task_id=job.celery_task_id, queue=queue)


def _claims(job: Job) -> list[tuple[int, str]]:
    """(attempt, message) of every claim of the job, from its event history."""
    payloads = [e.payload["job"] for e in JobEvent.objects.filter(job=job).order_by("seq")]
    return sorted({(p["attempts"], p["status_message"]) for p in payloads if p["status_message"].startswith("Running")})


def test_the_same_message_redelivered_while_the_owner_is_alive_does_not_restart_the_job(
    worker_factory: Any, wait_for_pipeline: Any, effect_table: Any, isolated_queue: str
) -> None:
    # Given a job running on a healthy worker (two processes: one is free for the duplicate)
    owner = worker_factory("owner", queues=isolated_queue, concurrency=2)
    job = _running_job(isolated_queue, seconds=4)
    # When its message is delivered again (twice) while it runs
    _redeliver(job, isolated_queue)
    _redeliver(job, isolated_queue)
    wait_for(lambda: "not taken over" in owner.log_text(), message="a duplicate to reach the job while it runs")
    pipeline = wait_for_pipeline(job.pipeline_id, timeout=30)
    # (the duplicates came back until the job was over, then were dropped)
    wait_for(lambda: owner.log_text().count(f"job {job.pk} not run: already finished") >= 2,
               message="the duplicates to be dropped")
    # Then the first attempt ran to the end: no takeover, no restart, one effect
    job.refresh_from_db()
    assert pipeline.status == "success"
    assert job.attempts == 1, _claims(job)
    assert len(_claims(job)) == 1 and "took over" not in _claims(job)[0][1]
    assert effect_table(job.pk) == [(job.pk, 1)]


def test_the_same_message_redelivered_after_the_owner_was_killed_takes_over(
    worker_factory: Any, wait_for_pipeline: Any, effect_table: Any, isolated_queue: str
) -> None:
    # Given a job whose worker dies with SIGKILL (parent and pool) mid-run
    doomed = worker_factory("doomed", queues=isolated_queue, concurrency=1)
    job = _running_job(isolated_queue, seconds=4)
    doomed.kill9()
    # When its message is delivered again to another worker (no reaper runs here)
    worker_factory("rescuer", queues=isolated_queue, concurrency=1)
    _redeliver(job, isolated_queue)
    pipeline = wait_for_pipeline(job.pipeline_id, timeout=30)
    # Then, once the dead owner's heartbeat went stale, the redelivery took the job over
    # and the effect was applied once
    job.refresh_from_db()
    assert pipeline.status == "success"
    assert job.attempts == 2
    assert "took over from lost worker" in _claims(job)[-1][1]
    assert effect_table(job.pk) == [(job.pk, 2)]

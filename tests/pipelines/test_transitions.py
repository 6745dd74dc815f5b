"""The transition table (pipelines/transitions.py): every job write goes through it.

Given/when/then over the services, no worker: each named transition is exercised by
the control that makes it, and a write the table does not allow is refused before any
SQL runs.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from pipelines import services, transitions
from pipelines.models import Job, JobResult, JobState, Pipeline
from pipelines.registry import Outcome
from pipelines.services import IllegalTransition, JobSpec
from pipelines.services.locked_pipeline import LockedPipeline

pytestmark = pytest.mark.django_db


def _plan(*specs: JobSpec) -> list[Job]:
    pipeline = services.pipeline_plan(kind="test", specs=list(specs))
    return list(Job.objects.filter(pipeline=pipeline).order_by("id"))


def _chain() -> list[Job]:
    return _plan(JobSpec("a", "noop"), JobSpec("b", "noop", depends_on=("a",)))


def _claim(job: Job, task: str = "t1") -> Job:
    claim = services.job_claim(job_id=job.pk, task_id=task, worker="w@test")
    assert claim.job is not None, claim.reason
    return claim.job


def _stale(job: Job, **values: Any) -> None:
    Job.objects.filter(pk=job.pk).update(heartbeat_at=timezone.now() - timedelta(hours=1), **values)


def _row(job: Job) -> tuple[str, str | None]:
    job.refresh_from_db()
    return job.state, job.result


def test_every_transition_in_the_table_is_made_by_some_control(monkeypatch: pytest.MonkeyPatch) -> None:
    made: set[str] = set()
    prepare, planned_state = transitions.prepare, transitions.planned_state

    def spy_prepare(transition: transitions.Transition, values: dict[str, Any], **kw: Any) -> dict[str, Any]:
        made.add(transition.name)
        return prepare(transition, values, **kw)

    def spy_planned_state(**kw: Any) -> str:
        made.add(transitions.PLAN.name)
        return planned_state(**kw)

    monkeypatch.setattr(transitions, "prepare", spy_prepare)
    monkeypatch.setattr(transitions, "planned_state", spy_planned_state)

    # plan, an early delivery, claim, heartbeat, progress, effect, finish, promote
    a, b = _chain()
    assert services.job_claim(job_id=b.pk, task_id="early", worker="w").job is None
    a = _claim(a)
    assert services.job_heartbeat(job_id=a.pk, attempt=a.attempts)
    assert services.job_progress(job_id=a.pk, attempt=a.attempts, processed=1, total=2)
    with transaction.atomic():
        services.job_commit_effect(job_id=a.pk, attempt=a.attempts, outcome=Outcome(JobResult.SKIPPED, "nothing"))
    assert services.job_finish(job_id=a.pk, attempt=a.attempts, outcome=Outcome(JobResult.SKIPPED, "nothing"))
    assert _row(b) == (JobState.QUEUED, None)
    # retry of an OK-skipped job: reset it, its queued downstream waits for it again
    services.job_retry(job_id=a.pk, actor="op")
    assert _row(a) == (JobState.QUEUED, None) and _row(b) == (JobState.NOT_STARTED, None)
    # a paused queue; a requeue after a transient failure; a take-over of a lost attempt
    services.queue_pause(queue="default", actor="op")
    assert services.job_claim(job_id=a.pk, task_id="t2", worker="w").reason == "queue paused"
    services.queue_resume(queue="default", actor="op")
    a = _claim(a, "t2")
    error = {"type": "OperationalError", "message": "reset", "traceback": "", "stage": "run"}
    assert services.job_requeue_after_failure(job_id=a.pk, attempt=a.attempts, error=error, countdown=1)
    a = _claim(a, "t3")
    _stale(a)
    a = _claim(a, "t3")
    assert "took over" in a.status_message
    # an operator's recover; the reaper gives up once attempts ran out
    services.job_recover(job_id=a.pk, actor="op", force=True)
    a = _claim(a, "t4")
    _stale(a, max_attempts=a.attempts)
    assert services.reap(queue_depths={}).failed == [a.pk]
    assert _row(a) == (JobState.FINISHED, JobResult.ERROR) and _row(b) == (JobState.FINISHED, JobResult.SKIPPED)
    # cancel
    c, _ = _chain()
    services.job_cancel(job_id=c.pk, actor="op")

    assert made == set(transitions.TABLE), f"never made: {set(transitions.TABLE) - made}"


def test_a_write_the_table_does_not_allow_is_refused_before_any_sql() -> None:
    a, _ = _chain()
    with transaction.atomic():
        work = LockedPipeline.lock_for_job(a.pk)
        with CaptureQueriesContext(connection) as queries:
            with pytest.raises(IllegalTransition, match="cancel: the state"):
                work.apply(transitions.CANCEL, [a.pk], state=JobState.RUNNING)
            with pytest.raises(IllegalTransition, match="claim may not write result"):
                work.apply(transitions.CLAIM, [a.pk], result=JobResult.SUCCESS)
            with pytest.raises(IllegalTransition, match="finish needs the attempt"):
                work.apply(transitions.FINISH, [a.pk], result=JobResult.SUCCESS)
        assert queries.captured_queries == []
    assert _row(a) == (JobState.QUEUED, None)


def test_a_transition_from_a_state_it_does_not_leave_matches_nothing() -> None:
    # given a finished job
    a, _ = _chain()
    services.job_cancel(job_id=a.pk)
    with transaction.atomic():
        work = LockedPipeline.lock_for_job(a.pk)
        # when a claim (queued → running) is asked of it
        with CaptureQueriesContext(connection) as queries:
            claimed = work.apply(transitions.CLAIM, [a.pk], worker="w", attempts=1)
    # then nothing matched, no UPDATE ran, and the row is as it was
    assert claimed == []
    assert not [q for q in queries.captured_queries if q["sql"].startswith("UPDATE")]
    assert _row(a) == (JobState.FINISHED, JobResult.CANCELLED)


def test_the_state_moves_are_exactly_those_the_table_names() -> None:
    S = JobState
    assert transitions.MOVES == {
        (S.QUEUED, S.RUNNING), (S.RUNNING, S.RUNNING), (S.RUNNING, S.QUEUED), (S.RUNNING, S.FINISHED),
        (S.NOT_STARTED, S.FINISHED), (S.QUEUED, S.FINISHED), (S.FINISHED, S.NOT_STARTED),
        (S.QUEUED, S.NOT_STARTED), (S.NOT_STARTED, S.QUEUED),
    }
    assert not Pipeline.objects.exists()

"""Sequences of worker, operator and reaper actions that once broke the job state machine.

Each test is one failing example (found by hand for issue 8, or by the stateful test in
``test_state_machine.py``), replayed through the services exactly as it was found.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import transaction
from django.utils import timezone

from pipelines import services
from pipelines.models import Job, Pipeline
from pipelines.registry import Outcome
from pipelines.services import ConflictError, JobSpec

pytestmark = pytest.mark.django_db


def _plan(*specs: JobSpec) -> list[Job]:
    pipeline = services.pipeline_plan(kind="test", specs=list(specs))
    return list(pipeline.jobs.order_by("id"))


def _run_and_finish(job: Job, result: str = "success", task: str = "t1") -> None:
    claim = services.job_claim(job_id=job.pk, task_id=task, worker="w@test")
    assert claim.job is not None, claim.reason
    assert services.job_finish(job_id=job.pk, attempt=claim.job.attempts, outcome=Outcome(result, result))


def _states(jobs: list[Job]) -> list[tuple[str, str | None]]:
    return [(j.state, j.result) for j in Job.objects.filter(pk__in=[j.pk for j in jobs]).order_by("id")]


def _status(job: Job) -> str:
    return Pipeline.objects.get(pk=job.pipeline_id).status


def test_retry_of_a_job_behind_a_failed_job_and_a_skipped_one_starts_from_the_failure() -> None:
    # given a chain a → b → c where a failed, so b and c were skipped
    a, b, c = _plan(
        JobSpec("a", "noop"), JobSpec("b", "noop", depends_on=("a",)), JobSpec("c", "noop", depends_on=("b",))
    )
    _run_and_finish(a, "error")
    failed, skipped = ("finished", "error"), ("finished", "skipped")
    assert _states([a, b, c]) == [failed, skipped, skipped]
    # when the operator retries c
    services.job_retry(job_id=c.pk, actor="op")
    # then a runs again first, and c does not run before b (a skipped b is not b's output)
    assert _states([a, b, c]) == [("queued", None), ("not_started", None), ("not_started", None)]
    assert _status(a) == "not_started"
    _run_and_finish(a, task="t2")
    _run_and_finish(b)
    _run_and_finish(c)
    assert _status(a) == "success"


def test_retry_of_a_skipped_job_whose_downstream_waits_for_a_worker_sends_it_back_to_waiting() -> None:
    # given s ended "skipped" (nothing to do) and so its downstream t is queued
    s, t = _plan(JobSpec("s", "noop"), JobSpec("t", "noop", depends_on=("s",)))
    _run_and_finish(s, "skipped")
    assert _states([s, t]) == [("finished", "skipped"), ("queued", None)]
    # when s is retried (this was a 500: queued → not_started was not in the table)
    services.job_retry(job_id=s.pk)
    # then t waits for s again instead of running on the old result
    assert _states([s, t]) == [("queued", None), ("not_started", None)]
    assert services.job_claim(job_id=t.pk, task_id="early", worker="w").job is None
    _run_and_finish(s, task="t2")
    _run_and_finish(t, task="t2")
    assert _status(s) == "success"


def test_a_retry_that_would_reset_a_running_job_is_a_conflict_naming_it() -> None:
    # given s skipped (nothing to do) and its downstream t running
    s, t = _plan(JobSpec("s", "noop"), JobSpec("t", "noop", depends_on=("s",)))
    _run_and_finish(s, "skipped")
    services.job_claim(job_id=t.pk, task_id="t1", worker="w")
    with pytest.raises(ConflictError) as exc:
        services.job_retry(job_id=s.pk)
    assert exc.value.code == "still_running" and str(t.pk) in exc.value.message
    assert _states([s, t]) == [("finished", "skipped"), ("running", None)]


def test_an_illegal_transition_that_escapes_answers_409_not_500() -> None:
    from backoffice.api.errors import exception_handler
    from pipelines.services import IllegalTransition

    response = exception_handler(IllegalTransition("job 1: finished → running is not allowed"), {})
    assert response is not None
    assert response.status_code == 409
    assert response.data == {"detail": "job 1: finished → running is not allowed", "code": "illegal_transition"}


def test_retry_of_one_cancelled_branch_leaves_the_fan_in_skipped_while_the_other_branch_is_cancelled() -> None:
    # Found by the stateful test: a → (b, c) → d; b and c cancelled, so d was skipped.
    a, b, c, d = _plan(
        JobSpec("a", "noop"), JobSpec("b", "noop", depends_on=("a",)), JobSpec("c", "noop", depends_on=("a",)),
        JobSpec("d", "noop", depends_on=("b", "c")),
    )
    _run_and_finish(a)
    services.job_cancel(job_id=b.pk)
    services.job_cancel(job_id=c.pk)
    # when only c is retried (d used to be reset too, and waited for b forever)
    services.job_retry(job_id=c.pk)
    # then c runs, d stays skipped (b's output will not come), and the pipeline ends
    assert _states([b, c, d]) == [("finished", "cancelled"), ("queued", None), ("finished", "skipped")]
    _run_and_finish(c, task="t2")
    assert _status(a) == "cancelled"
    # and retrying b then runs b and d
    services.job_retry(job_id=b.pk)
    assert _states([b, c, d]) == [("queued", None), ("finished", "success"), ("not_started", None)]
    _run_and_finish(b, task="t2")
    _run_and_finish(d, task="t2")
    assert _status(a) == "success"


def _claim(job: Job, task: str) -> int:
    claim = services.job_claim(job_id=job.pk, task_id=task, worker="w@test")
    assert claim.job is not None, claim.reason
    return claim.job.attempts


def _lose_heartbeat(job: Job) -> None:
    Job.objects.filter(pk=job.pk).update(heartbeat_at=timezone.now() - timedelta(hours=1))


def test_a_job_whose_last_attempt_committed_its_data_is_not_failed_by_the_reaper() -> None:
    # Found by the stateful test: the third (last) attempt commits its effect, then its
    # worker dies; the reaper used to finish the job "error" although the data was in
    # (and a retry of that "error" would then load it twice).
    (a,) = _plan(JobSpec("a", "test_effect"))
    for n in range(1, a.max_attempts):
        _claim(a, f"t{n}")
        _lose_heartbeat(a)
        assert services.reap(queue_depths={"ingest": 1}).recovered == [a.pk]
    attempt = _claim(a, "last")
    with transaction.atomic():
        services.job_commit_effect(job_id=a.pk, attempt=attempt, outcome=Outcome("warning", "3 loaded, 1 rejected"))
    _lose_heartbeat(a)
    assert services.reap(queue_depths={"ingest": 1}).failed == [a.pk]
    a.refresh_from_db()
    assert (a.state, a.result, a.effect_committed) == ("finished", "warning", True)
    assert a.status_message.startswith("3 loaded, 1 rejected (worker w@test stopped sending heartbeats")
    assert _status(a) == "success"
    with pytest.raises(ConflictError):
        services.job_retry(job_id=a.pk)


def test_a_requeued_job_whose_data_is_in_cannot_be_cancelled() -> None:
    # Found by the stateful test: attempt 1 commits its effect and dies, the reaper
    # re-queues the job (to finish from the effect); a cancel then read "cancelled"
    # although the data was loaded.
    a, b = _plan(JobSpec("a", "test_effect"), JobSpec("b", "noop", depends_on=("a",)))
    attempt = _claim(a, "t1")
    with transaction.atomic():
        services.job_commit_effect(job_id=a.pk, attempt=attempt, outcome=Outcome(message="loaded"))
    _lose_heartbeat(a)
    assert services.reap(queue_depths={"ingest": 1}).recovered == [a.pk]
    with pytest.raises(ConflictError) as exc:
        services.job_cancel(job_id=a.pk)
    assert exc.value.code == "effect_committed"
    services.pipeline_cancel(pipeline_id=a.pipeline_id)  # cancels b only
    assert _states([a, b]) == [("queued", None), ("finished", "cancelled")]
    # the next delivery finishes a from its effect
    claim = services.job_claim(job_id=a.pk, task_id="t2", worker="w")
    assert claim.job is not None and claim.job.effect_committed


def test_a_running_job_never_reads_100_percent_nor_does_its_pipeline() -> None:
    # Found by the stateful test: a job that reported its last unit (10 of 10) read
    # 100 % — and so did a one-job pipeline — while it was still running.
    (a,) = _plan(JobSpec("a", "noop"))
    attempt = _claim(a, "t1")
    assert services.job_progress(job_id=a.pk, attempt=attempt, processed=10, total=10, phase="working")
    a.refresh_from_db()
    pipeline = Pipeline.objects.get(pk=a.pipeline_id)
    assert (a.state, a.progress_percent) == ("running", 99.9)
    assert (pipeline.status, pipeline.progress_percent) == ("running", 99.9)
    assert services.job_finish(job_id=a.pk, attempt=attempt, outcome=Outcome(message="ok"))
    a.refresh_from_db()
    pipeline.refresh_from_db()
    assert a.progress_percent == pipeline.progress_percent == 100.0


def test_a_new_attempt_starts_its_progress_from_zero() -> None:
    # Found by the stateful test: attempt 1 reached 5/10 and its worker died; attempt 2
    # showed 50 % from the start, then "went back" to 10 % at its first report.
    (a,) = _plan(JobSpec("a", "noop"))
    first = _claim(a, "t1")
    assert services.job_progress(job_id=a.pk, attempt=first, processed=5, total=10)
    _lose_heartbeat(a)
    assert services.reap(queue_depths={"default": 1}).recovered == [a.pk]
    second = _claim(a, "t2")
    a.refresh_from_db()
    assert (a.attempts, a.progress_processed, a.progress_percent) == (second, 0, None)


def test_retry_of_a_job_skipped_behind_a_superseded_ingest_runs_the_ingest_again_not_the_job() -> None:
    # An ingest superseded by a later upload skips its recalc. Retrying the recalc used
    # to run it at once (a superseded ingest counts as done), recomputing from data its
    # upload never applied; it now retries from the ingest, which ends superseded again.
    ingest, recalc = _plan(JobSpec("ingest", "noop"), JobSpec("recalc", "noop", depends_on=("ingest",)))
    attempt = _claim(ingest, "t1")
    services.job_finish(job_id=ingest.pk, attempt=attempt,
                        outcome=Outcome("skipped", "not applied", superseded_by="upload #7"))
    assert _states([ingest, recalc]) == [("finished", "skipped"), ("finished", "skipped")]
    assert _status(ingest) == "superseded"
    services.job_retry(job_id=recalc.pk)
    assert _states([ingest, recalc]) == [("queued", None), ("not_started", None)]
    attempt = _claim(ingest, "t2")
    services.job_finish(job_id=ingest.pk, attempt=attempt,
                        outcome=Outcome("skipped", "not applied", superseded_by="upload #7"))
    assert _states([ingest, recalc]) == [("finished", "skipped"), ("finished", "skipped")]
    assert _status(ingest) == "superseded"

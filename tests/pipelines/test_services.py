"""Job transitions and operator controls, straight through the services (no worker).

The compare-and-set rules are what make cancel terminal and retries safe; these tests
play both sides of each race by hand.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from pipelines import services
from pipelines.errors import JobAborted
from pipelines.models import Job, JobEvent, OperatorAction, Pipeline
from pipelines.registry import Outcome, UnknownJobType
from pipelines.services import ConflictError, JobSpec
from tests.support.fixtures import small_dag

pytestmark = pytest.mark.django_db


def plan_chain() -> Pipeline:
    return small_dag(kind="test", year=2025, module="buildings")


def jobs_of(pipeline: Pipeline) -> list[Job]:
    return list(pipeline.jobs.order_by("id"))


def run(job: Job, task: str = "t1") -> Job:
    claim = services.job_claim(job_id=job.pk, task_id=task, worker="w@test")
    assert claim.job is not None, claim.reason
    return claim.job


def test_plan_creates_the_whole_dag_with_roots_queued() -> None:
    pipeline = plan_chain()
    a, b1, b2, c = jobs_of(pipeline)
    assert [j.state for j in (a, b1, b2, c)] == ["queued", "not_started", "not_started", "not_started"]
    assert set(c.depends_on.values_list("pk", flat=True)) == {b1.pk, b2.pk}
    assert pipeline.status == "not_started" and pipeline.jobs_total == 4
    pseqs = list(JobEvent.objects.filter(pipeline=pipeline).order_by("seq").values_list("pipeline_seq", flat=True))
    assert pseqs == list(range(1, len(pseqs) + 1)), "per-pipeline sequence must be gapless"


def test_unknown_job_type_is_refused_at_planning() -> None:
    with pytest.raises(UnknownJobType):
        services.pipeline_plan(kind="x", specs=[JobSpec("a", "no_such_kind")])
    assert not Pipeline.objects.exists()


def test_only_one_of_two_deliveries_claims_a_job() -> None:
    a = jobs_of(plan_chain())[0]
    first = services.job_claim(job_id=a.pk, task_id="t1", worker="w1")
    second = services.job_claim(job_id=a.pk, task_id="t2", worker="w2")
    assert first.job is not None and first.job.attempts == 1
    assert second.job is None and "already running on w1" in second.reason


def test_finishing_promotes_downstream_only_when_all_its_parents_are_done() -> None:
    pipeline = plan_chain()
    a, b1, b2, c = jobs_of(pipeline)
    assert services.job_finish(job_id=a.pk, attempt=run(a).attempts, outcome=Outcome(message="ok"))
    assert Job.objects.get(pk=b1.pk).state == "queued" and Job.objects.get(pk=b2.pk).state == "queued"
    services.job_finish(job_id=b1.pk, attempt=run(b1).attempts, outcome=Outcome(message="ok"))
    assert Job.objects.get(pk=c.pk).state == "not_started"
    services.job_finish(job_id=b2.pk, attempt=run(b2).attempts, outcome=Outcome(message="ok"))
    assert Job.objects.get(pk=c.pk).state == "queued"


def test_a_late_finish_cannot_overwrite_a_cancel() -> None:
    # given a running job that an operator cancels
    pipeline = plan_chain()
    a = run(jobs_of(pipeline)[0])
    services.job_cancel(job_id=a.pk, actor="alice", reason="wrong file")
    # when its worker finishes anyway
    accepted = services.job_finish(job_id=a.pk, attempt=a.attempts, outcome=Outcome(message="Success"))
    # then the cancel stands, downstream is skipped, and the effect would roll back
    a.refresh_from_db()
    assert not accepted
    assert (a.state, a.result) == ("finished", "cancelled")
    assert a.status_message == "Cancelled by alice: wrong file"
    assert {j.result for j in jobs_of(pipeline)[1:]} == {"skipped"}
    with pytest.raises(JobAborted):
        services.job_commit_effect(job_id=a.pk, attempt=a.attempts, outcome=Outcome())
    pipeline.refresh_from_db()
    assert pipeline.status == "cancelled"
    action = OperatorAction.objects.get(action="cancel")
    assert (action.actor_name, action.target_id, action.reason) == ("alice", str(a.pk), "wrong file")


def test_cancel_of_a_finished_job_or_committed_effect_is_a_conflict() -> None:
    pipeline = plan_chain()
    a = run(jobs_of(pipeline)[0])
    services.job_commit_effect(job_id=a.pk, attempt=a.attempts, outcome=Outcome(message="loaded"))
    with pytest.raises(ConflictError) as exc:
        services.job_cancel(job_id=a.pk)
    assert exc.value.code == "effect_committed"
    services.job_finish(job_id=a.pk, attempt=a.attempts, outcome=Outcome(message="loaded"))
    with pytest.raises(ConflictError) as exc:
        services.job_cancel(job_id=a.pk)
    assert exc.value.code == "already_finished"


def test_pipeline_cancel_reaches_every_unfinished_job() -> None:
    pipeline = plan_chain()
    services.pipeline_cancel(pipeline_id=pipeline.pk, actor="bob")
    assert {(j.state, j.result) for j in jobs_of(pipeline)} == {("finished", "cancelled")}
    with pytest.raises(ConflictError):
        services.pipeline_cancel(pipeline_id=pipeline.pk)


def test_failure_skips_downstream_and_names_the_failing_job() -> None:
    pipeline = plan_chain()
    a, b1, b2, c = jobs_of(pipeline)
    services.job_finish(job_id=a.pk, attempt=run(a).attempts, outcome=Outcome(message="ok"))
    services.job_finish(job_id=b1.pk, attempt=run(b1).attempts, outcome=Outcome("error", "Error in compute: boom"))
    services.job_finish(job_id=b2.pk, attempt=run(b2).attempts, outcome=Outcome(message="ok"))
    c.refresh_from_db()
    pipeline.refresh_from_db()
    assert (c.result, c.status_message) == ("skipped", f"Skipped: upstream noop part0 #{b1.pk} failed")
    assert pipeline.status == "partial"
    assert pipeline.last_error == f"noop part0 #{b1.pk}: Error in compute: boom"


def test_retry_requeues_failed_jobs_and_their_downstream() -> None:
    pipeline = plan_chain()
    a, b1, b2, c = jobs_of(pipeline)
    services.job_finish(job_id=a.pk, attempt=run(a).attempts, outcome=Outcome("error", "bad"))
    services.pipeline_retry(pipeline_id=pipeline.pk, actor="carol")
    states = {j.pk: (j.state, j.result) for j in jobs_of(pipeline)}
    assert states == {a.pk: ("queued", None), b1.pk: ("not_started", None), b2.pk: ("not_started", None),
                      c.pk: ("not_started", None)}
    pipeline.refresh_from_db()
    # back to waiting for a worker, no longer "done"
    assert (pipeline.status, pipeline.finished_at) == ("not_started", None)
    # a second attempt is a new claim with a higher attempt number
    assert run(a, task="t9").attempts == 2


def test_retry_of_a_successful_job_is_a_conflict() -> None:
    a = jobs_of(plan_chain())[0]
    services.job_finish(job_id=a.pk, attempt=run(a).attempts, outcome=Outcome(message="ok"))
    with pytest.raises(ConflictError) as exc:
        services.job_retry(job_id=a.pk)
    assert exc.value.code == "not_retryable"


def test_recover_refuses_a_live_worker_unless_forced() -> None:
    a = run(jobs_of(plan_chain())[0])
    with pytest.raises(ConflictError) as exc:
        services.job_recover(job_id=a.pk)
    assert exc.value.code == "heartbeat_fresh"
    services.job_recover(job_id=a.pk, force=True, actor="dave")
    a2 = Job.objects.get(pk=a.pk)
    assert a2.state == "queued" and "Recovered by dave" in a2.status_message
    # the lost attempt can no longer write
    assert not services.job_heartbeat(job_id=a.pk, attempt=a.attempts)
    assert not services.job_finish(job_id=a.pk, attempt=a.attempts, outcome=Outcome())


def test_reaper_recovers_stale_jobs_then_gives_up_after_max_attempts() -> None:
    a = run(jobs_of(plan_chain())[0])
    stale = timezone.now() - timedelta(hours=1)
    Job.objects.filter(pk=a.pk).update(heartbeat_at=stale)
    report = services.reap(queue_depths={})
    assert report.recovered == [a.pk]
    assert Job.objects.get(pk=a.pk).state == "queued"
    # exhaust the attempts: each claim counts one
    for n in range(2, a.max_attempts + 1):
        assert run(Job.objects.get(pk=a.pk), task=f"t{n}").attempts == n
        Job.objects.filter(pk=a.pk).update(heartbeat_at=stale)
        report = services.reap(queue_depths={})
    a.refresh_from_db()
    assert report.failed == [a.pk]
    assert (a.state, a.result) == ("finished", "error")
    assert "stopped sending heartbeats" in a.status_message and f"after {a.max_attempts} attempt" in a.status_message


def test_reaper_resends_queued_jobs_whose_message_was_lost() -> None:
    a = jobs_of(plan_chain())[0]
    old = timezone.now() - timedelta(hours=1)
    Job.objects.filter(pk=a.pk).update(queued_at=old, dispatched_at=old)
    # a non-empty queue means the message may just be waiting: leave it
    assert services.reap(queue_depths={"default": 5}).redispatched == []
    assert services.reap(queue_depths={"default": 0}).redispatched == [a.pk]


def test_pause_and_resume_are_persistent_and_refuse_no_ops() -> None:
    services.queue_pause(queue="ingest", actor="erin", reason="db maintenance")
    with pytest.raises(ConflictError):
        services.queue_pause(queue="ingest")
    services.queue_resume(queue="ingest", actor="erin")
    assert list(OperatorAction.objects.order_by("id").values_list("action", "target_id")) == [
        ("pause", "ingest"), ("resume", "ingest")]
    with pytest.raises(ValueError):
        services.queue_pause(queue="nope")


def test_live_events_carry_counts_but_never_the_row_error_list() -> None:
    a = jobs_of(plan_chain())[0]
    row_errors = [{"row": i, "column": "fte", "reason": "not a number"} for i in range(1, 1001)]
    services.job_finish(
        job_id=a.pk, attempt=run(a).attempts,
        outcome=Outcome("warning", "3 rows loaded, 1,000 rejected",
                        {"rows_loaded": 3, "rows_rejected": 1000, "row_errors": row_errors}),
    )
    event = JobEvent.objects.filter(job=a).order_by("-seq").first()
    assert event.payload["job"]["counts"] == {"rows_loaded": 3, "rows_rejected": 1000}
    assert event.payload["job"]["result"] == "warning"
    assert len(Job.objects.get(pk=a.pk).meta["row_errors"]) == 1000


"""Retrying a job whose upstream failed, through the API on a real worker (issue 8, item 1).

Before the fix, retrying a skipped recalc whose ingest had failed answered 202 and left
the pipeline ``running`` at 50 % forever; retrying the ingest or the pipeline then
answered 500 ``IllegalTransition`` ("not_started → not_started").
"""

from __future__ import annotations

from typing import Any

import pytest

from pipelines.models import Job, OperatorAction
from pipelines.services import JobSpec, pipeline_plan

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.worker]


def _plan(upstream_kind: str) -> tuple[Any, Job, Job]:
    pipeline = pipeline_plan(
        kind="test",
        specs=[JobSpec("ingest", upstream_kind), JobSpec("recalc", "noop", det="recalc", depends_on=("ingest",))],
    )
    ingest, recalc = pipeline.jobs.order_by("id")
    return pipeline, ingest, recalc


def test_retrying_a_skipped_job_retries_its_failed_upstream_and_completes(
    celery_worker: Any, wait_for_pipeline: Any, client_for: Any
) -> None:
    # given an ingest that failed (its first attempt) and the recalc it skipped
    pipeline, ingest, recalc = _plan("test_fail_once")
    assert wait_for_pipeline(pipeline.pk).status == "failed"
    assert Job.objects.get(pk=recalc.pk).result == "skipped"
    # when the operator retries the skipped recalc
    response = client_for("operator").post(f"/api/v1/jobs/{recalc.pk}/retry/")
    # then the ingest runs again, then the recalc, and the pipeline succeeds
    assert response.status_code == 202, response.content
    pipeline = wait_for_pipeline(pipeline.pk)
    ingest, recalc = pipeline.jobs.order_by("id")
    assert (pipeline.status, pipeline.progress_percent) == ("success", 100.0)
    assert (ingest.result, ingest.attempts) == ("success", 2)
    assert (recalc.result, recalc.attempts) == ("success", 1)
    # and the audit trail says the retry reset the upstream ingest too
    action = OperatorAction.objects.get(action="retry", target_id=str(recalc.pk))
    assert action.detail["jobs"] == [ingest.pk, recalc.pk]


def test_retries_of_a_job_blocked_by_a_failing_upstream_never_wedge_or_500(
    celery_worker: Any, wait_for_pipeline: Any, client_for: Any
) -> None:
    # given an ingest that fails on every attempt, and its skipped recalc
    pipeline, ingest, recalc = _plan("test_fail")
    assert wait_for_pipeline(pipeline.pk).status == "failed"
    client = client_for("operator")
    # when the recalc, then the ingest, then the pipeline are retried, each after the last ended
    for url in (f"/api/v1/jobs/{recalc.pk}/retry/", f"/api/v1/jobs/{ingest.pk}/retry/",
                f"/api/v1/pipelines/{pipeline.pk}/retry/"):
        response = client.post(url)
        # then every retry is accepted, and the pipeline ends again (it fails; it does
        # not sit at "running" with a job nobody will ever start)
        assert response.status_code == 202, (url, response.status_code, response.content[:500])
        done = wait_for_pipeline(pipeline.pk)
        assert done.status == "failed"
        assert {(j.state, j.result) for j in done.jobs.all()} == {("finished", "error"), ("finished", "skipped")}
    assert Job.objects.get(pk=ingest.pk).attempts == 4

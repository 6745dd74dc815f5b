"""A superseded pipeline reads ``superseded`` on the WebSocket feed, not ``success``."""

from __future__ import annotations

from typing import Any

import pytest

from tests.backoffice.live.conftest import Socket, Store, db, flush_publisher, make_user, plan, session_cookie

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("no_dispatch")]


def _supersede_root(pipeline_id: Any) -> int:
    """Play the worker: the root job finds its work superseded by a later upload."""
    from pipelines.models import Job, JobResult
    from pipelines.registry import Outcome
    from pipelines.services import job_claim, job_finish

    root = Job.objects.filter(pipeline_id=pipeline_id).order_by("id").first()
    assert root is not None
    claim = job_claim(job_id=root.pk, task_id="t-root", worker="live-tests")
    assert claim.job is not None, claim.reason
    outcome = Outcome(JobResult.SKIPPED, "Not applied: superseded by upload #9", superseded_by="upload #9")
    assert job_finish(job_id=root.pk, attempt=claim.job.attempts, outcome=outcome)
    return int(Job.objects.filter(pipeline_id=pipeline_id).count())


async def test_superseded_pipeline_reads_superseded_on_the_socket() -> None:
    # Given a viewer following a pipeline whose first job will be superseded
    user = await db(make_user, "ada")
    cookie = await db(session_cookie, user)
    pipeline = await db(plan, width=2, year=2031, module="energy")
    pid = str(pipeline.pk)
    socket = Socket(f"/ws/pipelines/{pid}/", cookie=cookie)
    assert await socket.connect() == (True, None)
    store = Store(only={pid})
    store.apply(await socket.next())

    # When its root job reports that a later upload is already loaded
    await db(_supersede_root, pipeline.pk)
    await db(flush_publisher)
    final = await socket.until(lambda m: m["type"] == "pipeline.update" and m["pipeline"]["status"] != "running")

    # Then the feed says superseded, names the winner, and nothing downstream ran
    assert final["pipeline"]["status"] == "superseded"
    assert final["pipeline"]["progress"]["phase"] == "superseded by upload #9"
    for message in socket.received:
        store.apply(message)
    jobs = store.state()["jobs"]
    assert len(jobs) == 3
    downstream = [j for j in jobs.values() if j["det"]]
    assert [j["result"] for j in downstream] == ["skipped", "skipped"]
    assert all("superseded by upload #9" in j["status_message"] for j in downstream)
    await socket.close()

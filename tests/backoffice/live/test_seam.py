"""The snapshot/live seam under a slow publisher: an event committed before a socket's
snapshot but published after it went live is not sent twice (real ASGI app, real Redis
channel layer)."""

from __future__ import annotations

from typing import Any

import pytest

from pipelines import publish
from tests.backoffice.live.conftest import Socket, db, flush_publisher, make_user, plan, run_job, session_cookie

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("no_dispatch")]


def _stored_events(pipeline_id: Any) -> list[dict[str, Any]]:
    from pipelines.models import JobEvent

    return list(JobEvent.objects.filter(pipeline_id=pipeline_id).order_by("seq").values_list("payload", flat=True))


def _queued_job(pipeline_id: Any) -> int:
    from pipelines.models import Job

    return int(Job.objects.filter(pipeline_id=pipeline_id, state="queued").order_by("id").values_list("pk",
                                                                                                    flat=True)[0])


@pytest.mark.parametrize("path", ["/ws/pipelines/", "pipeline"])
async def test_an_event_published_after_the_snapshot_that_covered_it_is_not_sent_again(path: str) -> None:
    # Given a pipeline with stored events, and a socket whose snapshot covers them
    user = await db(make_user, f"lin-{path.strip('/') or 'dag'}")
    cookie = await db(session_cookie, user)
    pipeline = await db(plan, year=2031, module="energy")
    await db(run_job, await db(_queued_job, pipeline.pk))
    await db(flush_publisher)
    old = (await db(_stored_events, pipeline.pk))[-1]
    socket = Socket(f"/ws/pipelines/{pipeline.pk}/" if path == "pipeline" else path, cookie=cookie)
    assert (await socket.connect())[0]
    snap = await socket.next()
    assert snap["type"] == "snapshot" and snap["seq"] >= old["seq"]

    # When that old event reaches the channel layer only now (a slow publisher), then a new one
    publish.publish([old])
    await db(flush_publisher)
    await db(run_job, await db(_queued_job, pipeline.pk))
    await db(flush_publisher)

    # Then the socket sends the new events only, each once
    first_new = await socket.until(lambda m: m["type"].endswith(".update"))
    assert first_new["seq"] > snap["seq"]
    while not await socket.silent(0.3):
        await socket.next()
    seqs = [m["seq"] for m in socket.received[1:] if m["type"].endswith(".update")]
    assert old["seq"] not in seqs and seqs == sorted(set(seqs))
    await socket.close()

"""Revoked access stops live streams within seconds: WebSockets (real ASGI app, real
Redis channel layer) and SSE (the real view through Django's ASGI handler)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from django.test import AsyncClient

from backoffice import live
from tests.backoffice.live.conftest import Socket, db, flush_publisher, make_user, plan, run_job, session_cookie

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("no_dispatch")]

RECHECK = 0.3


@pytest.fixture(autouse=True)
def _fast_recheck(settings: Any) -> None:
    settings.SLUICE_LIVE_ACCESS_RECHECK_SECONDS = RECHECK


def _deactivate(user: Any) -> None:
    type(user).objects.filter(pk=user.pk).update(is_active=False)


def _strip_roles(user: Any) -> None:
    user.user_permissions.clear()


def _first_queued_job(pipeline_id: Any) -> int:
    from pipelines.models import Job

    queued = Job.objects.filter(pipeline_id=pipeline_id, state="queued").order_by("id")
    return int(queued.values_list("pk", flat=True)[0])


@pytest.mark.parametrize("revoke", [_deactivate, _strip_roles], ids=["deactivated", "roles_removed"])
@pytest.mark.parametrize("path", ["/ws/pipelines/", "/ws/years/2031/", "pipeline"])
async def test_revoked_user_socket_is_closed_within_seconds(revoke: Any, path: str) -> None:
    # Given a viewer with an open socket that receives live events
    user = await db(make_user, f"ada-{revoke.__name__}-{path.strip('/').replace('/', '-')}")
    cookie = await db(session_cookie, user)
    pipeline = await db(plan, year=2031, module="energy")
    socket = Socket(f"/ws/pipelines/{pipeline.pk}/" if path == "pipeline" else path, cookie=cookie)
    assert (await socket.connect())[0]
    assert (await socket.next())["type"] == "snapshot"

    # When the user is deactivated or loses the viewer role
    await db(revoke, user)
    revoked_at = time.monotonic()

    # Then the socket is closed as forbidden within a few seconds...
    closed = await socket.until(lambda m: m["type"] == "closed", timeout=10)
    assert closed == {"type": "closed", "code": live.CLOSE_FORBIDDEN}
    assert time.monotonic() - revoked_at < RECHECK + 3
    socket.closed = True


async def test_losing_a_module_grant_replaces_the_socket_view_and_stops_its_events() -> None:
    # Given a user granted energy and water, watching the console
    user = await db(make_user, "eve-narrowed", modules=("energy", "water"))
    cookie = await db(session_cookie, user)
    energy = await db(plan, year=2031, module="energy")
    water = await db(plan, year=2031, module="water")
    socket = Socket("/ws/pipelines/", cookie=cookie)
    assert (await socket.connect())[0]
    first = await socket.next()
    assert {p["id"] for p in first["pipelines"]} == {str(energy.pk), str(water.pk)}

    # When the water grant is removed
    from backoffice.models import ModuleGrant

    await db(lambda: ModuleGrant.objects.filter(user=user, module="water").delete())

    # Then a fresh snapshot without water replaces what the client holds...
    snap = await socket.until(lambda m: m["type"] == "snapshot", timeout=10)
    assert {p["id"] for p in snap["pipelines"]} == {str(energy.pk)}
    # ...and water's events no longer arrive while energy's still do
    await db(run_job, await db(_first_queued_job, water.pk))
    await db(run_job, await db(_first_queued_job, energy.pk))
    await db(flush_publisher)
    update = await socket.until(lambda m: m["type"] == "job.update")
    assert update["pipeline_id"] == str(energy.pk)
    while not await socket.silent(0.5):
        await socket.next()
    after = socket.received[socket.received.index(snap):]
    assert {m["pipeline_id"] for m in after if "pipeline_id" in m} == {str(energy.pk)}
    await socket.close()


async def _read_sse(stream: Any, into: list[str]) -> None:
    async for chunk in stream:
        into.append(chunk.decode() if isinstance(chunk, bytes) else chunk)


@pytest.mark.parametrize("revoke", [_deactivate, _strip_roles], ids=["deactivated", "roles_removed"])
async def test_sse_stream_of_a_revoked_user_ends_within_seconds(revoke: Any) -> None:
    # Given a viewer following a pipeline that is not done (the stream would run forever)
    user = await db(make_user, f"grace-{revoke.__name__}")
    pipeline = await db(plan, year=2031, module="energy")
    client = AsyncClient()
    await client.aforce_login(user)
    response = await client.get(f"/api/v1/pipelines/{pipeline.pk}/stream/")
    assert response.status_code == 200
    received: list[str] = []
    reader = asyncio.create_task(_read_sse(response.streaming_content, received))
    try:
        await asyncio.sleep(RECHECK * 3)
        assert not reader.done(), "the stream of a running pipeline stays open while access holds"

        # When the user is deactivated or loses the viewer role
        await db(revoke, user)

        # Then the stream ends by itself within a few seconds, saying why
        await asyncio.wait_for(reader, timeout=RECHECK + 5)
        assert received[-1] == ": access revoked\n\n"
    finally:
        reader.cancel()
    # ...and a reconnect is refused (EventSource stops on a non-200 answer)
    again = await client.get(f"/api/v1/pipelines/{pipeline.pk}/stream/")
    assert again.status_code in (302, 401, 403)


async def test_a_user_whose_last_grant_is_removed_sees_nothing_live() -> None:
    # Given a user granted one module, and a pipeline of it plus a module-less one
    from backoffice.models import ModuleGrant

    user = await db(make_user, "ivy-last-grant", modules=("energy",))
    cookie = await db(session_cookie, user)
    energy = await db(plan, year=2031, module="energy")
    await db(plan, year=2031, module="")

    # When the last grant is removed
    await db(lambda: ModuleGrant.objects.filter(user=user).delete())

    # Then the console and year feeds show nothing (not everything)...
    for path in ("/ws/pipelines/", "/ws/years/2031/"):
        socket = Socket(path, cookie=cookie)
        assert (await socket.connect())[0]
        snap = await socket.next()
        assert snap["type"] == "snapshot" and snap["pipelines"] == [] and snap["jobs"] == []
        await socket.close()
    # ...the module's DAG feed answers "not found", and so does its SSE stream
    dag = Socket(f"/ws/pipelines/{energy.pk}/", cookie=cookie)
    assert (await dag.connect())[0]
    assert await dag.next() == {"type": "closed", "code": live.CLOSE_NOT_FOUND}
    dag.closed = True
    client = AsyncClient()
    await client.aforce_login(user)
    assert (await client.get(f"/api/v1/pipelines/{energy.pk}/stream/")).status_code == 404

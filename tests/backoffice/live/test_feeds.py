"""Live feeds end to end: real ASGI app, real Redis channel layer, real PostgreSQL."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from backoffice import live
from pipelines import publish
from tests.backoffice.live.conftest import (
    Socket,
    Store,
    db,
    flush_publisher,
    make_user,
    plan,
    run_job,
    run_pipeline,
    session_cookie,
)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("no_dispatch")]


def _last_pipeline_seq(pipeline_id: Any) -> int:
    from pipelines.models import Pipeline

    return Pipeline.objects.get(pk=pipeline_id).last_pipeline_seq


def _db_state(pipeline_ids: list[Any]) -> dict[str, Any]:
    """The state a client must end with, read from the database through the snapshot."""
    snap = live.console_snapshot(modules=None)
    wanted = {str(p) for p in pipeline_ids}
    store = Store()
    store.apply(snap)
    return {
        "pipelines": {k: v for k, v in store.pipelines.items() if k in wanted},
        "jobs": {j["id"]: store.jobs[j["id"]] for j in snap["jobs"] if j["pipeline_id"] in wanted},
    }


async def _login(username: str, **kwargs: Any) -> str:
    user = await db(make_user, username, **kwargs)
    return await db(session_cookie, user)


async def _drain_pipeline(socket: Socket, store: Store, pipeline_id: str, upto: int) -> None:
    while store.pseq.get(pipeline_id, 0) < upto:
        store.apply(await socket.next())


async def test_events_arrive_in_seq_order_on_pipeline_console_and_year_feeds() -> None:
    # Given a logged-in viewer and a planned pipeline of year 2031
    cookie = await _login("ada")
    pipeline = await db(plan, width=3, year=2031, module="energy")
    pid = str(pipeline.pk)
    sockets = {
        "console": Socket("/ws/pipelines/", cookie=cookie),
        "pipeline": Socket(f"/ws/pipelines/{pid}/", cookie=cookie),
        "year": Socket("/ws/years/2031/", cookie=cookie),
    }
    stores: dict[str, Store] = {}
    for name, socket in sockets.items():
        assert await socket.connect() == (True, None), name
        snap = await socket.next()
        assert snap["type"] == "snapshot" and snap["feed"] == name
        assert pid in {p["id"] for p in snap["pipelines"]}
        stores[name] = Store(only={pid})
        stores[name].apply(snap)

    # When the pipeline runs, with progress steps
    await db(run_pipeline, pipeline.pk, steps=6)
    await db(flush_publisher)
    final = await db(_last_pipeline_seq, pipeline.pk)

    # Then every feed gets the pipeline's events in seq order, gapless, once each
    for name, socket in sockets.items():
        start = len(socket.received)
        await _drain_pipeline(socket, stores[name], pid, final)
        events = [m for m in socket.received[start:] if m.get("pipeline_id") == pid]
        seqs = [m["seq"] for m in events]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs), name
        assert [m["pipeline_seq"] for m in events] == list(range(final - len(events) + 1, final + 1)), name
        assert stores[name].gaps == [] and stores[name].duplicates == 0, name
        assert stores[name].pipelines[pid]["status"] == "success", name
        assert {j["state"] for j in stores[name].jobs.values()} == {"finished"}, name
        await socket.close()


async def test_client_reconnecting_with_after_ends_in_the_same_state_as_one_that_never_left() -> None:
    # Given two clients on the console feed
    cookie = await _login("grace")
    first = await db(plan, width=4, year=2031, module="energy")
    steady, flaky = Socket("/ws/pipelines/", cookie=cookie), Socket("/ws/pipelines/", cookie=cookie)
    ours = {str(first.pk)}
    steady_store, flaky_store = Store(only=ours), Store(only=ours)
    for socket, store in ((steady, steady_store), (flaky, flaky_store)):
        assert (await socket.connect())[0]
        store.apply(await socket.next())

    # When the flaky client drops, and 500 events are produced while it is away and
    # while it reconnects (so the replay/live seam is crossed under load)
    await flaky.close()
    last_seen = flaky_store.seq
    second = await db(plan, width=2, year=2032, module="water")
    ours.add(str(second.pk))
    await db(run_pipeline, first.pk, steps=80)  # 5 jobs x 80 progress + transitions
    done = threading.Event()

    def produce_more() -> None:
        from django.db import connection

        try:
            run_pipeline(second.pk, steps=30)
        finally:
            connection.close()
            done.set()

    producer = threading.Thread(target=produce_more)
    producer.start()
    flaky = Socket(f"/ws/pipelines/?after={last_seen}", cookie=cookie)
    assert (await flaky.connect())[0]
    while not done.is_set():
        await asyncio.sleep(0.05)
    producer.join()
    await db(flush_publisher)
    totals = {str(p.pk): await db(_last_pipeline_seq, p.pk) for p in (first, second)}
    assert sum(totals.values()) >= 500

    # Then, once both caught up, they hold exactly the same state as the database
    for socket, store in ((steady, steady_store), (flaky, flaky_store)):
        for pid, upto in totals.items():
            await _drain_pipeline(socket, store, pid, upto)
    replayed = [m for m in flaky.received if m["type"] == "replayed"]
    assert len(replayed) == 1 and replayed[0]["count"] > 400
    assert not any(m["type"] == "snapshot" for m in flaky.received)
    assert flaky_store.gaps == [] and flaky_store.duplicates == 0
    assert steady_store.gaps == [] and steady_store.duplicates == 0
    assert flaky_store.state() == steady_store.state()
    expected = await db(_db_state, [first.pk, second.pk])
    for pid in totals:
        assert flaky_store.pipelines[pid] == expected["pipelines"][pid]
    for job_id, job in expected["jobs"].items():
        assert flaky_store.jobs[job_id] == job
    # No event after the seam was delivered twice or skipped: seqs strictly increase.
    seqs = [m["seq"] for m in flaky.received if m["type"].endswith(".update") and m["pipeline_id"] in ours]
    assert seqs == sorted(set(seqs))
    await steady.close()
    await flaky.close()


async def test_anonymous_and_foreign_origin_sockets_are_refused() -> None:
    # Anonymous: accepted only to be closed with a code the browser can read.
    anonymous = Socket("/ws/pipelines/")
    assert (await anonymous.connect())[0]
    assert await anonymous.next() == {"type": "closed", "code": live.CLOSE_UNAUTHENTICATED}

    # Foreign origin, even with a valid session: the handshake is refused.
    cookie = await _login("mallory")
    foreign = Socket("/ws/pipelines/", cookie=cookie, origin=b"http://evil.example")
    connected, _ = await foreign.connect()
    assert not connected

    # Logged in without the viewer role.
    nobody = await _login("nobody", perms=())
    for path in ("/ws/pipelines/", "/ws/years/2031/"):
        socket = Socket(path, cookie=nobody)
        assert (await socket.connect())[0]
        assert await socket.next() == {"type": "closed", "code": live.CLOSE_FORBIDDEN}


async def test_module_restricted_user_sees_only_their_modules() -> None:
    # Given pipelines of two modules and a module-less one, all in 2031
    energy = await db(plan, year=2031, module="energy")
    water = await db(plan, year=2031, module="water")
    bare = await db(plan, year=2031, module="")
    restricted = await _login("eve", modules=("energy",))
    unrestricted = await _login("root")

    # A restricted user may not open a foreign module's DAG (nor learn it exists)
    foreign = Socket(f"/ws/pipelines/{water.pk}/", cookie=restricted)
    assert (await foreign.connect())[0]
    assert await foreign.next() == {"type": "closed", "code": live.CLOSE_NOT_FOUND}
    own = Socket(f"/ws/pipelines/{energy.pk}/", cookie=restricted)
    assert (await own.connect())[0]
    assert (await own.next())["type"] == "snapshot"
    await own.close()

    # On the console and year feeds: snapshot and live events only of their module
    sockets = [Socket(p, cookie=restricted) for p in ("/ws/pipelines/", "/ws/years/2031/")]
    watcher = Socket("/ws/pipelines/", cookie=unrestricted)
    for socket in [*sockets, watcher]:
        assert (await socket.connect())[0]
        await socket.next()
    for socket in sockets:
        snap = socket.received[0]
        assert {p["id"] for p in snap["pipelines"]} == {str(energy.pk)}
        assert {j["pipeline_id"] for j in snap["jobs"]} == {str(energy.pk)}
    assert {p["id"] for p in watcher.received[0]["pipelines"]} >= {str(energy.pk), str(water.pk), str(bare.pk)}

    for p in (water, bare, energy):
        await db(run_pipeline, p.pk)
    await db(flush_publisher)
    # The unrestricted watcher sees all three finish (so the events were published)...
    store = Store()
    store.apply(watcher.received[0])
    for p in (water, bare, energy):
        await _drain_pipeline(watcher, store, str(p.pk), await db(_last_pipeline_seq, p.pk))
    # ...the restricted sockets only the energy one.
    for socket in sockets:
        mine = Store()
        mine.apply(socket.received[0])
        await _drain_pipeline(socket, mine, str(energy.pk), await db(_last_pipeline_seq, energy.pk))
        assert await socket.silent(0.3)
        seen = {m["pipeline_id"] for m in socket.received[1:]}
        assert seen == {str(energy.pk)}

    # Replay honours the grant too
    replay = Socket("/ws/pipelines/?after=0", cookie=restricted)
    assert (await replay.connect())[0]
    done = await replay.until(lambda m: m["type"] == "replayed")
    assert done["count"] > 0
    assert {m["pipeline_id"] for m in replay.received[:-1]} == {str(energy.pk)}
    for socket in [*sockets, watcher, replay]:
        await socket.close()


async def test_resync_action_sends_a_fresh_snapshot() -> None:
    cookie = await _login("linus")
    pipeline = await db(plan)
    socket = Socket(f"/ws/pipelines/{pipeline.pk}/", cookie=cookie)
    assert (await socket.connect())[0]
    first = await socket.next()
    await db(run_job, (first["jobs"][0]["id"]))
    await db(flush_publisher)
    await socket.until(lambda m: m["type"] == "job.update" and m["job"]["state"] == "finished")
    await socket.send({"action": "resync"})
    snap = await socket.until(lambda m: m["type"] == "snapshot")
    assert snap["seq"] > first["seq"]
    assert snap["pipelines"][0]["pipeline_seq"] == await db(_last_pipeline_seq, pipeline.pk)
    assert len(snap["edges"]) == 2
    await socket.close()


async def test_socket_open_longer_than_group_expiry_keeps_receiving(layer: Any, monkeypatch: Any) -> None:
    # Given a layer whose groups expire after 1 s and consumers that re-join every 0.3 s
    from backoffice.consumers import LiveConsumer

    # (group_send purges expired members with the *sender's* setting: the publisher's layer)
    monkeypatch.setattr(layer, "group_expiry", 1)
    monkeypatch.setattr(publish.layer(), "group_expiry", 1)
    monkeypatch.setattr(LiveConsumer, "refresh_seconds", 0.3)
    cookie = await _login("margaret")
    pipeline = await db(plan)
    socket = Socket("/ws/pipelines/", cookie=cookie)
    assert (await socket.connect())[0]
    await socket.next()

    # When the socket stays open well past the expiry
    await asyncio.sleep(2.5)
    await db(run_pipeline, pipeline.pk)
    await db(flush_publisher)

    # Then it still receives live events
    message = await socket.until(lambda m: m.get("pipeline_id") == str(pipeline.pk) and m["type"] == "pipeline.update")
    assert message["pipeline"]["status"] in ("running", "success")
    await socket.close()


async def test_publish_never_blocks_on_a_full_or_dead_client(layer: Any) -> None:
    # Given a member of the console group that never reads (its channel fills up)
    await layer.group_add(publish.CONSOLE_GROUP, "specific.deadbeef!never-read")
    pipeline = await db(plan)
    message = {"type": "job.update", "seq": 0, "pipeline_seq": 0, "pipeline_id": str(pipeline.pk), "pipeline": {}}

    # When far more messages than the channel capacity are published
    started = time.perf_counter()
    for _ in range(3000):
        publish.publish([message])
    elapsed = time.perf_counter() - started

    # Then publishing returned at once (it only enqueues), the backlog drained although
    # the dead channel is over capacity, and a live client still gets new events
    # A publish that waited on Redis would cost a round trip per message (3000 of them, well
    # over 2.5 s even on an idle loopback); enqueueing costs microseconds each. The bound is
    # loose so that a loaded 2-core CI box does not fail it (0.85 s was seen under load).
    assert elapsed < 2.5, f"publish blocked for {elapsed:.3f}s"
    await db(flush_publisher)
    cookie = await _login("barbara")
    socket = Socket("/ws/pipelines/", cookie=cookie)
    assert (await socket.connect())[0]
    await socket.next()
    await db(run_pipeline, pipeline.pk)
    await db(flush_publisher)
    final = await socket.until(
        lambda m: m.get("pipeline_id") == str(pipeline.pk) and m["pipeline"].get("status") == "success"
    )
    assert final["type"] in ("job.update", "pipeline.update")
    await socket.close()


@pytest.mark.parametrize(
    ("origin", "host", "allowed"),
    [
        (b"http://localhost", b"localhost", True),
        (b"http://localhost:8000", b"localhost:8000", True),
        (b"http://localhost:8001", b"localhost:8000", False),  # another port on the same host
        (b"https://localhost:8000", b"localhost:8000", False),  # another scheme (plain ws here)
        (b"http://localhost", b"localhost:8000", False),
        (b"http://evil.example", b"evil.example", False),  # "same origin" on a host not allowed (DNS rebinding)
        (b"null", b"localhost", False),
        (b"", b"localhost", False),  # no Origin at all
        (b"https://console.example.org", b"localhost", True),  # configured origin
        (b"http://console.example.org", b"localhost", False),  # ... but not over http
        (b"https://console.example.org:444", b"localhost", False),
    ],
)
async def test_origin_is_compared_by_scheme_host_and_port(
    origin: bytes, host: bytes, allowed: bool, settings: Any
) -> None:
    from channels.testing import WebsocketCommunicator
    from django.conf import settings as django_settings

    from config.asgi import application

    settings.SLUICE_WS_ALLOWED_ORIGINS = ["https://console.example.org"]
    cookie = await _login("olga")
    headers = [(b"host", host), (b"cookie", f"{django_settings.SESSION_COOKIE_NAME}={cookie}".encode())]
    if origin:
        headers.append((b"origin", origin))
    comm = WebsocketCommunicator(application, "/ws/pipelines/", headers=headers)
    connected, _ = await comm.connect(timeout=5)
    assert connected is allowed
    if connected:
        assert (await comm.receive_json_from(timeout=5))["type"] == "snapshot"
    await comm.disconnect()


async def test_origin_behind_a_tls_proxy_is_https(settings: Any) -> None:
    from channels.testing import WebsocketCommunicator

    from config.asgi import application

    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    for proto, allowed in ((b"https", True), (b"http", False)):
        comm = WebsocketCommunicator(application, "/ws/pipelines/", headers=[
            (b"host", b"localhost"), (b"origin", b"https://localhost"), (b"x-forwarded-proto", proto)])
        connected, _ = await comm.connect(timeout=5)
        assert connected is allowed, proto
        await comm.disconnect()


async def test_unknown_ws_path_is_closed_cleanly() -> None:
    cookie = await _login("ursula")
    for path in ("/ws/nope/", "/ws/pipelines/not-a-uuid/", "/elsewhere"):
        socket = Socket(path, cookie=cookie)
        assert (await socket.connect())[0], path
        assert await socket.next() == {"type": "closed", "code": 4404}, path


async def test_resync_requests_are_rate_limited(settings: Any) -> None:
    settings.SLUICE_WS_RESYNC_MIN_SECONDS = 1.0
    cookie = await _login("rita")
    pipeline = await db(plan)
    socket = Socket(f"/ws/pipelines/{pipeline.pk}/", cookie=cookie)
    assert (await socket.connect())[0]
    assert (await socket.next())["type"] == "snapshot"
    # A burst of 20 resyncs: one snapshot now, one (for all the rest) a second later.
    for _ in range(20):
        await socket.send({"action": "resync"})
    assert (await socket.next())["type"] == "snapshot"
    assert await socket.silent(0.5)
    assert (await socket.next(timeout=3))["type"] == "snapshot"
    assert await socket.silent(1.5)
    # After the interval, a resync is answered at once again.
    await socket.send({"action": "resync"})
    assert (await socket.next(timeout=0.5))["type"] == "snapshot"
    await socket.close()


def test_testserver_is_no_default_host() -> None:
    import config.settings as configured  # the module's own value, before the test runner adds "testserver"

    assert "testserver" not in configured.ALLOWED_HOSTS

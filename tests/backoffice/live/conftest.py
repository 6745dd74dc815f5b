"""Fixtures for the live feeds: users with roles and grants, logged-in sockets, a client store.

Sockets talk to the real ``config.asgi.application`` (origin validator, session auth,
URL router) over the real Redis channel layer; events come from the real services.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.conf import settings

from pipelines import publish
from tests.support.fixtures import UserFactory, small_dag
from tests.support.openapi import assert_matches

ORIGIN = b"http://localhost"


@pytest.fixture(autouse=True)
def _fresh_layer() -> Iterator[None]:
    """Each test starts with an empty channel layer (groups left by earlier tests).

    The layer instance is per process and binds its Redis pools and receive lock to
    the first event loop using it; every test has its own loop, so each gets a fresh
    instance (a server has one loop for its lifetime).
    """
    import redis
    from channels.layers import channel_layers

    # Only the layer's keys: the Celery broker's queue bindings live in the same database.
    client = redis.Redis.from_url(settings.REDIS_URL)
    prefix = settings.CHANNEL_LAYERS["default"]["CONFIG"]["prefix"]
    for key in client.scan_iter(match=f"{prefix}*", count=1000):
        client.delete(key)
    channel_layers.backends = {}
    yield
    publish.flush(5)


@pytest.fixture
def no_dispatch(monkeypatch: Any) -> None:
    """Keep planned jobs away from any Celery worker: these tests play the worker.

    (A session worker started by another test module would otherwise claim them.)
    """
    from pipelines import dispatch

    monkeypatch.setattr(dispatch, "send", lambda *args, **kwargs: None)


def make_user(username: str, *, perms: tuple[str, ...] = ("view_console",), modules: tuple[str, ...] = ()) -> Any:
    """A user with backoffice permissions (a viewer by default) and optional module grants."""
    return UserFactory(username=username, perms=perms, modules=modules)


def session_cookie(user: Any) -> str:
    from django.test import Client

    client = Client()
    client.force_login(user)
    return client.cookies[settings.SESSION_COOKIE_NAME].value


_open_sockets: list[Socket] = []


@pytest.fixture(autouse=True)
async def _close_sockets() -> Any:
    """Stop every consumer a test started, so none outlives the test's event loop."""
    yield
    while _open_sockets:
        await _open_sockets.pop().close()
    from backoffice import live

    await live.close_hub()
    # The consumers' database thread keeps a connection; close it so the test
    # database can be dropped at the end of the session.
    from django.db import connections

    await database_sync_to_async(connections.close_all)()


class Socket:
    """A ``WebsocketCommunicator`` on the real ASGI app, speaking JSON."""

    def __init__(self, path: str, *, cookie: str | None = None, origin: bytes = ORIGIN,
                 accept_language: str | None = None, language_cookie: str | None = None) -> None:
        from config.asgi import application

        headers = [(b"origin", origin), (b"host", b"localhost")]
        if accept_language:
            headers.append((b"accept-language", accept_language.encode()))
        if cookie:
            value = f"{settings.SESSION_COOKIE_NAME}={cookie}"
            if language_cookie:  # what the admin's language selector sets
                value += f"; {settings.LANGUAGE_COOKIE_NAME}={language_cookie}"
            headers.append((b"cookie", value.encode()))
        self.comm = WebsocketCommunicator(application, path, headers=headers)
        self.received: list[dict[str, Any]] = []
        self.closed = False
        _open_sockets.append(self)

    async def connect(self) -> tuple[bool, int | None]:
        """(accepted, close code if the server closed right away)."""
        connected, code = await self.comm.connect(timeout=5)
        if not connected:
            return False, code
        return True, None

    async def next(self, timeout: float = 5) -> dict[str, Any]:
        out = await self.comm.receive_output(timeout)
        if out["type"] == "websocket.close":
            return {"type": "closed", "code": out.get("code")}
        message = json.loads(out["text"])
        # Every message a socket receives is one the document describes (issue 18).
        assert_matches("WebSocketMessage", message)
        self.received.append(message)
        return message

    async def until(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 15) -> dict[str, Any]:
        async def loop() -> dict[str, Any]:
            while True:
                message = await self.next(timeout)
                if predicate(message) or message["type"] == "closed":
                    return message

        return await asyncio.wait_for(loop(), timeout)

    async def silent(self, seconds: float = 0.5) -> bool:
        return await self.comm.receive_nothing(timeout=seconds)

    async def send(self, data: dict[str, Any]) -> None:
        await self.comm.send_to(text_data=json.dumps(data))

    async def close(self) -> None:
        if not self.closed:
            self.closed = True
            await self.comm.disconnect()


class Store:
    """What a browser holds: the live.js rules in Python (apply by ``pipeline_seq``)."""

    def __init__(self, only: set[str] | None = None, *, hold_jumps: bool = False) -> None:
        # Pipelines this test made: other runs may share the Redis database.
        self.only = only
        # live.js holds an event that jumps ahead of its pipeline's seq until the missing
        # one comes (docs/LIVE.md: two worker processes publish independently, so one's
        # event can overtake the other's). With several worker processes a test models
        # that; held events never applied count as gaps (``held_gaps``).
        self.hold_jumps = hold_jumps
        self.held: dict[str, dict[int, dict[str, Any]]] = {}
        self.pipelines: dict[str, dict[str, Any]] = {}
        self.pseq: dict[str, int] = {}
        self.jobs: dict[int, dict[str, Any]] = {}
        self.seq = 0
        self.gaps: list[tuple[str, int, int]] = []
        self.duplicates = 0

    def apply(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "snapshot":
            for p in message["pipelines"]:
                self.pipelines[p["id"]] = {k: v for k, v in p.items() if k != "pipeline_seq"}
                self.pseq[p["id"]] = p["pipeline_seq"]
            for j in message["jobs"]:
                self.jobs[j["id"]] = {k: v for k, v in j.items() if k != "pipeline_id"}
            self.seq = message["seq"]
        elif kind in ("job.update", "pipeline.update"):
            pid = message["pipeline_id"]
            if self.only is not None and pid not in self.only:
                return
            have = self.pseq.get(pid, 0)
            held = self.held.setdefault(pid, {})
            if message["pipeline_seq"] <= have or message["pipeline_seq"] in held:
                self.duplicates += 1
                return
            if self.hold_jumps and have and message["pipeline_seq"] != have + 1:
                held[message["pipeline_seq"]] = message
                return
            if message["pipeline_seq"] != have + 1:
                self.gaps.append((pid, have, message["pipeline_seq"]))
            self._take(pid, message)
            while self.pseq[pid] + 1 in held:
                self._take(pid, held.pop(self.pseq[pid] + 1))
        elif kind == "replayed":
            self.seq = max(self.seq, message["seq"])

    def _take(self, pid: str, message: dict[str, Any]) -> None:
        self.pseq[pid] = message["pipeline_seq"]
        self.pipelines[pid] = message["pipeline"]
        if message["job"] is not None:
            self.jobs[message["job"]["id"]] = message["job"]
        self.seq = max(self.seq, message["seq"])

    def received(self, pid: str) -> int:
        """Events of the pipeline this store has: applied in order, or held after a gap."""
        return self.pseq.get(pid, 0) + len(self.held.get(pid, ()))

    def state(self) -> dict[str, Any]:
        return {"pipelines": self.pipelines, "jobs": self.jobs, "pseq": self.pseq}


async def db(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return await database_sync_to_async(fn)(*args, **kwargs)


def flush_publisher() -> None:
    # 30 s: the drain is bounded by the machine's load (a busy 2-core CI box), not by the feed
    assert publish.flush(30), "publisher did not drain"


@pytest.fixture
def layer() -> Any:
    return get_channel_layer()


# --- producing real events without a worker (one process: publish order = seq order) ---


def plan(*, width: int = 2, year: int | None = None, module: str = "", kind: str = "noop") -> Any:
    """The small DAG without its join: ``start`` → ``width`` parallel jobs."""
    return small_dag(width, end=False, year=year, module=module, kind=kind)


def run_job(job_id: int, *, steps: int = 0) -> None:
    from pipelines.registry import Outcome
    from pipelines.services import job_claim, job_finish, job_progress

    claim = job_claim(job_id=job_id, task_id=f"test-{job_id}", worker="live-tests")
    assert claim.job is not None, claim.reason
    attempt = claim.job.attempts
    for i in range(steps):
        job_progress(job_id=job_id, attempt=attempt, processed=i + 1, total=steps, phase=f"step {i // 10}")
    job_finish(job_id=job_id, attempt=attempt, outcome=Outcome(message="done"))


def run_pipeline(pipeline_id: Any, *, steps: int = 0) -> None:
    """Claim, progress and finish every job in dependency order, as a worker would."""
    from pipelines.models import Job, JobState, Pipeline

    while True:
        queued = list(Job.objects.filter(pipeline_id=pipeline_id, state=JobState.QUEUED).order_by("id"))
        if not queued:
            break
        for job in queued:
            run_job(job.pk, steps=steps)
    assert Pipeline.objects.get(pk=pipeline_id).is_done

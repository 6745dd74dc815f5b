"""SSE over a real ASGI server (uvicorn subprocess) following a real pipeline on a real worker.

Given a pipeline whose jobs report progress, when a client reads part of the stream,
disconnects mid-pipeline and reconnects with ``Last-Event-ID``, then it has received
every event of the pipeline exactly once, in ``seq`` order, byte-equal to the stored
payloads, and the stream ended by itself when the pipeline was done.

The servers here re-read the database without a wake-up only every 120 s
(``SLUICE_SSE_SAFETY_READ_SECONDS``): every event these tests receive within their
timeouts was rung in by the channel layer, not found by a timer.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from django.contrib.auth.models import User
from django.test import Client
from rest_framework.authtoken.models import Token

from pipelines import publish
from pipelines.models import Job, JobEvent, JobState, Pipeline
from pipelines.registry import Outcome
from pipelines.services import job_claim, job_finish, pipeline_cancel
from tests.backoffice.api.conftest import GRANTED_MODULE, OTHER_MODULE
from tests.conftest import ROOT, _test_database_url, worker_env
from tests.support.browser import Server
from tests.support.fixtures import small_dag, wait_for
from tests.support.openapi import assert_matches

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]

# Far beyond every wait below: an event that arrives came through the channel layer.
SAFETY_READ = "120"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def asgi_server(celery_worker: Any) -> Iterator[str]:
    port = _free_port()
    log = open(ROOT / ".var" / "test-logs" / f"api-uvicorn-{port}.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "config.asgi:application", "--host", "127.0.0.1", "--port", str(port)],
        cwd=ROOT, env=worker_env(SLUICE_SSE_PING_SECONDS="0.3", SLUICE_SSE_SAFETY_READ_SECONDS=SAFETY_READ),
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            httpx.get(f"{base}/healthz", timeout=1)
            break
        except httpx.HTTPError:
            time.sleep(0.1)
    else:
        proc.kill()
        raise RuntimeError("uvicorn did not start")
    yield base
    proc.terminate()
    proc.wait(timeout=10)
    log.close()


def read_events(response: httpx.Response, *, stop_after: int | None = None) -> tuple[list[dict[str, Any]], bool]:
    """Parse SSE frames: (events, saw a ping comment). Stops early after ``stop_after`` events."""
    events: list[dict[str, Any]] = []
    fields: dict[str, str] = {}
    pinged = False
    for line in response.iter_lines():
        if line.startswith(":"):
            pinged = True
        elif line == "":
            if "data" in fields:
                payload = json.loads(fields["data"])
                assert_matches("LiveEvent", payload)  # the schema /api/schema/ gives for the data
                assert fields["id"] == str(payload["seq"]) and fields["event"] == payload["type"]
                events.append(payload)
                if stop_after is not None and len(events) >= stop_after:
                    break
            fields = {}
        else:
            key, _, value = line.partition(":")
            fields[key] = value.removeprefix(" ")
    return events, pinged


def slow_pipeline(module: str = GRANTED_MODULE) -> Pipeline:
    return small_dag(params={"sleep": 0.8, "steps": 4}, module=module)  # four progress events per job


def test_reconnect_with_last_event_id_loses_and_repeats_nothing(
    asgi_server: str, users: dict[str, User], wait_for_pipeline: Any
) -> None:
    token = Token.objects.create(user=users["viewer"]).key
    headers = {"Authorization": f"Token {token}"}
    pipeline = slow_pipeline()
    url = f"{asgi_server}/api/v1/pipelines/{pipeline.pk}/stream/"

    with httpx.stream("GET", url, headers=headers, timeout=20) as first:
        assert first.status_code == 200
        assert first.headers["content-type"].startswith("text/event-stream")
        part1, _ = read_events(first, stop_after=6)
    assert not Pipeline.objects.get(pk=pipeline.pk).is_done, "disconnect must happen mid-pipeline"
    # events keep coming while the client is away
    wait_for(lambda: JobEvent.objects.filter(pipeline_id=pipeline.pk, seq__gt=part1[-1]["seq"]).exists(), timeout=10,
             message="an event while the client is away")

    resume = {**headers, "Last-Event-ID": str(part1[-1]["seq"])}
    with httpx.stream("GET", url, headers=resume, timeout=30) as second:
        assert second.status_code == 200
        part2, pinged = read_events(second)  # runs until the server ends the stream

    done = wait_for_pipeline(pipeline.pk, timeout=5)
    assert done.status == "success"
    stored = list(JobEvent.objects.filter(pipeline_id=pipeline.pk).order_by("seq").values_list("payload", flat=True))
    received = part1 + part2
    assert [e["seq"] for e in received] == [e["seq"] for e in stored]
    assert received == stored
    assert received[-1]["type"] == "pipeline.update" and received[-1]["pipeline"]["status"] == "success"
    assert any(e["kind"] == "progress" for e in received)
    assert pinged  # keep-alive comments while jobs were quiet (ping interval 0.3 s here)

    # A finished pipeline: a late client gets the history after its id, then the end.
    with httpx.stream("GET", f"{url}?after={stored[-3]['seq']}", headers=headers, timeout=10) as late:
        tail, _ = read_events(late)
    assert tail == stored[-2:]


def test_stream_access(asgi_server: str, users: dict[str, User]) -> None:
    pipeline = slow_pipeline(module=OTHER_MODULE)
    url = f"{asgi_server}/api/v1/pipelines/{pipeline.pk}/stream/"
    assert httpx.get(url, timeout=5).status_code == 401
    assert httpx.get(url, headers={"Authorization": "Token bad"}, timeout=5).status_code == 401
    granted = Token.objects.create(user=users["granted"]).key
    response = httpx.get(url, headers={"Authorization": f"Token {granted}"}, timeout=5)
    assert response.status_code == 404 and response.json()["code"] == "not_found"
    norole = Token.objects.create(user=users["norole"]).key
    assert httpx.get(url, headers={"Authorization": f"Token {norole}"}, timeout=5).status_code == 403
    viewer = Token.objects.create(user=users["viewer"]).key
    bad = httpx.get(url, headers={"Authorization": f"Token {viewer}", "Last-Event-ID": "x"}, timeout=5)
    assert bad.status_code == 400
    # Session auth: the same rules through the session cookie.
    browser = Client()
    browser.force_login(users["viewer"])
    cookies = {"sessionid": browser.cookies["sessionid"].value}
    with httpx.stream("GET", url, cookies=cookies, timeout=30) as response:
        assert response.status_code == 200
        events, _ = read_events(response)
    assert events[-1]["pipeline"]["status"] == "success"


# --- woken by the channel layer, silent in between ------------------------------------------


class Reader(threading.Thread):
    """One SSE client in a thread: every frame as received (raw ``data`` text kept), with pings."""

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        super().__init__(daemon=True)
        self.url, self.headers = url, headers
        self.frames: list[dict[str, str]] = []
        self.pings = 0
        self.status = 0
        self.ended = False

    def run(self) -> None:
        with httpx.stream("GET", self.url, headers=self.headers, timeout=60) as response:
            self.status = response.status_code
            fields: dict[str, str] = {}
            for line in response.iter_lines():
                if line.startswith(": ping"):
                    self.pings += 1
                elif line == "":
                    if "data" in fields:
                        self.frames.append(fields)
                    fields = {}
                elif not line.startswith(":"):
                    key, _, value = line.partition(":")
                    fields[key] = value.removeprefix(" ")
        self.ended = True  # the server closed the stream

    def seqs(self) -> list[int]:
        return [int(f["id"]) for f in self.frames]


def server_queries(application_name: str) -> set[tuple[int, Any]]:
    """(backend pid, start of its last statement) of every connection the server holds."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pid, query_start FROM pg_stat_activity WHERE application_name = %s",
                       [application_name])
        return set(cursor.fetchall())


POOL = 2


@pytest.fixture
def quiet_server(users: dict[str, User]) -> Iterator[tuple[Server, str]]:
    """uvicorn without a worker of its own, tagging its database connections with an
    ``application_name`` (so PostgreSQL can tell what it ran), access re-checked only
    every 120 s, pings every 0.3 s, and a pool of only 2 connections (waits 3 s at most)."""
    name = f"sse-quiet-{time.monotonic_ns()}"
    server = Server(
        "sse-quiet", DATABASE_URL=f"{_test_database_url()}?application_name={name}",
        SLUICE_SSE_PING_SECONDS="0.3", SLUICE_SSE_SAFETY_READ_SECONDS=SAFETY_READ,
        SLUICE_LIVE_ACCESS_RECHECK_SECONDS=SAFETY_READ,
        SLUICE_DB_POOL_MIN_SIZE="1", SLUICE_DB_POOL_MAX_SIZE=str(POOL), SLUICE_DB_POOL_TIMEOUT="3",
    )
    server.start()
    yield server, name
    server.stop()


def test_a_committed_event_wakes_every_stream_and_idle_streams_query_nothing(
    quiet_server: tuple[Server, str], users: dict[str, User]
) -> None:
    server, application_name = quiet_server
    # Given a pipeline nobody runs (its jobs wait on a queue no worker of this test consumes)
    pipeline = small_dag(job_type="noop_iso", module=GRANTED_MODULE)
    token = Token.objects.create(user=users["viewer"]).key
    url = f"{server.base}/api/v1/pipelines/{pipeline.pk}/stream/"
    stored_at_start = JobEvent.objects.filter(pipeline_id=pipeline.pk).count()
    # ...followed by more clients than the server has database connections, who have
    # received its history and are idle (pinged)
    readers = [Reader(url, {"Authorization": f"Token {token}"}) for _ in range(POOL + 2)]
    for reader in readers:
        reader.start()
    wait_for(lambda: all(len(r.frames) == stored_at_start and r.pings for r in readers), timeout=20,
             message="every client has the history and a ping")
    # ...then open streams hold no connection: the API still answers
    listing = httpx.get(f"{server.base}/api/v1/pipelines/", headers={"Authorization": f"Token {token}"}, timeout=10)
    assert listing.status_code == 200, listing.text

    # When nothing happens for a while, then the server runs no statement at all
    before = server_queries(application_name)
    assert before, "the server's connections are visible to PostgreSQL by their application_name"
    pings = [r.pings for r in readers]
    time.sleep(1.5)
    assert all(r.pings >= p + 3 for r, p in zip(readers, pings, strict=True)), "streams alive (pinged)"
    assert server_queries(application_name) == before, "an idle stream ran a query"

    # When a transition commits, then every client receives it long before a timer read would
    start = Job.objects.filter(pipeline=pipeline, state=JobState.QUEUED).order_by("id").first()
    assert start is not None
    claimed = job_claim(job_id=start.pk, task_id="sse-test", worker="sse-test")
    assert claimed.job is not None, claimed.reason
    job_finish(job_id=start.pk, attempt=claimed.job.attempts, outcome=Outcome(message="done"))
    publish.flush(5)
    newest = JobEvent.objects.filter(pipeline_id=pipeline.pk).order_by("-seq").values_list("seq", flat=True)[0]
    wait_for(lambda: all(newest in r.seqs() for r in readers), timeout=30,
             message=f"seq {newest} on every stream (the safety read is {SAFETY_READ} s away)")

    # When the rest of the pipeline is cancelled, then the streams deliver its last events and end by themselves
    pipeline_cancel(pipeline_id=pipeline.pk, reason="test over")
    publish.flush(5)
    wait_for(lambda: all(r.ended for r in readers), timeout=30, message="every stream ended")
    for reader in readers:
        reader.join(5)

    # ...and each got exactly the stored events, in seq order, byte for byte as stored
    stored = list(JobEvent.objects.filter(pipeline_id=pipeline.pk).order_by("seq").values_list("payload", flat=True))
    for reader in readers:
        assert reader.status == 200
        assert reader.seqs() == [e["seq"] for e in stored]
        assert [f["data"] for f in reader.frames] == [json.dumps(e, separators=(",", ":")) for e in stored]
        assert [f["event"] for f in reader.frames] == [e["type"] for e in stored]
    assert stored[-1]["pipeline"]["status"] == "cancelled"

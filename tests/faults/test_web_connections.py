"""A burst against a real uvicorn web process keeps PostgreSQL connections bounded."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import httpx
import psycopg
import pytest
from django.utils import timezone
from rest_framework.authtoken.models import Token

from ingestion.models import Upload, Year
from tests.conftest import _test_database_url
from tests.faults.conftest import WEB_APP_NAME
from tests.support.fixtures import UserFactory
from tests.support.redis_server import RedisServer

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

POOL_SIZE = 6
HEADER = "unit_id,det,category,fte,comment\n"


class BackendSampler(threading.Thread):
    """Counts the web server's PostgreSQL sessions every 20 ms; keeps the peak."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak = 0
        self.stopped = threading.Event()
        self.conn = psycopg.connect(_test_database_url(), autocommit=True)

    def count(self) -> int:
        row = self.conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name = %s",
            [WEB_APP_NAME],
        ).fetchone()
        return int(row[0]) if row else 0

    def run(self) -> None:
        while not self.stopped.wait(0.02):
            self.peak = max(self.peak, self.count())

    def stop(self) -> int:
        self.stopped.set()
        self.join(timeout=5)
        now = self.count()
        self.conn.close()
        return now


def _csv(n: int, rows: int) -> bytes:
    lines = [HEADER] + [f"ENG-{(i % 9000) + 1:04d},staff,researcher,{(n + i) % 7 + 0.5},u{n}\n" for i in range(rows)]
    return "".join(lines).encode()


async def _burst(base: str, token: str, gets: int, uploads: int) -> list[tuple[str, int]]:
    headers = {"Authorization": f"Token {token}"}
    paths = ["/api/v1/pipelines/", "/api/v1/years/", "/api/v1/jobs/", "/api/v1/modules/", "/healthz"]
    limits = httpx.Limits(max_connections=gets + uploads, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=base, headers=headers, limits=limits, timeout=120) as client:

        async def get(i: int) -> tuple[str, int]:
            response = await client.get(paths[i % len(paths)])
            return "get", response.status_code

        async def upload(n: int) -> tuple[str, int]:
            files = {"file": (f"headcount-{n}.csv", _csv(n, 5000), "text/csv")}
            response = await client.post(
                "/api/v1/years/2035/modules/headcount/uploads/", data={"target": "data_entries"}, files=files
            )
            return "upload", response.status_code

        return await asyncio.gather(*[get(i) for i in range(gets)], *[upload(n) for n in range(uploads)])


def test_a_burst_of_requests_and_uploads_keeps_connections_bounded_and_answers(
    web_server: Any, private_redis: RedisServer
) -> None:
    # given a web process with a pool of POOL_SIZE connections, and an operator's token;
    # its Redis is private: no worker runs the uploads' jobs (they would still be
    # writing when the test database is flushed)
    server = web_server(
        SLUICE_DB_POOL_MAX_SIZE=str(POOL_SIZE), SLUICE_DB_POOL_MIN_SIZE="1", REDIS_URL=private_redis.url
    )
    admin = UserFactory(username="ops", is_superuser=True, is_staff=True)
    token = Token.objects.create(user=admin).key
    Year.objects.create(year=2035, configured_at=timezone.now())
    sampler = BackendSampler()
    sampler.start()
    # when 200 API requests and 50 uploads arrive at once
    results = asyncio.run(_burst(server.url, token, gets=200, uploads=50))
    after = sampler.stop()
    # then every request was answered (no 500, no refusal) ...
    statuses: dict[tuple[str, int], int] = {}
    for kind, code in results:
        statuses[(kind, code)] = statuses.get((kind, code), 0) + 1
    assert statuses == {("get", 200): 200, ("upload", 202): 50}, server.log_text()
    assert Upload.objects.count() == 50
    # ... and the server never held more PostgreSQL sessions than its pool
    assert 1 <= sampler.peak <= POOL_SIZE, f"peak {sampler.peak} sessions"
    assert after <= POOL_SIZE


def test_uploads_answer_again_after_postgresql_dropped_the_web_connections(
    web_server: Any, private_redis: RedisServer
) -> None:
    # given a web process that has authenticated an upload (before Django: the body limit)
    server = web_server(REDIS_URL=private_redis.url)
    admin = UserFactory(username="ops", is_superuser=True, is_staff=True)
    headers = {"Authorization": f"Token {Token.objects.create(user=admin).key}"}
    Year.objects.create(year=2035, configured_at=timezone.now())

    def upload(n: int) -> httpx.Response:
        files = {"file": (f"headcount-{n}.csv", _csv(n, 3), "text/csv")}
        return httpx.post(f"{server.url}/api/v1/years/2035/modules/headcount/uploads/", headers=headers,
                          data={"target": "data_entries"}, files=files, timeout=30)

    assert upload(0).status_code == 202
    # when PostgreSQL ends every session of the web process (a restart, a failover)
    with psycopg.connect(_test_database_url(), autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
                     [WEB_APP_NAME])
    # then the next uploads are accepted: dead connections are replaced, none is kept
    # (it failed every later upload with a plain-text 500), none handed out (a 503)
    answers = [upload(n) for n in range(1, 4)]
    assert [a.status_code for a in answers] == [202, 202, 202], [a.text for a in answers] + [server.log_text()]

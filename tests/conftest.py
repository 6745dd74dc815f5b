"""Shared fixtures: real PostgreSQL (pytest-django's test database), real Redis, and
real Celery workers as subprocesses pointed at the test database.

Tests that talk to a worker must use ``transactional_db`` (the worker only sees
committed rows). The session worker runs 2 prefork processes on every queue.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import pytest
from django.conf import settings
from django.utils import translation

import tests.support.handlers  # the test process plans the test job kinds too
from pipelines import registry
from tests.support.fixtures import wait_for
from tests.support.processes import stop_group

ROOT = Path(__file__).resolve().parent.parent

SOURCE_MAX_BYTES = 256 * 1024
# The workers' scratch folder (a source's download before it is stored), one per
# checkout's database so parallel runs never see each other's files.
SCRATCH_DIR = ROOT / ".var" / "test-scratch" / str(settings.DATABASES["default"]["NAME"])
SOURCE_TEST_SECRET = "Bearer test-only-secret"

# Handlers only tests need (failing, effect-recording jobs) plug in like any job kind.
TEST_HANDLER_MODULES = ",".join([*settings.SLUICE_HANDLER_MODULES, "tests.support.handlers"])
# A test worker consumes every registered queue but the isolated one (only the tests that
# start their own worker on it do).
QUEUES = ",".join(q for q in registry.queues() if q != tests.support.handlers.ISOLATED_QUEUE)


def _test_database_url() -> str:
    db = settings.DATABASES["default"]
    parts = urlsplit(settings.DATABASE_URL)
    return urlunsplit(parts._replace(path="/" + quote(db["NAME"])))


def worker_env(**extra: str) -> dict[str, str]:
    env = {
        **os.environ,
        "DATABASE_URL": _test_database_url(),
        "SLUICE_HANDLER_MODULES": TEST_HANDLER_MODULES,
        "SLUICE_HEARTBEAT_SECONDS": "0.3",
        "SLUICE_STALE_AFTER_SECONDS": "2",
        # Scheduled sources against the tests' local HTTP server (tests/support/http_source.py):
        # timeouts, backoff and size limit short enough for tests of each failure.
        "SLUICE_SOURCE_CONNECT_TIMEOUT": "1",
        "SLUICE_SOURCE_READ_TIMEOUT": "1",
        "SLUICE_SOURCE_BACKOFF_SECONDS": "0.05",
        "SLUICE_SOURCE_MAX_BYTES": str(SOURCE_MAX_BYTES),
        "SLUICE_SOURCE_SECRET_TESTAPI": SOURCE_TEST_SECRET,
        "SLUICE_SCRATCH_DIR": str(SCRATCH_DIR),
        "PYTHONPATH": str(ROOT),
    }
    SCRATCH_DIR.mkdir(parents=True, exist_ok=True)
    env.update(extra)
    return env


class WorkerProcess:
    """A ``celery worker`` subprocess in its own process group (so it can be SIGKILLed whole)."""

    def __init__(self, *, name: str, concurrency: int = 2, queues: str = QUEUES, **env: str) -> None:
        self.name = name
        # Named after the test database so parallel runs (other checkouts) never share logs.
        self.log_path = ROOT / ".var" / "test-logs" / f"{settings.DATABASES['default']['NAME']}-{name}.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable, "-m", "celery", "-A", "config", "worker", "-Q", queues, "-c", str(concurrency),
            "-P", "prefork", "-n", f"{name}@%h", "-l", "info", "--without-mingle", "--without-gossip",
        ]
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, env=worker_env(**env), stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self._wait_ready()

    def _wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited: {self.log_path.read_text()[-3000:]}")
            if b"ready." in self.log_path.read_bytes():
                return
            time.sleep(0.1)
        raise RuntimeError(f"worker not ready in {timeout}s: {self.log_path.read_text()[-3000:]}")

    def kill9(self) -> None:
        """SIGKILL the whole worker (parent and pool children): a machine dying mid-job."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        stop_group(self.proc)
        self.log.close()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


def _purge_broker() -> None:
    """Drop messages left by earlier runs so they cannot act on this run's database."""
    import redis

    client = redis.Redis.from_url(settings.REDIS_URL)
    client.flushdb()


@pytest.fixture(scope="session")
def celery_worker(django_db_setup: Any, django_db_blocker: Any) -> Iterator[WorkerProcess]:
    _purge_broker()
    worker = WorkerProcess(name="test-session")
    yield worker
    worker.stop()


@pytest.fixture
def worker_factory(django_db_setup: Any) -> Iterator[Callable[..., WorkerProcess]]:
    """Start extra, test-owned workers (for kill -9 and restart scenarios)."""
    started: list[WorkerProcess] = []

    def start(name: str, **kwargs: Any) -> WorkerProcess:
        w = WorkerProcess(name=name, **kwargs)
        started.append(w)
        return w

    yield start
    for w in started:
        w.stop()


@pytest.fixture(autouse=True)
def _default_language() -> Iterator[None]:
    """Every test ends in the default language: a test that renders a page in French
    leaves its thread's translation active, and a later test's English output (a
    management command, a status message) would read French."""
    yield
    translation.deactivate()


# The name tests written before ``tests.support.fixtures`` import (same helper).
wait_until = wait_for


@pytest.fixture
def wait_for_pipeline() -> Callable[..., Any]:
    from pipelines.models import Pipeline

    def wait(pipeline_id: Any, timeout: float = 30) -> Pipeline:
        def done() -> Pipeline | None:
            p = Pipeline.objects.get(pk=pipeline_id)
            return p if p.is_done else None

        return wait_for(done, timeout=timeout, message=f"pipeline {pipeline_id} to finish")

    return wait


@pytest.fixture
def effect_table(transactional_db: Any) -> Callable[[int], list[tuple[int, int]]]:
    """A plain table the ``test_effect`` kinds write to; returns a reader of (job_id, attempt) rows."""
    from django.db import connection

    from tests.support.handlers import EFFECT_TABLE

    with connection.cursor() as cursor:
        cursor.execute(f"CREATE TABLE IF NOT EXISTS {EFFECT_TABLE} (job_id bigint, attempt int)")
        cursor.execute(f"DELETE FROM {EFFECT_TABLE}")

    def rows(job_id: int) -> list[tuple[int, int]]:
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT job_id, attempt FROM {EFFECT_TABLE} WHERE job_id = %s", [job_id])
            return list(cursor.fetchall())

    return rows


@pytest.fixture
def isolated_queue() -> str:
    """The test-only queue: a known queue (pause/resume) since its test job types registered it."""
    from tests.support.handlers import ISOLATED_QUEUE

    return ISOLATED_QUEUE


@pytest.fixture(scope="session", autouse=True)
def _end_stray_sessions(django_db_setup: Any, django_db_blocker: Any) -> Iterator[None]:
    """Before the test database is dropped, end sessions other processes left on it.

    Subprocess servers and thread-pool connections (async consumers, SSE) may still hold
    a session at the end; DROP DATABASE would then fail with "is being accessed by other
    users" and leave the database behind. Runs before ``django_db_setup``'s teardown.
    """
    yield
    from django.db import connection

    with django_db_blocker.unblock(), connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )

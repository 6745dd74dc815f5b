"""Chaos fixtures: a private Redis, worker/beat/web subprocesses the case may kill, a
configured year, and the result table (printed at the end, written as JSON + markdown).

Cases are marked ``chaos``; outside `make chaos` (``SLUICE_CHAOS=1``) only those also
marked ``chaos_ci`` run, the others are skipped saying so.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import redis as redis_lib
from django.conf import settings
from django.db import connection

from tests.chaos import harness
from tests.chaos.harness import YEAR, CaseResult
from tests.conftest import QUEUES, ROOT, WorkerProcess, wait_until, worker_env
from tests.faults.conftest import WebServer
from tests.support.redis_server import RedisServer, celery_broker

# `make chaos` runs with production's recovery settings (not the shortened ones of the
# other worker tests): the table's recovery times are what an operator would see. The CI
# subset shortens them to stay within its time budget.
PRODUCTION_RECOVERY = {"SLUICE_HEARTBEAT_SECONDS": "5", "SLUICE_STALE_AFTER_SECONDS": "15",
                       "SLUICE_REDISPATCH_AFTER_SECONDS": "10", "SLUICE_REAPER_INTERVAL_SECONDS": "5"}
CI_RECOVERY = {"SLUICE_HEARTBEAT_SECONDS": "1", "SLUICE_STALE_AFTER_SECONDS": "4",
               "SLUICE_REDISPATCH_AFTER_SECONDS": "4", "SLUICE_REAPER_INTERVAL_SECONDS": "2"}

_RESULTS = pytest.StashKey[dict[str, CaseResult]]()
_SKIPPED = pytest.StashKey[dict[str, str]]()


def chaos_run() -> bool:
    return os.environ.get("SLUICE_CHAOS") == "1"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if chaos_run():
        # The table's order (the long load cases last), whatever the file names.
        order = {case: n for n, (case, _title) in enumerate(harness.CASES)}
        items.sort(key=lambda item: order.get(_case_of(item) or "", -1))
        return
    skip = pytest.mark.skip(reason="long chaos case: runs under `make chaos` (not in the CI subset)")
    for item in items:
        if item.get_closest_marker("chaos") and not item.get_closest_marker("chaos_ci"):
            item.add_marker(skip)


def _case_of(item: pytest.Item) -> str | None:
    marker = item.get_closest_marker("chaos")
    return str(marker.kwargs["case"]) if marker and "case" in marker.kwargs else None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: Any) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    case = _case_of(item)
    if case is None:
        return
    results = item.config.stash.setdefault(_RESULTS, {})
    if report.skipped and call.when in ("setup", "call"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        item.config.stash.setdefault(_SKIPPED, {})[case] = reason.removeprefix("Skipped: ")
        return
    record = results.get(case)
    if record is None:
        return
    if report.failed:
        message = str(getattr(report.longrepr, "reprcrash", None) and report.longrepr.reprcrash.message)
        record.outcome = f"FAILED ({call.when}): {message.splitlines()[0][:200] if message else '?'}"
    elif call.when == "call" and record.outcome == "not run":
        record.outcome = "passed"


def _rows(config: pytest.Config) -> list[dict[str, Any]]:
    results = config.stash.get(_RESULTS, {})
    skipped = config.stash.get(_SKIPPED, {})
    rows = []
    for case, _title in harness.CASES:
        if case in results:
            rows.append(results[case].as_dict())
        else:
            why = skipped.get(case, "not selected in this run")
            rows.append(CaseResult(case=case, outcome=f"not run: {why}").as_dict())
    return rows


def _write(config: pytest.Config) -> Path:
    """The table as it stands (after every case: a run cut short keeps what it measured)."""
    rows = _rows(config)
    out = Path(os.environ.get("SLUICE_CHAOS_REPORT_DIR") or ROOT / ".var" / "chaos")
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    (out / "chaos.json").write_text(json.dumps({"date": stamp, "cases": rows}, indent=2))
    (out / "chaos.md").write_text(f"Run {stamp}\n\n{harness.markdown_table(rows)}\n")
    return out / "chaos.md"


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    if not config.stash.get(_RESULTS, {}):
        return
    terminalreporter.section("chaos cases")
    terminalreporter.write_line(harness.markdown_table(_rows(config)))
    terminalreporter.write_line(f"written: {_write(config)} and chaos.json")


@pytest.fixture
def chaos_case(request: pytest.FixtureRequest) -> CaseResult:
    """The case's row in the table; the test fills in its measurements."""
    case = _case_of(request.node)
    assert case is not None, "a chaos test needs @pytest.mark.chaos(case=...)"
    record = CaseResult(case=case)
    request.config.stash.setdefault(_RESULTS, {})[case] = record
    started = time.monotonic()
    yield record
    record.seconds = round(time.monotonic() - started, 1)
    _write(request.config)


# --- servers and processes -------------------------------------------------------------------


@pytest.fixture(scope="session")
def chaos_redis() -> Iterator[RedisServer]:
    """A private redis-server the cases may kill (on the port and in the directory `make chaos`
    exported: its cleanup finds it by both)."""
    port, directory = os.environ.get("SLUICE_CHAOS_REDIS_PORT"), os.environ.get("SLUICE_CHAOS_REDIS_DIR")
    server = RedisServer(int(port) if port else None, directory=Path(directory) if directory else None)
    yield server
    server.stop()


class PgControl:
    """The private PostgreSQL of `make chaos` (tests/chaos/run.py): restart it, end backends."""

    def __init__(self, pgdata: str, user: str | None) -> None:
        self.pgdata, self.user = pgdata, user

    def restart(self) -> None:
        from pgserver import _commands

        # -m fast: every session is ended, then it comes back (as after a crash or an upgrade).
        _commands.pg_ctl(["-w", "-m", "fast", "restart"], pgdata=Path(self.pgdata), user=self.user, timeout=60)


@pytest.fixture(scope="session")
def chaos_pg() -> PgControl | None:
    pgdata = os.environ.get("SLUICE_CHAOS_PGDATA")
    return PgControl(pgdata, os.environ.get("SLUICE_CHAOS_PG_USER") or None) if pgdata else None


class Stack:
    """Workers, beat and a web server of one case, all on the private Redis."""

    def __init__(self, redis: RedisServer, tmp_path: Path) -> None:
        self.redis, self.tmp_path = redis, tmp_path
        self.workers: list[WorkerProcess] = []
        self.others: list[subprocess.Popen[bytes]] = []
        self.webs: list[WebServer] = []
        self.groups: set[int] = set()
        recovery = PRODUCTION_RECOVERY if harness.full_scale() else CI_RECOVERY
        self.env = {**recovery, "REDIS_URL": redis.url, "SLUICE_MEDIA_ROOT": str(settings.MEDIA_ROOT)}

    def worker(self, name: str, *, concurrency: int = 1, queues: str = QUEUES) -> WorkerProcess:
        w = WorkerProcess(name=f"chaos-{name}", concurrency=concurrency, queues=queues, **self.env)
        self.workers.append(w)
        self.groups.add(w.proc.pid)
        return w

    def beat(self) -> None:
        """celery beat: the reaper runs every SLUICE_REAPER_INTERVAL_SECONDS, as in production."""
        log = open(self.tmp_path / "beat.log", "wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "config", "beat", "-l", "info",
             "-s", str(self.tmp_path / "celerybeat-schedule")],
            cwd=ROOT, env=worker_env(**self.env), stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        self.others.append(proc)
        self.groups.add(proc.pid)

    def web(self) -> WebServer:
        # (WebServer sets SLUICE_MEDIA_ROOT to tmp_path/media itself: the same folder)
        server = WebServer(self.tmp_path, **{k: v for k, v in self.env.items() if k != "SLUICE_MEDIA_ROOT"})
        self.webs.append(server)
        self.groups.add(server.proc.pid)
        return server

    @staticmethod
    def pool_pids(worker: WorkerProcess) -> list[int]:
        return [p.pid for p in psutil.Process(worker.proc.pid).children()]

    def stop(self) -> None:
        for w in self.workers:
            with contextlib.suppress(Exception):
                w.stop()
        for s in self.webs:
            with contextlib.suppress(Exception):
                s.stop()
        for p in self.others:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=10)
        # Pool processes orphaned by a killed main process stay in its group: end them.
        for pgid in self.groups:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)


def _settle() -> None:
    """No statement of another session running on the test database for 1 s (the flush
    after the test TRUNCATEs every table and would deadlock with a straggler)."""
    quiet: list[float] = []

    def settled() -> bool:
        with connection.cursor() as cur:
            cur.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                        " AND state <> 'idle' AND pid <> pg_backend_pid()")
            busy = cur.fetchone()[0]
        if busy:
            quiet.clear()
            return False
        quiet.append(time.monotonic())
        return quiet[-1] - quiet[0] >= 1.0

    wait_until(settled, timeout=60, interval=0.1)


@pytest.fixture
def stack(
    transactional_db: Any, chaos_redis: RedisServer, tmp_path: Path, settings: Any
) -> Iterator[Stack]:
    settings.MEDIA_ROOT = str(tmp_path / "media")
    if chaos_redis.proc is None:  # a case that failed with Redis down
        chaos_redis.start()
    redis_lib.Redis.from_url(chaos_redis.url).flushdb()  # the private Redis: leftovers of an earlier case
    s = Stack(chaos_redis, tmp_path)
    with celery_broker(chaos_redis.url):
        try:
            yield s
        finally:
            s.stop()
            with contextlib.suppress(Exception):
                harness.db_retry(_settle)


@pytest.fixture
def chaos_year(stack: Stack, tmp_path: Path) -> Callable[..., None]:
    """Create the year with a directory of enough units for ``rows`` valid rows and load
    the module's factors (through the stack's workers: start one first)."""
    from ingestion import services
    from pipelines.models import Pipeline

    def setup(rows: int, modules: tuple[str, ...] = (harness.MODULE,), source: str | None = None) -> None:
        if source is None:
            units = max(1, *(harness.units_needed(rows, m) for m in modules))
            source = str(harness.write_directory(tmp_path / "units.csv", units))
        _, pipeline = services.year_create(year=YEAR, actor=None, source=source)
        wait_pipeline(pipeline.pk, timeout=180)
        for module in modules:
            data = (harness.SAMPLES / f"{module}_factors.csv").read_bytes()
            _, p = services.upload_create(year=YEAR, module=module, target="factors", file=io.BytesIO(data),
                                          filename="factors.csv", actor=None)
            done = wait_pipeline(p.pk, timeout=120)
            assert done.status == "success", done.last_error
        assert Pipeline.objects.exclude(status="success").count() == 0

    return setup


def wait_pipeline(pipeline_id: Any, *, timeout: float = 120) -> Any:
    from pipelines.models import Pipeline

    def done() -> Any:
        p = harness.db_retry(lambda: Pipeline.objects.get(pk=pipeline_id))
        return p if p.is_done else None

    return wait_until(done, timeout=timeout, interval=0.1, message=f"pipeline {pipeline_id} to finish")


def upload(data: bytes, *, module: str = harness.MODULE, name: str = "data.csv") -> Any:
    from ingestion import services

    _, pipeline = services.upload_create(year=YEAR, module=module, target="data_entries", file=io.BytesIO(data),
                                         filename=name, actor=None)
    return pipeline


def recovered_after(pipeline: Any, fault_at: float) -> float:
    """Seconds from the fault (wall clock) to the pipeline's finish (PostgreSQL's clock, same host)."""
    return round(pipeline.finished_at.timestamp() - fault_at, 1)

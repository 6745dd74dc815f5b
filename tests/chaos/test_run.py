"""`make chaos`'s cleanup (tests/chaos/run.py): an interrupted run leaves none of its
servers running, found by port and directory, never by a remembered pid."""

from __future__ import annotations

import atexit
import json
import os
import uuid
from pathlib import Path

import pgserver
import pytest

from tests.chaos import run
from tests.support.redis_server import RedisServer
from workers.devserver import redis_answers


@pytest.fixture
def run_id(monkeypatch: pytest.MonkeyPatch) -> str:
    """This test's run id, inherited by what it starts (as under `make chaos`)."""
    value = uuid.uuid4().hex
    monkeypatch.setenv(run.MARKER, value)
    return value


def test_the_runs_redis_is_stopped_by_its_port_after_a_restart_gave_it_a_new_pid(
    tmp_path: Path, run_id: str
) -> None:
    ours = RedisServer(directory=tmp_path / "redis")
    others = RedisServer()  # another Redis of the machine (its own port and directory)
    try:
        first_pid = ours.proc.pid if ours.proc else None
        ours.kill9()
        ours.start()  # what the Redis cases do: same port, a new pid
        assert ours.proc is not None and ours.proc.pid != first_pid
        # when the launcher cleans up (redis-server's environment no longer holds the marker)
        run.cleanup(run_id, tmp=tmp_path, redis_port=ours.port)
        assert not redis_answers(ours.port)
        assert redis_answers(others.port)
    finally:
        ours.stop()
        others.stop()


def test_a_redis_that_took_the_port_after_ours_is_left_alone(tmp_path: Path, run_id: str) -> None:
    # (another Redis on the run's port, not in the run's directory: once ours is gone the port is anyone's)
    stranger = RedisServer()
    try:
        run.cleanup(run_id, tmp=tmp_path, redis_port=stranger.port)
        assert redis_answers(stranger.port)
    finally:
        stranger.stop()


def test_a_run_killed_outright_is_cleaned_up_by_the_next(
    tmp_path: Path, run_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(run, "RUNS", tmp_path / "runs")
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    left = tmp_path / f"{run.TMP_PREFIX}left"
    redis = RedisServer(directory=left / "redis")
    server = pgserver.get_server(str(left / "pg"), cleanup_mode="stop")
    try:
        server.psql("SELECT 1;")
        assert run.postgres_in(left / "pg")
        # a launcher that died with SIGKILL: its record stays, naming a process that is gone
        (tmp_path / "runs").mkdir()
        record = tmp_path / "runs" / f"{run_id}.json"
        record.write_text(json.dumps({"run_id": run_id, "launcher": _dead_pid(), "started": 0,
                                      "redis_port": redis.port, "tmp": str(left)}))
        # when the next run starts
        run.clean_leftovers()
        assert not redis_answers(redis.port)
        assert run.postgres_in(left / "pg") == []
        assert not left.exists() and not record.exists()
    finally:
        redis.stop()
        server.cleanup()
        # (pgserver's own exit hook would stop it again, logging to pytest's closed capture stream)
        atexit.unregister(server._cleanup)


def _dead_pid() -> int:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    return pid

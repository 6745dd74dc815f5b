"""`make run`'s supervisor (workers/devserver.py) as a subprocess: restarts, clean stops."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Any

import psutil
import pytest

from tests.conftest import ROOT, worker_env
from tests.support.fixtures import wait_for
from tests.support.redis_server import free_port
from workers.devserver import redis_answers

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.worker, pytest.mark.slow]


def _celery_worker_children(parent: psutil.Process) -> list[psutil.Process]:
    found = []
    for p in parent.children():
        try:
            cmd = " ".join(p.cmdline())
        except psutil.NoSuchProcess:
            continue
        if "celery" in cmd and " worker " in cmd:
            found.append(p)
    return found


def test_run_restarts_a_crashed_worker_and_a_second_sigterm_still_stops_everything(tmp_path: Any) -> None:
    # given `make run` (no demo data) on the test database and its own embedded Redis
    env = worker_env(SLUICE_VAR_DIR=str(tmp_path), PORT=str(free_port()))
    env.pop("REDIS_URL", None)
    out = open(tmp_path / "run.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "workers.devserver", "run", "--no-demo"], cwd=ROOT, env=env,
        stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
    )
    log = tmp_path / "run.log"
    try:
        wait_for(lambda: b"Sluice is running" in log.read_bytes() or proc.poll() is not None, timeout=90,
                   interval=0.2, message="make run to come up")
        assert proc.poll() is None, log.read_text()
        supervisor = psutil.Process(proc.pid)
        (redis_line,) = [line for line in (tmp_path / "run.env").read_text().splitlines() if "REDIS_URL" in line]
        redis_port = int(redis_line.split("127.0.0.1:")[1].split("/")[0])
        (worker,) = _celery_worker_children(supervisor)
        # when the worker dies
        os.kill(worker.pid, signal.SIGKILL)
        # then the supervisor starts a new one, and keeps running
        restarted = wait_for(
            lambda: [w for w in _celery_worker_children(supervisor) if w.pid != worker.pid], timeout=30,
            interval=0.2, message="a new worker",
        )
        assert proc.poll() is None, log.read_text()
        assert "worker exited" in log.read_text() and "worker restarted" in log.read_text()
        # when it is told to stop, and told again and again during its cleanup (an
        # impatient Ctrl-C, a process manager repeating SIGTERM)
        descendants = [*supervisor.children(recursive=True), *restarted]
        assert redis_answers(redis_port)
        proc.send_signal(signal.SIGTERM)
        wait_for(lambda: b"stopping" in log.read_bytes(), timeout=10, message="cleanup to begin")
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            proc.send_signal(signal.SIGTERM)
            time.sleep(0.02)
        assert proc.poll() is not None, "make run did not stop"
        # then nothing it started is left: no child process, no Redis
        alive = [p for p in descendants if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        assert alive == [], [p.cmdline() for p in alive]
        assert not redis_answers(redis_port), "the embedded Redis outlived `make run`"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        out.close()

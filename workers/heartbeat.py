"""Each worker's own record in Redis: its version and the time of its last heartbeat.

A thread in the worker's main process rewrites ``sluice:worker:<hostname>`` every
``SLUICE_WORKER_HEARTBEAT_SECONDS`` (with a TTL, so a dead worker's record ages out).
``/workers/`` reads it: ``last_heartbeat`` is when the worker last proved it was alive,
not when the API asked, and ``version`` is the code it runs (package version + git sha).
"""

from __future__ import annotations

import functools
import importlib.metadata
import logging
import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import redis
from django.conf import settings

logger = logging.getLogger(__name__)

KEY_PREFIX = "sluice:worker:"
ROOT = Path(__file__).resolve().parent.parent


@functools.cache
def sluice_version() -> str:
    """``SLUICE_VERSION`` if set (images built without .git), else ``<package>+g<sha>``."""
    if settings.SLUICE_VERSION:
        return str(settings.SLUICE_VERSION)
    try:
        version = importlib.metadata.version("sluice")
    except importlib.metadata.PackageNotFoundError:
        version = "0+unknown"
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{version}+g{sha}" if sha else version


def _client() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL, socket_timeout=5, socket_connect_timeout=5)


class WorkerHeartbeat(threading.Thread):
    def __init__(self, hostname: str) -> None:
        super().__init__(name="sluice-worker-heartbeat", daemon=True)
        self.hostname = hostname
        self.stopped = threading.Event()
        self.interval = float(settings.SLUICE_WORKER_HEARTBEAT_SECONDS)
        self.started_at = time.time()

    def beat(self, client: redis.Redis) -> None:
        key = KEY_PREFIX + self.hostname
        client.hset(key, mapping={"version": sluice_version(), "heartbeat": repr(time.time()),
                                  "started": repr(self.started_at), "pid": os.getpid()})
        # Long enough for an ops view to still show a worker that just died, and when.
        client.expire(key, max(300, int(self.interval * 10)))

    def run(self) -> None:
        client = _client()
        while not self.stopped.is_set():
            try:
                self.beat(client)
            except redis.RedisError:
                logger.warning("worker heartbeat could not reach Redis", exc_info=True)
            self.stopped.wait(self.interval)

    def stop(self) -> None:
        self.stopped.set()


def heartbeats(hostnames: list[str]) -> dict[str, dict[str, Any]]:
    """``{hostname: {"version", "heartbeat" (unix time), "started", "pid"}}`` for those with a record."""
    if not hostnames:
        return {}
    pipe = _client().pipeline()
    for hostname in hostnames:
        pipe.hgetall(KEY_PREFIX + hostname)
    out: dict[str, dict[str, Any]] = {}
    for hostname, raw in zip(hostnames, pipe.execute(), strict=True):
        if not raw:
            continue
        record = {k.decode(): v.decode() for k, v in raw.items()}
        out[hostname] = {
            "version": record.get("version", ""),
            "heartbeat": float(record["heartbeat"]) if "heartbeat" in record else None,
            "started": float(record["started"]) if "started" in record else None,
            "pid": int(record["pid"]) if "pid" in record else None,
        }
    return out

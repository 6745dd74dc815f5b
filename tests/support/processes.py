"""Stopping a server or worker the tests started in its own session (process group)."""

from __future__ import annotations

import os
import signal
import subprocess


def stop_group(proc: subprocess.Popen[bytes], *, grace: float = 15) -> None:
    """SIGTERM the whole group (a Celery worker's pool, a server's children), then SIGKILL
    what is still there after ``grace`` seconds, so no test leaves a process behind."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)

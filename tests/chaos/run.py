"""`make chaos`: every chaos case against servers this command starts and may break.

    python -m tests.chaos.run [pytest args]

1. A private PostgreSQL (pgserver's binaries, a temporary data directory, Unix socket
   only) and a port for a private Redis (started by the suite's session fixture, which
   kills and restarts it). The machine's shared servers are never touched.
2. ``pytest tests/chaos`` with ``SLUICE_CHAOS=1`` (every case, full size): it prints the
   table and writes ``.var/chaos/chaos.{md,json}``.
3. On exit, also on Ctrl-C/SIGTERM: every process that carries this run's marker in its
   environment (workers, beat, web, redis-server, orphaned pool processes) is killed by
   pid, the private PostgreSQL is stopped and its directory removed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import quote

import psutil

ROOT = Path(__file__).resolve().parents[2]
MARKER = "SLUICE_CHAOS_RUN"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _own_processes(run_id: str) -> list[psutil.Process]:
    """Processes started by this run (they inherit the marker), never anyone else's."""
    found = []
    for proc in psutil.process_iter():
        if proc.pid == os.getpid():
            continue
        with contextlib.suppress(psutil.Error):
            if proc.environ().get(MARKER) == run_id:
                found.append(proc)
    return found


def _kill_own(run_id: str, *, spare: str = "") -> None:
    for proc in _own_processes(run_id):
        with contextlib.suppress(psutil.Error):
            if not spare or proc.name() != spare:
                proc.kill()


def main(argv: list[str]) -> int:
    import pgserver

    run_id = uuid.uuid4().hex
    os.environ[MARKER] = run_id
    tmp = Path(tempfile.mkdtemp(prefix="sluice-chaos-"))
    os.environ.setdefault("XDG_RUNTIME_DIR", str(tmp))  # else pgserver warns on every start
    server = None
    child: subprocess.Popen[bytes] | None = None

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        t0 = time.monotonic()
        pgdata = tmp / "pg"
        server = pgserver.get_server(str(pgdata), cleanup_mode="stop")
        server.psql("CREATE DATABASE sluice_chaos;")
        socket_dir = server.get_postmaster_info().socket_dir
        redis_port = _free_port()
        print(f"chaos: private PostgreSQL 16 ({pgdata}) and Redis port {redis_port} "
              f"in {time.monotonic() - t0:.1f}s", flush=True)
        env = {
            **os.environ,
            "DATABASE_URL": f"postgresql://postgres@{quote(str(socket_dir), safe='')}/sluice_chaos",
            "DATABASE_TEST_NAME": "test_sluice_chaos",
            "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
            "SLUICE_CHAOS": "1",
            "SLUICE_CHAOS_SCALE": os.environ.get("SLUICE_CHAOS_SCALE", "full"),
            "SLUICE_CHAOS_REDIS_PORT": str(redis_port),
            "SLUICE_CHAOS_PGDATA": str(pgdata),
            "SLUICE_CHAOS_PG_USER": server.system_user or "",
        }
        cmd = [sys.executable, "-m", "pytest", "tests/chaos", "-p", "no:cacheprovider", "-v", *argv]
        child = subprocess.Popen(cmd, cwd=ROOT, env=env)
        return child.wait()
    except KeyboardInterrupt:
        print("\nchaos: interrupted, cleaning up", flush=True)
        return 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not abort the cleanup
        if child is not None and child.poll() is None:
            child.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=20)
        _kill_own(run_id, spare="postgres")  # PostgreSQL is stopped cleanly, below
        if server is not None:
            with contextlib.suppress(Exception):
                server.cleanup()
        _kill_own(run_id)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

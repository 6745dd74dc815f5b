"""`make chaos`: every chaos case against servers this command starts and may break.

    python -m tests.chaos.run [pytest args]

1. A private PostgreSQL (pgserver's binaries, a temporary data directory, Unix socket
   only) and a port for a private Redis (started by the suite's session fixture, which
   kills and restarts it). The machine's shared servers are never touched.
2. ``pytest tests/chaos`` with ``SLUICE_CHAOS=1`` (every case, full size): it prints the
   table and writes ``.var/chaos/chaos.{md,json}``.
3. On exit, also on Ctrl-C/SIGTERM (a second one only hurries the cleanup, it never
   aborts it): ``cleanup`` stops what the run started, each found by what identifies it
   for sure, never by a pid remembered at start (the suite kills and restarts Redis, so
   such a pid goes stale, and may by then be someone else's):

   - workers, beat, web and orphaned pool processes: the run's marker in their
     environment (they inherit it, and keep it: Celery would overwrite its processes'
     environment with their titles only if ``setproctitle`` were installed);
   - the Redis: the ``redis-server`` listening on the run's port (redis-server
     overwrites its environment with its process title, so the marker cannot find it);
   - PostgreSQL: ``pg_ctl stop``, then any process still running in the run's data
     directory (backends, too, overwrite their environment with their status).

   Each run records its port and data directory in ``.var/chaos/runs/<id>.json`` until
   it has cleaned up; a run whose launcher was killed outright (SIGKILL: nothing of
   it could clean up) is cleaned up by the next ``make chaos``, which starts clean.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psutil

ROOT = Path(__file__).resolve().parents[2]
MARKER = "SLUICE_CHAOS_RUN"
RUNS = ROOT / ".var" / "chaos" / "runs"
TMP_PREFIX = "sluice-chaos-"
CHILD_GRACE_SECONDS = 60  # pytest's own teardown (workers, web, Redis) after SIGINT


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _own_processes(run_id: str) -> list[psutil.Process]:
    """Processes started by this run that still carry its marker (they inherit it)."""
    found = []
    for proc in psutil.process_iter():
        if proc.pid == os.getpid():
            continue
        with contextlib.suppress(psutil.Error):
            if proc.environ().get(MARKER) == run_id:
                found.append(proc)
    return found


def redis_on_port(port: int, *, within: Path) -> list[psutil.Process]:
    """The ``redis-server`` listening on ``port`` (whatever its pid is by now) and running
    in a directory under ``within`` (the run's: once ours is gone, the port may be
    anyone's)."""
    where = os.path.realpath(within) + os.sep
    found: dict[int, psutil.Process] = {}
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status != psutil.CONN_LISTEN or not conn.laddr or conn.laddr.port != port or not conn.pid:
            continue
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(conn.pid)
            if proc.name().startswith("redis-server") and (proc.cwd() + os.sep).startswith(where):
                found[proc.pid] = proc
    return list(found.values())


def postgres_in(pgdata: str | Path) -> list[psutil.Process]:
    """Every process of the PostgreSQL serving ``pgdata`` (each one runs in that directory)."""
    where = os.path.realpath(pgdata)
    found = []
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if proc.name() == "postgres" and proc.cwd() == where:
                found.append(proc)
    return found


def _named(procs: list[psutil.Process], name: str) -> list[psutil.Process]:
    named = []
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            if proc.name() == name:
                named.append(proc)
    return named


def _kill(procs: list[psutil.Process]) -> None:
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(procs, timeout=10)


def _stop_postgres(pgdata: Path, server: Any) -> None:
    if server is not None:
        with contextlib.suppress(Exception):
            server.cleanup()  # pg_ctl stop: a clean shutdown
    left = postgres_in(pgdata)
    if not left:
        return
    # pg_ctl could not stop it (or this is an earlier run's): SIGQUIT asks the postmaster
    # for an immediate shutdown, which still releases its shared memory; then whatever
    # is left is killed.
    pids = {p.pid for p in left}
    for proc in left:
        with contextlib.suppress(psutil.Error):
            if proc.ppid() not in pids:
                proc.send_signal(signal.SIGQUIT)
    _gone, alive = psutil.wait_procs(left, timeout=10)
    _kill(alive)


def cleanup(run_id: str, *, tmp: Path, redis_port: int | None, server: Any = None) -> None:
    """Stop everything the run ``run_id`` started (see the module docstring): its Redis
    listens on ``redis_port`` and runs in ``tmp``/redis, its PostgreSQL in ``tmp``/pg."""
    own = _own_processes(run_id)
    _kill([p for p in own if p not in _named(own, "postgres")])  # PostgreSQL: cleanly, below
    if redis_port is not None:
        _kill(redis_on_port(redis_port, within=tmp))
    _stop_postgres(tmp / "pg", server)
    _kill(_own_processes(run_id))  # whatever appeared meanwhile (a worker restarting itself)


def _record(run_id: str, **state: Any) -> Path:
    RUNS.mkdir(parents=True, exist_ok=True)
    path = RUNS / f"{run_id}.json"
    path.write_text(json.dumps({"run_id": run_id, "launcher": os.getpid(), **state}))
    return path


def _launcher_alive(state: dict[str, Any]) -> bool:
    with contextlib.suppress(psutil.Error):
        proc = psutil.Process(state["launcher"])
        return "tests.chaos.run" in proc.cmdline() and proc.create_time() <= state["started"] + 1
    return False


def clean_leftovers() -> None:
    """Clean up after earlier runs whose launcher is gone without cleaning up."""
    for path in sorted(RUNS.glob("*.json")) if RUNS.is_dir() else []:
        with contextlib.suppress(ValueError, OSError, KeyError):
            state = json.loads(path.read_text())
            if _launcher_alive(state):
                continue  # a run going on in this checkout
            print(f"chaos: cleaning up after an interrupted run ({state['run_id']})", flush=True)
            tmp = Path(state["tmp"])
            cleanup(state["run_id"], tmp=tmp, redis_port=state["redis_port"])
            if tmp.name.startswith(TMP_PREFIX):
                shutil.rmtree(tmp, ignore_errors=True)
            path.unlink()


def main(argv: list[str]) -> int:
    import pgserver

    clean_leftovers()
    run_id = uuid.uuid4().hex
    os.environ[MARKER] = run_id
    tmp = Path(tempfile.mkdtemp(prefix=TMP_PREFIX))
    pgdata = tmp / "pg"
    redis_port = _free_port()
    record = _record(run_id, started=time.time(), redis_port=redis_port, tmp=str(tmp))
    os.environ.setdefault("XDG_RUNTIME_DIR", str(tmp))  # else pgserver warns on every start
    server = None
    child: subprocess.Popen[bytes] | None = None
    signals: list[int] = []
    cleaning = False

    def interrupted(signum: int, frame: object) -> None:
        # The first signal ends the run; any later one (or any during the cleanup) only
        # hurries the cleanup: raising there would abort it and leave servers running.
        signals.append(signum)
        if len(signals) == 1 and not cleaning:
            raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGINT, interrupted)
    try:
        t0 = time.monotonic()
        server = pgserver.get_server(str(pgdata), cleanup_mode="stop")
        server.psql("CREATE DATABASE sluice_chaos;")
        socket_dir = server.get_postmaster_info().socket_dir
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
            "SLUICE_CHAOS_REDIS_DIR": str(tmp / "redis"),
            "SLUICE_CHAOS_PGDATA": str(pgdata),
            "SLUICE_CHAOS_PG_USER": server.system_user or "",
        }
        cmd = [sys.executable, "-m", "pytest", "tests/chaos", "-p", "no:cacheprovider", "-v", *argv]
        child = subprocess.Popen(cmd, cwd=ROOT, env=env)
        return child.wait()
    except KeyboardInterrupt:
        print("\nchaos: interrupted, cleaning up (again to hurry it)", flush=True)
        return 130
    finally:
        cleaning = True
        if child is not None and child.poll() is None:
            # Ctrl-C reached pytest too (same terminal); SIGTERM reached only this process:
            # pass it on as SIGINT, so pytest's teardown stops its workers and writes the table.
            if signals[:1] == [signal.SIGTERM]:
                child.send_signal(signal.SIGINT)
            deadline = time.monotonic() + CHILD_GRACE_SECONDS
            while child.poll() is None and time.monotonic() < deadline and len(signals) < 2:
                time.sleep(0.1)
            if child.poll() is None:
                child.kill()
                child.wait()
        cleanup(run_id, tmp=tmp, redis_port=redis_port, server=server)
        shutil.rmtree(tmp, ignore_errors=True)
        record.unlink(missing_ok=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

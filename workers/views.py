from __future__ import annotations

import psycopg
import redis
from django.conf import settings
from django.db import connection
from django.http import HttpRequest, JsonResponse
from psycopg.conninfo import make_conninfo

# A readiness probe answers within a few seconds even when a server is blackholed.
PROBE_TIMEOUT_SECONDS = 2


def _postgres() -> str:
    """A fresh connection, not one from the web process's pool: the pool would wait its
    whole timeout for a server that is gone, and a pooled connection may be stale."""
    db = settings.DATABASES["default"]
    params = {
        "dbname": db["NAME"], "user": db.get("USER") or None, "password": db.get("PASSWORD") or None,
        "host": db.get("HOST") or None, "port": db.get("PORT") or None,
    }
    conninfo = make_conninfo(**{k: str(v) for k, v in params.items() if v})
    try:
        with psycopg.connect(conninfo, connect_timeout=PROBE_TIMEOUT_SECONDS) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        return f"unreachable: {str(exc).strip()[:200]}"
    return "ok"


def _redis() -> str:
    client = redis.Redis.from_url(
        settings.CELERY_BROKER_URL,
        socket_connect_timeout=PROBE_TIMEOUT_SECONDS,
        socket_timeout=PROBE_TIMEOUT_SECONDS,
    )
    try:
        client.ping()
    except redis.RedisError as exc:
        return f"unreachable: {str(exc)[:200]}"
    finally:
        client.close()
    return "ok"


def healthz(request: HttpRequest) -> JsonResponse:
    """Liveness of the web process and its database; ``?deep=1``: readiness.

    Readiness checks that PostgreSQL and Redis answer, and says 503 naming the one
    that does not: `make run` waits on it, and a load balancer should too.
    """
    if request.GET.get("deep") in ("1", "true", "yes"):
        checks = {"postgres": _postgres(), "redis": _redis()}
        ready = all(value == "ok" for value in checks.values())
        body = {"status": "ok" if ready else "unavailable", "checks": checks}
        return JsonResponse(body, status=200 if ready else 503)
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return JsonResponse({"status": "ok"})

"""``/healthz?deep=1``: readiness names the server (PostgreSQL, Redis) that does not answer."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from tests.support.redis_server import free_port

pytestmark = pytest.mark.django_db


def test_ready_when_postgres_and_redis_answer() -> None:
    response = Client().get("/healthz?deep=1")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "checks": {"postgres": "ok", "redis": "ok"}}


def test_not_ready_when_redis_is_unreachable(settings: Any) -> None:
    settings.CELERY_BROKER_URL = f"redis://127.0.0.1:{free_port()}/0"
    response = Client().get("/healthz?deep=1")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable" and body["checks"]["postgres"] == "ok"
    assert body["checks"]["redis"].startswith("unreachable")
    # liveness (no ?deep) still says the web process and its database are up
    assert Client().get("/healthz").status_code == 200


@pytest.mark.filterwarnings("ignore:Overriding setting DATABASES")  # read by the probe only
def test_not_ready_when_postgres_is_unreachable(settings: Any) -> None:
    settings.DATABASES = {"default": {**settings.DATABASES["default"], "HOST": "127.0.0.1", "PORT": free_port()}}
    response = Client().get("/healthz?deep=1")
    assert response.status_code == 503
    assert response.json()["checks"]["postgres"].startswith("unreachable")
    assert response.json()["checks"]["redis"] == "ok"

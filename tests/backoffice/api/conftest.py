"""API fixtures: the role matrix (anonymous, no role, viewer, operator, module-granted
operator, token), API clients, and pipelines planned without a worker.

Roles are created here too: transactional tests TRUNCATE the tables the roles
migration filled.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.contrib.auth.models import Group, User
from django.core.cache import caches
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from backoffice.api.auth import TOKEN_THROTTLE_CACHE, LoginRateThrottle
from pipelines.models import Pipeline
from tests.support.browser import Server
from tests.support.fixtures import UserFactory, small_dag, standard_roles

GRANTED_MODULE = "headcount"
OTHER_MODULE = "buildings"


@pytest.fixture
def roles(db: Any) -> dict[str, Group]:
    return standard_roles()


@pytest.fixture
def users(roles: dict[str, Group]) -> dict[str, User]:
    # No passwords: no slow hashing (clients log in with force_login).
    return {
        "norole": UserFactory(username="norole"),
        "viewer": UserFactory(username="viewer", roles=("viewer",)),
        "operator": UserFactory(username="operator", roles=("operator",)),
        "granted": UserFactory(username="granted", roles=("module operator",), modules=(GRANTED_MODULE,)),
        "admin": UserFactory(username="admin", is_superuser=True, is_staff=True),
    }


@pytest.fixture
def client_for(users: dict[str, User]) -> Callable[[str | None], APIClient]:
    """``client_for("viewer")``: an API client authenticated as that user (session)."""

    def make(who: str | None) -> APIClient:
        client = APIClient()
        if who is not None:
            client.force_login(users[who])
        return client

    return make


@pytest.fixture
def token_client(users: dict[str, User]) -> Callable[[str], APIClient]:
    def make(who: str) -> APIClient:
        token, _ = Token.objects.get_or_create(user=users[who])
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
        return client

    return make


@pytest.fixture
def make_pipeline(db: Any) -> Callable[..., Pipeline]:
    """A planned 1 → 2 → 1 no-op DAG (not dispatched: on_commit never fires in a test transaction)."""

    def make(*, module: str = GRANTED_MODULE, year: int | None = 2025, kind: str = "noop") -> Pipeline:
        return small_dag(kind=kind, year=year, module=module)

    return make


LIVE_PASSWORD = "live-api-password"  # a test user's


@pytest.fixture
def live_api(celery_worker: Any, transactional_db: Any) -> Any:
    """The ASGI app under uvicorn (production settings: DEBUG off) on the test database,
    with the session's real Celery worker, and a superuser ``live`` / ``LIVE_PASSWORD``.

    Throttles are lifted: generated traffic (schemathesis) is hundreds of requests a
    minute, and the login throttle's counters (Redis) outlive one server.
    """
    UserFactory(username="live", password=LIVE_PASSWORD, is_staff=True, is_superuser=True)
    server = Server(
        "live-api", DJANGO_DEBUG="false", SLUICE_TOKEN_THROTTLE="1000000/min", SLUICE_LOGIN_THROTTLE="1000000/min"
    )
    server.start()
    yield server
    server.stop()
    # The server counted its (hundreds of) token requests from 127.0.0.1 in the shared Redis
    # throttle cache: drop that history, or in-process tests at 10/min would meet a 429.
    caches[TOKEN_THROTTLE_CACHE].delete(LoginRateThrottle.cache_format % {"scope": "login", "ident": "127.0.0.1"})

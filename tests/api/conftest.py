"""API fixtures: the role matrix (anonymous, no role, viewer, operator, module-granted
operator, token), API clients, and pipelines planned without a worker.

Roles are created here too: transactional tests TRUNCATE the tables the roles
migration filled.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.contrib.auth.models import Group, Permission, User
from django.contrib.contenttypes.models import ContentType
from django.core.cache import caches
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from backoffice.api_auth import TOKEN_THROTTLE_CACHE, LoginRateThrottle
from backoffice.models import ModuleGrant
from pipelines.models import Pipeline
from pipelines.services import JobSpec, pipeline_plan
from tests.support.browser import Server

GRANTED_MODULE = "headcount"
OTHER_MODULE = "buildings"


@pytest.fixture
def roles(db: Any) -> dict[str, Group]:
    ct = ContentType.objects.get_for_model(ModuleGrant)
    view, _ = Permission.objects.get_or_create(
        codename="view_console", content_type=ct, defaults={"name": "Can read the console and the API (viewer)"}
    )
    operate, _ = Permission.objects.get_or_create(
        codename="operate", content_type=ct, defaults={"name": "Can operate (operator)"}
    )
    all_modules, _ = Permission.objects.get_or_create(
        codename="all_modules", content_type=ct, defaults={"name": "Can see every module"}
    )
    viewer, _ = Group.objects.get_or_create(name="viewer")
    viewer.permissions.add(view, all_modules)
    operator, _ = Group.objects.get_or_create(name="operator")
    operator.permissions.add(view, operate, all_modules)
    module_viewer, _ = Group.objects.get_or_create(name="module viewer")
    module_viewer.permissions.add(view)
    module_operator, _ = Group.objects.get_or_create(name="module operator")
    module_operator.permissions.add(view, operate)
    return {"viewer": viewer, "operator": operator, "module viewer": module_viewer, "module operator": module_operator}


@pytest.fixture
def users(roles: dict[str, Group]) -> dict[str, User]:
    def make(name: str, *groups: str, **extra: Any) -> User:
        user = User.objects.create_user(name, **extra)  # no password: no slow hashing, force_login
        for g in groups:
            user.groups.add(roles[g])
        return user

    result = {
        "norole": make("norole"),
        "viewer": make("viewer", "viewer"),
        "operator": make("operator", "operator"),
        "granted": make("granted", "module operator"),
        "admin": make("admin", is_superuser=True, is_staff=True),
    }
    ModuleGrant.objects.create(user=result["granted"], module=GRANTED_MODULE)
    return result


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
        specs = [
            JobSpec(key="a", job_type="noop"),
            JobSpec(key="b", job_type="noop", det="b", depends_on=("a",)),
            JobSpec(key="c", job_type="noop", det="c", depends_on=("a",)),
            JobSpec(key="d", job_type="noop", depends_on=("b", "c")),
        ]
        return pipeline_plan(kind=kind, specs=specs, year=year, module=module)

    return make


LIVE_PASSWORD = "live-api-password"  # a test user's


@pytest.fixture
def live_api(celery_worker: Any, transactional_db: Any) -> Any:
    """The ASGI app under uvicorn (production settings: DEBUG off) on the test database,
    with the session's real Celery worker, and a superuser ``live`` / ``LIVE_PASSWORD``.

    Throttles are lifted: generated traffic (schemathesis) is hundreds of requests a
    minute, and the login throttle's counters (Redis) outlive one server.
    """
    User.objects.create_superuser("live", password=LIVE_PASSWORD)
    server = Server(
        "live-api", DJANGO_DEBUG="false", SLUICE_TOKEN_THROTTLE="1000000/min", SLUICE_LOGIN_THROTTLE="1000000/min"
    )
    server.start()
    yield server
    server.stop()
    # The server counted its (hundreds of) token requests from 127.0.0.1 in the shared Redis
    # throttle cache: drop that history, or in-process tests at 10/min would meet a 429.
    caches[TOKEN_THROTTLE_CACHE].delete(LoginRateThrottle.cache_format % {"scope": "login", "ident": "127.0.0.1"})

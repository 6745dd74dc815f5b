"""Password guessing is throttled: the token endpoint (DRF throttle) and the admin login (django-axes)."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.cache import caches
from django.test import Client
from rest_framework.test import APIClient

from backoffice.api.auth import LoginRateThrottle

pytestmark = pytest.mark.django_db


@pytest.fixture
def login_user(users: Any) -> Any:
    user = users["admin"]
    user.set_password("right-password")
    user.save()
    return user


@pytest.fixture
def clean_throttle() -> Any:
    caches["api_throttle"].clear()
    yield
    caches["api_throttle"].clear()


def test_token_endpoint_answers_429_with_retry_after(login_user: Any, clean_throttle: Any, monkeypatch: Any) -> None:
    monkeypatch.setattr(LoginRateThrottle, "THROTTLE_RATES", {"login": "3/min"})
    client = APIClient()
    codes = [
        client.post("/api/v1/auth/token/", {"username": "admin", "password": f"guess-{i}"}).status_code
        for i in range(3)
    ]
    assert codes == [400, 400, 400]
    # The fourth try is refused even with the right password, until Retry-After passes.
    blocked = client.post("/api/v1/auth/token/", {"username": "admin", "password": "right-password"})
    assert blocked.status_code == 429
    assert blocked.json()["code"] == "throttled" and "token" not in blocked.json()
    assert 0 < int(blocked["Retry-After"]) <= 60
    # Another client address is counted apart.
    other = APIClient(REMOTE_ADDR="10.9.8.7")
    assert other.post("/api/v1/auth/token/", {"username": "admin", "password": "right-password"}).status_code == 200


def test_admin_login_locks_out_after_failures(login_user: Any, settings: Any) -> None:
    settings.AXES_FAILURE_LIMIT = 3
    client = Client()
    for i in range(2):
        response = client.post("/admin/login/", {"username": "admin", "password": f"guess-{i}"})
        assert response.status_code == 200 and "correct username and password" in response.content.decode()
    locked = client.post("/admin/login/", {"username": "admin", "password": "guess-3"})
    assert locked.status_code == 429
    assert int(locked["Retry-After"]) == int(settings.AXES_COOLOFF_TIME * 3600)
    # Locked out: even the right password does not log in.
    again = client.post("/admin/login/", {"username": "admin", "password": "right-password"})
    assert again.status_code == 429 and "_auth_user_id" not in client.session
    # A different address still can.
    other = Client(REMOTE_ADDR="10.9.8.7")
    ok = other.post("/admin/login/", {"username": "admin", "password": "right-password"})
    assert ok.status_code == 302 and "_auth_user_id" in other.session


def test_scripts_may_authenticate_without_a_request(login_user: Any) -> None:
    """``Client.login`` (no request) still works: lockout applies to web logins only."""
    assert Client().login(username="admin", password="right-password")

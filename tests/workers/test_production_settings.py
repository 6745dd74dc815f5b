"""Production defaults: no public secret key, a clean ``check --deploy``, no passwords on
debug pages, and only the embedded demo gets DEBUG and the demo login."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from typing import Any
from urllib.parse import urlsplit

import pytest
from django.test import RequestFactory
from django.views import debug

from tests.conftest import ROOT
from workers import devserver

# What docs/OPERATIONS.md and .env.example tell a deployment behind a TLS proxy to set.
PRODUCTION_ENV = {
    "DJANGO_DEBUG": "false",
    "DJANGO_ALLOWED_HOSTS": "sluice.example.org",
    "DJANGO_CSRF_TRUSTED_ORIGINS": "https://sluice.example.org",
    "SLUICE_HTTPS": "true",
    "DJANGO_SECURE_PROXY_SSL_HEADER": "HTTP_X_FORWARDED_PROTO,https",
}


def _manage(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "SLUICE_HTTPS"))}
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env={**base, **env}, capture_output=True, text=True,
        timeout=120,
    )


@pytest.mark.parametrize("debug_env", [{"DJANGO_DEBUG": "false"}, {}])
def test_without_secret_key_production_refuses_to_start(debug_env: dict[str, str]) -> None:
    result = _manage("check", **debug_env)
    assert result.returncode != 0
    assert "DJANGO_SECRET_KEY" in result.stderr and "is required" in result.stderr
    # Local development (DEBUG on) still starts with the development key.
    assert _manage("check", DJANGO_DEBUG="true").returncode == 0


def test_check_deploy_is_clean_with_a_production_env() -> None:
    documented = (ROOT / ".env.example").read_text()
    for name in [*PRODUCTION_ENV, "DJANGO_SECRET_KEY"]:
        assert f"{name}=" in documented, f"{name} missing from .env.example"
    result = _manage("check", "--deploy", "--fail-level", "WARNING",
                     DJANGO_SECRET_KEY=secrets.token_urlsafe(50), **PRODUCTION_ENV)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout


def test_check_deploy_flags_an_http_setup() -> None:
    """The clean result above comes from the settings, not from a check that cannot fail."""
    env = {**PRODUCTION_ENV, "SLUICE_HTTPS": "false"}
    result = _manage("check", "--deploy", "--fail-level", "WARNING", DJANGO_SECRET_KEY=secrets.token_urlsafe(50), **env)
    assert result.returncode != 0
    for warning in ("security.W004", "security.W008", "security.W012", "security.W016"):
        assert warning in result.stdout + result.stderr


def test_debug_page_masks_passwords_in_urls(settings: Any) -> None:
    # Random passwords, and none held in a local variable: the page shows this test's
    # source lines and its frame's variables too.
    settings.DEBUG = True
    settings.DATABASE_URL = f"postgresql://sluice:{secrets.token_hex(8)}@db.internal:5432/sluice"
    settings.CELERY_BROKER_URL = f"redis://:{secrets.token_hex(8)}@redis.internal:6379/0"
    settings.SLUICE_DIRECTORY_SOURCE = f"https://svc:{secrets.token_hex(8)}@dir.internal/u?token={secrets.token_hex(8)}"
    request = RequestFactory().get("/admin/")
    try:
        source = settings.SLUICE_DIRECTORY_SOURCE  # a local variable shown in the traceback
        raise RuntimeError(f"cannot reach {source}")
    except RuntimeError:
        response = debug.technical_500_response(request, *sys.exc_info())
    page = response.content.decode()
    assert response.status_code == 500 and "RuntimeError" in page and "DATABASE_URL" in page
    passwords = [urlsplit(settings.DATABASE_URL).password, urlsplit(settings.CELERY_BROKER_URL).password,
                 urlsplit(source).password, urlsplit(source).query.removeprefix("token=")]
    assert all(passwords) and not [pw for pw in passwords if pw in page]
    assert "postgresql://***@db.internal:5432/sluice" in page  # still says which server


def test_only_the_embedded_demo_gets_debug_and_the_demo_login(monkeypatch: Any) -> None:
    monkeypatch.delenv("DJANGO_DEBUG", raising=False)
    ran: list[tuple[str, ...]] = []
    # Record the manage.py commands instead of running them: the demo load plans real
    # pipelines, which the test session's worker would pick up.
    monkeypatch.setattr(devserver, "_manage", lambda env, *args: ran.append(args))

    env, demo = devserver._demo_env({})  # DATABASE_URL given by the user: nothing embedded
    assert not demo and "DJANGO_DEBUG" not in env
    devserver._prepare(env, demo=demo)
    assert ran == [("migrate", "--no-input", "-v", "0")]

    ran.clear()
    env, demo = devserver._demo_env({"DATABASE_URL": "postgresql://postgres@%2Ftmp%2Fpg/sluice"})  # embedded
    assert demo and env["DJANGO_DEBUG"] == "true"
    devserver._prepare(env, demo=demo)
    assert ran[-1] == ("sluice_demo", "--username", "admin", "--password", "sluice-admin")


@pytest.mark.django_db
def test_https_redirect_spares_probes_and_scrapers(settings: Any) -> None:
    from django.test import Client

    settings.SECURE_SSL_REDIRECT = True
    client = Client()
    admin = client.get("/admin/login/")
    assert admin.status_code == 301 and admin["Location"].startswith("https://")
    assert client.get("/healthz").status_code == 200
    assert client.get("/metrics").status_code == 401  # answered (token needed), not redirected


def test_the_s3_storage_without_a_bucket_refuses_to_start() -> None:
    result = _manage("check", DJANGO_DEBUG="true", SLUICE_STORAGE="s3")
    assert result.returncode != 0
    assert "SLUICE_STORAGE=s3 needs SLUICE_S3_BUCKET" in result.stderr

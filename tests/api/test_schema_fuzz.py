"""schemathesis against ``/api/schema/``: a bounded number of generated requests per
operation; no 5xx, and every response matches the documented status, content type and
body schema. Runs in-process through the WSGI app on the test database.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from django.core import signals
from django.db import close_old_connections
from hypothesis import HealthCheck, given, settings
from rest_framework.authtoken.models import Token
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from backoffice.api_auth import TokenRateThrottle
from ingestion.models import Year

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture
def api_schema() -> Any:
    from config.wsgi import application

    return schemathesis.openapi.from_wsgi("/api/schema/?format=json", application)


@pytest.fixture(autouse=True)
def keep_test_connection() -> Iterator[None]:
    # Like Django's test Client: the raw WSGI app would close the test transaction's
    # connection at the end of every request.
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    yield
    signals.request_started.connect(close_old_connections)
    signals.request_finished.connect(close_old_connections)


def _operations() -> list[str]:
    from drf_spectacular.generators import SchemaGenerator

    paths = SchemaGenerator().get_schema(request=None, public=True)["paths"]
    return [f"{method.upper()} {path}" for path, item in paths.items() for method in item]


@pytest.fixture
def admin_headers(users: dict[str, Any], make_pipeline: Any, settings: Any, tmp_path: Any, monkeypatch: Any) -> Any:
    settings.MEDIA_ROOT = tmp_path
    settings.SLUICE_INSPECT_TIMEOUT = 0.05
    monkeypatch.setattr(TokenRateThrottle, "THROTTLE_RATES", {"token": "100000/min"})
    Year.objects.create(year=2025)
    make_pipeline()
    return {"Authorization": f"Token {Token.objects.create(user=users['admin']).key}"}


@pytest.mark.django_db
@pytest.mark.parametrize("label", _operations())
def test_api_conforms_to_schema(label: str, api_schema: Any, admin_headers: Any) -> None:
    method, path = label.split(" ", 1)
    operation = api_schema[path][method]

    @given(case=operation.as_strategy())
    @settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    def check(case: Any) -> None:
        response = case.call(headers=admin_headers)
        case.validate_response(response, checks=CHECKS)

    check()

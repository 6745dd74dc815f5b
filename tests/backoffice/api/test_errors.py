"""No HTML error page under /api/: every exception becomes ``{"detail", "code"}`` JSON.

A service's domain exception maps to its status and a stable code; anything unexpected
is a JSON 500 whose request id is both in the answer and in the log line with the traceback.
"""

from __future__ import annotations

import base64
import json
import logging
from typing import Any

import pytest
from django.core.exceptions import ValidationError as DjangoValidationError

from backoffice.api import stream
from ingestion.modules import UnknownModule
from ingestion.parsing import FileRejected
from ingestion.services import UploadRejected
from pipelines import services
from pipelines.models import Job
from pipelines.registry import UnknownJobType

pytestmark = pytest.mark.django_db

LIST = "/api/v1/pipelines/"
JOBS = "/api/v1/jobs/"


def crafted(query: str) -> str:
    return base64.b64encode(query.encode()).decode()


@pytest.mark.parametrize("url", [LIST, JOBS])
@pytest.mark.parametrize(
    "cursor",
    [
        crafted("p=not-a-date"),  # position not a timestamp: reached the SQL filter (500)
        crafted("o=1&p=2025-13-45T00:00:00"),  # shaped like one, out of range
        crafted("r=1&p=" + "9" * 400),
        crafted("o=-5"),
        "%%%not-base64",
    ],
)
def test_crafted_cursor_is_400(client_for: Any, make_pipeline: Any, url: str, cursor: str) -> None:
    # Given pipelines to page through, when a caller sends a cursor it made up
    make_pipeline()
    response = client_for("viewer").get(url, {"cursor": cursor})
    # then it is told the parameter is bad, in the API's error shape
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_cursor"
    assert "cursor" in response.json()["errors"]


def test_a_real_cursor_still_pages(client_for: Any, make_pipeline: Any) -> None:
    for _ in range(3):
        make_pipeline()
    client = client_for("viewer")
    next_url = client.get(LIST, {"page_size": 2}).json()["next"]
    assert len(client.get(next_url).json()["results"]) == 1


@pytest.mark.parametrize(
    ("exc", "status", "code"),
    [
        (services.IllegalTransition("job 7: not_started → not_started is not allowed"), 409, "illegal_transition"),
        (services.ConflictError("Nothing to retry.", "nothing_to_retry"), 409, "nothing_to_retry"),
        (UploadRejected("Year 2031 does not exist", "year_not_found", 404), 404, "year_not_found"),
        (FileRejected("line 1: the header is empty", "bad_header", line=1), 400, "bad_header"),
        (UnknownModule("unknown module 'x'"), 404, "unknown_module"),
        (UnknownJobType("no handler registered for job type 'x'"), 400, "unknown_job_type"),
        (Job.DoesNotExist("job 5 does not exist"), 404, "not_found"),
        (DjangoValidationError("“x” is not a valid date."), 400, "invalid"),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, Exception) else str(v),
)
def test_service_exceptions_answer_json_with_a_stable_code(
    client_for: Any, make_pipeline: Any, monkeypatch: pytest.MonkeyPatch, exc: Exception, status: int, code: str
) -> None:
    # Given a retry whose service raises a domain exception (the view is thin: it lets it out)
    job = make_pipeline().jobs.first()

    def retry(**kwargs: Any) -> Any:
        raise exc

    monkeypatch.setattr(services, "job_retry", retry)
    response = client_for("operator").post(f"/api/v1/jobs/{job.pk}/retry/", {}, format="json")
    # then the caller gets the API's JSON error with the documented status and code
    assert response.status_code == status
    assert response["Content-Type"] == "application/json"
    assert response.json()["code"] == code
    assert response.json()["detail"]


def _request_id_logged(caplog: pytest.LogCaptureFixture, rid: str) -> logging.LogRecord:
    matches = [r for r in caplog.records if getattr(r, "request_id", None) == rid]
    assert len(matches) == 1, [r.getMessage() for r in caplog.records]
    return matches[0]


def test_unexpected_exception_is_a_json_500_with_a_logged_request_id(
    client_for: Any, make_pipeline: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a bug deep in a service
    job = make_pipeline().jobs.first()

    def retry(**kwargs: Any) -> Any:
        raise ZeroDivisionError("division by zero in the planner")

    monkeypatch.setattr(services, "job_retry", retry)
    caplog.set_level(logging.ERROR, logger="sluice.api")
    # when an operator retries a job (DEBUG on, as under `make run`)
    from django.conf import settings

    monkeypatch.setattr(settings, "DEBUG", True)
    response = client_for("operator").post(f"/api/v1/jobs/{job.pk}/retry/", {}, format="json")
    # then the answer is JSON, names a request id, and that id is in the log with the traceback
    assert response.status_code == 500
    body = response.json()
    assert body["code"] == "server_error"
    assert "ZeroDivisionError" not in json.dumps(body)  # no internals leak to the caller
    rid = body["request_id"]
    assert response["X-Request-ID"] == rid and rid in body["detail"]
    record = _request_id_logged(caplog, rid)
    assert record.exc_info is not None and record.exc_info[0] is ZeroDivisionError
    assert f"/api/v1/jobs/{job.pk}/retry/" in record.getMessage()


def test_a_callers_request_id_is_reused(
    client_for: Any, make_pipeline: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    job = make_pipeline().jobs.first()
    monkeypatch.setattr(services, "job_cancel", lambda **kw: 1 / 0)
    caplog.set_level(logging.ERROR, logger="sluice.api")
    client = client_for("operator")
    response = client.post(f"/api/v1/jobs/{job.pk}/cancel/", {}, format="json", HTTP_X_REQUEST_ID="proxy-4f2a9c01")
    assert response.json()["request_id"] == "proxy-4f2a9c01"
    _request_id_logged(caplog, "proxy-4f2a9c01")
    # A header that is not a plain short token is replaced, not echoed into our logs.
    response = client.post(f"/api/v1/jobs/{job.pk}/cancel/", {}, format="json", HTTP_X_REQUEST_ID="a\tb" * 40)
    assert response.json()["request_id"] != "a\tb" * 40


def test_plain_django_view_under_api_is_a_json_500(
    client_for: Any, make_pipeline: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Given the SSE stream (an async Django view, not DRF) failing before it streams
    pipeline = make_pipeline()

    def broken(user: Any, pipeline_id: Any) -> Any:
        raise RuntimeError("lost the database")

    monkeypatch.setattr(stream, "_visible_module", broken)
    caplog.set_level(logging.ERROR, logger="sluice.api")
    response = client_for("viewer").get(f"{LIST}{pipeline.pk}/stream/")
    assert response.status_code == 500
    assert response["Content-Type"] == "application/json"
    body = response.json()
    assert body["code"] == "server_error" and response["X-Request-ID"] == body["request_id"]
    _request_id_logged(caplog, body["request_id"])

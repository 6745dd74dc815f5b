"""Queues, workers, alerts, token throttling and the token command."""

from __future__ import annotations

from datetime import timedelta
from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command
from django.test import Client
from django.utils import timezone
from rest_framework.authtoken.models import Token

from backoffice.api.auth import TokenRateThrottle
from pipelines.models import Job, JobResult, JobState, OperatorAction, QueueState
from tests.backoffice.api.conftest import OTHER_MODULE

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def fast_inspect(settings: Any) -> None:
    settings.SLUICE_INSPECT_TIMEOUT = 0.1  # no worker in these tests: do not wait for replies


def test_queues_list(client_for: Any, make_pipeline: Any) -> None:
    make_pipeline()
    body = client_for("viewer").get("/api/v1/queues/").json()
    # The registered job types' queues (the test job types add their own), the default last.
    names = [q["name"] for q in body]
    assert [n for n in names if not n.startswith("test_")] == ["ingest", "recalc", "aggregate", "export", "default"]
    default = body[-1]
    assert default["queued_jobs"] == 1 and default["paused"] is False and default["consumers"] == []
    assert default["oldest_waiting_seconds"] is not None
    assert client_for("norole").get("/api/v1/queues/").status_code == 403


def test_pause_resume(client_for: Any) -> None:
    operator = client_for("operator")
    response = operator.post("/api/v1/queues/ingest/pause/", {"reason": "maintenance"}, format="json")
    assert response.status_code == 202 and response.json()["paused"] is True
    assert QueueState.objects.get(name="ingest").paused
    again = operator.post("/api/v1/queues/ingest/pause/")
    assert again.status_code == 409 and again.json()["code"] == "no_change"
    assert operator.post("/api/v1/queues/ingest/resume/").status_code == 202
    assert not QueueState.objects.get(name="ingest").paused
    assert operator.post("/api/v1/queues/nope/pause/").status_code == 404
    assert set(OperatorAction.objects.filter(target_type="queue").values_list("action", flat=True)) == {
        "pause", "resume"
    }


@pytest.mark.parametrize(("who", "status"), [("viewer", 403), ("granted", 403), (None, 401), ("admin", 202)])
def test_pause_matrix(who: str | None, status: int, client_for: Any) -> None:
    assert client_for(who).post("/api/v1/queues/recalc/pause/").status_code == status


def test_workers_without_worker(client_for: Any) -> None:
    assert client_for("viewer").get("/api/v1/workers/").json() == []


def test_alerts(client_for: Any, make_pipeline: Any) -> None:
    a, b = make_pipeline(), make_pipeline(module=OTHER_MODULE)
    ja, jb = list(a.jobs.order_by("id")), list(b.jobs.order_by("id"))
    old = timezone.now() - timedelta(minutes=5)
    Job.objects.filter(pk=ja[0].pk).update(state=JobState.RUNNING, heartbeat_at=old, started_at=old, worker="w")
    Job.objects.filter(pk=ja[1].pk).update(
        job_type="csv_ingest", state=JobState.FINISHED, result=JobResult.ERROR,
        meta={"rows_total": 5, "rows_loaded": 0, "rows_rejected": 5}, status_message="0 rows loaded, 5 rejected",
    )
    Job.objects.filter(pk=jb[0].pk).update(
        state=JobState.FINISHED, result=JobResult.ERROR,
        error={"type": "InFailedSqlTransaction", "message": "current transaction is aborted, commands ignored"},
    )
    Job.objects.filter(pk=jb[1].pk).update(
        state=JobState.FINISHED, result=JobResult.ERROR,
        error={"type": "DeadlockDetected", "message": "deadlock detected"},
    )
    Job.objects.filter(pk__in=[jb[2].pk, jb[3].pk]).update(job_type="aggregation")
    body = client_for("viewer").get("/api/v1/alerts/").json()
    counts = body["counts"]
    assert counts["stuck"] == 1
    assert counts["rows_all_rejected"] == 1
    assert counts["transaction_poisoned"] == 1
    assert counts["deadlock"] == 1
    assert counts["aggregation_amplified"] == 2
    assert counts["slow"] == 0
    assert body["total"] == sum(counts.values())
    assert {i["kind"] for i in body["items"]} >= {"stuck", "deadlock"}
    restricted = client_for("granted").get("/api/v1/alerts/").json()["counts"]
    assert restricted["deadlock"] == 0 and restricted["stuck"] == 1
    only = client_for("viewer").get("/api/v1/alerts/", {"kind": "stuck"}).json()
    assert list(only["counts"]) == ["stuck"]
    assert client_for("viewer").get("/api/v1/alerts/", {"kind": "nope"}).status_code == 400


def test_slow_alert(client_for: Any, make_pipeline: Any) -> None:
    now = timezone.now()
    for _ in range(2):
        for job in make_pipeline().jobs.all():
            Job.objects.filter(pk=job.pk).update(
                state=JobState.FINISHED, result=JobResult.SUCCESS,
                started_at=now - timedelta(seconds=2), finished_at=now,
            )
    slow = make_pipeline().jobs.first()
    Job.objects.filter(pk=slow.pk).update(state=JobState.RUNNING, started_at=now - timedelta(minutes=10),
                                          heartbeat_at=now)
    body = client_for("viewer").get("/api/v1/alerts/", {"kind": "slow"}).json()
    assert body["counts"]["slow"] == 1 and body["items"][0]["job_id"] == slow.pk


def test_queue_stalled_alert(client_for: Any, make_pipeline: Any, settings: Any) -> None:
    p = make_pipeline()
    Job.objects.filter(pipeline=p, state=JobState.QUEUED).update(queued_at=timezone.now() - timedelta(minutes=5))
    body = client_for("viewer").get("/api/v1/alerts/", {"kind": "queue_stalled"}).json()
    assert body["counts"]["queue_stalled"] == 1


def test_token_throttle_429(token_client: Any, client_for: Any, monkeypatch: Any) -> None:
    monkeypatch.setattr(TokenRateThrottle, "THROTTLE_RATES", {"token": "3/min"})
    from django.core.cache import caches

    caches["api_throttle"].clear()
    client = token_client("viewer")
    codes = [client.get("/api/v1/pipelines/").status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429]
    throttled = client.get("/api/v1/pipelines/")
    assert throttled.json()["code"] == "throttled" and "Retry-After" in throttled
    # Session users (the back office) are not token-throttled.
    session = client_for("viewer")
    assert all(session.get("/api/v1/pipelines/").status_code == 200 for _ in range(5))
    caches["api_throttle"].clear()


def test_token_command(users: Any) -> None:
    out = StringIO()
    call_command("sluice_token", "issue", "viewer", stdout=out)
    key = out.getvalue().strip()
    assert Token.objects.get(user=users["viewer"]).key == key
    out = StringIO()
    call_command("sluice_token", "issue", "viewer", stdout=out)
    assert out.getvalue().strip() == key  # idempotent
    call_command("sluice_token", "issue", "viewer", "--rotate", stdout=StringIO())
    assert Token.objects.get(user=users["viewer"]).key != key
    call_command("sluice_token", "revoke", "viewer", stdout=StringIO())
    assert not Token.objects.filter(user=users["viewer"]).exists()
    assert OperatorAction.objects.filter(action="issue_token").count() == 2
    assert OperatorAction.objects.filter(action="revoke_token").count() == 2
    from django.core.management.base import CommandError

    with pytest.raises(CommandError):
        call_command("sluice_token", "issue", "ghost", stdout=StringIO())


def test_schema_and_docs_served(client_for: Any) -> None:
    schema = client_for(None).get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert schema.status_code == 200
    paths = schema.json()["paths"]
    for expected in ("/api/v1/pipelines/", "/api/v1/pipelines/{pipeline_id}/stream/", "/api/v1/jobs/stats/",
                     "/api/v1/years/{year}/modules/{module}/uploads/", "/api/v1/alerts/"):
        assert expected in paths
    assert client_for(None).get("/api/docs/").status_code == 200


def test_docs_page_loads_nothing_from_outside(client_for: Any) -> None:
    """Swagger UI comes from the sidecar package's static files: the page works offline."""
    import re

    page = client_for(None).get("/api/docs/")
    html = page.content.decode()
    assert page.status_code == 200 and "SwaggerUIBundle" in html
    assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", html, re.I), "external URL in /api/docs/"
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert any(a.endswith("swagger-ui-bundle.js") for a in assets) and any(a.endswith(".css") for a in assets)
    anonymous = Client()
    for asset in assets:
        response = anonymous.get(asset)
        assert response.status_code == 200, asset
        body = b"".join(response.streaming_content) if response.streaming else response.content
        assert len(body) > 100, asset


def test_overlapping_aggregations_of_one_year(client_for: Any, make_pipeline: Any) -> None:
    now = timezone.now()
    first, second, other_year = make_pipeline(year=2040), make_pipeline(year=2040), make_pipeline(year=2041)
    runs = [(first, now - timedelta(seconds=60), now - timedelta(seconds=30)),
            (second, now - timedelta(seconds=40), None),  # still running, started before `first` ended
            (other_year, now - timedelta(seconds=50), now - timedelta(seconds=10))]
    for pipeline, started, finished in runs:
        last = pipeline.jobs.order_by("-id").first()
        Job.objects.filter(pk=last.pk).update(
            job_type="aggregation", started_at=started, finished_at=finished,
            state=JobState.FINISHED if finished else JobState.RUNNING, heartbeat_at=now,
        )
    body = client_for("viewer").get("/api/v1/alerts/", {"kind": "aggregation_amplified"}).json()
    assert body["counts"]["aggregation_amplified"] == 1
    assert body["items"][0]["pipeline_id"] == str(second.pk)


def test_token_endpoint(users: Any) -> None:
    from rest_framework.test import APIClient

    users["viewer"].set_password("s3cret-pass")
    users["viewer"].save()
    client = APIClient()
    response = client.post("/api/v1/auth/token/", {"username": "viewer", "password": "s3cret-pass"})
    assert response.status_code == 200
    assert response.json()["token"] == Token.objects.get(user=users["viewer"]).key
    wrong = client.post("/api/v1/auth/token/", {"username": "viewer", "password": "nope"})
    assert wrong.status_code == 400 and wrong.json()["code"]


def test_dates_past_the_utc_range_keep_their_meaning(client_for: Any, make_pipeline: Any) -> None:
    # Valid RFC 3339 (as the document says) but outside Python's range once in UTC: a
    # bound after (or before) every row, not a 400 and not a 500 (issue 18).
    make_pipeline()
    client = client_for("viewer")
    assert client.get("/api/v1/jobs/", {"until": "5000-02-23T12:37:07.5+21:53"}).status_code == 200
    assert client.get("/api/v1/pipelines/", {"since": "9999-12-31T23:00:00-05:00"}).json()["results"] == []
    assert len(client.get("/api/v1/pipelines/", {"since": "0001-01-01T00:00:00+05:00"}).json()["results"]) == 1
    assert client.get("/api/v1/pipelines/", {"until": "0001-01-01T00:00:00+05:00"}).json()["results"] == []


def test_admin_token_page(users: Any) -> None:
    from django.test import Client

    browser = Client()
    browser.force_login(users["admin"])
    assert browser.get("/admin/authtoken/tokenproxy/").status_code == 200
    assert browser.get("/admin/authtoken/tokenproxy/add/").status_code == 200

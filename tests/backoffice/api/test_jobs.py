"""Jobs endpoints: list and filters, detail, errors.csv, controls, stats."""

from __future__ import annotations

import csv
import io
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from pipelines.models import Job, JobResult, JobState, OperatorAction
from tests.backoffice.api.conftest import GRANTED_MODULE, OTHER_MODULE

pytestmark = pytest.mark.django_db


def test_list_and_filters(client_for: Any, make_pipeline: Any) -> None:
    a, b = make_pipeline(module=GRANTED_MODULE, year=2024), make_pipeline(module=OTHER_MODULE, year=2025)
    client = client_for("viewer")
    body = client.get("/api/v1/jobs/").json()
    assert len(body["results"]) == 8
    assert {j["pipeline_id"] for j in client.get("/api/v1/jobs/", {"pipeline": str(a.pk)}).json()["results"]} == {
        str(a.pk)
    }
    assert len(client.get("/api/v1/jobs/", {"year": 2025}).json()["results"]) == 4
    assert len(client.get("/api/v1/jobs/", {"module": OTHER_MODULE}).json()["results"]) == 4
    assert len(client.get("/api/v1/jobs/", {"state": "queued"}).json()["results"]) == 2
    assert len(client.get("/api/v1/jobs/", {"job_type": "noop", "queue": "default"}).json()["results"]) == 8
    assert client.get("/api/v1/jobs/", {"result": "bogus"}).status_code == 400
    assert client.get("/api/v1/jobs/", {"pipeline": "not-a-uuid"}).status_code == 400
    restricted = client_for("granted").get("/api/v1/jobs/").json()["results"]
    assert {j["pipeline_id"] for j in restricted} == {str(a.pk)}
    assert {j["module"] for j in restricted} == {GRANTED_MODULE}
    assert b  # the other module's jobs are dropped, not a 403


def test_detail_full_meta_and_error(client_for: Any, make_pipeline: Any) -> None:
    p = make_pipeline()
    job = p.jobs.first()
    Job.objects.filter(pk=job.pk).update(
        meta={"rows_loaded": 1, "row_errors": [{"row": 2, "column": "fte", "reason": "not a number"}]},
        error={"type": "ValueError", "message": "boom", "traceback": "tb", "stage": "parse"},
    )
    body = client_for("viewer").get(f"/api/v1/jobs/{job.pk}/").json()
    assert body["meta"]["row_errors"][0]["column"] == "fte"
    assert body["counts"] == {"rows_loaded": 1}
    assert body["error"]["stage"] == "parse"
    assert body["pipeline_id"] == str(p.pk)


def test_detail_visibility(client_for: Any, make_pipeline: Any) -> None:
    job = make_pipeline(module=OTHER_MODULE).jobs.first()
    assert client_for("granted").get(f"/api/v1/jobs/{job.pk}/").status_code == 404
    assert client_for("operator").get(f"/api/v1/jobs/{job.pk}/").status_code == 200
    assert client_for("viewer").get("/api/v1/jobs/999999999/").status_code == 404
    assert client_for(None).get(f"/api/v1/jobs/{job.pk}/").status_code == 401


def test_errors_csv_is_formula_safe_and_complete(client_for: Any, make_pipeline: Any) -> None:
    job = make_pipeline().jobs.first()
    errors = [{"row": i, "column": "fte", "reason": "not a number"} for i in range(1, 1201)]
    errors[0] = {"row": 1, "column": "=HYPERLINK(\"http://x\")", "reason": "+1"}
    errors[1] = {"row": 2, "column": "@SUM(A1)", "reason": "-2"}
    errors[2] = {"row": 3, "column": "\tx", "reason": "\rcr"}
    # All errors live in ingestion's RowError table (meta keeps the first 1,000 only).
    from ingestion.models import RowError

    RowError.objects.bulk_create(RowError(job_id=job.pk, **e) for e in errors)
    Job.objects.filter(pk=job.pk).update(meta={"row_errors": errors[:1000]})
    response = client_for("viewer").get(f"/api/v1/jobs/{job.pk}/errors.csv")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    text = b"".join(response.streaming_content).decode()
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == ["row", "column", "reason"]
    assert len(rows) == 1201
    assert rows[1] == ["1", "'=HYPERLINK(\"http://x\")", "'+1"]
    assert rows[2] == ["2", "'@SUM(A1)", "'-2"]
    assert rows[3][1] == "'\tx" and rows[3][2] == "'\rcr"
    assert rows[4] == ["4", "fte", "not a number"]


def test_errors_csv_404(client_for: Any, make_pipeline: Any) -> None:
    job = make_pipeline(module=OTHER_MODULE).jobs.first()
    assert client_for("granted").get(f"/api/v1/jobs/{job.pk}/errors.csv").status_code == 404


def test_job_cancel_retry_recover(client_for: Any, make_pipeline: Any) -> None:
    p = make_pipeline()
    first = p.jobs.order_by("id").first()
    client = client_for("operator")
    # recover: only running jobs
    conflict = client.post(f"/api/v1/jobs/{first.pk}/recover/")
    assert conflict.status_code == 409 and conflict.json()["code"] == "not_running"
    # retry: only failed/cancelled/skipped
    assert client.post(f"/api/v1/jobs/{first.pk}/retry/").json()["code"] == "not_retryable"
    response = client.post(f"/api/v1/jobs/{first.pk}/cancel/", {"reason": "test"}, format="json")
    assert response.status_code == 202
    assert response.json()["job"]["result"] == "cancelled"
    assert client.post(f"/api/v1/jobs/{first.pk}/cancel/").status_code == 409
    assert client.post(f"/api/v1/jobs/{first.pk}/retry/").status_code == 202
    actions = set(OperatorAction.objects.filter(target_id=str(first.pk)).values_list("action", flat=True))
    assert actions == {"cancel", "retry"}


def test_recover_stale_running_job(client_for: Any, make_pipeline: Any) -> None:
    p = make_pipeline()
    job = p.jobs.order_by("id").first()
    stale = timezone.now() - timedelta(minutes=10)
    Job.objects.filter(pk=job.pk).update(state=JobState.RUNNING, attempts=1, heartbeat_at=stale, worker="w1")
    client = client_for("operator")
    assert client.post(f"/api/v1/jobs/{job.pk}/recover/", {"force": "maybe"}, format="json").status_code == 400
    response = client.post(f"/api/v1/jobs/{job.pk}/recover/", {"reason": "worker died"}, format="json")
    assert response.status_code == 202
    assert response.json()["job"]["state"] == "queued"


@pytest.mark.parametrize(("who", "status"), [("viewer", 403), ("granted", 404), ("operator", 202), (None, 401)])
def test_job_cancel_matrix(who: str | None, status: int, client_for: Any, make_pipeline: Any) -> None:
    job = make_pipeline(module=OTHER_MODULE).jobs.first()
    assert client_for(who).post(f"/api/v1/jobs/{job.pk}/cancel/").status_code == status


def test_stats(client_for: Any, make_pipeline: Any) -> None:
    p = make_pipeline()
    now = timezone.now()
    for i, job in enumerate(p.jobs.order_by("id")):
        Job.objects.filter(pk=job.pk).update(
            state=JobState.FINISHED, result=JobResult.SUCCESS, started_at=now - timedelta(seconds=10 * (i + 1)),
            finished_at=now,
        )
    make_pipeline(module=OTHER_MODULE)
    body = client_for("viewer").get("/api/v1/jobs/stats/").json()
    assert body["total"] == 8
    assert body["by_state"] == {"finished": 4, "not_started": 3, "queued": 1}
    assert body["by_result"]["success"] == 4
    assert body["by_job_type"] == {"noop": 8}
    assert body["by_queue"] == {"default": 8}
    assert body["durations"]["by_job_type"]["noop"]["p50_seconds"] == pytest.approx(25.0)
    assert body["durations"]["p95_seconds"] == pytest.approx(38.5)
    assert body["throughput"]["finished_last_minute"] == 4
    restricted = client_for("granted").get("/api/v1/jobs/stats/").json()
    assert restricted["total"] == 4
    assert client_for("viewer").get("/api/v1/jobs/stats/", {"since": "nope"}).status_code == 400
    assert client_for("norole").get("/api/v1/jobs/stats/").status_code == 403

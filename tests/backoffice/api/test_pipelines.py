"""Pipelines endpoints: list (filters, pagination, visibility), detail, events, controls."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from pipelines.models import Job, JobState, OperatorAction, Pipeline
from tests.backoffice.api.conftest import GRANTED_MODULE, OTHER_MODULE

pytestmark = pytest.mark.django_db

LIST = "/api/v1/pipelines/"


def ids(response: Any) -> list[str]:
    return [item["id"] for item in response.json()["results"]]


def test_anonymous_is_401_with_code(client_for: Any) -> None:
    response = client_for(None).get(LIST)
    assert response.status_code == 401
    assert response.json()["code"] == "not_authenticated"
    assert response["WWW-Authenticate"] == "Token"


def test_user_without_role_is_403(client_for: Any) -> None:
    response = client_for("norole").get(LIST)
    assert response.status_code == 403
    assert set(response.json()) == {"detail", "code"}


def test_list_newest_first_with_jobs_and_counts_only(client_for: Any, make_pipeline: Any) -> None:
    older, newer = make_pipeline(), make_pipeline()
    Job.objects.filter(pipeline=newer).update(meta={"rows_loaded": 3, "row_errors": [{"row": 1}] * 50})
    body = client_for("viewer").get(LIST).json()
    assert [p["id"] for p in body["results"]] == [str(newer.pk), str(older.pk)]
    jobs = body["results"][0]["jobs"]
    assert len(jobs) == 4
    assert jobs[0]["counts"] == {"rows_loaded": 3}  # allow-listed: no row_errors array
    assert set(jobs[0]) >= {"id", "job_type", "state", "result", "progress", "counts", "status_message"}


@pytest.mark.parametrize(
    ("who", "visible"),
    [("viewer", {"granted", "other", "none"}), ("operator", {"granted", "other", "none"}), ("granted", {"granted"}),
     ("admin", {"granted", "other", "none"})],
)
def test_list_filters_by_module_grant(who: str, visible: set[str], client_for: Any, make_pipeline: Any) -> None:
    made = {"granted": make_pipeline(module=GRANTED_MODULE), "other": make_pipeline(module=OTHER_MODULE),
            "none": make_pipeline(module="")}
    response = client_for(who).get(LIST)
    assert response.status_code == 200
    assert set(ids(response)) == {str(made[k].pk) for k in visible}


def test_token_auth_reads(token_client: Any, make_pipeline: Any) -> None:
    p = make_pipeline()
    response = token_client("viewer").get(LIST)
    assert response.status_code == 200
    assert ids(response) == [str(p.pk)]


def test_bad_token_is_401(make_pipeline: Any) -> None:
    from rest_framework.test import APIClient

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Token nope")
    assert client.get(LIST).status_code == 401


def test_cursor_pagination_walks_every_pipeline_once(client_for: Any, make_pipeline: Any) -> None:
    made = [make_pipeline() for _ in range(7)]
    client = client_for("viewer")
    seen: list[str] = []
    url: str | None = f"{LIST}?page_size=3"
    while url:
        body = client.get(url).json()
        assert len(body["results"]) <= 3
        seen += [p["id"] for p in body["results"]]
        url = body["next"]
    assert seen == [str(p.pk) for p in reversed(made)]


def test_list_queries_do_not_grow_with_page(client_for: Any, make_pipeline: Any) -> None:
    for _ in range(3):
        make_pipeline()
    client = client_for("viewer")
    with CaptureQueriesContext(connection) as few:
        client.get(LIST)
    for _ in range(10):
        make_pipeline()
    with CaptureQueriesContext(connection) as many:
        client.get(LIST)
    assert len(many) == len(few)


def test_filters(client_for: Any, make_pipeline: Any) -> None:
    a = make_pipeline(module=GRANTED_MODULE, year=2024)
    b = make_pipeline(module=OTHER_MODULE, year=2025, kind="recalculate")
    Pipeline.objects.filter(pk=b.pk).update(status="failed", error_count=1, last_error="boom in the factors")
    c = viewer = client_for("viewer")
    assert ids(viewer.get(LIST, {"year": 2024})) == [str(a.pk)]
    assert ids(viewer.get(LIST, {"module": OTHER_MODULE})) == [str(b.pk)]
    assert ids(viewer.get(LIST, {"kind": "recalculate"})) == [str(b.pk)]
    assert ids(viewer.get(LIST, {"status": "failed"})) == [str(b.pk)]
    assert ids(viewer.get(LIST, {"has_errors": "true"})) == [str(b.pk)]
    assert ids(viewer.get(LIST, {"has_errors": "false"})) == [str(a.pk)]
    assert ids(viewer.get(LIST, {"q": "factors"})) == [str(b.pk)]
    assert ids(viewer.get(LIST, {"q": str(a.pk)})) == [str(a.pk)]
    assert ids(viewer.get(LIST, {"since": "2000-01-01T00:00:00Z", "until": "2001-01-01T00:00:00Z"})) == []
    assert len(ids(c.get(LIST, {"since": "2000-01-01T00:00:00Z"}))) == 2


def test_alert_filter(client_for: Any, make_pipeline: Any) -> None:
    a, _ = make_pipeline(), make_pipeline()
    Job.objects.filter(pipeline=a, job_type="noop").filter(pk=a.jobs.first().pk).update(
        state=JobState.FINISHED, result="error", error={"type": "DeadlockDetected", "message": "deadlock detected"}
    )
    assert ids(client_for("viewer").get(LIST, {"alert": "deadlock"})) == [str(a.pk)]


@pytest.mark.parametrize("params", [{"status": "bogus"}, {"year": "x"}, {"since": "yesterday"}, {"alert": "nope"}])
def test_invalid_filter_is_400(params: dict[str, str], client_for: Any) -> None:
    response = client_for("viewer").get(LIST, params)
    assert response.status_code == 400
    body = response.json()
    assert body["code"] and body["detail"] and body["errors"]


def test_detail_has_dag(client_for: Any, make_pipeline: Any) -> None:
    p = make_pipeline()
    body = client_for("viewer").get(f"{LIST}{p.pk}/").json()
    assert body["id"] == str(p.pk)
    assert len(body["jobs"]) == 4
    assert len(body["edges"]) == 4
    assert body["seq"] > 0 and body["progress"]["total"] == 4


@pytest.mark.parametrize(("who", "status"), [("granted", 404), ("viewer", 200), ("norole", 403), (None, 401)])
def test_detail_visibility(who: str | None, status: int, client_for: Any, make_pipeline: Any) -> None:
    p = make_pipeline(module=OTHER_MODULE)
    assert client_for(who).get(f"{LIST}{p.pk}/").status_code == status


def test_unknown_pipeline_is_404(client_for: Any) -> None:
    response = client_for("viewer").get(f"{LIST}00000000-0000-0000-0000-000000000000/")
    assert response.status_code == 404
    assert response.json()["code"] == "not_found"


def test_events_after(client_for: Any, make_pipeline: Any) -> None:
    p = make_pipeline()
    client = client_for("viewer")
    everything = client.get(f"{LIST}{p.pk}/events/").json()
    seqs = [e["seq"] for e in everything["events"]]
    assert seqs == sorted(seqs) and len(seqs) >= 5
    rest = client.get(f"{LIST}{p.pk}/events/", {"after": seqs[1]}).json()
    assert [e["seq"] for e in rest["events"]] == seqs[2:]
    assert rest["last_seq"] == seqs[-1]
    assert client.get(f"{LIST}{p.pk}/events/", {"after": "-1"}).status_code == 400


def test_active(client_for: Any, make_pipeline: Any) -> None:
    running, done = make_pipeline(year=2030), make_pipeline(year=2030)
    Pipeline.objects.filter(pk=done.pk).update(status="success")
    body = client_for("viewer").get("/api/v1/pipelines/active/", {"year": 2030}).json()
    assert body["pipeline_ids"] == [str(running.pk)]


# --- controls ---------------------------------------------------------------------------------


def test_cancel_202_then_409_and_recorded(client_for: Any, make_pipeline: Any, users: Any) -> None:
    p = make_pipeline()
    client = client_for("operator")
    response = client.post(f"{LIST}{p.pk}/cancel/", {"reason": "wrong file"}, format="json")
    assert response.status_code == 202
    assert response.json()["pipeline"]["status"] == "cancelled"
    action = OperatorAction.objects.get(target_id=str(p.pk), action="cancel")
    assert action.actor == users["operator"] and action.reason == "wrong file"
    again = client.post(f"{LIST}{p.pk}/cancel/", format="json")
    assert again.status_code == 409
    assert again.json()["code"] == "nothing_to_cancel"


def test_retry_after_cancel(client_for: Any, make_pipeline: Any) -> None:
    p = make_pipeline()
    client = client_for("operator")
    assert client.post(f"{LIST}{p.pk}/retry/").status_code == 409
    client.post(f"{LIST}{p.pk}/cancel/")
    response = client.post(f"{LIST}{p.pk}/retry/")
    assert response.status_code == 202
    assert OperatorAction.objects.filter(target_id=str(p.pk), action="retry").exists()


@pytest.mark.parametrize(
    ("who", "module", "status"),
    [("viewer", GRANTED_MODULE, 403), ("granted", GRANTED_MODULE, 202), ("granted", OTHER_MODULE, 404),
     ("operator", OTHER_MODULE, 202), ("norole", GRANTED_MODULE, 403), (None, GRANTED_MODULE, 401)],
)
def test_cancel_permission_matrix(
    who: str | None, module: str, status: int, client_for: Any, make_pipeline: Any
) -> None:
    p = make_pipeline(module=module)
    assert client_for(who).post(f"{LIST}{p.pk}/cancel/").status_code == status


def test_token_operator_can_cancel_without_csrf(token_client: Any, make_pipeline: Any) -> None:
    p = make_pipeline()
    assert token_client("operator").post(f"{LIST}{p.pk}/cancel/").status_code == 202


def test_session_post_enforces_csrf(users: Any, make_pipeline: Any) -> None:
    from rest_framework.test import APIClient

    p = make_pipeline()
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(users["operator"])
    response = client.post(f"{LIST}{p.pk}/cancel/")
    assert response.status_code == 403
    assert "CSRF" in response.json()["detail"]


def test_reason_too_long_is_400(client_for: Any, make_pipeline: Any) -> None:
    p = make_pipeline()
    response = client_for("operator").post(f"{LIST}{p.pk}/cancel/", {"reason": "x" * 2000}, format="json")
    assert response.status_code == 400
    assert "reason" in response.json()["errors"]


def test_start_noop_pipeline(client_for: Any) -> None:
    response = client_for("operator").post(LIST, {"kind": "noop"}, format="json")
    assert response.status_code == 202
    assert Pipeline.objects.filter(pk=response.json()["pipeline_id"]).exists()


def test_start_validation_and_permissions(client_for: Any) -> None:
    assert client_for("operator").post(LIST, {"kind": "bogus"}, format="json").status_code == 400
    assert client_for("operator").post(LIST, {"kind": "recalculate", "year": 2025}, format="json").status_code == 400
    assert client_for("viewer").post(LIST, {"kind": "noop"}, format="json").status_code == 403
    assert client_for("granted").post(LIST, {"kind": "noop"}, format="json").status_code == 403

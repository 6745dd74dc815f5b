"""``/api/v1/sources/``: configure, list (narrowed), run now (409 while running), pause/resume, audit."""

from __future__ import annotations

from typing import Any

import pytest
from django_celery_beat.models import PeriodicTask

from ingestion.models import Source, SourceRun
from ingestion.sources import services
from pipelines.models import OperatorAction
from tests.backoffice.api.conftest import GRANTED_MODULE, OTHER_MODULE

pytestmark = pytest.mark.django_db

SAMPLES = services.settings.BASE_DIR / "ingestion" / "samples"


def body(**extra: Any) -> dict[str, Any]:
    return {"name": "partner factors", "kind": "module_factors", "location": "https://partner.example/factors.csv",
            "module": GRANTED_MODULE, "year_rule": "fixed", "year": 2025, "interval_seconds": 900, **extra}


def make(name: str, module: str = "", kind: str = "module_data") -> Source:
    return services.source_create(actor=None, name=name, kind=kind, module=module,
                                  location=str(SAMPLES / "units.csv"), cron="0 6 * * *")


def test_an_operator_creates_a_source_with_its_schedule(client_for: Any, settings: Any) -> None:
    settings.SLUICE_SOURCE_SECRETS = {"PARTNER": "Bearer do-not-store"}

    response = client_for("operator").post("/api/v1/sources/", body(auth_secret="PARTNER"), format="json")

    assert response.status_code == 201, response.content
    card = response.json()
    assert card["schedule_text"] == "Every 15 minutes"
    assert card["last_run"] is None and card["next_run"] is not None
    assert card["success_rate"] == {"runs": 0, "succeeded": 0, "rate": None}
    task = PeriodicTask.objects.get(name=f"sluice-source-{card['id']}")
    assert task.task == "sluice.source_run" and task.interval.every == 900 and task.enabled
    assert "do-not-store" not in str(Source.objects.filter(pk=card["id"]).values().get())
    assert OperatorAction.objects.get(action="create_source").actor_name == "operator"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"cron": "0 6 * * *"}, "schedule"),  # both an interval and a cron
        ({"interval_seconds": None}, "schedule"),  # neither
        ({"cron": "61 * * * *", "interval_seconds": None}, "cron"),
        ({"location": "/etc/passwd"}, "location"),
        ({"location": "ftp://partner.example/x"}, "location"),
        ({"auth_secret": "UNKNOWN"}, "auth_secret"),
        ({"module": "nope"}, "module"),
        ({"year_rule": "fixed", "year": None}, "year"),
        ({"auth_header": "X-Key: 1\r\nX-Other"}, "auth_header"),
    ],
)
def test_a_bad_configuration_is_a_400_naming_the_field(client_for: Any, change: dict[str, Any], field: str) -> None:
    response = client_for("operator").post("/api/v1/sources/", body(**change), format="json")
    assert response.status_code == 400, response.content
    assert field in response.json()["errors"]
    assert not Source.objects.exists()


def test_lists_are_narrowed_to_the_modules_a_user_may_see(client_for: Any) -> None:
    make("granted data", GRANTED_MODULE)
    make("other data", OTHER_MODULE)
    make("directory", kind="unit_directory")

    def names(who: str) -> list[str]:
        response = client_for(who).get("/api/v1/sources/")
        assert response.status_code == 200
        return sorted(item["name"] for item in response.json()["results"])

    assert names("viewer") == ["directory", "granted data", "other data"]
    assert names("granted") == ["granted data"]  # the unit directory needs every module
    assert client_for("norole").get("/api/v1/sources/").status_code == 403  # like every console list
    other = Source.objects.get(name="other data")
    assert client_for("granted").get(f"/api/v1/sources/{other.pk}/").status_code == 404
    assert client_for("granted").post(f"/api/v1/sources/{other.pk}/run/").status_code == 404


def test_a_viewer_may_read_but_not_operate(client_for: Any) -> None:
    source = make("granted data", GRANTED_MODULE)
    viewer = client_for("viewer")
    assert viewer.get(f"/api/v1/sources/{source.pk}/").status_code == 200
    assert viewer.post("/api/v1/sources/", body(), format="json").status_code == 403
    for action in ("run", "pause", "resume"):
        assert viewer.post(f"/api/v1/sources/{source.pk}/{action}/").status_code == 403
    assert viewer.patch(f"/api/v1/sources/{source.pk}/", {"enabled": False}, format="json").status_code == 403
    assert viewer.delete(f"/api/v1/sources/{source.pk}/").status_code == 403
    assert client_for("granted").post(f"/api/v1/sources/{source.pk}/pause/").status_code == 200


def test_run_now_starts_a_pipeline_and_a_second_click_is_a_409(client_for: Any) -> None:
    source = make("granted data", GRANTED_MODULE)
    client = client_for("granted")

    first = client.post(f"/api/v1/sources/{source.pk}/run/")
    second = client.post(f"/api/v1/sources/{source.pk}/run/")

    assert first.status_code == 202
    run = SourceRun.objects.get(source=source)
    assert str(run.pipeline_id) == first.json()["pipeline_id"] and run.trigger == "manual"
    assert run.pipeline.kind == "source" and run.pipeline.params["source_id"] == source.pk
    assert [j.job_type for j in run.pipeline.jobs.order_by("id")][:2] == ["source_fetch", "csv_ingest"]
    assert second.status_code == 409 and second.json()["code"] == "source_running"
    card = client.get(f"/api/v1/sources/{source.pk}/").json()
    assert card["last_run"]["pipeline_id"] == first.json()["pipeline_id"]
    assert card["last_run"]["status"] == "not_started" and card["last_run"]["trigger"] == "manual"
    audit = OperatorAction.objects.get(action="start_pipeline", target_type="source")
    assert audit.actor_name == "granted" and str(audit.pipeline_id) == first.json()["pipeline_id"]


def test_pause_stops_the_schedule_and_resume_restarts_it(client_for: Any) -> None:
    source = make("granted data", GRANTED_MODULE)
    client = client_for("operator")

    paused = client.post(f"/api/v1/sources/{source.pk}/pause/", {"reason": "partner outage"}, format="json")

    assert paused.status_code == 200 and paused.json()["enabled"] is False and paused.json()["next_run"] is None
    assert PeriodicTask.objects.get(name=f"sluice-source-{source.pk}").enabled is False
    assert OperatorAction.objects.get(action="pause", target_type="source").reason == "partner outage"
    with pytest.raises(services.SourcePaused):
        services.source_run_start(source_id=source.pk, actor=None, trigger="schedule")

    resumed = client.post(f"/api/v1/sources/{source.pk}/resume/")

    assert resumed.json()["enabled"] is True and resumed.json()["next_run"] is not None
    assert PeriodicTask.objects.get(name=f"sluice-source-{source.pk}").enabled is True


def test_patch_moves_the_schedule_and_delete_removes_it(client_for: Any) -> None:
    source = make("granted data", GRANTED_MODULE)
    client = client_for("operator")

    patched = client.patch(f"/api/v1/sources/{source.pk}/", {"interval_seconds": 3600}, format="json")

    assert patched.status_code == 200, patched.content
    assert patched.json()["cron"] == "" and patched.json()["schedule_text"] == "Every hour"
    task = PeriodicTask.objects.get(name=f"sluice-source-{source.pk}")
    assert task.interval.every == 3600 and task.crontab is None
    assert OperatorAction.objects.get(action="update_source").detail["changed"] == ["cron", "interval_seconds"]

    assert client.delete(f"/api/v1/sources/{source.pk}/").status_code == 204
    assert not Source.objects.exists() and not PeriodicTask.objects.filter(name__startswith="sluice-source-").exists()
    assert OperatorAction.objects.filter(action="delete_source").exists()

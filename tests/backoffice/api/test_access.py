"""Module scope is explicit: ``all_modules`` or module grants; losing the last grant
narrows a user to nothing on every surface (API, admin, live console page; SSE and
WebSockets in tests/backoffice/live/test_access_live.py). Year details never show a user what
lies outside their scope."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import Group, User
from django.test import Client
from django.utils import timezone

from backoffice import access
from backoffice.models import ModuleGrant
from ingestion.models import Year
from pipelines.models import Job
from tests.backoffice.api.conftest import GRANTED_MODULE, OTHER_MODULE
from tests.support.fixtures import RoleFactory, UserFactory

# transaction=True: the live console page reads its snapshot in its own REPEATABLE READ transaction.
pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _no_dispatch(monkeypatch: Any) -> None:
    """Planned pipelines stay as planned: a session worker (started by another module)
    must not run them while a test reads their state (commits do happen here)."""
    from pipelines import dispatch

    monkeypatch.setattr(dispatch, "send", lambda *args, **kwargs: None)


SURFACES = ("api", "jobs", "admin", "console")


def _everywhere(ids: set[str]) -> dict[str, set[str]]:
    return {surface: ids for surface in SURFACES}


def _surfaces(user: User) -> dict[str, set[str]]:
    """What the user sees of pipelines on the API (pipelines, jobs) and in the admin."""
    client = Client()
    client.force_login(user)
    api = {p["id"] for p in client.get("/api/v1/pipelines/").json()["results"]}
    jobs = {str(j["pipeline_id"]) for j in client.get("/api/v1/jobs/").json()["results"]}
    admin = client.get("/admin/pipelines/pipeline/")
    assert admin.status_code == 200
    admin_ids = {str(p.pk) for p in admin.context["cl"].result_list}
    console = client.get("/admin/pipelines/pipeline/live/")
    console_ids = {p["pipeline"]["id"] for p in console.context["rows"]}
    return {"api": api, "jobs": jobs, "admin": admin_ids, "console": console_ids}


def test_losing_the_last_grant_shows_nothing_rather_than_everything(
    roles: dict[str, Group], make_pipeline: Any
) -> None:
    # Given a staff module operator granted one module directly and one through a group
    mine, other, bare = make_pipeline(module=GRANTED_MODULE), make_pipeline(module=OTHER_MODULE), make_pipeline(
        module=""
    )
    team = RoleFactory(name="buildings team")
    user = UserFactory(username="mo", is_staff=True, roles=("module operator", team.name))
    direct = ModuleGrant.objects.create(user=user, module=GRANTED_MODULE)
    ModuleGrant.objects.create(group=team, module=OTHER_MODULE)
    everywhere = {str(mine.pk), str(other.pk)}
    assert _surfaces(User.objects.get(pk=user.pk)) == _everywhere(everywhere)

    # When the direct grant goes, then only the group's module is left
    direct.delete()
    left = {str(other.pk)}
    assert _surfaces(User.objects.get(pk=user.pk)) == _everywhere(left)

    # When the group (and with it its grant) is deleted: nothing at all, on every surface
    team.delete()
    fresh = User.objects.get(pk=user.pk)
    assert _surfaces(fresh) == _everywhere(set())
    assert access.granted_modules(fresh) == frozenset()
    assert not access.can_see_module(fresh, GRANTED_MODULE) and not access.can_see_module(fresh, "")
    # (an upload to a formerly granted module is refused too)
    response = Client()
    response.force_login(fresh)
    upload = response.post(f"/api/v1/years/2025/modules/{GRANTED_MODULE}/uploads/", {"target": "data_entries"})
    assert upload.status_code == 403

    # While an operator (the group carries all_modules) sees every pipeline, module-less included
    operator = UserFactory(username="op", is_staff=True, roles=("operator",))
    assert _surfaces(operator)["api"] == {str(mine.pk), str(other.pk), str(bare.pk)}


def test_a_role_without_grants_or_all_modules_sees_nothing(roles: dict[str, Group], make_pipeline: Any) -> None:
    make_pipeline(module=GRANTED_MODULE)
    user = UserFactory(username="mv", is_staff=True, roles=("module viewer",))
    assert _surfaces(user) == _everywhere(set())


def test_year_detail_shows_a_restricted_user_only_their_modules(client_for: Any, make_pipeline: Any) -> None:
    # Given a year with an active pipeline of each module and nothing loaded
    Year.objects.create(year=2025, configured_at=timezone.now(), config={"modules": [GRANTED_MODULE, OTHER_MODULE]})
    mine, other = make_pipeline(module=GRANTED_MODULE), make_pipeline(module=OTHER_MODULE)

    # Then the restricted user sees their module's reason and pipeline only
    granted = client_for("granted").get("/api/v1/years/2025/").json()
    assert set(granted["incomplete_reasons"]) == {GRANTED_MODULE}
    assert granted["active_pipeline_ids"] == [str(mine.pk)]
    assert {m["module"] for m in granted["modules"]} == {GRANTED_MODULE}
    # ...while an unrestricted viewer sees both
    viewer = client_for("viewer").get("/api/v1/years/2025/").json()
    assert set(viewer["incomplete_reasons"]) == {GRANTED_MODULE, OTHER_MODULE}
    assert set(viewer["active_pipeline_ids"]) == {str(mine.pk), str(other.pk)}


def test_open_year_detail_without_a_role_is_a_summary(client_for: Any, make_pipeline: Any) -> None:
    # Given an open year whose last ingest rejected a row quoting its cell value
    Year.objects.create(year=2026, is_open=True, configured_at=timezone.now())
    pipeline = make_pipeline(module=GRANTED_MODULE, year=2026)
    job = Job.objects.filter(pipeline=pipeline).first()
    assert job is not None
    Job.objects.filter(pk=job.pk).update(
        job_type="csv_ingest", status_message="1 rejected: row 2 fte 'SECRET-VALUE' is not a number",
        meta={"upload_id": 77, "rows_rejected": 1},
    )

    # When a signed-in user without any role reads it
    response = client_for("norole").get("/api/v1/years/2026/")

    # Then the year and its modules' completeness are there, but no ids or messages
    assert response.status_code == 200
    body = response.json()
    assert body["year"] == 2026 and body["is_open"] is True
    text = response.content.decode()
    assert "SECRET-VALUE" not in text and str(pipeline.pk) not in text and '"upload_id"' not in text
    assert body["active_pipeline_ids"] == [] and body["incomplete_reasons"] == {}
    assert {m["module"] for m in body["modules"]} >= {GRANTED_MODULE}
    assert all(set(m) == {"module", "label", "enabled", "rows", "complete"} for m in body["modules"])
    # (a viewer sees the job summary with its message)
    viewer = client_for("viewer").get("/api/v1/years/2026/").content.decode()
    assert "SECRET-VALUE" in viewer


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"modules": 5}, "modules"),
        ({"modules": []}, "modules"),
        ({"modules": ["headcount", "nope"]}, "modules"),
        ({"colour": "blue"}, "colour"),
        ({"module_settings": {"nope": {}}}, "module_settings"),
        ({"module_settings": {"headcount": {"x": {"deep": 1}}}}, "module_settings"),
        ({"module_settings": "x"}, "module_settings"),
    ],
)
def test_year_config_patch_is_validated(patch: dict[str, Any], field: str, client_for: Any) -> None:
    Year.objects.create(year=2033, config={"modules": ["headcount"], "module_settings": {}})
    response = client_for("operator").patch("/api/v1/years/2033/", {"config": patch}, format="json")
    assert response.status_code == 400, response.content
    body = response.json()
    assert field in body["errors"]["config"], body
    assert Year.objects.get(pk=2033).config == {"modules": ["headcount"], "module_settings": {}}


def test_year_config_patch_stores_typed_settings(client_for: Any) -> None:
    Year.objects.create(year=2033, config={"modules": ["headcount"], "module_settings": {}})
    patch = {"modules": ["headcount", "buildings", "headcount"], "module_settings": {"buildings": {"floor_m2": 12.5}}}
    response = client_for("operator").patch("/api/v1/years/2033/", {"config": patch}, format="json")
    assert response.status_code == 200, response.content
    assert Year.objects.get(pk=2033).config == {
        "modules": ["headcount", "buildings"], "module_settings": {"buildings": {"floor_m2": 12.5}}
    }


def test_a_year_with_no_module_enabled_does_not_open(client_for: Any) -> None:
    # A config stored before validation existed (or written by hand)
    Year.objects.create(year=2034, configured_at=timezone.now(), config={"modules": []})
    response = client_for("operator").patch("/api/v1/years/2034/", {"is_open": True}, format="json")
    assert response.status_code == 409
    assert "no module enabled" in " ".join(response.json()["reasons"]["year"])
    assert Year.objects.get(pk=2034).is_open is False

"""Year validation runs (issue 15): seeded problems are found, nothing is changed, and
the "Open year" gate refuses while the latest run found an error."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.db import connection
from django.urls import reverse
from rest_framework.test import APIClient

from ingestion import services
from ingestion.models import Report, Total, Year
from pipelines.models import Pipeline
from tests.ingestion.conftest import YEAR
from tests.support.fixtures import UserFactory, standard_roles


def client(user: Any) -> APIClient:
    c = APIClient()
    c.force_login(user)
    return c


def validate(api: APIClient, wait_for_pipeline: Callable[..., Pipeline]) -> dict[str, Any]:
    response = api.post(f"/api/v1/years/{YEAR}/validations/")
    assert response.status_code == 202, response.content
    done = wait_for_pipeline(response.json()["pipeline_id"], timeout=60)
    assert done.is_done
    body = api.get(f"/api/v1/validations/{response.json()['validation_id']}/").json()
    assert body["status"] in ("success", "partial") and body["percent"] == 100.0
    return body


def errors_by_check(body: dict[str, Any]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for f in body["findings"]:
        if f["severity"] == "error":
            out.setdefault(f["check"], []).append(f"{f['module']}: {f['text']}")
    return out


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_a_validation_finds_seeded_problems_changes_nothing_and_gates_opening(
    configured_year: Year, load: Callable[..., Pipeline], wait_for_pipeline: Callable[..., Pipeline]
) -> None:
    # Given headcount loaded, buildings enabled without data, a unit whose report is gone,
    # a unit total and the "students" emission lines tampered with behind the pipelines' back
    assert load("headcount", "factors").status == "success"
    assert load("headcount", "data_entries").status == "success"
    services.year_update(year=YEAR, actor=None, config_patch={"modules": ["headcount", "buildings"]})
    lost = Report.objects.filter(year_id=YEAR).order_by("unit_id").first()
    assert lost is not None
    lost_unit = lost.unit_id
    lost.delete()
    tampered = Total.objects.filter(year=YEAR, module="headcount").exclude(unit_id="").order_by("unit_id").first()
    assert tampered is not None
    Total.objects.filter(pk=tampered.pk).update(kg_co2e=tampered.kg_co2e + 1000)
    with connection.cursor() as cur:
        cur.execute("UPDATE ingestion_emissionline SET kg_co2e = kg_co2e * 2 WHERE year = %s AND det = 'students'",
                    [YEAR])
    standard_roles()
    operator = client(UserFactory(roles=("operator",)))

    # When an operator validates the year
    body = validate(operator, wait_for_pipeline)

    # Then each seeded problem is an error finding that names it
    found = errors_by_check(body)
    assert body["result"] == "warning" and body["error_count"] == sum(len(v) for v in found.values())
    assert any(m.startswith("buildings: ") and "no data entries loaded" in m for m in found["modules_complete"])
    assert [lost_unit in m for m in found["units_without_report"]] == [True]
    assert any(tampered.unit_id in m and "differ from the sum of their emission lines" in m
               for m in found["totals_add_up"])
    assert any(m.startswith("headcount: ") and "fresh recomputation" in m for m in found["emissions_sample"])
    assert [f["severity"] for f in body["findings"] if f["check"] == "summary"] == ["info"]
    # ...which the console's pipeline page lists, in French for a French reader
    admin = APIClient()
    admin.force_login(UserFactory(is_staff=True, is_superuser=True))
    page = admin.get(reverse("admin:pipelines_pipeline_live_detail", args=[body["id"]]),
                     HTTP_ACCEPT_LANGUAGE="fr").content.decode()
    assert 'data-check="units_without_report"' in page and "sans rapport pour l&#x27;année" in page
    # ...and nothing was changed by looking
    assert Total.objects.get(pk=tampered.pk).kg_co2e == tampered.kg_co2e + 1000
    assert not Report.objects.filter(year_id=YEAR, unit_id=lost_unit).exists()

    # Given headcount alone is enabled (complete on its own): the validation still keeps the year closed
    services.year_update(year=YEAR, actor=None, config_patch={"modules": ["headcount"]})
    refused = operator.patch(f"/api/v1/years/{YEAR}/", {"is_open": True}, format="json")
    assert refused.status_code == 409
    assert ["latest validation" in r for r in refused.json()["reasons"]["year"]] == [True]
    assert "latest validation" in refused.json()["detail"]

    # When the problems are repaired (report back, emissions and totals recomputed) and it runs again
    Report.objects.create(year_id=YEAR, unit_id=lost_unit)
    recalc = services.pipeline_start_recalculate(year=YEAR, module="headcount", actor=None)
    assert wait_for_pipeline(recalc.pk, timeout=60).status == "success"
    again = validate(operator, wait_for_pipeline)

    # Then it finds no error and the year opens
    assert (again["error_count"], again["result"]) == (0, "success"), errors_by_check(again)
    assert operator.patch(f"/api/v1/years/{YEAR}/", {"is_open": True}, format="json").status_code == 200


@pytest.mark.django_db
def test_only_unrestricted_users_see_validations_and_only_operators_start_them() -> None:
    standard_roles()
    Year.objects.create(year=YEAR, config={})
    operator = client(UserFactory(roles=("operator",)))
    created = operator.post(f"/api/v1/years/{YEAR}/validations/")
    assert created.status_code == 202
    url = f"/api/v1/validations/{created.json()['validation_id']}/"

    viewer = client(UserFactory(roles=("viewer",)))
    waiting = viewer.get(url).json()
    assert (waiting["status"], waiting["findings"], waiting["result"]) == ("not_started", [], None)
    assert viewer.post(f"/api/v1/years/{YEAR}/validations/").status_code == 403
    granted = client(UserFactory(roles=("module operator",), modules=("headcount",)))
    assert granted.get(url).status_code == 404
    assert granted.post(f"/api/v1/years/{YEAR}/validations/").status_code == 403
    assert operator.post("/api/v1/years/2031/validations/").status_code == 404

"""The Source admin: configured through the services (schedule and audit follow), rules per field."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client
from django_celery_beat.models import PeriodicTask

from ingestion.models import Source
from pipelines.models import OperatorAction
from tests.backoffice.conftest import SAMPLES
from tests.backoffice.live.conftest import make_user

pytestmark = pytest.mark.django_db

ADD = "/admin/ingestion/source/add/"


def _client(*perms: str, modules: tuple[str, ...] = ()) -> Client:
    user = make_user("staff", perms=perms, modules=modules)
    user.is_staff = True
    user.save(update_fields=["is_staff"])
    client = Client()
    client.force_login(user)
    return client


def _form(**extra: Any) -> dict[str, Any]:
    return {"name": "Directory", "kind": "unit_directory", "module": "", "location": str(SAMPLES / "units.csv"),
            "auth_secret": "", "auth_header": "Authorization", "year_rule": "current_year", "year": "",
            "cron": "30 5 * * 1", "interval_seconds": "", "enabled": "on", **extra}


def test_an_operator_adds_a_source_and_its_schedule_follows() -> None:
    client = _client("view_console", "operate")

    response = client.post(ADD, _form())

    assert response.status_code == 302, response.content.decode()[-2000:]
    source = Source.objects.get(name="Directory")
    task = PeriodicTask.objects.get(name=f"sluice-source-{source.pk}")
    assert (task.crontab.minute, task.crontab.hour, task.crontab.day_of_week) == ("30", "5", "1")
    assert OperatorAction.objects.get(action="create_source").target_id == str(source.pk)
    page = client.get("/admin/ingestion/source/cards/").content.decode()
    assert "Directory" in page and 'data-action="run"' in page


def test_rules_are_shown_on_their_fields() -> None:
    client = _client("view_console", "operate")

    response = client.post(ADD, _form(interval_seconds="60", location="/etc/passwd"))

    assert response.status_code == 200 and not Source.objects.exists()
    form = response.context["adminform"].form
    assert "give exactly one of cron and interval_seconds" in str(form.non_field_errors())
    assert "outside the folders sources may read" in str(form.errors["location"])


def test_a_viewer_reads_the_cards_but_cannot_add_or_run() -> None:
    from ingestion.sources import services

    source = services.source_create(actor=None, **{k: v for k, v in _form().items() if k not in ("year", "enabled",
                                                                                                    "interval_seconds")})
    client = _client("view_console")

    assert client.get("/admin/ingestion/source/cards/").status_code == 200
    assert client.get(ADD).status_code == 403
    assert client.post(f"/admin/ingestion/source/cards/{source.pk}/run/").status_code == 403
    assert client.get("/admin/django_celery_beat/periodictask/").status_code == 404  # edited via sources only


def test_the_cards_page_speaks_french() -> None:
    from ingestion.sources import services

    services.source_create(actor=None, name="Facteurs", kind="module_factors", module="headcount",
                           location=str(SAMPLES / "headcount_factors.csv"), interval_seconds=7200)
    client = _client("view_console", "operate")

    page = client.get("/admin/ingestion/source/cards/", HTTP_ACCEPT_LANGUAGE="fr").content.decode()

    for words in ("Exécuter maintenant", "Mettre en pause", "Prochaine exécution", "Toutes les 2 heures",
                  "jamais exécutée", "facteurs d&#x27;émission du module", "aucune exécution terminée"):
        assert words in page, words
    for english in ("Run now", "Next run", "Every 2 hours", "never run"):
        assert english not in page, english

"""The engine's admin model pages: useful columns, links to the console, short-id search."""

from __future__ import annotations

import pytest
from django.test import Client

from tests.live.conftest import make_user, no_dispatch, plan  # noqa: F401 - no_dispatch is a fixture

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("no_dispatch")]


def _client() -> Client:
    user = make_user("viewer")
    user.is_staff = True
    user.save(update_fields=["is_staff"])
    client = Client()
    client.force_login(user)
    return client


def test_pipelines_list_says_success_with_warnings_and_finds_the_short_id() -> None:
    from pipelines.models import Pipeline

    a, b = plan(year=2030, module="energy"), plan(year=2030, module="water")
    Pipeline.objects.filter(pk=a.pk).update(status="success", warning_count=2)
    client = _client()
    html = client.get("/admin/pipelines/pipeline/").content.decode()
    # An upload with rejected rows no longer reads plain "Success"
    assert "success · 2 warnings" in html
    assert f'href="/admin/pipelines/pipeline/live/{a.pk}/"' in html
    found = client.get("/admin/pipelines/pipeline/", {"q": str(b.pk)[:8]}).content.decode()
    assert str(b.pk)[:8] in found and str(a.pk)[:8] not in found


def test_jobs_list_links_its_pipeline_shows_counts_and_searches_an_id_exactly() -> None:
    from pipelines.models import Job

    p = plan(year=2030, module="energy")
    first = next(iter(Job.objects.filter(pipeline=p).order_by("id")))
    Job.objects.filter(pk=first.pk).update(meta={"rows_loaded": 3, "rows_rejected": 1, "row_errors": [{"row": 1}]})
    client = _client()
    html = client.get("/admin/pipelines/job/", {"q": str(first.pk)}).content.decode()
    assert "rows loaded 3, rows rejected 1" in html
    assert f'href="/admin/pipelines/pipeline/live/{p.pk}/"' in html
    assert html.count('class="field-id"') == 1  # that job only


def test_years_list_names_incomplete_modules_by_label_and_only_those_the_user_may_see() -> None:
    from django.contrib.auth.models import User

    from ingestion.models import Year

    Year.objects.create(year=2030)
    admin = Client()
    admin.force_login(User.objects.create_superuser("root", "root@example.org", "pw"))
    html = admin.get("/admin/ingestion/year/").content.decode()
    # Every module's reasons, under the module's label (never its key)
    assert "Headcount: no data entries loaded" in html and "Purchases: no data entries loaded" in html
    assert "headcount:" not in html and "professional_travel" not in html

    # An operator granted one module is told about the year and that module only
    operator = make_user("ops", perms=("view_console", "operate"), modules=("headcount",))
    operator.is_staff = True
    operator.save(update_fields=["is_staff"])
    client = Client()
    client.force_login(operator)
    html = client.get("/admin/ingestion/year/").content.decode()
    assert "Headcount: no data entries loaded" in html
    assert "Purchases" not in html and "Buildings" not in html
    french = client.get("/admin/ingestion/year/", headers={"accept-language": "fr"}).content.decode()
    assert "Effectifs: aucune donnée chargée" in french


def test_sluice_admin_lists_read_in_french() -> None:
    import html as html_lib
    import re

    from django.contrib.auth.models import User

    from ingestion.models import Year
    from pipelines.models import OperatorAction, QueueState
    from tests.backoffice.conftest import _english_of_catalogue, _has

    Year.objects.create(year=2030)
    p = plan(year=2030, module="headcount")
    OperatorAction.objects.create(actor_name="ada", action="cancel", target_type="pipeline", target_id=str(p.pk),
                                  pipeline=p, reason="test")
    QueueState.objects.create(name="ingest", paused=True, changed_by="ada")
    client = Client()
    client.force_login(User.objects.create_superuser("root", "root@example.org", "pw"))
    english = _english_of_catalogue()
    for path in ("/admin/", "/admin/ingestion/year/", "/admin/ingestion/upload/", "/admin/pipelines/pipeline/",
                 "/admin/pipelines/job/", "/admin/pipelines/operatoraction/", "/admin/pipelines/queuestate/",
                 "/admin/backoffice/modulegrant/"):
        page = client.get(path, headers={"accept-language": "fr"}).content.decode()
        body = re.sub(r"<(script|style|code|select)\b.*?</\1>", " ", page, flags=re.S)
        text = html_lib.unescape(re.sub(r"<[^>]+>", " ", body))
        assert [e for e in english if _has(text, e)] == [], path
    jobs = client.get("/admin/pipelines/job/", headers={"accept-language": "fr"}).content.decode()
    assert "type de tâche" in jobs.lower() and "en attente" in jobs

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
    assert "success · 2 warning(s)" in html
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

"""The Retention page (issue 11 item 6): who sees the dry run, who may purge, CSRF,
and what a purge started from the page records."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from pipelines.models import Job, OperatorAction, Pipeline
from tests.backoffice.live.conftest import make_user, no_dispatch, plan  # noqa: F401 - no_dispatch is a fixture

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("no_dispatch")]

PAGE = "/admin/pipelines/pipeline/retention/"


def _client(username: str, perms: tuple[str, ...], modules: tuple[str, ...] = ()) -> Client:
    user = make_user(username, perms=perms, modules=modules)
    user.is_staff = True
    user.save(update_fields=["is_staff"])
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    return client


def _old_history(n: int = 3) -> list[Pipeline]:
    old = timezone.now() - timedelta(days=120)
    made = [plan(width=1, module="energy") for _ in range(n)]
    Pipeline.objects.filter(pk__in=[p.pk for p in made]).update(status="success", finished_at=old, created_at=old)
    return made


def _csrf(client: Client) -> str:
    html = client.get(PAGE).content.decode()
    match = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', html)
    assert match, "no CSRF token on the page"
    return match.group(1)


def _count(html: str, key: str) -> int:
    match = re.search(rf'<tr data-key="{key}"><td>[^<]*</td><td class="num">(\d+)</td>', html)
    assert match, key
    return int(match.group(1))


def test_viewer_sees_the_dry_run_but_no_button_and_may_not_purge() -> None:
    _old_history(3)
    viewer = _client("viewer", ("view_console",))
    html = viewer.get(PAGE).content.decode()
    assert _count(html, "pipelines") == 3 and _count(html, "jobs") == 6
    assert 'id="retention-purge"' not in html
    token = _csrf(viewer)
    refused = viewer.post(PAGE, {"days": 90, "confirm": "on", "csrfmiddlewaretoken": token})
    assert refused.status_code == 403
    assert Pipeline.objects.count() == 3


def test_a_user_narrowed_to_modules_sees_no_counts_of_other_modules() -> None:
    _old_history(1)
    html = _client("energy-viewer", ("view_console",), modules=("energy",)).get(PAGE).content.decode()
    assert 'id="retention-plan"' not in html and "only users who see every module" in html


def test_the_cutoff_is_overridable_on_the_page() -> None:
    _old_history(2)
    client = _client("viewer", ("view_console",))
    assert _count(client.get(PAGE, {"days": 90}).content.decode(), "pipelines") == 2
    assert _count(client.get(PAGE, {"days": 200}).content.decode(), "pipelines") == 0


def test_operator_purge_needs_csrf_and_confirmation_then_starts_an_audited_purge_pipeline() -> None:
    _old_history(3)
    operator = _client("op", ("view_console", "operate"))
    html = operator.get(PAGE).content.decode()
    assert 'id="retention-purge"' in html and "Purge now" in html

    assert operator.post(PAGE, {"days": 90, "confirm": "on"}).status_code == 403  # no CSRF token
    token = _csrf(operator)
    unconfirmed = operator.post(PAGE, {"days": 90, "csrfmiddlewaretoken": token}, follow=True)
    assert "tick the confirmation" in unconfirmed.content.decode()
    assert not Pipeline.objects.filter(kind="retention").exists()

    response = operator.post(PAGE, {"days": 90, "reason": "disk", "confirm": "on", "csrfmiddlewaretoken": token})
    run = Pipeline.objects.get(kind="retention")
    assert response.status_code == 302 and response["Location"].endswith(f"watch={run.pk}")
    job = Job.objects.get(pipeline=run)
    assert job.job_type == "retention_purge" and job.state == "queued" and job.params["total"] == 3
    action = OperatorAction.objects.get(action="purge")
    assert (action.actor_name, action.reason, action.pipeline_id) == ("op", "disk", run.pk)
    assert action.detail["planned"]["pipelines"] == 3 and action.detail["planned"]["jobs"] == 6
    page = operator.get(response["Location"]).content.decode()
    assert f'data-feed="/ws/pipelines/{run.pk}/"' in page and "Purge started" in page
    fragment = operator.get(f"{PAGE}{run.pk}/")
    assert fragment.status_code == 200 and 'data-status="not_started"' in fragment.content.decode()


def test_the_action_log_link_lists_the_purges_with_its_filter_chosen() -> None:
    """"Purges in the operator action log" opens the log filtered on purges, the filter
    named and selected in the sidebar (it was missing from the choices)."""
    _old_history(1)
    operator = _client("op", ("view_console", "operate"))
    token = _csrf(operator)
    operator.post(PAGE, {"days": 90, "reason": "disk", "confirm": "on", "csrfmiddlewaretoken": token})
    OperatorAction.objects.create(actor_name="op", action="cancel", target_type="pipeline", target_id="x")
    link = re.search(r'href="([^"]+)">Purges in the operator action log', operator.get(PAGE).content.decode())
    assert link
    log = operator.get(link.group(1).replace("&amp;", "&"))
    assert log.status_code == 200
    assert [a.action for a in log.context["cl"].result_list] == ["purge"]
    assert re.search(r'<li class="selected">\s*<a href="[^"]*action=purge[^"]*"[^>]*>purge</a>', log.content.decode())

"""The engine's admin model pages: useful columns, links to the console, short-id search."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from pipelines import registry
from pipelines.models import Job, OperatorAction, Pipeline, QueueState
from tests.backoffice.live.conftest import make_user, no_dispatch, plan, run_pipeline  # noqa: F401 - no_dispatch is a fixture

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


# --- actions (issue 11 item 7): confirmation, reason, refusals in words, permissions ---------


def _operator(modules: tuple[str, ...] = ()) -> Client:
    return _operator_named("operator", modules=modules)


def _operator_named(username: str, *, modules: tuple[str, ...] = ()) -> Client:
    user = make_user(username, perms=("view_console", "operate"), modules=modules)
    user.is_staff = True
    user.save(update_fields=["is_staff"])
    client = Client()
    client.force_login(user)
    return client


def _act(client: Client, url: str, action: str, pks: list[Any], **extra: str) -> Any:
    return client.post(url, {"action": action, "_selected_action": [str(pk) for pk in pks], **extra}, follow=True)


def test_a_viewer_gets_no_actions_and_a_forged_one_does_nothing() -> None:
    p = plan(year=2030, module="energy")
    client = _client()
    for url in ("/admin/pipelines/pipeline/", "/admin/pipelines/job/", "/admin/pipelines/queuestate/"):
        assert 'name="action"' not in client.get(url).content.decode(), url
    _act(client, "/admin/pipelines/pipeline/", "cancel_pipelines", [p.pk], confirmed="yes")
    assert Pipeline.objects.get(pk=p.pk).status == "not_started"
    assert not OperatorAction.objects.filter(action="cancel").exists()


def test_cancel_asks_first_then_cancels_with_the_reason_and_logs_it() -> None:
    p = plan(year=2030, module="energy")
    client = _operator()
    html = client.get("/admin/pipelines/pipeline/").content.decode()
    assert 'value="cancel_pipelines"' in html and 'value="retry_pipelines"' in html

    confirm = _act(client, "/admin/pipelines/pipeline/", "cancel_pipelines", [p.pk]).content.decode()
    assert "Cancel these pipelines?" in confirm and 'name="reason"' in confirm
    assert "Every job not finished ends cancelled" in confirm  # what it does, in words
    assert Pipeline.objects.get(pk=p.pk).status == "not_started"  # nothing yet

    done = _act(client, "/admin/pipelines/pipeline/", "cancel_pipelines", [p.pk], confirmed="yes",
                reason="wrong file").content.decode()
    assert "Done for 1" in done
    assert Pipeline.objects.get(pk=p.pk).status == "cancelled"
    action = OperatorAction.objects.get(action="cancel", target_type="pipeline")
    assert (action.actor_name, action.reason) == ("operator", "wrong file")


def test_a_refusal_is_explained_in_words_and_other_rows_still_run() -> None:
    finished, waiting = plan(year=2030, module="energy"), plan(year=2030, module="energy")
    run_pipeline(finished.pk)
    client = _operator()
    url = "/admin/pipelines/pipeline/"
    html = _act(client, url, "retry_pipelines", [finished.pk], confirmed="yes").content.decode()
    assert "not possible in its current state" in html
    assert "Nothing failed: there is nothing to run again." in html  # the console's hint for the 409

    job = Job.objects.filter(pipeline=waiting).order_by("id").first()
    html = _act(client, "/admin/pipelines/job/", "recover_jobs", [job.pk], confirmed="yes").content.decode()
    assert "Only a running job can be recovered." in html
    assert 'name="force"' in _act(client, "/admin/pipelines/job/", "recover_jobs", [job.pk]).content.decode()

    mids = list(Job.objects.filter(pipeline=waiting).exclude(det="").values_list("pk", flat=True))
    html = _act(client, "/admin/pipelines/job/", "cancel_jobs", mids, confirmed="yes").content.decode()
    assert "Done for 2" in html
    assert set(Job.objects.filter(pk__in=mids).values_list("result", flat=True)) == {"cancelled"}


def test_queue_states_list_every_queue_with_its_work_and_pause_resume_are_actions() -> None:
    p = plan(year=2030, module="energy")
    client = _operator()
    html = client.get("/admin/pipelines/queuestate/").content.decode()
    for queue in registry.queues():
        assert f">{queue}<" in html
    queued = Job.objects.filter(pipeline=p, state="queued", queue="default").count()
    assert queued and f'<td class="field-queued_jobs">{queued}</td>' in html

    _act(client, "/admin/pipelines/queuestate/", "pause_queues", ["default"], confirmed="yes", reason="maintenance")
    assert QueueState.objects.get(name="default").paused
    html = _act(client, "/admin/pipelines/queuestate/", "pause_queues", ["default"], confirmed="yes").content.decode()
    assert "already paused" in html
    _act(client, "/admin/pipelines/queuestate/", "resume_queues", ["default"], confirmed="yes")
    assert not QueueState.objects.get(name="default").paused
    assert list(OperatorAction.objects.filter(target_type="queue").order_by("id").values_list("action", "reason")) == [
        ("pause", "maintenance"), ("resume", "")]
    # An operator narrowed to a module may not pause what every module uses.
    narrowed = _operator_named("energy-op", modules=("energy",))
    assert 'name="action"' not in narrowed.get("/admin/pipelines/queuestate/").content.decode()


def test_actions_need_the_csrf_token() -> None:
    p = plan(year=2030, module="energy")
    user = make_user("csrf-op", perms=("view_console", "operate"))
    user.is_staff = True
    user.save(update_fields=["is_staff"])
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    response = client.post("/admin/pipelines/pipeline/", {"action": "cancel_pipelines",
                                                          "_selected_action": [str(p.pk)], "confirmed": "yes"})
    assert response.status_code == 403
    assert Pipeline.objects.get(pk=p.pk).status == "not_started"


def test_pipeline_and_job_lists_link_each_other_and_the_upload() -> None:
    p = plan(year=2030, module="energy")
    Pipeline.objects.filter(pk=p.pk).update(params={"upload_id": 42})
    Job.objects.filter(pipeline=p).update(params={"upload_id": 42})
    client = _client()
    html = client.get("/admin/pipelines/pipeline/").content.decode()
    assert f'href="/admin/pipelines/job/?pipeline__id__exact={p.pk}"' in html
    assert 'href="/admin/ingestion/upload/42/change/"' in html
    jobs = client.get("/admin/pipelines/job/", {"pipeline__id__exact": str(p.pk)}).content.decode()
    assert jobs.count('class="field-id"') == 3 and 'href="/admin/ingestion/upload/42/change/"' in jobs
    other = plan(year=2030, module="energy")
    found = client.get("/admin/pipelines/job/", {"q": str(other.pk)[:8]}).content.decode()
    assert found.count('class="field-id"') == 3 and str(p.pk)[:8] not in found  # a job by its pipeline's short id
    # Operator actions are found by the pipeline's short id, and say what they carried.
    OperatorAction.objects.create(actor_name="x", action="cancel", target_type="pipeline", target_id=str(p.pk),
                                  pipeline=p, detail={"why": "test"})
    log = client.get("/admin/pipelines/operatoraction/", {"q": str(p.pk)[:8]}).content.decode()
    assert "why: test" in log


def test_pipeline_and_job_pages_are_read_only_and_link_onwards() -> None:
    p = plan(year=2030, module="energy")
    Pipeline.objects.filter(pk=p.pk).update(params={"upload_id": 42})
    job = Job.objects.filter(pipeline=p).order_by("id").first()
    Job.objects.filter(pk=job.pk).update(job_type="csv_ingest", params={"upload_id": 42})
    client = _operator()
    page = client.get(f"/admin/pipelines/pipeline/{p.pk}/change/").content.decode()
    assert f'href="/admin/pipelines/job/?pipeline__id__exact={p.pk}"' in page
    assert 'href="/admin/ingestion/upload/42/change/"' in page and 'name="_save"' not in page
    page = client.get(f"/admin/pipelines/job/{job.pk}/change/").content.decode()
    assert f'href="/api/v1/jobs/{job.pk}/errors.csv"' in page and 'name="_save"' not in page
    assert f'href="/admin/pipelines/pipeline/live/{p.pk}/"' in page

"""The Operations console in a real browser: uvicorn + a real worker + Debian Chromium.

An operator watches the console while real pipelines run: a new one arrives at the top
without a reload, an upload whose every row is rejected raises the alert counter and
that counter filters the table; pipelines and jobs are cancelled, recovered and retried
from the page, refusals are explained, and viewers and module-granted operators see
what their role allows.
"""

from __future__ import annotations

import io
from typing import Any

import pytest

from tests.backoffice.conftest import english_left, make_staff
from tests.support.browser import HAVE_CHROMIUM, NO_CHROMIUM, SCREENSHOTS, Server
from tests.support.fixtures import small_dag, wait_for

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.worker,
    pytest.mark.slow,
    pytest.mark.skipif(not HAVE_CHROMIUM, reason=NO_CHROMIUM),
]

CONSOLE = "/admin/pipelines/pipeline/live/"
WAIT = 30000
ALL_REJECTED = b"unit_id,det,category,fte,comment\nENG-0001,staff,professor,x,\nENG-0007,staff,professor,y,\n"
OPERATOR = ("view_console", "operate")


def _slow_pipeline(module: str = "energy", seconds: float = 1.0) -> Any:
    return small_dag(0, params={"sleep": seconds, "steps": 10}, year=2031, module=module)


def _shown(page: Any) -> list[str]:
    return page.eval_on_selector_all("#live-console tbody.pipeline", "els => els.map(e => e.dataset.pipeline)")


def _shot(page: Any, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / name), full_page=True)


def test_console_shows_new_pipelines_live_and_an_alert_counter_filters_the_table(
    open_page: Any, server: Server, synced_year: Any
) -> None:
    from ingestion import services
    from pipelines.models import Pipeline

    synced_year(2025)
    make_staff("admin", superuser=True)
    page = open_page("admin", CONSOLE)
    page.wait_for_selector("#live-status[data-status=live]", timeout=WAIT)
    assert page.inner_text(".ops-alert[data-alert=rows_all_rejected] .count") == "0"

    # When a pipeline starts after the page was rendered, it arrives at the top, live
    pipeline = _slow_pipeline()
    pid = str(pipeline.pk)
    row = f'tbody[data-pipeline="{pid}"]'
    page.wait_for_selector(f'{row} tr.job-row [data-role=state]:has-text("running")', timeout=WAIT)
    assert _shown(page)[0] == pid
    assert page.inner_text(f"{row} code.short-id") == pid[:8]
    page.wait_for_selector('.ops-card[data-card=running] .value:text-is("1")', timeout=WAIT)
    _shot(page, "console-running.png")

    # When an upload has every row rejected, the alert counter goes up without a reload
    _, rejected = services.upload_create(
        year=2025, module="headcount", target="data_entries", file=io.BytesIO(ALL_REJECTED),
        filename="all-bad.csv", actor=None,
    )
    wait_for(lambda: Pipeline.objects.get(pk=rejected.pk).is_done, timeout=90, message="rejected upload")
    page.wait_for_selector(".ops-alert[data-alert=rows_all_rejected].hot .count:text-is('1')", timeout=WAIT)

    # ...and clicking it shows only the pipelines with that alert
    page.click(".ops-alert[data-alert=rows_all_rejected]")
    page.wait_for_url("**alert=rows_all_rejected*", timeout=WAIT)
    page.wait_for_selector("#live-status[data-status=live]", timeout=WAIT)
    assert _shown(page) == [str(rejected.pk)]
    assert "failed" in page.inner_text(f'tbody[data-pipeline="{rejected.pk}"] tr.pipeline-row [data-role=status]')
    _shot(page, "console-alert-filter.png")

    # ...and its detail shows the first row errors and links the full errors.csv
    page.click(f'tbody[data-pipeline="{rejected.pk}"] button.ops-expand')
    errors_panel = f'tbody[data-pipeline="{rejected.pk}"] details.ops-error'
    page.wait_for_selector(f"{errors_panel} table.ops-row-errors", timeout=WAIT)
    assert "not a number" in page.inner_text(f"{errors_panel} table.ops-row-errors")
    csv_url = page.get_attribute(f"{errors_panel} a[data-field=errors_csv]", "href")
    body = page.request.get(f"{server.base}{csv_url}").text()
    assert body.splitlines()[0] == "row,column,reason" and len(body.splitlines()) == 3

    # The free-text filter takes the short id shown on screen
    page.goto(f"{server.base}{CONSOLE}")
    page.fill("#id_q", pid[:8])
    page.click("#ops-filters button[type=submit]")
    page.wait_for_url(f"**q={pid[:8]}*", timeout=WAIT)
    assert _shown(page) == [pid]
    wait_for(lambda: Pipeline.objects.get(pk=pid).is_done, timeout=60)
    page.wait_for_selector(f'{row} tr.pipeline-row [data-role=status]:has-text("success")', timeout=WAIT)


def _confirm(page: Any, selector: str, *, reason: str = "", force: bool = False) -> None:
    page.click(selector)
    page.wait_for_selector("#ops-dialog[open]", timeout=WAIT)
    # "Force" means something to a recover only: no other control offers it
    assert page.is_visible("#ops-force") == ("recover" in selector), selector
    if reason:
        page.fill("#ops-reason", reason)
    if force:
        page.check("#ops-force")
    page.click("#ops-confirm")


def test_operator_cancels_recovers_and_retries_viewer_and_granted_operator_see_what_they_may(
    open_page: Any, server: Server
) -> None:
    from pipelines.models import Job, JobState, OperatorAction, Pipeline

    make_staff("op", perms=OPERATOR)
    make_staff("viewer", perms=("view_console",))
    make_staff("energy-op", perms=OPERATOR, modules=("energy",))
    water = _slow_pipeline(module="water", seconds=0.2)
    pipeline = _slow_pipeline(seconds=20.0)
    pid = str(pipeline.pk)
    row = f'tbody[data-pipeline="{pid}"]'
    page = open_page("op", CONSOLE)
    page.wait_for_selector("#live-status[data-status=live]", timeout=WAIT)
    page.wait_for_selector(f"{row} tr.job-row button[data-action=recover]", timeout=WAIT)
    running = Job.objects.get(pipeline=pipeline, state=JobState.RUNNING)
    job_row = f'{row} tr.job-row[data-job="{running.pk}"]'

    # Recovering a job whose worker is alive is refused, and the page says why in words
    _confirm(page, f"{job_row} button[data-action=recover]")
    page.wait_for_selector("#ops-dialog-error[data-code=heartbeat_fresh]", timeout=WAIT)
    assert "Not possible in its current state" in page.inner_text("#ops-dialog-error")
    assert "Tick Force only if you know it is stuck" in page.inner_text("#ops-dialog-error")
    _shot(page, "console-refused.png")

    # ...and with Force it goes back to its queue and runs again (a new attempt)
    page.check("#ops-force")
    page.click("#ops-confirm")
    page.wait_for_selector("#ops-dialog", state="hidden", timeout=WAIT)
    wait_for(lambda: Job.objects.get(pk=running.pk).attempts == running.attempts + 1, timeout=60,
               message="recovered job claimed again")
    page.wait_for_selector(f"{job_row} [data-role=state]:has-text('running')", timeout=WAIT)
    assert OperatorAction.objects.filter(action="recover", target_id=str(running.pk), actor_name="op").exists()

    # Cancelling the pipeline with a reason ends it cancelled, live, and records who and why
    _confirm(page, f"{row} tr.pipeline-row button[data-action=cancel]", reason="wrong file uploaded")
    page.wait_for_selector(f"{row} tr.pipeline-row [data-role=status]:text-is('cancelled')", timeout=WAIT)
    assert "Cancel requested" in page.inner_text("#ops-flash")
    action = OperatorAction.objects.get(action="cancel", target_type="pipeline", target_id=pid)
    assert (action.actor_name, action.reason) == ("op", "wrong file uploaded")
    _shot(page, "console-cancelled.png")

    # Retrying it runs it again to success, shown live
    Job.objects.filter(pipeline=pipeline).update(params={"sleep": 0.3, "steps": 3})
    _confirm(page, f"{row} tr.pipeline-row button[data-action=retry]")
    page.wait_for_selector(f"{row} tr.pipeline-row [data-role=status]:text-is('success')", timeout=60000)
    assert Pipeline.objects.get(pk=pid).status == "success"
    assert page.locator(f"{row} button.ops-act").count() == 0  # nothing left to do on it

    # A viewer sees the same rows and no button at all
    wait_for(lambda: Pipeline.objects.get(pk=water.pk).is_done, timeout=60)
    viewer = open_page("viewer", CONSOLE)
    viewer.wait_for_selector("#live-status[data-status=live]", timeout=WAIT)
    assert set(_shown(viewer)) == {pid, str(water.pk)}
    assert viewer.locator("button.ops-act").count() == 0 and viewer.locator("#ops-dialog").count() == 0

    # An operator granted "energy" sees only energy pipelines, with their buttons
    another = _slow_pipeline(seconds=30.0)
    granted = open_page("energy-op", CONSOLE)
    granted.wait_for_selector(f'tbody[data-pipeline="{another.pk}"] button[data-action=cancel]', timeout=WAIT)
    assert str(water.pk) not in _shown(granted)
    assert set(_shown(granted)) == {pid, str(another.pk)}
    _confirm(granted, f'tbody[data-pipeline="{another.pk}"] tr.pipeline-row button[data-action=cancel]')
    granted.wait_for_selector(
        f'tbody[data-pipeline="{another.pk}"] tr.pipeline-row [data-role=status]:text-is("cancelled")', timeout=WAIT
    )


def test_pipeline_detail_draws_the_dag_live_and_explains_a_failure(open_page: Any, server: Server) -> None:
    from pipelines.models import Job
    from pipelines.services import JobSpec, pipeline_plan

    make_staff("admin", superuser=True)
    page = open_page("admin", CONSOLE)
    page.wait_for_selector("#live-status[data-status=live]", timeout=WAIT)

    # Given a pipeline start → (compute that fails, side) → end, running
    slow = {"sleep": 2.0, "steps": 4}
    pipeline = pipeline_plan(kind="noop", year=2031, module="energy", specs=[
        JobSpec(key="start", job_type="noop", params=slow),
        JobSpec(key="compute", job_type="test_fail", det="x", depends_on=("start",)),
        JobSpec(key="side", job_type="noop", det="y", params=slow, depends_on=("start",)),
        JobSpec(key="end", job_type="noop", depends_on=("compute", "side")),
    ])
    ids = {j.det or ("start" if not j.depends_on.exists() else "end"): j.pk
           for j in Job.objects.filter(pipeline=pipeline)}
    row = f'tbody[data-pipeline="{pipeline.pk}"]'

    # When the operator expands it, the graph shows every job and the edges between them
    page.wait_for_selector(f"{row} button.ops-expand", timeout=WAIT)
    page.click(f"{row} button.ops-expand")
    dag = f"{row} tr.detail-row .ops-dag svg"
    page.wait_for_selector(f"{dag} g.node[data-node='{ids['start']}'][data-look=running]", timeout=WAIT)
    assert page.locator(f"{dag} g.node").count() == 4
    assert page.locator(f"{dag} path.edge").count() == 4
    assert page.get_attribute(f"{dag} g.node[data-node='{ids['end']}']", "data-look") == "not_started"
    _shot(page, "console-dag-running.png")

    # Then its nodes change colour as it runs, without a reload
    page.wait_for_selector(f"{dag} g.node[data-node='{ids['start']}'][data-look=success]", timeout=WAIT)
    page.wait_for_selector(f"{dag} g.node[data-node='{ids['x']}'][data-look=error]", timeout=60000)
    page.wait_for_selector(f"{dag} g.node[data-node='{ids['end']}'][data-look=skipped]", timeout=WAIT)
    page.wait_for_selector(f"{row} tr.pipeline-row [data-role=status]:text-is('partial'), "
                           f"{row} tr.pipeline-row [data-role=status]:text-is('failed')", timeout=WAIT)

    # ...and the failed job's error details say what, where and why
    panel = f"{row} details.ops-error[data-error-for='{ids['x']}']"
    page.wait_for_selector(f"{panel}[open]", timeout=WAIT)
    assert page.inner_text(f"{panel} [data-field=type]") == "ValueError"
    assert page.inner_text(f"{panel} [data-field=message]") == "boom in x"
    assert page.inner_text(f"{panel} [data-field=stage]") == "compute"
    assert "Traceback" in page.inner_text(f"{panel} [data-field=traceback]")
    status = page.inner_text(f"{row} tr.pipeline-row [data-role=status]")
    page.wait_for_selector(f"{row} .ops-detail[data-status={status}]", timeout=WAIT)  # the detail caught up
    timeline = page.inner_text(f"{row} ol.ops-timeline")
    assert "test_fail" in timeline and "error" in timeline
    _shot(page, "console-dag-error.png")

    # The same detail is a page of its own, live too
    page.click(f"{row} a.short-id-link")
    page.wait_for_selector("#live-status[data-status=live]", timeout=WAIT)
    assert page.locator(".ops-dag svg g.node").count() == 4
    assert page.get_attribute(f".ops-dag g.node[data-node='{ids['x']}']", "data-look") == "error"


def test_pausing_a_queue_holds_its_work_until_resumed_and_the_action_log_shows_it(
    open_page: Any, server: Server
) -> None:
    from pipelines.models import Job, JobState, Pipeline
    from pipelines.services import JobSpec, pipeline_plan

    make_staff("op", perms=OPERATOR)
    page = open_page("op", CONSOLE)
    page.wait_for_selector("#live-status[data-status=live]", timeout=WAIT)
    queue = "#ops-queues tr[data-queue=default]"
    page.wait_for_selector(f"{queue}[data-paused='0']", timeout=WAIT)
    page.wait_for_selector("#ops-queues tr[data-worker]", timeout=WAIT)  # the test's worker answered
    assert "default" in page.inner_text("#ops-queues tr[data-worker]")

    # When the operator pauses the default queue with a reason, the panel says who and why
    _confirm(page, f"{queue} button[data-action=pause]", reason="database maintenance")
    page.wait_for_selector(f"{queue}[data-paused='1']", timeout=WAIT)
    assert "database maintenance" in page.inner_text(queue) and "op" in page.inner_text(queue)

    # Then new work for that queue waits (the worker saw it and left it queued)
    pipeline = pipeline_plan(kind="noop", year=2031, module="energy",
                             specs=[JobSpec(key="only", job_type="noop", params={"sleep": 0.2})])
    job = Job.objects.get(pipeline=pipeline)
    row = f'tbody[data-pipeline="{pipeline.pk}"]'
    page.wait_for_selector(f"{row} tr.job-row:has-text('Waiting: queue default is paused')", timeout=WAIT)
    page.wait_for_selector(f"{queue} [data-role=queued]:text-is('1')", timeout=WAIT)
    assert Job.objects.get(pk=job.pk).state == JobState.QUEUED
    _shot(page, "console-queue-paused.png")

    # ...and runs once the queue is resumed
    _confirm(page, f"{queue} button[data-action=resume]")
    page.wait_for_selector(f"{row} tr.pipeline-row [data-role=status]:text-is('success')", timeout=60000)
    assert Pipeline.objects.get(pk=pipeline.pk).status == "success"
    page.wait_for_selector(f"{queue}[data-paused='0']", timeout=WAIT)

    # The action log lists both, with who and why, the target linked, filterable by action
    page.click("a.ops-log-link")
    page.wait_for_selector("#result_list", timeout=WAIT)
    log = page.inner_text("#result_list")
    assert "database maintenance" in log and "\tpause\t" in log and "\tresume\t" in log and "\top\t" in log
    page.goto(f"{server.base}/admin/pipelines/operatoraction/?action=pause")
    assert page.locator("#result_list tbody tr").count() == 1
    assert page.get_attribute("#result_list tbody tr a[href*='ops-queues-panel']", "href").endswith("#ops-queues-panel")
    _shot(page, "console-action-log.png")


def test_the_french_console_has_no_english_left(open_page: Any, synced_year: Any) -> None:
    from ingestion import services
    from pipelines.models import Pipeline
    from tests.backoffice.conftest import upload_sample

    synced_year(2026)
    upload_sample(2026, "headcount", "factors")
    _, rejected = services.upload_create(
        year=2026, module="headcount", target="data_entries", file=io.BytesIO(ALL_REJECTED),
        filename="all-bad.csv", actor=None,
    )
    wait_for(lambda: Pipeline.objects.get(pk=rejected.pk).is_done, timeout=90, message="rejected upload")
    make_staff("admin", superuser=True)
    page = open_page("admin", CONSOLE, locale="fr-FR")
    page.wait_for_selector("#live-status[data-status=live]", timeout=WAIT)
    page.wait_for_selector("#ops-queues table", timeout=WAIT)

    # The workers' messages, states and phases read in French, in the table...
    row = f'tbody[data-pipeline="{rejected.pk}"]'
    assert page.inner_text(f"{row} tr.pipeline-row [data-role=status]") == "échoué"
    assert "Aucune ligne chargée" in page.inner_text(f"{row} tr.job-row >> nth=0")
    # ...and in the pipeline's detail (graph, decoded meta, error details, timeline)
    page.click(f"{row} button.ops-expand")
    page.wait_for_selector(f"{row} details.ops-error table.ops-row-errors", timeout=WAIT)
    assert "Chronologie" in page.inner_text(row)
    # Row-error reasons are written by the database checks in English (data, see the report)
    left = english_left(page, also_data=".ops-row-errors td:nth-child(3), .dm-row-errors td:nth-child(3)")
    assert left == [], left
    _shot(page, "console-fr.png")

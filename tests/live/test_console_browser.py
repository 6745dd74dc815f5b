"""The Operations console in a real browser: uvicorn + a real worker + Debian Chromium.

An operator watches the console while real pipelines run: a new one arrives at the top
without a reload, an upload whose every row is rejected raises the alert counter, and
that counter filters the table.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import wait_until
from tests.support.browser import HAVE_CHROMIUM, NO_CHROMIUM, SCREENSHOTS, Server, chromium, login

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.worker,
    pytest.mark.slow,
    pytest.mark.skipif(not HAVE_CHROMIUM, reason=NO_CHROMIUM),
]

CONSOLE = "/admin/pipelines/pipeline/live/"
YEAR = 2025
ALL_REJECTED = b"unit_id,det,category,fte,comment\nENG-0001,staff,professor,x,\nENG-0007,staff,professor,y,\n"


@pytest.fixture
def server(worker_factory: Any) -> Iterator[Server]:
    worker_factory("console-browser")
    srv = Server("console")
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def browser(monkeypatch: Any) -> Iterator[Any]:
    # Playwright's sync API keeps an event loop running in this thread; the ORM calls
    # here are plain blocking test code, not code running inside that loop.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with chromium() as b:
        yield b


def _slow_pipeline(module: str = "energy") -> Any:
    from pipelines.services import JobSpec, pipeline_plan

    slow = {"sleep": 1.0, "steps": 10}
    specs = [JobSpec(key="start", job_type="noop", params=slow)]
    specs += [JobSpec(key="end", job_type="noop", params=slow, depends_on=("start",))]
    return pipeline_plan(kind="noop", specs=specs, year=2031, module=module)


def _configured_year() -> None:
    from ingestion import services
    from pipelines.models import Pipeline

    _, pipeline = services.year_create(year=YEAR, actor=None)
    wait_until(lambda: Pipeline.objects.get(pk=pipeline.pk).is_done, timeout=90, message="year's unit sync")
    assert Pipeline.objects.get(pk=pipeline.pk).status == "success"


def test_console_shows_new_pipelines_live_and_an_alert_counter_filters_the_table(server: Server, browser: Any) -> None:
    from django.contrib.auth.models import User

    from ingestion import services
    from pipelines.models import Pipeline

    User.objects.create_superuser("admin", "admin@example.com", "pw-for-tests")
    _configured_year()
    page = browser.new_page(viewport={"width": 1360, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    login(page, server.base, "admin", "pw-for-tests", next_path=CONSOLE)
    page.wait_for_selector("#live-status[data-status=live]", timeout=20000)
    assert page.inner_text(".ops-alert[data-alert=rows_all_rejected] .count") == "0"

    # When a pipeline starts after the page was rendered, it arrives at the top, live
    pipeline = _slow_pipeline()
    pid = str(pipeline.pk)
    row = f'tbody[data-pipeline="{pid}"]'
    page.wait_for_selector(f'{row} tr.job-row [data-role=state]:has-text("running")', timeout=30000)
    assert page.get_attribute("#live-console tbody >> nth=0", "data-pipeline") == pid
    assert page.inner_text(f"{row} code.short-id") == pid[:8]
    page.wait_for_selector('.ops-card[data-card=running] .value:text-is("1")', timeout=20000)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "console-running.png"), full_page=True)

    # When an upload has every row rejected, the alert counter goes up without a reload
    _, rejected = services.upload_create(
        year=YEAR, module="headcount", target="data_entries", file=io.BytesIO(ALL_REJECTED),
        filename="all-bad.csv", actor=None,
    )
    wait_until(lambda: Pipeline.objects.get(pk=rejected.pk).is_done, timeout=90, message="rejected upload")
    page.wait_for_selector(".ops-alert[data-alert=rows_all_rejected].hot .count:text-is('1')", timeout=20000)

    # ...and clicking it shows only the pipelines with that alert
    page.click(".ops-alert[data-alert=rows_all_rejected]")
    page.wait_for_url("**alert=rows_all_rejected*", timeout=20000)
    page.wait_for_selector("#live-status[data-status=live]", timeout=20000)
    shown = page.eval_on_selector_all("#live-console tbody.pipeline", "els => els.map(e => e.dataset.pipeline)")
    assert shown == [str(rejected.pk)]
    assert "failed" in page.inner_text(f'tbody[data-pipeline="{rejected.pk}"] tr.pipeline-row [data-role=status]')
    page.screenshot(path=str(SCREENSHOTS / "console-alert-filter.png"), full_page=True)

    # The free-text filter takes the short id shown on screen
    page.goto(f"{server.base}{CONSOLE}")
    page.fill("#id_q", pid[:8])
    page.click("#ops-filters button[type=submit]")
    page.wait_for_url(f"**q={pid[:8]}*", timeout=20000)
    shown = page.eval_on_selector_all("#live-console tbody.pipeline", "els => els.map(e => e.dataset.pipeline)")
    assert shown == [pid]
    wait_until(lambda: Pipeline.objects.get(pk=pid).is_done, timeout=60)
    page.wait_for_selector(f'{row} tr.pipeline-row [data-role=status]:has-text("success")', timeout=30000)
    assert errors == []

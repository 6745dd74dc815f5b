"""The Data management page in a real browser: uvicorn + a real worker + Debian Chromium.

Each test does what a back-office person does and asserts what they would see.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.backoffice.conftest import make_staff, sample, upload_sample
from tests.support.browser import HAVE_CHROMIUM, NO_CHROMIUM, SCREENSHOTS

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.worker,
    pytest.mark.slow,
    pytest.mark.skipif(not HAVE_CHROMIUM, reason=NO_CHROMIUM),
]

DM = "/admin/ingestion/year/data/"
WAIT = 60000  # ms: generous, the machine may be loaded


def shot(page: Any, name: str, *, full_page: bool = True) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / name), full_page=full_page)


def data_rows(module: str, target: str) -> int:
    with open(sample(module, target), encoding="utf-8") as f:
        return sum(1 for line in f if line.strip()) - 1


def test_admin_index_leads_to_sluice_pages(open_page: Any) -> None:
    make_staff("admin", superuser=True)
    page = open_page("admin")

    # The index says Sluice and lists Sluice's own pages before the model lists
    assert page.inner_text("#site-name") == "Sluice"
    first = page.locator("#content-main > div.module").first
    assert first.get_attribute("id") == "sluice-pages"
    assert "Data management" in first.inner_text() and "Live console" in first.inner_text()
    # "View site" led to a 404: it is gone
    assert page.get_by_text("View site").count() == 0

    # Every model list links to them too
    page.goto(page.url.split("/admin/")[0] + "/admin/pipelines/job/")
    page.click("#sluice-nav >> text=Data management")
    page.wait_for_selector("h1:has-text('Data management')", timeout=WAIT)
    page.click("#sluice-nav >> text=Live console")
    page.wait_for_selector("#live-status[data-status=live]", timeout=WAIT)


def test_upload_from_the_page_shows_live_progress_and_a_success_entry(open_page: Any, synced_year: Any) -> None:
    synced_year(2031)
    upload_sample(2031, "headcount", "factors")
    make_staff("admin", superuser=True)
    page = open_page("admin", DM + "?year=2031")
    page.wait_for_selector("#live-status[data-status=live]", timeout=WAIT)
    row = 'tr.dm-target[data-module="headcount"][data-target="data_entries"]'

    # When the operator uploads the sample file from the row's file picker
    page.set_input_files(f"{row} input.dm-file", str(sample("headcount", "data_entries")))

    # Then the row's bar appears and reaches 100 % with the pipeline's success
    page.wait_for_selector(f'{row} .dm-live:not([hidden])', timeout=WAIT)
    page.wait_for_selector(f'{row} .dm-live[data-status=success] .live-pct:has-text("100%")', timeout=WAIT)
    drawn = page.evaluate("window.sluiceDm.trace['t:headcount:data_entries']")
    # (the bar started empty: upload bytes, then the pipeline from queued to finished)
    assert drawn[0] == 0 and drawn[-1] == 100

    # ...the row shows the upload and its result
    expected = data_rows("headcount", "data_entries")
    page.wait_for_selector(f'{row} [data-role=result] .chip.success:has-text("{expected:,} loaded, 0 rejected")',
                           timeout=WAIT)
    assert "headcount_data_entries.csv" in page.inner_text(f"{row} [data-role=upload]")
    assert page.inner_text(f"{row} [data-role=rows]") == f"{expected:,}"

    # ...and the history panel gains a success entry with the right counts
    entry = page.locator('li.dm-entry.look-success[data-module=headcount][data-target=data_entries]')
    entry.locator("> details > summary").click()
    assert entry.locator("[data-stat=rows_loaded]").inner_text() == f"{expected:,}"
    assert entry.locator("[data-stat=rows_rejected]").inner_text() == "0"
    shot(page, "data-management.png")


def test_reload_mid_run_reattaches_and_finishes(open_page: Any, synced_year: Any) -> None:
    from pipelines import services as engine

    synced_year(2032)
    make_staff("admin", superuser=True)
    page = open_page("admin", DM + "?year=2032")
    page.wait_for_selector("#live-status[data-status=live]", timeout=WAIT)
    row = 'tr.dm-target[data-module="purchases"][data-target="factors"]'

    # Given an upload waiting on a paused queue
    engine.queue_pause(queue="ingest")
    page.set_input_files(f"{row} input.dm-file", str(sample("purchases", "factors")))
    page.wait_for_selector(f"{row} .dm-live[data-pipeline]", timeout=WAIT)

    # When the page is reloaded mid-run, the bar is there again (from the active pipelines)
    page.reload()
    page.wait_for_selector(f"{row} .dm-live:not([hidden])", timeout=WAIT)
    page.wait_for_selector("#live-status[data-status=live]", timeout=WAIT)

    # Then it follows the run to its end once the queue resumes
    engine.queue_resume(queue="ingest")
    page.wait_for_selector(f'{row} .dm-live[data-status=success] .live-pct:has-text("100%")', timeout=WAIT)
    expected = data_rows("purchases", "factors")
    page.wait_for_selector(f'{row} [data-role=result] .chip.success:has-text("{expected} loaded")', timeout=WAIT)

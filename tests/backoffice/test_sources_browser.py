"""The Sources page in a real browser: uvicorn + a real worker + Debian Chromium.

An operator watches a source's card: a run started elsewhere (beat, another operator)
updates it without a reload; "Run now" starts one whose outcome ("unchanged, skipped")
arrives live; "Pause" stops the schedule. A viewer sees the cards and no button.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.backoffice.conftest import SAMPLES, make_staff
from tests.support.browser import HAVE_CHROMIUM, NO_CHROMIUM, SCREENSHOTS, Server

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.worker,
    pytest.mark.skipif(not HAVE_CHROMIUM, reason=NO_CHROMIUM),
]

CARDS = "/admin/ingestion/source/cards/"
WAIT = 30000


def _state(page: Any, source_id: int) -> str:
    return page.eval_on_selector(f"#source-{source_id} [data-field=status]", "el => el.dataset.state || ''")


def test_cards_update_live_and_run_now_pause_work(open_page: Any, server: Server, synced_year: Any) -> None:
    from ingestion.sources import services

    synced_year(2025)
    make_staff("operator", perms=("view_console", "operate"))
    make_staff("viewer", perms=("view_console",))
    source = services.source_create(
        actor=None, name="Partner factors", kind="module_factors", location=str(SAMPLES / "headcount_factors.csv"),
        module="headcount", year_rule="fixed", year=2025, interval_seconds=3600,
    )
    page = open_page("operator", CARDS)
    card = f"#source-{source.pk}"
    page.wait_for_selector("#live-status[data-status=live]", timeout=WAIT)
    assert page.text_content(f"{card} [data-field=status]").strip() == "never run"
    assert page.text_content(f"{card} [data-field=schedule]") == "Every hour"

    # Given a run started elsewhere (as beat does), the open page shows it without a reload.
    page.evaluate("window.notReloaded = true")
    pipeline = services.source_run_start(source_id=source.pk, actor=None, trigger="schedule")
    page.wait_for_function(
        f"""() => document.querySelector('{card} [data-field=status]').dataset.state === 'success'
            && document.querySelector('{card} [data-field=last-run] a').href.includes('{pipeline.pk}')
            && document.querySelector('{card} [data-field=rate]').textContent.startsWith('1 of 1')""",
        timeout=WAIT,
    )
    assert page.evaluate("window.notReloaded") is True
    assert "1 of 1 recent runs succeeded" in page.text_content(f"{card} [data-field=rate]")
    assert page.text_content(f"{card} [data-field=message]") == "8 rows loaded"  # the ingest says what it did

    # When the operator clicks Run now, the same file arrives again: "unchanged, skipped".
    with page.expect_navigation():  # a form post, back to this page (works without JavaScript)
        page.click(f"{card} button[data-action=run]")
    page.wait_for_function(
        f"""() => document.querySelector('{card} [data-field=status]').dataset.state === 'unchanged'
            && document.querySelector('{card} [data-field=rate]').textContent.startsWith('2 of 2')""", timeout=WAIT
    )
    assert "Unchanged, skipped" in page.text_content(f"{card} [data-field=message]")
    assert "2 of 2 recent runs succeeded" in page.text_content(f"{card} [data-field=rate]")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "sources.png"), full_page=True)

    with page.expect_navigation():
        page.click(f"{card} button[data-action=pause]")
    page.wait_for_selector(f"{card} button[data-action=resume]", timeout=WAIT)
    assert page.text_content(f"{card} [data-field=next-run]") == "paused"

    viewer = open_page("viewer", CARDS)
    assert viewer.locator(card).count() == 1
    assert viewer.locator("button[data-action]").count() == 0  # no button that would 403
    assert viewer.locator("a.addlink").count() == 0

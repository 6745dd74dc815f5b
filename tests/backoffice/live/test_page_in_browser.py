"""The live console in a real browser: uvicorn + a real worker + Debian Chromium.

A pipeline runs while the page watches; the page's socket is dropped mid-run and the
server restarted, and the page still ends with the final state (reconnect, replay).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.browser import HAVE_CHROMIUM, NO_CHROMIUM, SCREENSHOTS, Server
from tests.support.fixtures import UserFactory, small_dag, wait_for

SCREENSHOT = SCREENSHOTS / "live-console.png"
SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.worker,
    pytest.mark.slow,
    pytest.mark.skipif(not HAVE_CHROMIUM, reason=NO_CHROMIUM),
]


@pytest.fixture
def server(worker_factory: Any) -> Iterator[Server]:
    # A worker of this test only: a session worker would stay up and run the jobs the
    # feed tests drive by hand.
    worker_factory("live-browser")
    srv = Server()
    srv.start()
    yield srv
    srv.stop()


def _slow_pipeline() -> Any:
    return small_dag(3, params={"sleep": 1.2, "steps": 12}, year=2031, module="energy")


def test_live_console_follows_a_pipeline_through_a_drop_and_a_server_restart(server: Server, browser: Any) -> None:
    from pipelines.models import Job, JobEvent, Pipeline

    UserFactory(username="admin", email="admin@example.com", password="pw-for-tests", is_staff=True, is_superuser=True)
    base = f"http://127.0.0.1:{server.port}"
    page = browser.new_page(viewport={"width": 1280, "height": 760})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))

    # Given a logged-in admin on the live console
    page.goto(f"{base}/admin/login/?next=/admin/pipelines/pipeline/live/")
    page.fill("#id_username", "admin")
    page.fill("#id_password", "pw-for-tests")
    page.click("input[type=submit]")
    page.wait_for_selector("#live-status[data-status=live]", timeout=15000)

    # When a pipeline starts, the page shows it running with a real percentage
    pipeline = _slow_pipeline()
    pid = str(pipeline.pk)
    row = f'tbody[data-pipeline="{pid}"]'
    page.wait_for_selector(f'{row} tr.job-row [data-role=state]:has-text("running")', timeout=20000)
    page.wait_for_function(
        """(sel) => [...document.querySelectorAll(sel + ' tr.job-row .live-pct')]
                   .some((e) => { const v = parseInt(e.textContent); return v > 0 && v < 100; })""",
        arg=row, timeout=20000,
    )
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOT.with_name("live-console-running.png")), full_page=True)

    # ...and keeps up through a dropped socket (replay with ?after=)
    page.evaluate("window.sluiceFeed.drop()")
    page.wait_for_selector("#live-status[data-status=reconnecting]", timeout=5000)
    page.wait_for_selector("#live-status[data-status=live]", timeout=15000)

    # ...and through a server restart while the pipeline keeps running
    server.stop()
    page.wait_for_selector("#live-status[data-status=reconnecting]", timeout=10000)
    # the pipeline moves on while the server is down: the page must replay what it missed
    down_at = JobEvent.objects.filter(pipeline_id=pid).order_by("-seq").values_list("seq", flat=True).first() or 0
    wait_for(lambda: JobEvent.objects.filter(pipeline_id=pid, seq__gt=down_at).exists(), timeout=20,
             message="an event while the server is down")
    server.start()
    page.wait_for_selector("#live-status[data-status=live]", timeout=30000)

    # Then it ends with the final state, the same as the database
    page.wait_for_selector(f'{row} tr.pipeline-row [data-role=status]:has-text("success")', timeout=60000)
    wait_for(lambda: Pipeline.objects.get(pk=pid).is_done, timeout=30)
    states = page.eval_on_selector_all(f"{row} tr.job-row [data-role=state]", "els => els.map(e => e.textContent)")
    assert states == ["success"] * Job.objects.filter(pipeline_id=pid).count()
    pcts = page.eval_on_selector_all(f"{row} tr.job-row .live-pct", "els => els.map(e => e.textContent)")
    assert pcts == ["100%"] * len(states)
    held = page.evaluate(f"window.sluiceFeed.store.pipelines.get('{pid}')")
    assert held["pipeline_seq"] == Pipeline.objects.get(pk=pid).last_pipeline_seq
    assert errors == []
    page.screenshot(path=str(SCREENSHOT), full_page=True)

    # With JavaScript off the page is a readable, server-rendered table
    static = browser.new_context(
        java_script_enabled=False, color_scheme="dark", viewport={"width": 1280, "height": 600}
    )
    static.add_cookies(page.context.cookies())
    plain = static.new_page()
    plain.goto(f"{base}/admin/pipelines/pipeline/live/")
    assert "success" in plain.inner_text(f"{row} tr.pipeline-row")
    assert plain.locator(f"{row} tr.job-row").count() == len(states)
    plain.screenshot(path=str(SCREENSHOT.with_name("live-console-nojs-dark.png")))
    static.close()
